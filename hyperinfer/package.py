"""The model package: ``REPO/NAME/VERSION/`` with a manifest, the cleaned ONNX model,
one TVM artifact per target and the reference inputs/outputs.

Layout (design §3)::

    manifest.json            what is in the package (see Manifest)
    manifest.sig             optional publisher signature over manifest.json's bytes
    model.onnx               cleaned model that ONNX Runtime (the referee) runs
    artifacts/<target>.so    one TVM artifact per target id
    reference.npz            calibration inputs and ONNX Runtime outputs
    tuning/<target>/         optional MetaSchedule database

Reading a package never trusts it: every artifact is checked against its sha256
before it is handed out for loading (loading a shared object runs native code).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from hyperinfer import dtypes
from hyperinfer.errors import DataLoss, FailedPrecondition, InvalidArgument, NotFound

MANIFEST = "manifest.json"
SIGNATURE = "manifest.sig"
MODEL_ONNX = "model.onnx"
REFERENCE = "reference.npz"
FORMAT_VERSION = 1

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


def validate_model_name(name: str) -> str:
    if not _NAME_RE.match(name or ""):
        raise InvalidArgument(
            f"invalid model name {name!r}: use letters, digits, '.', '_' or '-' (max 128), "
            "starting with a letter or digit"
        )
    return name


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


@dataclass(frozen=True)
class TensorSpec:
    name: str
    dtype: str  # numpy name: float32, int64, bool, ...
    shape: tuple[int, ...]  # static shape the artifacts were built for
    # shape as declared by the source model, dynamic dims by name (None if it was static)
    source_shape: tuple[int | str, ...] | None = None

    def to_json(self) -> dict[str, Any]:
        d: dict[str, Any] = {"name": self.name, "dtype": self.dtype, "shape": list(self.shape)}
        if self.source_shape is not None:
            d["source_shape"] = list(self.source_shape)
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> "TensorSpec":
        dtypes.from_name(d["dtype"])
        src = d.get("source_shape")
        return cls(d["name"], d["dtype"], tuple(int(x) for x in d["shape"]), tuple(src) if src is not None else None)


@dataclass(frozen=True)
class Tolerance:
    """Two float outputs agree when |a - b| <= atol + rtol * |b| elementwise."""

    atol: float = 0.0
    rtol: float = 0.0


@dataclass(frozen=True)
class OutputSpec(TensorSpec):
    tolerance: Tolerance = field(default_factory=Tolerance)
    # measured worst error of any artifact against ONNX Runtime on the reference inputs
    max_abs_error: float = 0.0
    max_rel_error: float = 0.0

    def to_json(self) -> dict[str, Any]:
        d = super().to_json()
        d["tolerance"] = asdict(self.tolerance)
        d["max_abs_error"] = self.max_abs_error
        d["max_rel_error"] = self.max_rel_error
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> "OutputSpec":
        base = TensorSpec.from_json(d)
        tol = d.get("tolerance") or {}
        return cls(
            base.name,
            base.dtype,
            base.shape,
            base.source_shape,
            Tolerance(float(tol.get("atol", 0.0)), float(tol.get("rtol", 0.0))),
            float(d.get("max_abs_error", 0.0)),
            float(d.get("max_rel_error", 0.0)),
        )


@dataclass(frozen=True)
class ArtifactInfo:
    target_id: str
    target: dict[str, Any]  # TVM target spec (JSON dict) it was built with
    file: str  # path relative to the package
    sha256: str
    size: int
    tuned: bool = False
    build_seconds: float = 0.0
    # whether the artifact was run against ONNX Runtime at compile time (only
    # artifacts for this machine's hardware can be; CUDA/ROCm ones are built only)
    calibrated: bool = False

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> "ArtifactInfo":
        return cls(
            d["target_id"],
            dict(d["target"]),
            d["file"],
            d["sha256"],
            int(d["size"]),
            bool(d.get("tuned", False)),
            float(d.get("build_seconds", 0.0)),
            bool(d.get("calibrated", False)),
        )


@dataclass(frozen=True)
class BatchInfo:
    """Dynamic batching (``hyperinfer compile --max-batch N``): besides ``main`` (batch 1,
    the shapes in ``inputs``/``outputs``) every artifact has one entry point per size in
    ``sizes``, with dim ``dim`` of every input and output scaled to that size. A node
    stacks up to ``max_batch`` requests, pads them to the next size and splits the
    outputs. Compile checks every batched entry point is bit-identical per item to
    ``main`` on the reference inputs, so homogeneous redundancy (design §6) still holds."""

    max_batch: int
    sizes: tuple[int, ...]  # ascending, starting at 1, ending at max_batch
    dim: int = 0

    @staticmethod
    def entry_point(size: int) -> str:
        return "main" if size == 1 else f"main_b{size}"

    def size_for(self, count: int) -> int:
        """The smallest compiled batch size that holds ``count`` requests."""
        for s in self.sizes:
            if s >= count:
                return s
        raise InvalidArgument(f"batch of {count} exceeds max_batch {self.max_batch}")

    def to_json(self) -> dict[str, Any]:
        return {"max_batch": self.max_batch, "dim": self.dim, "sizes": list(self.sizes),
                "entry_points": {str(s): self.entry_point(s) for s in self.sizes}}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> "BatchInfo":
        sizes = tuple(int(s) for s in d["sizes"])
        info = cls(int(d["max_batch"]), sizes, int(d.get("dim", 0)))
        if (not sizes or sizes[0] != 1 or list(sizes) != sorted(set(sizes))
                or sizes[-1] != info.max_batch or info.dim != 0):
            raise ValueError(f"batch: sizes {list(sizes)} / dim {info.dim} do not fit max_batch {info.max_batch}")
        return info


@dataclass
class Manifest:
    name: str
    version: int
    source_sha256: str
    model_sha256: str
    inputs: list[TensorSpec]
    outputs: list[OutputSpec]
    tvm_version: str
    cleanup: list[str] = field(default_factory=list)
    artifacts: dict[str, ArtifactInfo] = field(default_factory=dict)
    reference_sha256: str = ""
    reference_samples: int = 0
    created: str = ""
    warnings: list[str] = field(default_factory=list)
    batch: BatchInfo | None = None  # None: compiled for batch 1 only
    format: int = FORMAT_VERSION

    def to_json(self) -> dict[str, Any]:
        return {
            "format": self.format,
            "name": self.name,
            "version": self.version,
            "created": self.created,
            "source_sha256": self.source_sha256,
            "model": {"file": MODEL_ONNX, "sha256": self.model_sha256},
            "tvm_version": self.tvm_version,
            "cleanup": list(self.cleanup),
            "inputs": [t.to_json() for t in self.inputs],
            "outputs": [t.to_json() for t in self.outputs],
            "artifacts": {k: v.to_json() for k, v in sorted(self.artifacts.items())},
            "reference": {"file": REFERENCE, "sha256": self.reference_sha256, "samples": self.reference_samples},
            "warnings": list(self.warnings),
            **({"batch": self.batch.to_json()} if self.batch is not None else {}),
        }

    def dumps(self) -> bytes:
        return (json.dumps(self.to_json(), indent=2, sort_keys=False) + "\n").encode()

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> "Manifest":
        try:
            if int(d.get("format", 0)) != FORMAT_VERSION:
                raise InvalidArgument(f"unsupported manifest format {d.get('format')!r} (expected {FORMAT_VERSION})")
            return cls(
                name=validate_model_name(d["name"]),
                version=int(d["version"]),
                source_sha256=d["source_sha256"],
                model_sha256=d["model"]["sha256"],
                inputs=[TensorSpec.from_json(t) for t in d["inputs"]],
                outputs=[OutputSpec.from_json(t) for t in d["outputs"]],
                tvm_version=d.get("tvm_version", ""),
                cleanup=list(d.get("cleanup", [])),
                artifacts={k: ArtifactInfo.from_json(v) for k, v in d.get("artifacts", {}).items()},
                reference_sha256=d.get("reference", {}).get("sha256", ""),
                reference_samples=int(d.get("reference", {}).get("samples", 0)),
                created=d.get("created", ""),
                warnings=list(d.get("warnings", [])),
                batch=BatchInfo.from_json(d["batch"]) if d.get("batch") is not None else None,
            )
        except (KeyError, TypeError, ValueError) as e:
            raise InvalidArgument(f"malformed manifest: {type(e).__name__}: {e}") from None

    @classmethod
    def loads(cls, data: bytes | str) -> "Manifest":
        try:
            d = json.loads(data)
        except (ValueError, UnicodeDecodeError) as e:
            raise InvalidArgument(f"manifest is not valid JSON: {e}") from None
        if not isinstance(d, dict):
            raise InvalidArgument("manifest is not a JSON object")
        return cls.from_json(d)

    def input(self, name: str) -> TensorSpec:
        for t in self.inputs:
            if t.name == name:
                return t
        raise NotFound(f"model {self.name!r} has no input {name!r}")

    def tolerances(self) -> dict[str, Tolerance]:
        return {o.name: o.tolerance for o in self.outputs}


class ModelPackage:
    """A package on disk. Construct with :meth:`open`."""

    def __init__(self, path: Path, manifest: Manifest, manifest_bytes: bytes):
        self.path = path
        self.manifest = manifest
        self.manifest_bytes = manifest_bytes

    @classmethod
    def open(cls, path: str | os.PathLike) -> "ModelPackage":
        p = Path(path)
        mf = p / MANIFEST
        if not mf.is_file():
            raise NotFound(f"{p} is not a model package: {MANIFEST} not found")
        data = mf.read_bytes()
        return cls(p, Manifest.loads(data), data)

    @property
    def name(self) -> str:
        return self.manifest.name

    @property
    def version(self) -> int:
        return self.manifest.version

    @property
    def onnx_path(self) -> Path:
        return self.path / MODEL_ONNX

    @property
    def reference_path(self) -> Path:
        return self.path / REFERENCE

    @property
    def signature_path(self) -> Path:
        return self.path / SIGNATURE

    def artifact(self, target_id: str) -> ArtifactInfo:
        try:
            return self.manifest.artifacts[target_id]
        except KeyError:
            have = ", ".join(sorted(self.manifest.artifacts)) or "none"
            raise NotFound(
                f"package {self.name}/{self.version} has no artifact for target {target_id!r} (has: {have})"
            ) from None

    def artifact_path(self, target_id: str, check: bool = True) -> Path:
        """Path of a target's artifact; with ``check`` its sha256 is verified first."""
        info = self.artifact(target_id)
        path = (self.path / info.file).resolve()
        if self.path.resolve() not in path.parents:
            raise InvalidArgument(f"artifact path {info.file!r} escapes the package")
        if not path.is_file():
            raise DataLoss(f"artifact {info.file} of {self.name}/{self.version} is missing")
        if check:
            actual = sha256_file(path)
            if actual != info.sha256:
                raise DataLoss(
                    f"artifact {info.file} of {self.name}/{self.version} is corrupt: "
                    f"sha256 {actual[:16]}… does not match the manifest's {info.sha256[:16]}…"
                )
        return path

    def check_files(self) -> list[str]:
        """Re-hash every file the manifest names; return one message per mismatch."""
        problems = []
        for target_id in sorted(self.manifest.artifacts):
            try:
                self.artifact_path(target_id)
            except (DataLoss, InvalidArgument) as e:
                problems.append(str(e))
        for path, digest, what in (
            (self.onnx_path, self.manifest.model_sha256, "model.onnx"),
            (self.reference_path, self.manifest.reference_sha256, "reference.npz"),
        ):
            if not path.is_file():
                problems.append(f"{what} is missing")
            elif digest and sha256_file(path) != digest:
                problems.append(f"{what} is corrupt: sha256 does not match the manifest")
        return problems

    def load_reference(self) -> tuple[list[dict[str, np.ndarray]], list[dict[str, np.ndarray]]]:
        """Reference samples as lists of {name: array} for inputs and ONNX Runtime outputs."""
        return read_reference(self.reference_path, self.manifest)


def write_reference(
    path: Path, manifest_inputs: list[TensorSpec], manifest_outputs: list[TensorSpec],
    inputs: list[dict[str, np.ndarray]], outputs: list[dict[str, np.ndarray]],
) -> None:
    arrays: dict[str, np.ndarray] = {}
    for i, (xs, ys) in enumerate(zip(inputs, outputs)):
        for k, spec in enumerate(manifest_inputs):
            arrays[f"input/{i}/{k}"] = xs[spec.name]
        for k, spec in enumerate(manifest_outputs):
            arrays[f"output/{i}/{k}"] = ys[spec.name]
    np.savez_compressed(path, **arrays)


def read_reference(path: Path, manifest: Manifest) -> tuple[list[dict[str, np.ndarray]], list[dict[str, np.ndarray]]]:
    if not path.is_file():
        raise NotFound(f"{path} not found")
    with np.load(path, allow_pickle=False) as z:
        n = manifest.reference_samples
        ins = [{s.name: z[f"input/{i}/{k}"] for k, s in enumerate(manifest.inputs)} for i in range(n)]
        outs = [{s.name: z[f"output/{i}/{k}"] for k, s in enumerate(manifest.outputs)} for i in range(n)]
    return ins, outs


class ModelRepository:
    """A folder of packages: ``ROOT/NAME/VERSION/manifest.json``."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)

    def package_dir(self, name: str, version: int) -> Path:
        return self.root / validate_model_name(name) / str(int(version))

    def __iter__(self) -> Iterator[ModelPackage]:
        if not self.root.is_dir():
            return
        for model_dir in sorted(self.root.iterdir()):
            if not model_dir.is_dir():
                continue
            for vdir in sorted(model_dir.iterdir(), key=lambda p: (not p.name.isdigit(), int(p.name) if p.name.isdigit() else 0)):
                if (vdir / MANIFEST).is_file():
                    yield ModelPackage.open(vdir)

    def versions(self, name: str) -> list[int]:
        d = self.root / validate_model_name(name)
        if not d.is_dir():
            return []
        return sorted(int(p.name) for p in d.iterdir() if p.name.isdigit() and (p / MANIFEST).is_file())

    def get(self, name: str, version: int | None = None) -> ModelPackage:
        versions = self.versions(name)
        if not versions:
            raise NotFound(f"unknown model {name!r}")
        if version is None:
            version = versions[-1]
        if version not in versions:
            raise NotFound(f"model {name!r} has no version {version} (has: {', '.join(map(str, versions))})")
        return ModelPackage.open(self.package_dir(name, version))


def require_static(spec: TensorSpec) -> None:
    if any(d <= 0 for d in spec.shape):
        raise FailedPrecondition(f"tensor {spec.name!r} has a non-static shape {spec.shape}")
