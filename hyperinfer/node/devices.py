"""What this machine can run: CPU architecture and features, GPUs through TVM's runtime,
mapped to target ids (design §3) in preference order.

A target id names a hardware class an artifact was built for. A node states the
ids it can run, best first, and picks the first one a package has an artifact for.
Detection never fails: a missing driver or runtime simply means no such device.
"""

from __future__ import annotations

import logging
import os
import platform
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

from hyperinfer.errors import FailedPrecondition, InvalidArgument

log = logging.getLogger("hyperinfer.node.devices")

DEVICE_CHOICES = ("auto", "cpu", "cuda", "rocm", "vulkan")

# x86_64 CPU targets, best first, with the /proc/cpuinfo flags each one needs.
# A table rather than if/else so a new target is one line.
X86_TARGETS: list[tuple[str, frozenset[str]]] = [
    ("cpu-x86_64-avx512", frozenset({"avx512f", "avx512bw", "avx512dq", "avx512vl", "avx2", "fma"})),
    ("cpu-x86_64-avx2", frozenset({"avx2", "fma"})),
    ("cpu-x86_64", frozenset()),
]

# CPU flags worth reporting (the full list is long and mostly irrelevant to codegen)
_REPORTED_FLAGS = (
    "sse4_2", "avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512dq", "avx512vl",
    "avx512_vnni", "avx512_bf16", "avx512_fp16", "amx_tile", "amx_bf16", "amx_int8",
    # aarch64 (from "Features")
    "asimd", "asimddp", "sve", "sve2", "i8mm", "bf16", "fphp", "asimdhp",
)

_ARCH_ALIASES = {"amd64": "x86_64", "x64": "x86_64", "arm64": "aarch64", "armv8": "aarch64"}


@dataclass(frozen=True)
class Device:
    kind: str  # cpu, cuda, rocm, vulkan
    name: str  # "Intel(R) Xeon(R) ...", "NVIDIA H100 ..."
    arch: str  # x86_64, aarch64, sm_90, gfx942
    count: int = 1
    features: tuple[str, ...] = ()


@dataclass(frozen=True)
class Hardware:
    devices: list[Device] = field(default_factory=list)
    targets: list[str] = field(default_factory=list)  # runnable target ids, best first


def normalize_arch(machine: str) -> str:
    m = machine.strip().lower()
    return _ARCH_ALIASES.get(m, m)


def cpu_target_ids(arch: str, flags: Iterable[str]) -> list[str]:
    """Runnable CPU target ids for an architecture and its feature flags, best first."""
    arch = normalize_arch(arch)
    have = {f.lower() for f in flags}
    if arch == "x86_64":
        return [tid for tid, need in X86_TARGETS if need <= have]
    if arch == "aarch64":
        return ["cpu-aarch64"]
    return []


def parse_cpuinfo(text: str) -> tuple[str, set[str]]:
    """(model name, flags) from /proc/cpuinfo text; x86 says "flags", arm says "Features"."""
    name = ""
    flags: set[str] = set()
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if not sep:
            continue
        key = key.strip().lower()
        if key in ("model name", "hardware", "processor") and not name and not value.strip().isdigit():
            name = value.strip()
        elif key in ("flags", "features") and not flags:
            flags = set(value.split())
    return name, flags


def detect_cpu(cpuinfo_path: str = "/proc/cpuinfo", machine: str | None = None) -> tuple[Device, list[str]]:
    arch = normalize_arch(machine or platform.machine())
    try:
        name, flags = parse_cpuinfo(Path(cpuinfo_path).read_text(errors="replace"))
    except OSError:  # not Linux, or /proc not mounted: fall back to the baseline target
        name, flags = "", set()
    name = name or platform.processor() or arch
    features = tuple(f for f in _REPORTED_FLAGS if f in flags)
    return Device("cpu", name, arch, os.cpu_count() or 1, features), cpu_target_ids(arch, flags)


# ---------------------------------------------------------------- GPUs via TVM

_MAX_GPUS = 16


def _tvm_devices(kind: str) -> list:
    """Existing TVM devices of a kind; [] if TVM or its runtime for that kind is missing."""
    try:
        import tvm

        found = []
        for i in range(_MAX_GPUS):
            dev = tvm.device(kind, i)
            if not dev.exist:
                break
            found.append(dev)
        return found
    except Exception as e:  # no driver, no runtime compiled in, ...: not an error for a node
        log.debug("no %s devices: %s", kind, e)
        return []


def _attr(fn: Callable[[], object]) -> object:
    try:
        return fn()
    except Exception:
        return None


def cuda_target_id(compute_version: str) -> str:
    """'9.0' -> 'cuda-sm90'."""
    major, _, minor = str(compute_version).partition(".")
    if not major.isdigit() or not (minor or "0").isdigit():
        raise InvalidArgument(f"unrecognised CUDA compute version {compute_version!r}")
    return f"cuda-sm{int(major)}{int(minor or 0)}"


def rocm_arch_name(value: object) -> str | None:
    """TVM reports the GCN arch as 'gfx942:sramecc+:xnack-', 'gfx942' or 942 depending on version."""
    if value is None:
        return None
    s = str(value).strip()
    if s.isdigit():
        return f"gfx{s}"
    s = s.split(":", 1)[0]
    return s if s.startswith("gfx") else None


def detect_cuda() -> tuple[list[Device], list[str]]:
    devs = _tvm_devices("cuda")
    if not devs:
        return [], []
    # group identical GPUs into one Device with a count
    groups: dict[tuple[str, str], int] = {}
    for d in devs:
        cv = _attr(lambda d=d: d.compute_version)
        name = str(_attr(lambda d=d: d.device_name) or "CUDA GPU")
        try:
            tid = cuda_target_id(str(cv))
        except InvalidArgument:
            log.warning("CUDA device %s reports compute version %r; skipping it", d.index, cv)
            continue
        groups[(name, tid)] = groups.get((name, tid), 0) + 1
    devices = [Device("cuda", name, "sm_" + tid.removeprefix("cuda-sm"), n) for (name, tid), n in groups.items()]
    # cubins are not forward compatible: only the exact compute capability, best (newest) first
    targets = sorted({tid for _, tid in groups}, key=lambda t: -int(t.removeprefix("cuda-sm")))
    return devices, targets


def detect_rocm() -> tuple[list[Device], list[str]]:
    devs = _tvm_devices("rocm")
    if not devs:
        return [], []
    groups: dict[tuple[str, str], int] = {}
    for d in devs:
        # device attribute 10 is kGcnArch in TVM's DeviceAttrKind
        arch = rocm_arch_name(_attr(lambda d=d: d._GetDeviceAttr(d.dlpack_device_type(), d.index, 10)))
        if arch is None:
            try:
                from tvm.support.rocm import get_rocm_arch

                arch = rocm_arch_name(get_rocm_arch())
            except Exception:
                arch = None
        if arch is None:
            log.warning("ROCm device %s: cannot tell its gfx architecture; skipping it", d.index)
            continue
        name = str(_attr(lambda d=d: d.device_name) or "AMD GPU")
        groups[(name, arch)] = groups.get((name, arch), 0) + 1
    devices = [Device("rocm", name, arch, n) for (name, arch), n in groups.items()]
    targets = sorted({f"rocm-{arch}" for _, arch in groups})
    return devices, targets


def vulkan_devices(adapters, include_software: bool) -> tuple[list[Device], list[str]]:
    """Devices for WebGPU adapters (runtime/webgpu.py); software ones (lavapipe) only when asked:
    ``--device auto`` prefers a GPU and otherwise the CPU's own TVM artifacts, which are faster."""
    chosen = [a for a in adapters if include_software or not a.is_software]
    devices = []
    for a in chosen:
        features = [f"vendor={a.vendor or '?'}", f"backend={a.backend}", f"type={a.adapter_type}"]
        features += [f"{k}={v}" for k, v in sorted(a.limits.items())]
        features += list(a.features)
        devices.append(Device("vulkan", a.name, "wgsl", 1, tuple(features)))
    return devices, (["vulkan"] if devices else [])


def detect_vulkan(include_software: bool = False) -> tuple[list[Device], list[str]]:
    """Vulkan (and Metal/D3D12) adapters wgpu-native finds; the ``vulkan`` target runs on any."""
    try:
        from hyperinfer.runtime import webgpu

        found = webgpu.adapters()
    except Exception as e:  # noqa: BLE001 - detection never fails a node
        log.debug("no WebGPU adapters: %s", e)
        return [], []
    if not found:
        log.debug("no WebGPU adapters: %s", webgpu.why_not())
    return vulkan_devices(found, include_software)


_DETECTORS: dict[str, Callable[[], tuple[list[Device], list[str]]]] = {
    "cuda": detect_cuda,
    "rocm": detect_rocm,
    "vulkan": detect_vulkan,
}


def detect(device: str = "auto", cpuinfo_path: str = "/proc/cpuinfo") -> Hardware:
    """Devices and runnable target ids, best first (GPUs before the CPU).

    ``device`` filters: ``auto`` is everything found, otherwise one kind only.
    """
    if device not in DEVICE_CHOICES:
        raise InvalidArgument(f"--device: unknown device {device!r}; choose one of {', '.join(DEVICE_CHOICES)}")
    devices: list[Device] = []
    targets: list[str] = []
    for kind in ("cuda", "rocm", "vulkan"):
        if device in ("auto", kind):
            d, t = detect_vulkan(include_software=device == "vulkan") if kind == "vulkan" else _DETECTORS[kind]()
            devices += d
            targets += t
    if device in ("auto", "cpu"):
        cpu, t = detect_cpu(cpuinfo_path)
        devices.append(cpu)
        targets += t
    if not targets and device == "vulkan":
        from hyperinfer.runtime import webgpu

        raise FailedPrecondition(f"--device vulkan: no WebGPU adapter found on this machine: {webgpu.why_not()}")
    if not targets:
        raise FailedPrecondition(
            f"--device {device}: no usable {'device' if device == 'auto' else device + ' device'} found on this machine"
        )
    return Hardware(devices, targets)
