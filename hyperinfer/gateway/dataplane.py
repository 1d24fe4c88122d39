"""The gateway's Open Inference Protocol logic on plain values (no protobuf, no gRPC).

ModelInfer: resolve the model in the catalog, check the inputs against its
manifest, run them on one node (scheduler: least outstanding, retries,
attestation checked), hand the result to the verifier (sampling, validator,
receipt), return the requested outputs with the receipt in the response
parameter ``hyperinfer.receipt``.

The client's request ``id`` is echoed back; nodes only ever see the gateway's
own random request ids. Version ``""`` means the newest version in the catalog.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from collections.abc import Sequence
from typing import Any, Mapping, Protocol

import numpy as np

from hyperinfer import __version__, dtypes
from hyperinfer.errors import HyperinferError, InvalidArgument, NotFound, Unavailable
from hyperinfer.gateway.verification import ResultRejected, VerifyRequest, WorkerResult
from hyperinfer.package import Manifest
from hyperinfer.statistics import Statistics
from hyperinfer.verify.digest import tensors_digest
from hyperinfer.verify.receipt import RECEIPT_PARAMETER, Receipt, receipt_to_json

# inputs this large are hashed on another thread while the node runs them (sha256 releases the
# GIL; PP-OCR det's 4.9 MB takes 3.5 ms here); smaller ones at once: for them the hand-off to a
# thread would cost more than the hash
OVERLAP_DIGEST_BYTES = 1 << 20
_digests = ThreadPoolExecutor(max_workers=2, thread_name_prefix="input-digest")

PLATFORM = "hyperinfer-tvm"
VERIFY_PARAMETER = "verify"
VERIFY_ALIAS = "hyperinfer.verify"  # the name gateway.verification's docs use
VERIFY_MODES = ("auto", "sync", "always")


# ---------------------------------------------------------------- plain types

@dataclass
class InferInput:
    name: str
    datatype: str  # OIP datatype
    shape: tuple[int, ...]
    array: np.ndarray


@dataclass
class RequestedOutput:
    name: str
    binary: bool | None = None  # parameter binary_data, if given


@dataclass
class InferRequest:
    model_name: str
    model_version: str = ""
    id: str = ""
    parameters: dict[str, Any] = field(default_factory=dict)
    inputs: list[InferInput] = field(default_factory=list)
    outputs: list[RequestedOutput] = field(default_factory=list)
    binary_output: bool | None = None  # request parameter binary_data_output, if given


@dataclass
class OutputTensor:
    name: str
    datatype: str
    array: np.ndarray


@dataclass
class InferResponse:
    model_name: str
    model_version: str
    id: str
    outputs: list[OutputTensor]
    parameters: dict[str, Any] = field(default_factory=dict)
    typed: bool = False  # typed contents instead of raw_output_contents


@dataclass(frozen=True)
class TensorMetadata:
    name: str
    datatype: str
    shape: tuple[int, ...]


@dataclass(frozen=True)
class ModelMetadata:
    name: str
    versions: list[str]
    platform: str
    inputs: list[TensorMetadata]
    outputs: list[TensorMetadata]


@dataclass(frozen=True)
class ServerMetadata:
    name: str
    version: str
    extensions: list[str]


# ---------------------------------------------------------------- collaborators

class Catalog(Protocol):
    """gateway.artifacts.Catalog: the offered packages, cached and re-scanned in the background."""

    def versions(self, name: str) -> list[int]: ...

    def get(self, name: str, version: int | None = None) -> Any: ...  # Offer with .manifest

    def offers(self) -> list[Any]: ...  # every Offer (.name, .version), sorted


class Registry(Protocol):
    def schedulable_nodes(self, model: str, version: int) -> list[Any]: ...

    def report_failure(self, node_id: str, reason: str = "") -> None: ...


class Verifier(Protocol):
    """gateway.verification.Verifier."""

    def verify(self, req: VerifyRequest) -> Receipt: ...


# ---------------------------------------------------------------- checks

def parse_version(version: str, where: str = "model_version") -> int | None:
    if version == "":
        return None
    if not version.isdigit() or int(version) < 1:
        raise InvalidArgument(f"{where}: failed to get model version from specified version string {version!r} "
                              "(use a positive integer version, or '' for the newest)")
    return int(version)


def parse_verify_mode(parameters: Mapping[str, Any]) -> str:
    key = VERIFY_PARAMETER if VERIFY_PARAMETER in parameters else VERIFY_ALIAS
    value = parameters.get(key)
    if value is None:
        return "auto"
    if not isinstance(value, str) or value.strip().lower() not in VERIFY_MODES:
        raise InvalidArgument(
            f"parameters.{key}: {value!r} is not a verification mode; use a string_param, "
            f"one of: {', '.join(VERIFY_MODES)}"
        )
    return value.strip().lower()


def check_inputs(manifest: Manifest, inputs: Sequence[InferInput]) -> dict[str, np.ndarray]:
    """Request inputs -> {name: array} in the manifest's order; InvalidArgument names the field."""
    by_name = {t.name: (i, t) for i, t in enumerate(inputs)}
    model = f"model {manifest.name!r} version {manifest.version}"
    expected = ", ".join(s.name for s in manifest.inputs)
    specs = {s.name for s in manifest.inputs}
    for i, t in enumerate(inputs):
        if t.name not in specs:
            raise InvalidArgument(f"inputs[{i}].name: {model} has no input {t.name!r} (its inputs: {expected})")
    out: dict[str, np.ndarray] = {}
    for spec in manifest.inputs:
        found = by_name.get(spec.name)
        if found is None:
            raise InvalidArgument(f"inputs: missing input {spec.name!r} of {model} (its inputs: {expected})")
        i, t = found
        want = dtypes.from_name(spec.dtype).oip
        if t.datatype != want:
            raise InvalidArgument(f"inputs[{i}].datatype: {t.datatype} for input {spec.name!r}, {model} takes {want}")
        if t.shape != spec.shape:
            raise InvalidArgument(
                f"inputs[{i}].shape: {list(t.shape)} for input {spec.name!r}, {model} takes {list(spec.shape)}"
            )
        out[spec.name] = t.array
    return out


def select_outputs(manifest: Manifest, requested: Sequence[RequestedOutput]) -> list[tuple[str, str]]:
    """(name, OIP datatype) of the outputs to return: all in manifest order, or the requested ones."""
    types = {o.name: dtypes.from_name(o.dtype).oip for o in manifest.outputs}
    if not requested:
        return list(types.items())
    chosen = []
    for i, o in enumerate(requested):
        if o.name not in types:
            raise InvalidArgument(
                f"outputs[{i}].name: model {manifest.name!r} version {manifest.version} has no output {o.name!r} "
                f"(its outputs: {', '.join(types)})"
            )
        chosen.append((o.name, types[o.name]))
    return chosen


def wants_typed(req: InferRequest) -> bool:
    """Typed contents only when the client says binary_data_output=false (request) or
    binary_data=false on every requested output; raw is the default (tritonclient reads raw)."""
    if req.binary_output is not None:
        return not req.binary_output
    return bool(req.outputs) and all(o.binary is False for o in req.outputs)


# ---------------------------------------------------------------- data plane

class DataPlane:
    def __init__(self, catalog: Catalog, registry: Registry, scheduler: Any, verifier: Verifier | None = None,
                 *, server_name: str = "hyperinfer", statistics: Statistics | None = None):
        self.catalog = catalog
        self.registry = registry
        self.scheduler = scheduler
        self.verifier = verifier
        self.server_name = server_name
        # per model+version counts and durations (ModelStatistics, Prometheus nv_* metrics)
        self.statistics = statistics if statistics is not None else Statistics()

    # -------------------------------------------------------------- health

    def live(self) -> bool:
        return True

    def ready(self) -> bool:
        """The gateway takes requests (while shutting down, the health service says NOT_SERVING
        and the port closes). Whether a model can be served is model_ready()."""
        return True

    def manifest(self, name: str, version: str, where: str = "") -> Manifest:
        if not name:
            raise InvalidArgument(f"{where}name: empty model name")
        v = parse_version(version, f"{where}version" if where else "model_version")
        return self.catalog.get(name, v).manifest  # NotFound names the versions that exist

    def model_ready(self, name: str, version: str = "") -> bool:
        """True iff at least one schedulable node has the model loaded. Unknown models are not ready
        (as in Triton): a readiness probe gets False, not an error."""
        try:
            m = self.manifest(name, version)
        except NotFound:
            return False
        return bool(self.registry.schedulable_nodes(m.name, m.version))

    def server_metadata(self) -> ServerMetadata:
        # Triton's extension names for what both front doors serve (statistics, config, repository)
        return ServerMetadata(self.server_name, __version__, [
            "parameters", "statistics", "model_configuration", "model_repository", "hyperinfer-receipt"])

    def model_metadata(self, name: str, version: str = "") -> ModelMetadata:
        m = self.manifest(name, version)
        meta = lambda t: TensorMetadata(t.name, dtypes.from_name(t.dtype).oip, tuple(t.shape))  # noqa: E731
        return ModelMetadata(
            name=m.name,
            versions=[str(v) for v in self.catalog.versions(m.name)],
            platform=PLATFORM,
            inputs=[meta(t) for t in m.inputs],
            outputs=[meta(t) for t in m.outputs],
        )

    def model_statistics(self, name: str = "", version: str = "") -> list[Any]:
        """statistics.ModelStats of every offered model version (name ''), of every version of
        ``name`` (version ''), or of one version; zeros for versions without requests."""
        if not name:
            if version:
                raise InvalidArgument("version: given without a model name")
            keys = [(o.name, o.version) for o in self.catalog.offers()]
        elif version:
            m = self.manifest(name, version)
            keys = [(m.name, m.version)]
        else:
            self.manifest(name, "")  # NotFound for an unknown model
            keys = [(name, v) for v in self.catalog.versions(name)]
        return [self.statistics.get(n, v) for n, v in keys]

    # -------------------------------------------------------------- infer

    def infer(self, req: InferRequest, deadline: float | None = None) -> InferResponse:
        """``deadline``: time.monotonic() value by which the client stops waiting.

        Every request that names a model that exists is counted in :attr:`statistics`
        (success with its durations, or failure with its error code)."""
        t0 = time.perf_counter_ns()
        manifest = self.manifest(req.model_name, req.model_version, "model_")
        try:
            mode = parse_verify_mode(req.parameters)
            inputs = check_inputs(manifest, req.inputs)
            chosen = select_outputs(manifest, req.outputs)
            t_in = time.perf_counter_ns()

            primary, receipt, verify_ns = self._run_verified(manifest, inputs, mode, deadline)
            t_run = time.perf_counter_ns()
            parameters: dict[str, Any] = {}
            if receipt is not None:
                parameters[RECEIPT_PARAMETER] = receipt_to_json(receipt)
            resp = InferResponse(
                model_name=manifest.name,
                model_version=str(manifest.version),
                id=req.id,
                outputs=[OutputTensor(n, dt, primary.outputs[n]) for n, dt in chosen],
                parameters=parameters,
                typed=wants_typed(req),
            )
        except BaseException as e:
            code = e.code.value if isinstance(e, HyperinferError) else "INTERNAL"
            self.statistics.record_failure(manifest.name, manifest.version, time.perf_counter_ns() - t0, code)
            raise
        t_end = time.perf_counter_ns()
        infer_ns = int(primary.seconds * 1e9)
        output_ns = verify_ns + (t_end - t_run)
        queue_ns = max(t_run - t_in - infer_ns - verify_ns, 0)  # slot waits, failed or rejected attempts
        self.statistics.record_success(manifest.name, manifest.version, queue_ns=queue_ns, input_ns=t_in - t0,
                                       infer_ns=infer_ns, output_ns=output_ns)
        return resp

    def _run_verified(self, manifest: Manifest, inputs: dict[str, np.ndarray], mode: str,
                      deadline: float | None) -> tuple[Any, Receipt | None, int]:
        """Primary result (scheduler), its receipt (verifier) and the verifier's time on it (ns).
        A result the verifier rejects (bad attestation, or found at fault in sync/always mode)
        is never returned: the request runs again on another node, within the scheduler's
        attempt budget."""
        names = self._input_names(manifest)
        if sum(a.nbytes for a in inputs.values()) >= OVERLAP_DIGEST_BYTES:
            digest: Any = _digests.submit(tensors_digest, names, inputs)  # the scheduler waits for it
        else:
            digest = tensors_digest(names, inputs)
        tried: list[str] = []
        last: ResultRejected | None = None
        # a probation node's answer is held until the verifier's check is over: it keeps its one
        # job (no new primary work) until then
        release = getattr(self.scheduler, "release_hold", None) if self.verifier is not None else None
        for _ in range(self.scheduler.max_attempts):
            try:
                primary = self.scheduler.run(manifest, inputs, deadline=deadline, input_digest=digest,
                                             exclude=tried, **({"hold": True} if release else {}))
            except Unavailable as e:
                if last is None:
                    raise
                raise Unavailable(f"model {manifest.name} version {manifest.version}: the results of "
                                  f"{len(tried)} node(s) were rejected by verification ({last}) and no other "
                                  f"node could run it ({e})") from None
            digest = primary.input_digest  # computed by now
            if self.verifier is None:
                return primary, None, 0
            t_verify = time.perf_counter_ns()
            try:
                receipt = self.verifier.verify(VerifyRequest(
                    manifest=manifest, inputs=inputs, primary=primary.node, request_id=primary.request_id,
                    result=WorkerResult(primary.outputs, primary.attestation_bytes, primary.signature),
                    candidates=_Candidates(self.registry, manifest), mode=mode, input_digest=digest,
                    deadline=deadline,
                ))
            except ResultRejected as e:
                last = e
                tried.append(primary.node.node_id)
                self.registry.report_failure(primary.node.node_id, f"result rejected: {e}")
                continue
            finally:
                if release is not None:
                    release(primary.node.node_id)
            return primary, receipt, time.perf_counter_ns() - t_verify
        raise Unavailable(f"model {manifest.name} version {manifest.version}: results of {len(tried)} node(s) "
                          f"were rejected by verification; last: {last}")

    @staticmethod
    def _input_names(manifest: Manifest) -> list[str]:
        return [s.name for s in manifest.inputs]


class _Candidates(Sequence):
    """Validator candidates, read from the registry only if the request is sampled
    (most are not: no registry read on their hot path)."""

    def __init__(self, registry: Registry, manifest: Manifest):
        self._registry, self._manifest, self._nodes = registry, manifest, None

    def _load(self) -> list[Any]:
        if self._nodes is None:
            self._nodes = self._registry.schedulable_nodes(self._manifest.name, self._manifest.version)
        return self._nodes

    def __getitem__(self, i):
        return self._load()[i]

    def __len__(self) -> int:
        return len(self._load())


def deadline_from(time_remaining: float | None) -> float | None:
    return None if time_remaining is None else time.monotonic() + time_remaining
