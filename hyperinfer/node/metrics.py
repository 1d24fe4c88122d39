"""Prometheus metrics of a node (``hyperinfer node --metrics-listen HOST:PORT``; off by default).

What the node itself saw, per model and version, in Triton's names (as on the
gateway, from a :class:`hyperinfer.statistics.Statistics` the node fills):
``nv_inference_request_success``, ``nv_inference_request_failure`` (label
``reason``), ``nv_inference_count``, ``nv_inference_exec_count``,
``nv_inference_request_duration_us``, ``nv_inference_compute_infer_duration_us``;
and the node's own: ``hyperinfer_node_info`` (node id, operator, targets),
``hyperinfer_node_inflight`` / ``hyperinfer_node_capacity``,
``hyperinfer_node_model_loaded`` (model, version, target),
``hyperinfer_node_rejected_requests`` for calls naming no loaded model (by code),
``hyperinfer_node_worker_calls`` (label ``auth``: ``session`` HMAC or ``signed``
Ed25519, the gateway's proof on the calls let in) and
``hyperinfer_node_worker_sessions`` (gateways with a Worker-call session).

The timer wraps the data plane's ``infer`` (the Worker servicer's one call):
one ``perf_counter_ns`` pair and a locked counter update per request.
"""

from __future__ import annotations

import time
from typing import Any, Iterable

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from hyperinfer import __version__
from hyperinfer.errors import HyperinferError
from hyperinfer.statistics import Statistics
from hyperinfer.transport.http import HttpServer, metrics_app, parse_listen, prometheus_text

_NV = (
    ("nv_inference_request_success", "Number of successful inference requests", "success", "count"),
    ("nv_inference_count", "Number of inferences performed", "inference_count", None),
    ("nv_inference_exec_count", "Number of model executions performed", "execution_count", None),
    ("nv_inference_request_duration_us", "Cumulative inference request duration in microseconds", "success", "us"),
    ("nv_inference_compute_infer_duration_us", "Cumulative compute inference duration in microseconds",
     "compute_infer", "us"),
)


def _nv(name: str, doc: str, stats: Iterable[Any], attr: str, what: str | None) -> Metric:
    m = Metric(name, doc, "counter")
    for s in stats:
        v = getattr(s, attr)
        v = v.count if what == "count" else v.ns / 1000.0 if what == "us" else v
        m.add_sample(name, {"model": s.name, "version": str(s.version)}, float(v))
    return m


class NodeCollector(Collector):
    def __init__(self, node: Any, statistics: Statistics, rejected: dict[str, int]):
        self.node, self.statistics, self.rejected = node, statistics, rejected

    def collect(self) -> Iterable[Metric]:
        node, plane = self.node, self.node.dataplane
        stats = self.statistics.snapshot()
        for name, doc, attr, what in _NV:
            yield _nv(name, doc, stats, attr, what)
        fail = Metric("nv_inference_request_failure", "Number of failed inference requests", "counter")
        for s in stats:
            for reason, n in sorted(s.failures.items()):
                fail.add_sample("nv_inference_request_failure",
                                {"model": s.name, "version": str(s.version), "reason": reason}, float(n))
        yield fail
        info = GaugeMetricFamily("hyperinfer_node_info", "This node: id, operator, targets, software version",
                                 labels=["node", "operator", "targets", "version"])
        info.add_metric([plane.node_id, node.info.operator, ",".join(node.info.targets), __version__], 1.0)
        yield info
        yield GaugeMetricFamily("hyperinfer_node_inflight", "Requests running now", value=plane.outstanding)
        yield GaugeMetricFamily("hyperinfer_node_capacity", "Requests the node runs at once (--max-concurrency)",
                                value=plane.capacity)
        loaded = GaugeMetricFamily("hyperinfer_node_model_loaded", "Models loaded, with the artifact's target",
                                   labels=["model", "version", "target"])
        for m in plane.loaded():
            loaded.add_metric([m.manifest.name, str(m.manifest.version), m.target_id], 1.0)
        yield loaded
        rejected = CounterMetricFamily("hyperinfer_node_rejected_requests",
                                       "Calls refused before naming a loaded model", labels=["reason"])
        for code, n in sorted(dict(self.rejected).items()):
            rejected.add_metric([code], float(n))
        yield rejected
        gatekeeper = getattr(node, "gatekeeper", None)
        if gatekeeper is not None:
            calls = CounterMetricFamily("hyperinfer_node_worker_calls", "Worker calls let in, by the gateway's proof: "
                                        "session (HMAC, verify.session) or signed (Ed25519)", labels=["auth"])
            for auth, n in sorted(dict(gatekeeper.accepted).items()):
                calls.add_metric([auth], float(n))
            yield calls
            yield GaugeMetricFamily("hyperinfer_node_worker_sessions", "Gateways this node has a Worker-call session "
                                    "with", value=gatekeeper.session_count())


class NodeMetrics:
    """Counts the node's requests and serves ``/metrics`` on ``listen``."""

    def __init__(self, node: Any, listen: str):
        parse_listen(listen, "--metrics-listen")  # a bad address fails before anything starts
        self.statistics = Statistics()
        self.rejected: dict[str, int] = {}
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(NodeCollector(node, self.statistics, self.rejected))
        self._wrap(node.dataplane)
        c = node.config
        cert, key = (str(c.tls_cert), str(c.tls_key)) if getattr(c, "tls_cert", None) and c.tls_key else (None, None)
        self.server = HttpServer(metrics_app(self.render), listen, what="metrics", flag="--metrics-listen",
                                 ssl_certfile=cert, ssl_keyfile=key)

    def _wrap(self, plane: Any) -> None:
        inner, stats, rejected = plane.infer, self.statistics, self.rejected

        def infer(request_id: str, model_name: str, model_version: int, inputs: Any) -> Any:
            t0 = time.perf_counter_ns()
            try:
                result = inner(request_id, model_name, model_version, inputs)
            except Exception as e:
                code = e.code.value if isinstance(e, HyperinferError) else "INTERNAL"
                try:  # per model only for loaded ones: a caller cannot grow the label set
                    version = plane.get(model_name, model_version).manifest.version
                except Exception:  # noqa: BLE001
                    rejected[code] = rejected.get(code, 0) + 1
                else:
                    stats.record_failure(model_name, version, time.perf_counter_ns() - t0, code)
                raise
            ns = time.perf_counter_ns() - t0
            att_version = model_version or plane.get(model_name, 0).manifest.version
            stats.record_success(model_name, att_version, queue_ns=0, input_ns=0, infer_ns=ns, output_ns=0)
            return result

        plane.infer = infer  # the instance attribute shadows the method for the servicer's calls

    def render(self) -> bytes:
        return prometheus_text(self.registry)

    @property
    def address(self) -> str:
        return self.server.address
