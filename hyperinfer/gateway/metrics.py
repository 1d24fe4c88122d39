"""Prometheus metrics of the gateway (text format on ``/metrics``, own port, default 8002).

Read at scrape time, not counted twice:

- Triton's names where they mean the same, from the data plane's per-model
  statistics (:mod:`hyperinfer.statistics`, which ModelStatistics also reads, so
  both agree): ``nv_inference_request_success``, ``nv_inference_request_failure``
  (label ``reason``: the error code), ``nv_inference_count``,
  ``nv_inference_exec_count``, ``nv_inference_request_duration_us``,
  ``nv_inference_queue_duration_us``, ``nv_inference_compute_input_duration_us``,
  ``nv_inference_compute_infer_duration_us``, ``nv_inference_compute_output_duration_us``;
  labels ``model``, ``version``. Counters without ``_total``, as Triton writes them.
- hyperinfer's own, per node (labels ``node``, ``operator``) from the ledger (one
  SELECT per scrape) and the registry (in memory): jobs, checks, agreements,
  faults, skipped checks, slashed stake, stake, credits, quarantined; disputes
  (evidence rows) per node; nodes per state and healthy nodes; the verification
  latency histogram (measured around the verifier's checks, labels ``model`` and
  ``mode``: ``background`` for auto-mode checks, ``sync`` when the client waits).

Every scrape runs on the metrics server's thread: the request path pays nothing
but the verification timer.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any, Iterable

from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from hyperinfer.transport.http import HttpServer, metrics_app, prometheus_text

log = logging.getLogger("hyperinfer.gateway.metrics")

DEFAULT_METRICS_PORT = 8002

# (Triton metric, help, ModelStats attribute, what to read)
_TRITON_COUNTERS = (
    ("nv_inference_request_success", "Number of successful inference requests, all batch sizes", "success", "count"),
    ("nv_inference_count", "Number of inferences performed (does not include cached requests)",
     "inference_count", None),
    ("nv_inference_exec_count", "Number of model executions performed (does not include cached requests)",
     "execution_count", None),
    ("nv_inference_request_duration_us", "Cumulative inference request duration in microseconds",
     "success", "us"),
    ("nv_inference_queue_duration_us", "Cumulative inference queuing duration in microseconds", "queue", "us"),
    ("nv_inference_compute_input_duration_us", "Cumulative compute input duration in microseconds",
     "compute_input", "us"),
    ("nv_inference_compute_infer_duration_us", "Cumulative compute inference duration in microseconds",
     "compute_infer", "us"),
    ("nv_inference_compute_output_duration_us", "Cumulative inference compute output duration in microseconds",
     "compute_output", "us"),
)

# ledger column -> (metric, help, counter?)
_LEDGER = (
    ("jobs", "hyperinfer_node_jobs", "Results the gateway accepted from the node", True),
    ("checks", "hyperinfer_node_checks", "Times the node's result was compared with another node's", True),
    ("agreements", "hyperinfer_node_agreements", "Checks the node came out right", True),
    ("faults", "hyperinfer_node_faults", "Rejected attestations plus disputes the node lost", True),
    ("skipped", "hyperinfer_node_skipped_checks", "Sampled jobs with no independent validator", True),
    ("slashed", "hyperinfer_node_slashed", "Stake slashed from the node", True),
    ("stake", "hyperinfer_node_stake", "Stake the node has left", False),
    ("credits", "hyperinfer_node_credits", "Credits the node earned", False),
    ("quarantined", "hyperinfer_node_quarantined", "1 if the ledger quarantined the node", False),
)
NODE_STATES = ("healthy", "stale", "quarantined", "left")


def triton_metric(name: str, doc: str, stats: Iterable[Any], attr: str, what: str | None) -> Metric:
    """A Triton-named counter with one sample per model and version (sample name without ``_total``)."""
    m = Metric(name, doc, "counter")
    for s in stats:
        value = getattr(s, attr)
        if what == "count":
            value = value.count
        elif what == "us":
            value = value.ns / 1000.0
        m.add_sample(name, {"model": s.name, "version": str(s.version)}, float(value))
    return m


class GatewayCollector(Collector):
    """Reads the data plane's statistics, the ledger and the registry at each scrape."""

    def __init__(self, gateway: Any, dataplane: Any):
        self.gateway = gateway
        self.dataplane = dataplane

    def collect(self) -> Iterable[Metric]:
        yield from self._triton()
        yield from self._nodes()

    def _triton(self) -> Iterable[Metric]:
        statistics = getattr(self.dataplane, "statistics", None)
        if statistics is None:
            return
        stats = statistics.snapshot()
        for name, doc, attr, what in _TRITON_COUNTERS:
            yield triton_metric(name, doc, stats, attr, what)
        fail = Metric("nv_inference_request_failure", "Number of failed inference requests, all batch sizes",
                      "counter")
        for s in stats:
            reasons = dict(getattr(s, "failures", {}) or {})
            if not reasons and s.fail.count:
                reasons = {"OTHER": s.fail.count}
            for reason, n in sorted(reasons.items()):
                fail.add_sample("nv_inference_request_failure",
                                {"model": s.name, "version": str(s.version), "reason": reason}, float(n))
        yield fail

    def _nodes(self) -> Iterable[Metric]:
        registry = self.gateway.registry
        nodes = registry.all_nodes()
        operators = {n.node_id: registry.operator_name(n) for n in nodes}
        states = GaugeMetricFamily("hyperinfer_nodes", "Nodes known to the gateway, by state", labels=["state"])
        counts = {s: 0 for s in NODE_STATES}
        for n in nodes:
            counts[n.state] = counts.get(n.state, 0) + 1
        for s, c in sorted(counts.items()):
            states.add_metric([s], c)
        yield states
        yield GaugeMetricFamily("hyperinfer_nodes_healthy", "Nodes the scheduler may send requests to",
                                value=sum(1 for n in nodes if n.schedulable))
        node_state = GaugeMetricFamily("hyperinfer_node_up", "1 if the node is healthy (schedulable)",
                                       labels=["node", "operator"])
        for n in nodes:
            node_state.add_metric([n.node_id, operators[n.node_id]], 1.0 if n.schedulable else 0.0)
        yield node_state

        rows, disputes = self._ledger_rows()
        families = {col: (CounterMetricFamily if counter else GaugeMetricFamily)(name, doc, labels=["node", "operator"])
                    for col, name, doc, counter in _LEDGER}
        for r in rows:
            labels = [r["node_id"], operators.get(r["node_id"], "")]
            op = registry.operator_of(r["node_id"]) if hasattr(registry, "operator_of") else None
            for col, *_ in _LEDGER:
                # nodes of one operator share its bond: their stake is what is left of it (as in Pool.Status)
                value = op.remaining if col == "stake" and op is not None else float(r[col])
                families[col].add_metric(labels, value)
        yield from families.values()
        d = CounterMetricFamily("hyperinfer_node_disputes", "Disputes the node was part of (as primary or validator)",
                                labels=["node", "operator"])
        for node_id, n in sorted(disputes.items()):
            d.add_metric([node_id, operators.get(node_id, "")], float(n))
        yield d
        with_total = CounterMetricFamily("hyperinfer_disputes", "Disputes resolved by the referee (evidence stored)")
        total = self._dispute_total()
        with_total.add_metric([], float(total))
        yield with_total

    def _ledger_rows(self) -> tuple[list[Any], dict[str, int]]:
        ledger = self.gateway.ledger
        if ledger is None:
            return [], {}
        try:
            with ledger.store.transaction() as c:
                rows = c.execute("SELECT node_id, jobs, checks, agreements, faults, skipped, slashed, stake, "
                                 "credits, quarantined FROM ledger ORDER BY node_id").fetchall()
                disputes: dict[str, int] = {}
                for col in ("primary_node", "validator_node"):
                    for node_id, n in c.execute(f"SELECT {col}, COUNT(*) FROM evidence GROUP BY {col}").fetchall():
                        disputes[node_id] = disputes.get(node_id, 0) + int(n)
        except Exception:  # noqa: BLE001 - a scrape must not fail because the store is busy
            log.warning("metrics: could not read the ledger", exc_info=True)
            return [], {}
        return rows, disputes

    def _dispute_total(self) -> int:
        ledger = self.gateway.ledger
        if ledger is None:
            return 0
        try:
            with ledger.store.transaction() as c:
                return int(c.execute("SELECT COUNT(*) FROM evidence").fetchone()[0])
        except Exception:  # noqa: BLE001
            return 0


class VerificationTimer:
    """Wraps a Verifier's check runs to time them (``hyperinfer_verification_duration_seconds``)."""

    def __init__(self, registry: CollectorRegistry):
        self.histogram = Histogram(
            "hyperinfer_verification_duration_seconds",
            "Time from a sampled request's accepted primary result to its check's verdict",
            ["model", "mode"], registry=registry,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30))

    def attach(self, verifier: Any) -> None:
        run_check = getattr(verifier, "_run_check", None)
        if run_check is None:
            return
        histogram = self.histogram

        def timed(manifest, inputs, input_digest, primary, candidates, deadline=None, *args, **kwargs):
            t0 = time.perf_counter()
            try:
                return run_check(manifest, inputs, input_digest, primary, candidates, deadline, *args, **kwargs)
            finally:
                # auto-mode checks run on the verifier's pool ("verify_N" threads); sync ones on the request's
                mode = "background" if threading.current_thread().name.startswith("verify") else "sync"
                histogram.labels(manifest.name, mode).observe(time.perf_counter() - t0)

        verifier._run_check = timed  # the instance attribute shadows the method for the verifier's own calls


class GatewayMetrics:
    """The registry and the ``/metrics`` ASGI app."""

    def __init__(self, gateway: Any, dataplane: Any):
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(GatewayCollector(gateway, dataplane))
        self.timer = VerificationTimer(self.registry)
        if getattr(dataplane, "verifier", None) is not None:
            self.timer.attach(dataplane.verifier)

    def render(self) -> bytes:
        return prometheus_text(self.registry)

    def app(self) -> Any:
        return metrics_app(self.render)


def install(gateway: Any) -> Any:
    """Serve ``/metrics`` on ``gateway.config.metrics_listen`` (None or "off": not at all)."""
    from hyperinfer.gateway.assembly import dataplane_for
    from hyperinfer.gateway.rest import tls_files

    listen = getattr(gateway.config, "metrics_listen", None)
    if not listen or listen == "off":
        return None
    metrics = GatewayMetrics(gateway, dataplane_for(gateway))
    cert, key = tls_files(gateway.config)
    server = HttpServer(metrics.app(), listen, what="metrics", flag="--metrics-listen",
                        ssl_certfile=cert, ssl_keyfile=key)
    gateway.metrics = metrics
    gateway.metrics_server = server
    gateway.add_start_hook(server.start)
    gateway.add_shutdown_hook(server.stop)
    return server
