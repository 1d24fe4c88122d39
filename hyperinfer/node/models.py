"""Turn the gateway's model offers into loaded models: trust check, target choice,
download into the cache, load, register with the data plane.

Plain Python: the pool client hands in offers and a way to fetch artifact
chunks; tests hand in a function.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

from hyperinfer.errors import Code, FailedPrecondition, HyperinferError, InvalidArgument, PermissionDenied
from hyperinfer.package import Manifest
from hyperinfer.node.cache import ArtifactCache, ChunkSource
from hyperinfer.node.dataplane import DataPlane, LoadedModel, Runner, TrustPolicy, choose_target

log = logging.getLogger("hyperinfer.node")


@dataclass(frozen=True)
class Offer:
    name: str
    version: int
    manifest: bytes
    signature: bytes = b""

    @property
    def digest(self) -> str:
        return hashlib.sha256(self.manifest + b"\0" + self.signature).hexdigest()


# (model name, version, target id, artifact sha256) -> chunk source
FetchFactory = Callable[[str, int, str, str], ChunkSource]
# (artifact path, manifest, target id) -> runner
RunnerFactory = Callable[[Path, Manifest, str], Runner]

# errors that will not go away by trying again with the same offer
_PERMANENT = {Code.PERMISSION_DENIED, Code.INVALID_ARGUMENT, Code.FAILED_PRECONDITION, Code.NOT_FOUND}


def tvm_runner_factory(threads: int | None = None) -> RunnerFactory:
    """Runners by artifact kind: TVM shared libraries, or WGSL plans over wgpu for ``vulkan``."""
    def make(path: Path, manifest: Manifest, target_id: str) -> Runner:
        from hyperinfer.runtime.runners import make_runner

        return make_runner(path, manifest.inputs, manifest.outputs, target_id, threads, manifest.batch)

    return make


class VersionLog:
    """Newest ``created`` time loaded per model version, kept in ``loaded-versions.json`` in the
    node cache: a gateway cannot roll a node back to an older build of a package it already
    ran (an old artifact may be one the publisher replaced for a reason)."""

    def __init__(self, path: str | os.PathLike | None):
        self.path = Path(path) if path is not None else None
        self._lock = threading.Lock()
        self._created: dict[str, str] = {}
        if self.path is not None and self.path.is_file():
            try:
                data = json.loads(self.path.read_text())
                self._created = {str(k): str(v) for k, v in data.items()} if isinstance(data, dict) else {}
            except (OSError, ValueError):
                log.warning("ignoring unreadable %s", self.path)

    @staticmethod
    def _key(name: str, version: int) -> str:
        return f"{name}/{int(version)}"

    def check(self, manifest: Manifest, label: str) -> None:
        seen = self._created.get(self._key(manifest.name, manifest.version))
        # ISO-8601 UTC times compare as strings; a package without one is older than any
        if seen is not None and (manifest.created or "") < seen:
            raise PermissionDenied(f"package {label} was created {manifest.created or 'at an unknown time'}, "
                                   f"before the one this node already loaded ({seen}): refusing a rollback")

    def record(self, manifest: Manifest) -> None:
        key = self._key(manifest.name, manifest.version)
        with self._lock:
            if (manifest.created or "") <= self._created.get(key, ""):
                return
            self._created[key] = manifest.created
            if self.path is not None:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                tmp = self.path.with_suffix(".tmp")
                tmp.write_text(json.dumps(self._created, indent=1, sort_keys=True))
                os.replace(tmp, self.path)


class ModelManager:
    def __init__(self, dataplane: DataPlane, cache: ArtifactCache, targets: Sequence[str],
                 trust: TrustPolicy, fetch: FetchFactory, runner_factory: RunnerFactory,
                 on_loaded: Callable[[LoadedModel], None] | None = None,
                 retry_after_s: float = 30.0, versions: VersionLog | None = None):
        self.dataplane = dataplane
        self.cache = cache
        self.targets = list(targets)
        self.trust = trust
        self.fetch = fetch
        self.runner_factory = runner_factory
        self.on_loaded = on_loaded
        self.retry_after_s = retry_after_s
        self.versions = versions if versions is not None else VersionLog(None)
        # offer digest -> (monotonic time of failure, reason, permanent)
        self.failed: dict[str, tuple[float, str, bool]] = {}
        # (name, version) -> digest of the offer it was loaded from: a republished
        # package (same name and version, new manifest) is loaded again
        self._loaded_from: dict[tuple[str, int], str] = {}
        self._lock = threading.Lock()  # one apply at a time

    def wanted(self, offers: Sequence[Offer]) -> list[Offer]:
        """Offers that need work: not loaded from this exact manifest, and not refused
        (or failed recently)."""
        now = time.monotonic()
        out = []
        for offer in offers:
            key = (offer.name, int(offer.version))
            if self._loaded_from.get(key) == offer.digest and self.dataplane.has(*key):
                continue
            prev = self.failed.get(offer.digest)
            if prev is not None and (prev[2] or now - prev[0] < self.retry_after_s):
                continue
            out.append(offer)
        return out

    def apply(self, offers: Sequence[Offer]) -> list[LoadedModel]:
        """Load every offered model not loaded yet; returns the newly loaded ones.

        One bad offer never stops the others. A refused offer (untrusted, no
        runnable target, malformed) is not tried again; a failed download is
        retried after ``retry_after_s``.
        """
        loaded = []
        with self._lock:
            for offer in self.wanted(offers):
                try:
                    model = self.load(offer)
                except HyperinferError as e:
                    permanent = e.code in _PERMANENT
                    self.failed[offer.digest] = (time.monotonic(), str(e), permanent)
                    log.warning("not loading model %s/%s: %s%s", offer.name, offer.version, e,
                                "" if permanent else f" (will retry in {self.retry_after_s:.0f}s)")
                    continue
                self.failed.pop(offer.digest, None)
                self._loaded_from[model.key] = offer.digest
                loaded.append(model)
                if self.on_loaded is not None:
                    self.on_loaded(model)
        return loaded

    def load(self, offer: Offer) -> LoadedModel:
        label = f"{offer.name}/{offer.version}"
        manifest = Manifest.loads(offer.manifest)
        if (manifest.name, manifest.version) != (offer.name, int(offer.version)):
            raise InvalidArgument(f"offer for {label} carries the manifest of {manifest.name}/{manifest.version}")
        # trust before anything is downloaded: the artifact is native code
        publisher = self.trust.check(offer.manifest, offer.signature, f"package {label}")
        self.versions.check(manifest, label)
        target = choose_target(manifest, self.targets)
        if target is None:
            raise FailedPrecondition(
                f"package {label} has no artifact this node can run "
                f"(package: {', '.join(sorted(manifest.artifacts)) or 'none'}; node: {', '.join(self.targets)})"
            )
        info = manifest.artifacts[target]
        suffix = ".zip" if info.file.endswith(".zip") else ".so"
        path = self.cache.get(info.sha256, info.size, self.fetch(manifest.name, manifest.version, target, info.sha256),
                              label=f"{label} [{target}]", suffix=suffix)
        runner = self.runner_factory(path, manifest, target)
        model = LoadedModel(manifest, target, info.sha256, runner, publisher)
        self.dataplane.add(model)
        self.versions.record(manifest)
        return model


def local_fetch(package_dir: str | os.PathLike, chunk_size: int = 1 << 20) -> FetchFactory:
    """A fetch factory reading artifacts from a package directory (tests, `hyperinfer up`)."""
    from hyperinfer.node.cache import Chunk
    from hyperinfer.package import ModelPackage

    pkg = ModelPackage.open(package_dir)

    def factory(name: str, version: int, target_id: str, sha256: str) -> ChunkSource:
        path = pkg.artifact_path(target_id, check=False)
        size = path.stat().st_size

        def chunks(offset: int):
            with open(path, "rb") as f:
                f.seek(offset)
                pos = offset
                while block := f.read(chunk_size):
                    yield Chunk(pos, block, size)
                    pos += len(block)

        return chunks

    return factory


class BackgroundLoader:
    """Applies the latest offers on its own thread, so downloads never delay heartbeats."""

    def __init__(self, manager: ModelManager, recheck_s: float = 30.0):
        self.manager = manager
        self.recheck_s = recheck_s
        self._offers: list[Offer] = []
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="model-loader", daemon=True)

    def start(self) -> "BackgroundLoader":
        self._thread.start()
        return self

    def submit(self, offers: Sequence[Offer]) -> None:
        self._offers = list(offers)
        if self.manager.wanted(offers):
            self._wake.set()

    def _loop(self) -> None:
        while not self._stop.is_set():
            # wake on new offers, or now and then to retry failed downloads
            self._wake.wait(self.recheck_s)
            self._wake.clear()
            if self._stop.is_set():
                break
            try:
                self.manager.apply(self._offers)
            except Exception:  # a bug here must not stop future loads
                log.exception("loading offered models failed")

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout=5)
