"""The node's data plane: loaded models and signed inference, on plain Python values.

No gRPC here: the servicer converts protobuf to numpy, calls :meth:`DataPlane.infer`
and converts back. Errors are :mod:`hyperinfer.errors` subclasses that the
transport maps to status codes.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Iterable, Mapping, NamedTuple, Protocol

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from hyperinfer.errors import InvalidArgument, NotFound, PermissionDenied, ResourceExhausted
from hyperinfer.node.batching import Batcher, self_check
from hyperinfer.package import Manifest, validate_model_name
from hyperinfer.runtime.validation import check_inputs
from hyperinfer.verify.attestation import Attestation
from hyperinfer.verify.digest import tensors_digest
from hyperinfer.verify.publisher import parse_manifest_signature, verify_manifest_signature
from hyperinfer.verify.signing import key_id, public_bytes

log = logging.getLogger("hyperinfer.node")

MAX_REQUEST_ID = 256


class Runner(Protocol):
    def run(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]: ...


@dataclass
class LoadedModel:
    manifest: Manifest
    target_id: str
    artifact_sha256: str
    runner: Runner
    publisher_id: str | None = None  # None: unsigned, loaded under --allow-unsigned
    batcher: "Batcher | None" = None  # set by DataPlane.add for batched packages when batching is on

    @property
    def key(self) -> tuple[str, int]:
        return (self.manifest.name, self.manifest.version)

    def as_tuple(self) -> tuple[str, int, str, str]:
        """(name, version, target id, artifact sha256): what heartbeats report."""
        return (self.manifest.name, self.manifest.version, self.target_id, self.artifact_sha256)


class InferResult(NamedTuple):
    outputs: dict[str, np.ndarray]  # in the manifest's output order
    attestation: bytes
    signature: bytes


@dataclass
class TrustPolicy:
    """Which packages this node may load: an artifact is native code (design §7)."""

    trusted_publishers: list[bytes] = field(default_factory=list)  # raw Ed25519 public keys
    # --allow-unsigned DIR: a local model repository. An unsigned package is loaded only when
    # DIR/NAME/VERSION/manifest.json holds the very same manifest (its artifact digests then
    # pin the native code to what this node's operator put there); None: never.
    allow_unsigned: "os.PathLike | str | None" = None

    def _local_copy(self, manifest_bytes: bytes, label: str, why: str) -> None:
        from pathlib import Path

        if not self.allow_unsigned or self.allow_unsigned is True:
            raise PermissionDenied(
                f"{label} is {why}; this node loads only packages signed by a trusted publisher "
                "(--trust-publisher KEY), or unsigned ones found in its local repository (--allow-unsigned DIR)")
        import json

        try:
            d = json.loads(manifest_bytes)
            name, version = validate_model_name(str(d["name"])), int(d["version"])
        except (ValueError, KeyError, TypeError):
            raise PermissionDenied(f"{label}: malformed manifest") from None
        local = Path(self.allow_unsigned) / name / str(version) / "manifest.json"
        try:
            same = local.read_bytes() == bytes(manifest_bytes)
        except OSError:
            raise PermissionDenied(f"{label} is {why} and not in the local repository {self.allow_unsigned} "
                                   f"(no {local}); refusing to load native code from elsewhere") from None
        if not same:
            raise PermissionDenied(f"{label} is {why} and differs from {local}; refusing to load native code "
                                   "the local repository does not hold")
        log.warning("%s is %s; loading it because the local repository %s holds the same package",
                    label, why, self.allow_unsigned)

    def check(self, manifest_bytes: bytes, signature: bytes | None, label: str = "package") -> str | None:
        """Publisher id of a trusted signature, or None for a package allowed only by
        --allow-unsigned DIR. Raises PermissionDenied otherwise.

        A signature by an untrusted key vouches for nothing, so --allow-unsigned treats
        it as no signature; a malformed signature, or one by a trusted key that does not
        verify, is a sign of tampering and is always refused.
        """
        if not signature:
            self._local_copy(manifest_bytes, label, "unsigned")
            return None
        parsed = parse_manifest_signature(signature)
        if self.allow_unsigned and parsed.public_key not in set(self.trusted_publishers):
            self._local_copy(manifest_bytes, label, f"signed by untrusted publisher {parsed.publisher_id}")
            return None
        return verify_manifest_signature(signature, manifest_bytes, self.trusted_publishers)


class DataPlane:
    """Models this node serves and the signing of each result."""

    def __init__(self, key: Ed25519PrivateKey, max_concurrency: int = 4,
                 clock_ms: Callable[[], int] = lambda: int(time.time() * 1000),
                 batch_window_s: float | None = 0.0):
        """``batch_window_s``: how long a batch waits for more requests after its first
        (packages compiled with --max-batch); None turns batching off."""
        if max_concurrency < 1:
            raise InvalidArgument(f"max_concurrency must be >= 1, got {max_concurrency}")
        if batch_window_s is not None and batch_window_s < 0:
            raise InvalidArgument(f"batch window must be >= 0, got {batch_window_s}")
        self.batch_window_s = batch_window_s
        self._key = key
        self.node_id = key_id(key)
        self.public_key = public_bytes(key)
        self.capacity = int(max_concurrency)
        self._clock_ms = clock_ms
        self._slots = threading.BoundedSemaphore(self.capacity)
        self._lock = threading.Lock()
        self._outstanding = 0
        self._models: dict[tuple[str, int], LoadedModel] = {}

    # ------------------------------------------------------------ models

    def add(self, model: LoadedModel) -> None:
        batch = model.manifest.batch
        if (self.batch_window_s is not None and batch is not None and batch.max_batch > 1
                and model.batcher is None and hasattr(model.runner, "run_batch")):
            label = f"{model.manifest.name}/{model.manifest.version}"
            problem = self_check(model.runner, model.manifest)
            if problem:  # serving it unbatched keeps every digest equal to other nodes'
                log.warning("not batching %s on this node: %s", label, problem)
            else:
                model.batcher = Batcher(model.runner.run_batch, min(batch.max_batch, self.capacity),
                                        self.batch_window_s, label)
                log.info("batching %s: up to %d requests, window %.0f us", label, model.batcher.max_batch,
                         self.batch_window_s * 1e6)
        with self._lock:
            old = self._models.get(model.key)
            self._models[model.key] = model
        if old is not None and old is not model and old.batcher is not None:
            old.batcher.stop()

    def remove(self, name: str, version: int) -> None:
        with self._lock:
            model = self._models.pop((name, int(version)), None)
        if model is not None and model.batcher is not None:
            model.batcher.stop()

    def close(self) -> None:
        """Stop every batcher (after the server has drained)."""
        with self._lock:
            models = list(self._models.values())
        for m in models:
            if m.batcher is not None:
                m.batcher.stop()

    def loaded(self) -> list[LoadedModel]:
        with self._lock:
            return sorted(self._models.values(), key=lambda m: m.key)

    def loaded_tuples(self) -> list[tuple[str, int, str, str]]:
        return [m.as_tuple() for m in self.loaded()]

    def has(self, name: str, version: int) -> bool:
        with self._lock:
            return (name, int(version)) in self._models

    def get(self, name: str, version: int = 0) -> LoadedModel:
        """A loaded model; version 0 means the newest loaded version."""
        with self._lock:
            if version:
                m = self._models.get((name, int(version)))
                if m is not None:
                    return m
                have = sorted(v for n, v in self._models if n == name)
                if have:
                    raise NotFound(f"model {name!r} version {version} is not loaded on this node "
                                   f"(loaded: {', '.join(map(str, have))})")
            else:
                versions = [v for n, v in self._models if n == name]
                if versions:
                    return self._models[(name, max(versions))]
        raise NotFound(f"model {name!r} is not loaded on this node")

    # ------------------------------------------------------------ load

    @property
    def outstanding(self) -> int:
        with self._lock:
            return self._outstanding

    # ------------------------------------------------------------ inference

    def infer(self, request_id: str, model_name: str, model_version: int,
              inputs: Mapping[str, np.ndarray]) -> InferResult:
        if not request_id:
            raise InvalidArgument("request_id is required")
        if len(request_id) > MAX_REQUEST_ID:
            raise InvalidArgument(f"request_id is longer than {MAX_REQUEST_ID} characters")
        if not model_name:
            raise InvalidArgument("model_name is required")
        if model_version < 0:
            raise InvalidArgument(f"model_version must be >= 0, got {model_version}")
        model = self.get(model_name, model_version)
        m = model.manifest
        feeds = check_inputs(m.inputs, inputs)
        # never queue: a full node says so at once and the gateway schedules elsewhere
        if not self._slots.acquire(blocking=False):
            raise ResourceExhausted(f"node is at its concurrency limit ({self.capacity} requests running)")
        with self._lock:
            self._outstanding += 1
        try:
            # batched: this request's slice of a batch run with others that arrived together
            outputs = model.batcher.run(feeds) if model.batcher is not None else model.runner.run(feeds)
        finally:
            with self._lock:
                self._outstanding -= 1
            self._slots.release()
        ordered = {o.name: np.asarray(outputs[o.name]) for o in m.outputs}
        att = Attestation(
            request_id=request_id,
            model_name=m.name,
            model_version=m.version,
            target_id=model.target_id,
            artifact_sha256=model.artifact_sha256,
            input_digest=tensors_digest([s.name for s in m.inputs], feeds),
            output_digest=tensors_digest([o.name for o in m.outputs], ordered),
            node_id=self.node_id,
            timestamp_ms=self._clock_ms(),
        )
        data, sig = att.sign(self._key)
        return InferResult(ordered, data, sig)


def choose_target(manifest: Manifest, runnable: Iterable[str]) -> str | None:
    """The first of this node's runnable targets (best first) the package has an artifact for."""
    for tid in runnable:
        if tid in manifest.artifacts:
            return tid
    return None
