"""Target ids -> TVM target specs, in one table.

A target id names a hardware class (design §3). Each entry says how to build
for it (the TVM target as a JSON dict) and what a machine needs to run it. The
CPU levels are ordered: a machine that runs ``cpu-x86_64-avx512`` also runs
``cpu-x86_64-avx2`` and ``cpu-x86_64``.
"""

from __future__ import annotations

import platform
from dataclasses import dataclass, field
from typing import Any

from hyperinfer.errors import FailedPrecondition, InvalidArgument

_X86_HOST = {"kind": "llvm", "mtriple": "x86_64-unknown-linux-gnu", "mcpu": "x86-64"}


@dataclass(frozen=True)
class TargetInfo:
    id: str
    kind: str  # cpu, cuda, rocm, vulkan (the device a node runs it on)
    spec: dict[str, Any]  # tvm.target.Target(spec, host=host)
    host: dict[str, Any] | None = None
    arch: str = ""  # x86_64, aarch64, sm_90, gfx942
    # CPU features (as /proc/cpuinfo names them) a machine needs to run it
    requires: tuple[str, ...] = ()
    description: str = ""
    # vector width in float32 lanes, used by the CPU schedules
    vector_lanes: int = 4
    notes: tuple[str, ...] = field(default_factory=tuple)

    @property
    def is_cpu(self) -> bool:
        return self.kind == "cpu"

    @property
    def artifact_suffix(self) -> str:
        """A shared library for TVM's runtime; a zip of WGSL kernels and their plan for vulkan."""
        return ".zip" if self.kind == "vulkan" else ".so"

    def tvm_target(self):
        import tvm

        if self.host is not None:
            return tvm.target.Target(self.spec, host=self.host)
        return tvm.target.Target(self.spec)


def _cuda(sm: int, name: str) -> TargetInfo:
    return TargetInfo(
        f"cuda-sm{sm}", "cuda",
        {"kind": "cuda", "arch": f"sm_{sm}", "max_shared_memory_per_block": 49152,
         "max_threads_per_block": 1024, "thread_warp_size": 32},
        host=_X86_HOST, arch=f"sm_{sm}", description=f"NVIDIA {name} (compute capability {sm // 10}.{sm % 10})",
    )


def _rocm(gfx: str, name: str, warp: int = 64) -> TargetInfo:
    return TargetInfo(
        f"rocm-{gfx}", "rocm",
        {"kind": "rocm", "mcpu": gfx, "mtriple": "amdgcn-amd-amdhsa-hcc",
         "max_threads_per_block": 1024, "thread_warp_size": warp, "max_shared_memory_per_block": 65536},
        host=_X86_HOST, arch=gfx, description=f"AMD {name}",
    )


TARGETS: dict[str, TargetInfo] = {t.id: t for t in [
    TargetInfo("cpu-x86_64", "cpu", {"kind": "llvm", "mtriple": "x86_64-unknown-linux-gnu", "mcpu": "x86-64"},
               arch="x86_64", description="any x86-64 CPU (SSE2)", vector_lanes=4),
    TargetInfo("cpu-x86_64-avx2", "cpu",
               {"kind": "llvm", "mtriple": "x86_64-unknown-linux-gnu", "mcpu": "haswell"},
               arch="x86_64", requires=("avx2", "fma"), description="x86-64 with AVX2 and FMA (Haswell and newer)",
               vector_lanes=8),
    TargetInfo("cpu-x86_64-avx512", "cpu",
               {"kind": "llvm", "mtriple": "x86_64-unknown-linux-gnu", "mcpu": "skylake-avx512"},
               arch="x86_64", requires=("avx512f", "avx512bw", "avx512dq", "avx512vl"),
               description="x86-64 with AVX-512 (Skylake-SP and newer)", vector_lanes=16),
    TargetInfo("cpu-aarch64", "cpu",
               {"kind": "llvm", "mtriple": "aarch64-unknown-linux-gnu", "mcpu": "generic", "mattr": ["+neon"]},
               arch="aarch64", description="64-bit Arm with NEON (cross-compiled on x86-64)", vector_lanes=4),
    _cuda(75, "Turing (T4, RTX 20xx)"),
    _cuda(80, "Ampere (A100)"),
    _cuda(86, "Ampere (A10, RTX 30xx)"),
    _cuda(89, "Ada (L4, L40, RTX 40xx)"),
    _cuda(90, "Hopper (H100, H200)"),
    _rocm("gfx90a", "CDNA2 (MI200)"),
    _rocm("gfx942", "CDNA3 (MI300)"),
    _rocm("gfx1100", "RDNA3 (RX 7900)", warp=32),
    # WGSL kernels (TVM's webgpu codegen) run natively by wgpu-native: any Vulkan GPU, also Metal/D3D12,
    # and lavapipe on a CPU. 256 invocations and 16 KiB workgroup memory are WebGPU's guaranteed limits.
    TargetInfo("vulkan", "vulkan", {"kind": "webgpu", "max_num_threads": 256, "max_shared_memory_per_block": 16384},
               host=_X86_HOST, arch="wgsl",
               description="any Vulkan GPU through WebGPU (WGSL run by wgpu-native; lavapipe on a CPU)"),
]}


def get(target_id: str) -> TargetInfo:
    try:
        return TARGETS[target_id]
    except KeyError:
        raise InvalidArgument(
            f"unknown target {target_id!r}; known targets: native, {', '.join(TARGETS)}"
        ) from None


def cpu_flags() -> set[str]:
    """CPU feature flags of this machine (Linux /proc/cpuinfo)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith(("flags", "Features")):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def machine_arch() -> str:
    m = platform.machine().lower()
    return {"amd64": "x86_64", "arm64": "aarch64"}.get(m, m)


def runnable_cpu_targets(arch: str | None = None, flags: set[str] | None = None) -> list[str]:
    """CPU target ids this machine can run, best first."""
    arch = arch or machine_arch()
    flags = cpu_flags() if flags is None else flags
    found = [t for t in TARGETS.values() if t.is_cpu and t.arch == arch and set(t.requires) <= flags]
    # most demanding first: more required features = more specific = faster
    return [t.id for t in sorted(found, key=lambda t: -len(t.requires))]


def native_target() -> str:
    ids = runnable_cpu_targets()
    if not ids:
        raise FailedPrecondition(f"no CPU target for this machine's architecture ({machine_arch()})")
    return ids[0]


def resolve(target_ids: list[str]) -> list[TargetInfo]:
    """Expand ``native``, drop duplicates, keep order; unknown ids raise InvalidArgument."""
    out: list[TargetInfo] = []
    for tid in target_ids:
        info = get(native_target() if tid == "native" else tid)
        if info not in out:
            out.append(info)
    if not out:
        raise InvalidArgument("no target given: pass --target (e.g. --target native)")
    return out
