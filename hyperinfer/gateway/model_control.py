"""Model repository control (Triton's RepositoryIndex / RepositoryModelLoad / Unload) and the
Triton-shaped model configuration generated from a package manifest (ModelConfig).

Plain Python over the gateway's catalog and registry; the gRPC servicer (and
any other front door) translates. What load and unload mean on a pool:

- **unload** retires a model from the gateway's repository: an ``UNLOADED``
  file is written in ``REPO/NAME/`` and the catalog stops offering it, so no
  node is scheduled for it and new nodes never fetch it. The package stays on
  disk; nodes that hold it are simply not used for it.
- **load** offers it again (removes the marker), optionally after adding
  package files sent with the request (Triton's ``file:<version>/<path>``
  parameters: a whole ``hyperinfer compile`` package, checked before it is
  moved into the repository; existing versions are never overwritten). It
  answers once a node serves the model, as Triton answers once the model is
  loaded, or at once when no node in the pool could run any of its targets.
- A ``config`` override (JSON, Triton's ModelConfig fields) is kept with the
  loaded model and shown by ModelConfig until the next unload; it changes what
  ModelConfig reports, not how the compiled package runs (the inputs, outputs
  and name of a compiled package cannot be overridden: refused).

Both are admin-only once the pool has credentials: ``authorize(metadata)``
(the gateway's ``authorize_admin`` hook) raises Unauthenticated or
PermissionDenied; without the hook anyone may call them.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from hyperinfer import __version__, dtypes
from hyperinfer.errors import (
    AlreadyExists, Code, FailedPrecondition, HyperinferError, InvalidArgument, NotFound, Unavailable,
)
from hyperinfer.gateway.artifacts import UNLOADED_MARKER
from hyperinfer.gateway.dataplane import PLATFORM, parse_version
from hyperinfer.package import MANIFEST, Manifest, sha256_file, validate_model_name

DEFAULT_LOAD_TIMEOUT_S = 60.0
FILE_PREFIX = "file:"
NAME_MAX = 255  # bytes per path component (Linux NAME_MAX)
# fields of a compiled package that a config override cannot change
FIXED_FIELDS = ("name", "platform", "backend", "input", "output")


@dataclass(frozen=True)
class IndexEntry:
    """One package in the repository, as Triton's RepositoryIndexResponse.ModelIndex."""

    name: str
    version: str
    state: str  # READY or UNAVAILABLE
    reason: str = ""


# ---------------------------------------------------------------- ModelConfig from a manifest

def _kind(target_id: str) -> str:
    return "KIND_CPU" if target_id.startswith("cpu") else "KIND_GPU"


def triton_config(manifest: Manifest, *, nodes: Sequence[Any] = (), platform: str = "hyperinfer-tvm",
                  override: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Triton's ModelConfig (its JSON form) for a package: inputs and outputs with Triton data
    types and dims, ``max_batch_size`` from ``--max-batch`` packages (dims then leave out the
    batch dim, as in Triton), one instance group per target with the number of ``nodes``
    serving it, and hyperinfer's facts (targets, tolerances, digests) as parameters."""
    batched = manifest.batch is not None and manifest.batch.max_batch > 1

    def tensor(t) -> dict[str, Any]:
        dims = list(t.shape[1:] if batched else t.shape)
        return {"name": t.name, "data_type": "TYPE_" + _triton_type(t.dtype), "dims": dims}

    serving: dict[str, int] = {}
    for n in nodes:
        got = n.loaded.get((manifest.name, manifest.version))
        if got is not None:
            serving[got[0]] = serving.get(got[0], 0) + 1
    params = {
        "hyperinfer.targets": ",".join(sorted(manifest.artifacts)),
        "hyperinfer.model_sha256": manifest.model_sha256,
        "hyperinfer.tvm_version": manifest.tvm_version,
        "hyperinfer.gateway_version": __version__,
    }
    for o in manifest.outputs:
        params[f"hyperinfer.tolerance.{o.name}"] = f"atol={o.tolerance.atol:g} rtol={o.tolerance.rtol:g}"
    config: dict[str, Any] = {
        "name": manifest.name,
        "platform": platform,
        "backend": "tvm",
        "version_policy": {"specific": {"versions": [str(manifest.version)]}},
        "max_batch_size": manifest.batch.max_batch if batched else 0,
        "input": [tensor(t) for t in manifest.inputs],
        "output": [tensor(t) for t in manifest.outputs],
        "instance_group": [
            {"name": target, "kind": _kind(target), "count": serving.get(target, 0)}
            for target in sorted(manifest.artifacts)
        ],
        "parameters": {k: {"string_value": v} for k, v in params.items()},
    }
    if batched:
        config["dynamic_batching"] = {}
    if override:
        config.update(override)
    return config


def _triton_type(dtype: str) -> str:
    oip = dtypes.from_name(dtype).oip
    return "STRING" if oip == "BYTES" else oip


# ---------------------------------------------------------------- repository control

class ModelControl:
    def __init__(self, catalog: Any, registry: Any, *,
                 authorize: Callable[[Sequence[tuple[str, str]]], None] | None = None,
                 load_timeout: float = DEFAULT_LOAD_TIMEOUT_S):
        self.catalog = catalog
        self.registry = registry
        self.authorize_hook = authorize
        self.load_timeout = load_timeout
        self.overrides: dict[str, dict[str, Any]] = {}  # model name -> config override (until unload)
        self._lock = threading.Lock()  # one load/unload at a time

    @property
    def root(self) -> Path:
        return Path(self.catalog.root)

    def authorize(self, metadata: Sequence[tuple[str, str]]) -> None:
        if self.authorize_hook is not None:
            self.authorize_hook(metadata)

    # -------------------------------------------------------------- config

    def model_config(self, name: str, version: str = "") -> dict[str, Any]:
        """Triton's ModelConfig (JSON form) of a model version ('' = newest), with its override."""
        if not name:
            raise InvalidArgument("name: empty model name")
        m = self.catalog.get(name, parse_version(version, "version")).manifest
        return triton_config(m, nodes=self.registry.all_nodes(), platform=PLATFORM,
                             override=self.overrides.get(m.name))

    # -------------------------------------------------------------- index

    def index(self, ready_only: bool = False) -> list[IndexEntry]:
        """Every package in the repository, offered or not, sorted by name and version."""
        self.catalog.refresh(force=True)
        offered = {(o.name, o.version) for o in self.catalog.offers()}
        out = []
        try:
            model_dirs = sorted(p for p in self.root.iterdir() if p.is_dir() and not p.name.startswith("."))
        except OSError as e:
            raise FailedPrecondition(f"cannot read the model repository {self.root}: {e}") from None
        for d in model_dirs:
            unloaded = (d / UNLOADED_MARKER).exists()
            versions = sorted((int(v.name) for v in d.iterdir() if v.name.isdigit() and (v / MANIFEST).is_file()))
            for v in versions:
                if unloaded:
                    entry = IndexEntry(d.name, str(v), "UNAVAILABLE", "unloaded")
                elif (d.name, v) not in offered:
                    entry = IndexEntry(d.name, str(v), "UNAVAILABLE", "invalid package (see the gateway log)")
                elif self.registry.schedulable_nodes(d.name, v):
                    entry = IndexEntry(d.name, str(v), "READY")
                else:
                    entry = IndexEntry(d.name, str(v), "UNAVAILABLE", "no healthy node has it loaded")
                if entry.state == "READY" or not ready_only:
                    out.append(entry)
        return out

    # -------------------------------------------------------------- load / unload

    def _model_dir(self, name: str) -> Path:
        if not name:
            raise InvalidArgument("model_name: empty model name")
        try:
            validate_model_name(name)
        except InvalidArgument as e:
            raise InvalidArgument(f"model_name: failed to load {name!r}: {e}") from None
        return self.root / name

    def load(self, name: str, *, config: str = "", files: Mapping[str, bytes] | None = None,
             timeout: float | None = None) -> None:
        d = self._model_dir(name)
        override = parse_override(name, config) if config else None
        with self._lock:
            if files:
                self._add_files(name, files)
            if not d.is_dir():
                raise NotFound(f"failed to load {name!r}: no model of that name in the repository")
            try:
                (d / UNLOADED_MARKER).unlink(missing_ok=True)
            except OSError as e:
                raise FailedPrecondition(f"failed to load {name!r}: cannot write to the repository: {e}") from None
            self.catalog.refresh(force=True)
            versions = self.catalog.versions(name)
            if not versions:
                raise FailedPrecondition(f"failed to load {name!r}: no valid package in the repository "
                                         "(see the gateway log)")
            if override is not None:
                self.overrides[name] = override
        self._wait_ready(name, versions[-1], timeout)

    def _wait_ready(self, name: str, version: int, timeout: float | None) -> None:
        """Until a node serves the newest version, if any healthy node could run one of its targets."""
        targets = set(self.catalog.get(name, version).manifest.artifacts)
        able = [n for n in self.registry.all_nodes() if n.schedulable and targets & set(n.targets)]
        if not able:
            return
        limit = self.load_timeout if timeout is None else min(timeout, self.load_timeout)
        deadline = time.monotonic() + max(limit, 0.0)
        while not self.registry.schedulable_nodes(name, version):
            if time.monotonic() >= deadline:
                raise Unavailable(f"failed to load {name!r}: offered version {version} to {len(able)} node(s) "
                                  f"that can run it; none has loaded it within {limit:.0f}s")
            time.sleep(0.05)

    def unload(self, name: str) -> None:
        d = self._model_dir(name)
        with self._lock:
            if not d.is_dir():
                raise NotFound(f"failed to unload {name!r}: no model of that name in the repository")
            try:
                (d / UNLOADED_MARKER).write_text(
                    "Retired by RepositoryModelUnload; RepositoryModelLoad (or deleting this file) offers it again.\n")
            except OSError as e:
                raise FailedPrecondition(f"failed to unload {name!r}: cannot write to the repository: {e}") from None
            self.overrides.pop(name, None)
            self.catalog.refresh(force=True)

    # -------------------------------------------------------------- package upload

    def _add_files(self, name: str, files: Mapping[str, bytes]) -> None:
        """Write ``file:<version>/<path>`` entries as new package versions of ``name``, each
        checked (manifest names this model and version, every artifact's sha256) before it
        is moved into the repository."""
        rels: dict[str, bytes] = {}
        for key, data in files.items():
            if not key.startswith(FILE_PREFIX):
                raise InvalidArgument(f"parameters[{key!r}]: failed to load {name!r}: unknown parameter "
                                      f"(package files are named {FILE_PREFIX}<version>/<path>)")
            rel = key[len(FILE_PREFIX):]
            parts = rel.split("/")
            for part in parts:
                if len(part.encode()) > NAME_MAX:
                    # Triton answers INTERNAL here; its clients' tests expect that
                    raise HyperinferError(f"failed to poll from model repository: {key[:40]}...: a path "
                                          f"component is longer than {NAME_MAX} bytes", Code.INTERNAL)
                if part in ("", ".", "..") or "\\" in part or "\0" in part:
                    raise InvalidArgument(f"parameters[{key!r}]: failed to load {name!r}: not a relative path "
                                          "inside the package")
            if not parts[0].isdigit() or int(parts[0]) < 1 or len(parts) < 2:
                raise InvalidArgument(f"parameters[{key!r}]: failed to load {name!r}: package files are named "
                                      f"{FILE_PREFIX}<version>/<path>, version a positive integer")
            rels[rel] = data
        model_dir = self.root / name
        versions = sorted({rel.split("/")[0] for rel in rels}, key=int)
        for v in versions:
            if (model_dir / str(int(v))).exists():
                raise AlreadyExists(f"failed to load {name!r}: version {int(v)} is already in the repository "
                                    "(versions are immutable: publish a new version)")
        try:
            staging = Path(tempfile.mkdtemp(prefix=f".{name}.upload-", dir=self.root))
        except OSError as e:
            raise FailedPrecondition(f"failed to load {name!r}: cannot write to the repository: {e}") from None
        try:
            for rel, data in rels.items():
                p = staging / rel
                p.parent.mkdir(parents=True, exist_ok=True)
                p.write_bytes(data)
            for v in versions:
                _check_package(staging / v, name, int(v))
            model_dir.mkdir(exist_ok=True)
            for v in versions:
                os.replace(staging / v, model_dir / str(int(v)))
        except OSError as e:
            raise FailedPrecondition(f"failed to load {name!r}: cannot write to the repository: {e}") from None
        finally:
            shutil.rmtree(staging, ignore_errors=True)


def _check_package(vdir: Path, name: str, version: int) -> None:
    label = f"failed to load {name!r} version {version}"
    mf = vdir / MANIFEST
    if not mf.is_file():
        raise InvalidArgument(f"{label}: the files have no {version}/{MANIFEST}")
    try:
        m = Manifest.loads(mf.read_bytes())
    except InvalidArgument as e:
        raise InvalidArgument(f"{label}: {e}") from None
    if (m.name, m.version) != (name, version):
        raise InvalidArgument(f"{label}: its manifest is for {m.name!r} version {m.version}")
    for target, info in m.artifacts.items():
        p = (vdir / info.file).resolve()
        if vdir.resolve() not in p.parents or not p.is_file():
            raise InvalidArgument(f"{label}: artifact {info.file} for {target} is missing from the files")
        if sha256_file(p) != info.sha256:
            raise InvalidArgument(f"{label}: artifact {info.file} does not match the manifest's sha256")


def parse_override(name: str, config: str) -> dict[str, Any]:
    """A load request's ``config`` parameter: a JSON object of ModelConfig fields."""
    try:
        value = json.loads(config)
    except ValueError as e:
        raise InvalidArgument(f"parameters.config: failed to load {name!r}: not valid JSON ({e})") from None
    if not isinstance(value, dict):
        raise InvalidArgument(f"parameters.config: failed to load {name!r}: must be a JSON object of "
                              "ModelConfig fields")
    for key in FIXED_FIELDS:
        if key in value and not (key == "name" and value[key] == name):
            raise InvalidArgument(f"parameters.config.{key}: failed to load {name!r}: the {key} of a compiled "
                                  "package cannot be overridden")
    return value
