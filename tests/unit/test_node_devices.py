"""CPU flags and GPU attributes -> runnable target ids, best first."""

from __future__ import annotations

import pytest

from hyperinfer.errors import InvalidArgument
from hyperinfer.node import devices
from hyperinfer.node.devices import cpu_target_ids, cuda_target_id, parse_cpuinfo, rocm_arch_name

AVX512 = {"sse4_2", "avx", "avx2", "fma", "avx512f", "avx512bw", "avx512dq", "avx512vl"}


@pytest.mark.parametrize("flags, expected", [
    (AVX512, ["cpu-x86_64-avx512", "cpu-x86_64-avx2", "cpu-x86_64"]),
    ({"avx", "avx2", "fma"}, ["cpu-x86_64-avx2", "cpu-x86_64"]),
    ({"avx", "avx2"}, ["cpu-x86_64"]),  # avx2 without fma: not the avx2 target
    (AVX512 - {"avx512vl"}, ["cpu-x86_64-avx2", "cpu-x86_64"]),  # incomplete avx512 set
    (set(), ["cpu-x86_64"]),
])
def test_x86_targets(flags, expected):
    assert cpu_target_ids("x86_64", flags) == expected


def test_arch_aliases_and_arm():
    assert cpu_target_ids("AMD64", {"avx2", "fma"})[0] == "cpu-x86_64-avx2"
    assert cpu_target_ids("aarch64", {"asimd", "sve"}) == ["cpu-aarch64"]
    assert cpu_target_ids("arm64", set()) == ["cpu-aarch64"]
    assert cpu_target_ids("riscv64", set()) == []


X86_CPUINFO = """processor\t: 0
vendor_id\t: GenuineIntel
model name\t: Intel(R) Xeon(R) Platinum 8480+
flags\t\t: fpu sse4_2 avx avx2 fma avx512f avx512bw avx512dq avx512vl
processor\t: 1
model name\t: Intel(R) Xeon(R) Platinum 8480+
flags\t\t: fpu sse4_2 avx avx2 fma avx512f avx512bw avx512dq avx512vl
"""

ARM_CPUINFO = """processor\t: 0
BogoMIPS\t: 243.75
Features\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp sve
CPU implementer\t: 0x41
"""


def test_parse_cpuinfo_x86_and_arm():
    name, flags = parse_cpuinfo(X86_CPUINFO)
    assert name == "Intel(R) Xeon(R) Platinum 8480+"
    assert {"avx512f", "avx2", "fma"} <= flags
    _, arm = parse_cpuinfo(ARM_CPUINFO)
    assert {"asimd", "sve"} <= arm


def test_detect_cpu_from_files(tmp_path):
    p = tmp_path / "cpuinfo"
    p.write_text(X86_CPUINFO)
    dev, targets = devices.detect_cpu(str(p), machine="x86_64")
    assert dev.kind == "cpu" and dev.arch == "x86_64"
    assert "avx512f" in dev.features and "fpu" not in dev.features
    assert targets[0] == "cpu-x86_64-avx512"
    p.write_text(ARM_CPUINFO)
    dev, targets = devices.detect_cpu(str(p), machine="aarch64")
    assert targets == ["cpu-aarch64"] and "sve" in dev.features


def test_missing_cpuinfo_falls_back_to_baseline(tmp_path):
    _, targets = devices.detect_cpu(str(tmp_path / "absent"), machine="x86_64")
    assert targets == ["cpu-x86_64"]


def test_gpu_attribute_mapping():
    assert cuda_target_id("9.0") == "cuda-sm90"
    assert cuda_target_id("8.6") == "cuda-sm86"
    with pytest.raises(InvalidArgument):
        cuda_target_id("None")
    assert rocm_arch_name("gfx942:sramecc+:xnack-") == "gfx942"
    assert rocm_arch_name("gfx90a") == "gfx90a"
    assert rocm_arch_name(942) == "gfx942"
    assert rocm_arch_name(None) is None and rocm_arch_name("") is None


def test_detect_on_this_machine():
    """Real detection: never crashes without GPUs, CPU targets last, filters work."""
    hw = devices.detect("auto")
    assert hw.targets and hw.targets[-1].startswith("cpu-")
    assert any(d.kind == "cpu" for d in hw.devices)
    cpu = devices.detect("cpu")
    assert all(t.startswith("cpu-") for t in cpu.targets)
    try:
        import tvm

        has_cuda = tvm.cuda(0).exist
    except Exception:
        has_cuda = False
    if not has_cuda:
        with pytest.raises(Exception, match="no usable cuda device"):
            devices.detect("cuda")


def test_unknown_device_choice_names_the_flag():
    with pytest.raises(InvalidArgument, match="--device"):
        devices.detect("tpu")


def test_vulkan_devices_from_webgpu_adapters():
    from hyperinfer.node.devices import vulkan_devices
    from hyperinfer.runtime.webgpu import Adapter

    gpu = Adapter("AMD Radeon RX 7900 XTX", "AMD", "Vulkan", "DiscreteGPU", "radv",
                  {"max-storage-buffers-per-shader-stage": 16}, ("shader-f16",))
    lavapipe = Adapter("llvmpipe (LLVM 15.0.6, 256 bits)", "llvmpipe", "Vulkan", "CPU")
    devices, targets = vulkan_devices([gpu, lavapipe], include_software=False)
    assert targets == ["vulkan"] and [d.name for d in devices] == ["AMD Radeon RX 7900 XTX"]
    assert {"vendor=AMD", "backend=Vulkan", "type=DiscreteGPU", "max-storage-buffers-per-shader-stage=16",
            "shader-f16"} <= set(devices[0].features)
    # --device auto: a CPU-emulated adapter is not worth preferring over the CPU's own artifacts
    assert vulkan_devices([lavapipe], include_software=False) == ([], [])
    # --device vulkan: it is used
    devices, targets = vulkan_devices([lavapipe], include_software=True)
    assert targets == ["vulkan"] and devices[0].kind == "vulkan" and "type=CPU" in devices[0].features


def test_device_vulkan_without_adapter_is_a_clear_error(monkeypatch):
    from hyperinfer.errors import FailedPrecondition
    from hyperinfer.node import devices
    from hyperinfer.runtime import webgpu

    monkeypatch.setattr(webgpu, "adapters", lambda: [])
    monkeypatch.setattr(webgpu, "why_not", lambda: "no Vulkan/Metal/D3D12 adapter found")
    with pytest.raises(FailedPrecondition, match="--device vulkan: no WebGPU adapter.*no Vulkan"):
        devices.detect("vulkan")
