"""What building for each target needs beyond TVM itself, found or explained.

- CUDA: ``nvcc`` (CUDA 12+ for sm_90). Artifacts build without a GPU.
- ROCm: the ROCm device bitcode (Debian: ``apt-get install rocm-device-libs``)
  and an ``ld.lld`` from LLVM 22 or newer: TVM emits code object v6 (ELF ABI
  version 4), which older lld refuses with "unknown abi version". The
  ``ziglang`` wheel ships LLD 22 (``pip install 'hyperinfer[rocm]'``). No ROCm
  install and no ``rocminfo`` are needed: the GPU arch comes from the target id.
- aarch64: a cross linker; ``ziglang``'s ``zig cc`` links aarch64 Linux shared objects.
- Vulkan: TVM's WebGPU (WGSL) code generator, which the PyPI wheel includes; the
  kernels run through wgpu-native on the node (no SPIR-V codegen needed).

Where a piece is missing, :func:`check` says exactly which and how to get it.
"""

from __future__ import annotations

import functools
import glob
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from hyperinfer.compile.targets import TargetInfo, machine_arch
from hyperinfer.errors import FailedPrecondition

VULKAN_MISSING = (
    "the installed TVM has no WebGPU (WGSL) code generator (target.build.webgpu), which target 'vulkan' "
    "is built with; install the apache-tvm wheel hyperinfer pins"
)

_MIN_LLD = 22


@dataclass(frozen=True)
class Lld:
    command: tuple[str, ...]
    version: int


def _lld_version(cmd: list[str]) -> int | None:
    try:
        out = subprocess.run([*cmd, "--version"], capture_output=True, text=True, timeout=60).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    m = re.search(r"LLD (\d+)\.", out)
    return int(m.group(1)) if m else None


@functools.lru_cache(maxsize=1)
def find_lld() -> tuple[Lld | None, str]:
    """An ld.lld of LLVM >= 22, or (None, why not)."""
    candidates: list[list[str]] = []
    if os.environ.get("HYPERINFER_LLD"):
        candidates.append(os.environ["HYPERINFER_LLD"].split())
    for name in ("ld.lld-23", "ld.lld-22", "ld.lld"):
        if path := shutil.which(name):
            candidates.append([path])
    try:
        import ziglang  # noqa: F401  (the wheel ships `zig ld.lld`)

        candidates.append([sys.executable, "-m", "ziglang", "ld.lld"])
    except ImportError:
        pass
    seen = []
    for cmd in candidates:
        v = _lld_version(cmd)
        seen.append(f"{' '.join(cmd)} (LLD {v if v else '?'})")
        if v is not None and v >= _MIN_LLD:
            return Lld(tuple(cmd), v), ""
    found = "; found: " + ", ".join(seen) if seen else ""
    return None, (
        f"ROCm needs ld.lld from LLVM {_MIN_LLD} or newer (TVM emits AMD code object v6){found}. "
        "Install it with: pip install 'hyperinfer[rocm]' (the ziglang wheel ships LLD 22), "
        "or point HYPERINFER_LLD at an ld.lld"
    )


def _bitcode_candidates() -> list[Path]:
    c = []
    for env in ("HYPERINFER_ROCM_BITCODE",):
        if os.environ.get(env):
            c.append(Path(os.environ[env]))
    if os.environ.get("ROCM_PATH"):
        c.append(Path(os.environ["ROCM_PATH"]) / "amdgcn" / "bitcode")
    c.append(Path("/opt/rocm/amdgcn/bitcode"))
    c += [Path(p) for p in sorted(glob.glob("/usr/lib/*-linux-gnu*/amdgcn/bitcode"))]
    c += [Path(p) for p in sorted(glob.glob("/usr/lib/llvm-*/lib/clang/*/lib/amdgcn/bitcode"))]
    return c


@functools.lru_cache(maxsize=1)
def find_rocm_bitcode() -> tuple[Path | None, str]:
    for d in _bitcode_candidates():
        if (d / "ocml.bc").is_file() and (d / "oclc_daz_opt_on.bc").is_file():
            return d, ""
    return None, (
        "ROCm needs the AMD GPU device libraries (ocml.bc, oclc_*.bc): install them with "
        "`apt-get install rocm-device-libs` (Debian/Ubuntu) or set ROCM_PATH to a ROCm install "
        "(looked in: " + ", ".join(str(p) for p in _bitcode_candidates()) + ")"
    )


@functools.lru_cache(maxsize=1)
def find_zig_cc() -> tuple[tuple[str, ...] | None, str]:
    try:
        import ziglang  # noqa: F401
    except ImportError:
        return None, ("cross-compiling for aarch64 needs a linker for aarch64: "
                      "pip install 'hyperinfer[rocm]' (the ziglang wheel provides `zig cc`)")
    return (sys.executable, "-m", "ziglang", "cc"), ""


def find_nvcc() -> tuple[str | None, str]:
    for p in (shutil.which("nvcc"), "/usr/local/cuda/bin/nvcc"):
        if p and os.path.isfile(p):
            return p, ""
    return None, "CUDA targets need nvcc (the CUDA toolkit) on PATH or in /usr/local/cuda/bin"


def _tvm_has_codegen(kind: str) -> bool:
    import tvm

    return tvm.get_global_func(f"target.build.{kind}", True) is not None


def check(target: TargetInfo) -> str | None:
    """None if ``target`` can be built here, else one sentence saying what is missing."""
    if target.kind == "vulkan":
        return None if _tvm_has_codegen("webgpu") else VULKAN_MISSING
    if target.kind == "cuda":
        if not _tvm_has_codegen("cuda"):
            return "the installed TVM was built without CUDA code generation (USE_CUDA)"
        return find_nvcc()[1] or None
    if target.kind == "rocm":
        if not _tvm_has_codegen("rocm"):
            return "the installed TVM was built without ROCm code generation (USE_ROCM / LLVM AMDGPU)"
        return find_rocm_bitcode()[1] or find_lld()[1] or None
    if target.is_cpu and target.arch != machine_arch():
        return find_zig_cc()[1] or None
    return None


def prepare(target: TargetInfo) -> None:
    """Make TVM use the toolchain found here for ``target`` (raises if something is missing)."""
    problem = check(target)
    if problem:
        raise FailedPrecondition(f"cannot build {target.id}: {problem}")
    if target.kind == "cuda":
        nvcc, _ = find_nvcc()
        os.environ["PATH"] = os.path.dirname(nvcc) + os.pathsep + os.environ.get("PATH", "")
    if target.kind == "rocm":
        _install_rocm_callbacks()


@functools.lru_cache(maxsize=1)
def _install_rocm_callbacks() -> None:
    """Point TVM's documented ROCm callbacks at the bitcode and lld found here.

    TVM looks the bitcode up under $ROCM_PATH and lld on PATH by LLVM version
    name; overriding the two callbacks is TVM's own extension point and avoids
    faking a ROCm install.
    """
    import tempfile

    import tvm
    import tvm.support.rocm  # noqa: F401  (registers the defaults we override)
    import tvm_ffi

    bitcode_dir, _ = find_rocm_bitcode()
    lld, _ = find_lld()
    default_bitcode = tvm.get_global_func("tvm_callback_rocm_bitcode_path")

    def bitcode_path(rocdl_dir=None):
        return default_bitcode(str(bitcode_dir) + "/")

    def link(obj_bin):
        with tempfile.TemporaryDirectory() as tmp:
            obj, co = os.path.join(tmp, "kernel.o"), os.path.join(tmp, "kernel.co")
            with open(obj, "wb") as f:
                f.write(bytes(obj_bin))
            proc = subprocess.run([*lld.command, "--no-undefined", "-shared", obj, "-o", co],
                                  capture_output=True, text=True)
            if proc.returncode != 0:
                raise RuntimeError(f"ld.lld failed linking the ROCm kernel: {proc.stdout}{proc.stderr}")
            with open(co, "rb") as f:
                return bytearray(f.read())

    tvm_ffi.register_global_func("tvm_callback_rocm_bitcode_path", bitcode_path, override=True)
    tvm_ffi.register_global_func("tvm_callback_rocm_link", link, override=True)


def export_kwargs(target: TargetInfo) -> dict:
    """Extra arguments for ``Executable.export_library`` (a cross linker for foreign CPUs)."""
    if target.is_cpu and target.arch != machine_arch():
        zig, _ = find_zig_cc()
        triple = {"aarch64": "aarch64-linux-gnu"}[target.arch]

        def fcompile(output, objects, options=None, **_):
            objs = [objects] if isinstance(objects, str) else list(objects)
            cmd = [*zig, "-target", triple, "-shared", "-fPIC", "-o", output, *objs]
            proc = subprocess.run(cmd, capture_output=True, text=True)
            if proc.returncode != 0:
                raise RuntimeError(f"cross-linking for {target.id} failed: {proc.stderr.strip()}")

        fcompile.output_format = "so"
        return {"fcompile": fcompile}
    return {}


def status_table() -> list[tuple[str, str, str]]:
    """(target id, 'yes'/'no', reason) for every target: what builds on this machine."""
    from hyperinfer.compile.targets import TARGETS

    rows = []
    for t in TARGETS.values():
        problem = check(t)
        rows.append((t.id, "no" if problem else "yes", problem or t.description))
    return rows
