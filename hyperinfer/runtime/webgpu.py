"""WebGPU adapters and the process's one wgpu device (wgpu-native through PyPI ``wgpu``).

wgpu-native drives Vulkan (Linux, Windows, Android), Metal (macOS) and D3D12;
on a machine without a GPU, Mesa's lavapipe (Debian ``mesa-vulkan-drivers``)
is a Vulkan device that runs on the CPU. OpenGL is left out: it is not a
compute backend worth verifying and it prints noise where no display exists.

Nothing here raises on a machine without wgpu or a driver: :func:`adapters`
returns [] and :func:`why_not` says why.
"""

from __future__ import annotations

import functools
import logging
import os
import tempfile
import threading
from dataclasses import dataclass, field

from hyperinfer.errors import FailedPrecondition

log = logging.getLogger("hyperinfer.runtime.webgpu")

BACKENDS = ("Vulkan", "Metal", "DX12")
# limits a WGSL plan may need beyond WebGPU's defaults: asked for up to what the adapter offers
_WANTED_LIMITS = ("max-storage-buffers-per-shader-stage", "max-storage-buffer-binding-size", "max-buffer-size",
                  "max-compute-workgroup-storage-size", "max-compute-invocations-per-workgroup",
                  "max-compute-workgroup-size-x", "max-compute-workgroup-size-y", "max-compute-workgroup-size-z")
_REPORTED_LIMITS = ("max-storage-buffers-per-shader-stage", "max-storage-buffer-binding-size",
                    "max-compute-workgroup-storage-size", "max-compute-invocations-per-workgroup",
                    "max-compute-workgroups-per-dimension")


@dataclass(frozen=True)
class Adapter:
    name: str  # "NVIDIA GeForce RTX 4090", "llvmpipe (LLVM 15.0.6, 256 bits)"
    vendor: str
    backend: str  # Vulkan, Metal, DX12
    adapter_type: str  # DiscreteGPU, IntegratedGPU, CPU, ...
    driver: str = ""
    limits: dict = field(default_factory=dict)
    features: tuple[str, ...] = ()

    @property
    def is_software(self) -> bool:
        return self.adapter_type.lower() == "cpu"


_lock = threading.Lock()
_state: dict = {}


def _wgpu():
    """The wgpu module with its instance limited to compute backends (once per process)."""
    with _lock:
        if "wgpu" not in _state:
            # Mesa's Vulkan drivers probe Wayland and print an error line per probe when
            # XDG_RUNTIME_DIR is unset (servers, CI): give them a private one
            if not os.environ.get("XDG_RUNTIME_DIR"):
                xdg = os.path.join(tempfile.gettempdir(), f"hyperinfer-xdg-{os.getuid()}")
                os.makedirs(xdg, mode=0o700, exist_ok=True)
                os.environ["XDG_RUNTIME_DIR"] = xdg
            import wgpu

            try:
                from wgpu.backends.wgpu_native.extras import set_instance_extras

                set_instance_extras(backends=list(BACKENDS))
            except Exception as e:  # older wgpu, or the instance exists already
                log.debug("cannot limit wgpu backends: %s", e)
            _state["wgpu"] = wgpu
        return _state["wgpu"]


def _describe(a) -> Adapter:
    info = a.info
    limits = {k: int(v) for k, v in dict(a.limits).items() if k in _REPORTED_LIMITS}
    feats = tuple(sorted(f for f in a.features if f in ("shader-f16", "subgroup", "timestamp-query")))
    return Adapter(str(info.get("device") or "WebGPU adapter"), str(info.get("vendor") or ""),
                   str(info.get("backend_type") or ""), str(info.get("adapter_type") or ""),
                   str(info.get("description") or ""), limits, feats)


@functools.lru_cache(maxsize=1)
def _probe() -> tuple[tuple[Adapter, ...], str]:
    try:
        wgpu = _wgpu()
    except Exception as e:  # not installed, or the native library does not load here
        return (), f"the wgpu package is not usable here ({type(e).__name__}: {e}); pip install 'wgpu>=0.31'"
    try:
        found = [a for a in wgpu.gpu.enumerate_adapters_sync()
                 if str(a.info.get("backend_type", "")) in BACKENDS]
    except Exception as e:  # noqa: BLE001 - a broken driver is "no adapter", not a crash
        return (), f"wgpu could not list adapters: {e}"
    if not found:
        return (), ("no Vulkan/Metal/D3D12 adapter found: install a GPU driver, or Mesa's lavapipe "
                    "(Debian: apt-get install mesa-vulkan-drivers) to run on the CPU")
    return tuple(_describe(a) for a in found), ""


def adapters() -> list[Adapter]:
    """Every compute adapter wgpu sees, GPUs before software ones."""
    found, _ = _probe()
    return sorted(found, key=lambda a: a.is_software)


def why_not() -> str:
    """'' if some adapter exists, else one sentence saying what is missing."""
    return _probe()[1]


def device():
    """(adapter, device, queue) shared by every runner of this process; created on first use.

    The device asks for the adapter's own limits where a plan may need more than
    WebGPU's defaults (storage buffers per stage, buffer sizes).
    """
    with _lock:
        got = _state.get("device")
    if got is not None:
        return got
    wgpu = _wgpu()
    with _lock:
        if "device" in _state:
            return _state["device"]
        try:
            adapter = wgpu.gpu.request_adapter_sync(power_preference="high-performance")
        except Exception as e:  # noqa: BLE001
            adapter = None
            log.debug("request_adapter failed: %s", e)
        if adapter is None or str(adapter.info.get("backend_type", "")) not in BACKENDS:
            raise FailedPrecondition("no WebGPU adapter to run the vulkan artifact on: " +
                                     (why_not() or "wgpu returned none"))
        limits = dict(adapter.limits)
        wanted = {k: limits[k] for k in _WANTED_LIMITS if k in limits}
        dev = adapter.request_device_sync(required_limits=wanted)
        _state["device"] = (_describe(adapter), dev, dev.queue)
        return _state["device"]
