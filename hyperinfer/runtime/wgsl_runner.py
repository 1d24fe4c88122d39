"""Run a ``vulkan`` artifact (WGSL kernels + plan, compile/wgsl_build.py) over wgpu.

At load: the weights are uploaded once, every buffer of the plan is created
once (TVM's memory planning decides which tensors share one), one compute
pipeline per kernel, one bind group and POD uniform per launch. Per request:
the inputs are written, one command buffer runs every launch in order in one
compute pass (WebGPU orders dispatches that touch the same buffers), the
outputs are copied into mappable buffers and read back.

The launch ABI is TVM's WebGPU one (web/src/webgpu.ts): storage buffers at
bindings 0..n-1 (read-only unless ``paramWriteAccess`` says written), then a
uniform of 32-bit POD words ending with ``packGridDimX``; a grid x of 65536 or
more is folded into z.
"""

from __future__ import annotations

import io
import json
import os
import threading
import zipfile
from typing import Mapping, Sequence

import numpy as np

from hyperinfer.errors import FailedPrecondition
from hyperinfer.package import BatchInfo, ModelPackage, TensorSpec
from hyperinfer.runtime import webgpu
from hyperinfer.runtime.validation import check_inputs

_MAX_ARTIFACT_MEMBER = 4 << 30
_GPU_LOCK = threading.Lock()  # one queue per process: requests of all models take turns


def _round4(n: int) -> int:
    return max(4, (int(n) + 3) // 4 * 4)


def pack_grid(x: int, y: int, z: int) -> tuple[tuple[int, int, int], int]:
    """TVM's WebGPU grid packing: (dispatch x, y, z), packGridDimX."""
    if z != 1:
        raise FailedPrecondition("WebGPU: blockIdx.z is reserved for packing large grids")
    pack = x
    while x >= (1 << 16):
        x = x // 2 if x % 2 == 0 else (x + 1) // 2
        z *= 2
    return (x, y, z), pack


def pod_words(pod: Sequence[Sequence], pack_dim_x: int) -> bytes:
    """The PODArgs uniform: one 32-bit word per POD argument, then packGridDimX."""
    words = np.zeros(len(pod) + 1, dtype=np.uint32)
    for i, (ty, value) in enumerate(pod):
        if ty == "int32":
            words[i] = np.array(value, dtype=np.int32).view(np.uint32)
        elif ty == "uint32":
            words[i] = np.uint32(value)
        elif ty == "float32":
            words[i] = np.array(value, dtype=np.float32).view(np.uint32)
        else:
            raise FailedPrecondition(f"WebGPU POD argument of type {ty} is not supported")
    words[-1] = pack_dim_x
    return words.tobytes()


def read_artifact(path: str | os.PathLike) -> tuple[dict, dict[str, str], dict[str, np.ndarray]]:
    """(plan, {kernel: WGSL}, {constant key: array}) from a vulkan artifact zip."""
    try:
        with zipfile.ZipFile(path) as z:
            for info in z.infolist():
                if info.file_size > _MAX_ARTIFACT_MEMBER:
                    raise FailedPrecondition(f"vulkan artifact {path}: member {info.filename} is too large")
            plan = json.loads(z.read("plan.json"))
            kernels = {name: z.read(v["wgsl"]).decode() for name, v in plan["kernels"].items()}
            with np.load(io.BytesIO(z.read("constants.npz")), allow_pickle=False) as npz:
                consts = {k: npz[k] for k in npz.files}
    except FailedPrecondition:
        raise
    except (zipfile.BadZipFile, KeyError, ValueError, OSError, UnicodeDecodeError) as e:
        raise FailedPrecondition(f"cannot load vulkan artifact {path}: {type(e).__name__}: {e}") from None
    if plan.get("format") != 1:
        raise FailedPrecondition(f"vulkan artifact {path}: plan format {plan.get('format')!r} is not supported")
    return plan, kernels, consts


class WGSLRunner:
    """Runs one vulkan artifact on the process's WebGPU device; thread-safe (one request at a time)."""

    batch: BatchInfo | None = None  # batched entry points are not built for vulkan: served unbatched

    def __init__(self, artifact_path: str | os.PathLike, inputs: Sequence[TensorSpec],
                 outputs: Sequence[TensorSpec], threads: int | None = None, batch: BatchInfo | None = None):
        import wgpu

        del threads, batch  # the device decides its own parallelism
        self.input_specs, self.output_specs = list(inputs), list(outputs)
        plan, kernels, consts = read_artifact(artifact_path)
        self.plan = plan
        self.adapter, self.device, self.queue = webgpu.device()
        dev = self.device
        if len(plan["inputs"]) != len(self.input_specs) or len(plan["outputs"]) != len(self.output_specs):
            raise FailedPrecondition(
                f"vulkan artifact {artifact_path} has {len(plan['inputs'])} inputs and {len(plan['outputs'])} "
                f"outputs; the manifest lists {len(self.input_specs)} and {len(self.output_specs)}")
        for spec, p in zip(self.input_specs, plan["inputs"]):
            t = p["tensor"]
            if tuple(t["shape"]) != tuple(spec.shape) or t["dtype"] != spec.dtype:
                raise FailedPrecondition(f"vulkan artifact input {p['name']} is {t['dtype']}{t['shape']}, "
                                         f"the manifest says {spec.name} {spec.dtype}{list(spec.shape)}")
        limit = int(dict(dev.limits).get("max-storage-buffers-per-shader-stage", 8))
        for name, k in plan["kernels"].items():
            if k["storage_buffers"] > limit:
                raise FailedPrecondition(
                    f"kernel {name} binds {k['storage_buffers']} storage buffers; adapter {self.adapter.name} "
                    f"allows {limit} per shader stage")
        usage = wgpu.BufferUsage.STORAGE | wgpu.BufferUsage.COPY_DST | wgpu.BufferUsage.COPY_SRC
        self.buffers = []
        const_of = {c["buffer"]: c for c in plan["constants"]}
        with _GPU_LOCK:
            for i, b in enumerate(plan["buffers"]):
                if i in const_of:  # weights: uploaded once
                    data = np.ascontiguousarray(consts[const_of[i]["key"]]).tobytes()
                    data += b"\0" * (_round4(len(data)) - len(data))
                    self.buffers.append(dev.create_buffer_with_data(data=data, usage=usage))
                else:
                    self.buffers.append(dev.create_buffer(size=_round4(b["size"]), usage=usage))
            self.pipelines = {}
            for name, k in plan["kernels"].items():
                self.pipelines[name] = self._pipeline(name, k, kernels[name])
            align = int(dict(dev.limits).get("min-storage-buffer-offset-alignment", 256))
            self.launches = []
            for la in plan["launches"]:
                pipeline, layout = self.pipelines[la["kernel"]]
                grid, pack = pack_grid(*la["grid"])
                words = pod_words(la["pod"], pack)
                uniform = dev.create_buffer_with_data(data=words, usage=wgpu.BufferUsage.UNIFORM)
                entries = []
                for i, t in enumerate(la["bindings"]):
                    if t["offset"] % align:
                        raise FailedPrecondition(f"kernel {la['kernel']}: buffer offset {t['offset']} is not a "
                                                 f"multiple of the adapter's {align}-byte alignment")
                    buf = self.buffers[t["buffer"]]
                    size = min(_round4(_nbytes(t)), buf.size - t["offset"])
                    entries.append({"binding": i, "resource": {"buffer": buf, "offset": t["offset"], "size": size}})
                entries.append({"binding": len(la["bindings"]),
                                "resource": {"buffer": uniform, "offset": 0, "size": len(words)}})
                group = dev.create_bind_group(layout=layout, entries=entries)
                self.launches.append((pipeline, group, grid, uniform))
            self.readback = [dev.create_buffer(size=_round4(_nbytes(t)),
                                               usage=wgpu.BufferUsage.MAP_READ | wgpu.BufferUsage.COPY_DST)
                             for t in plan["outputs"]]
        self._lock = threading.Lock()
        # drivers finish compiling pipelines lazily (lavapipe JITs on first dispatch): pay it at load,
        # not in the first request, which a gateway may time out
        self.run({s.name: np.zeros(s.shape, dtype=s.dtype) for s in self.input_specs})

    def _pipeline(self, name: str, k: dict, code: str):
        import wgpu

        dev = self.device
        writes: list[int] = []
        for tag in k["launch_param_tags"]:
            if tag.startswith("paramWriteAccess:"):
                writes = json.loads(tag[len("paramWriteAccess:"):])
        n = k["storage_buffers"]
        entries = [{"binding": i, "visibility": wgpu.ShaderStage.COMPUTE,
                    "buffer": {"type": wgpu.BufferBindingType.storage if (writes[i] if i < len(writes) else 1)
                               else wgpu.BufferBindingType.read_only_storage}} for i in range(n)]
        entries.append({"binding": n, "visibility": wgpu.ShaderStage.COMPUTE,
                        "buffer": {"type": wgpu.BufferBindingType.uniform}})
        try:
            layout = dev.create_bind_group_layout(entries=entries)
            module = dev.create_shader_module(code=code, label=name)
            pipeline = dev.create_compute_pipeline(
                layout=dev.create_pipeline_layout(bind_group_layouts=[layout]),
                compute={"module": module, "entry_point": name})
        except Exception as e:  # noqa: BLE001 - wgpu raises GPUValidationError and friends
            first = str(e).strip().splitlines()
            raise FailedPrecondition(f"adapter {self.adapter.name} cannot compile kernel {name}: "
                                     f"{first[0][:300] if first else type(e).__name__}") from None
        return pipeline, layout

    @classmethod
    def for_package(cls, package: ModelPackage, target_id: str = "vulkan", threads: int | None = None) -> "WGSLRunner":
        path = package.artifact_path(target_id, check=True)
        m = package.manifest
        return cls(path, m.inputs, m.outputs, threads, m.batch)

    def run(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        import wgpu

        feeds = check_inputs(self.input_specs, inputs)
        with self._lock, _GPU_LOCK:
            for spec, p in zip(self.input_specs, self.plan["inputs"]):
                data = np.ascontiguousarray(feeds[spec.name], dtype=p["tensor"]["dtype"]).tobytes()
                data += b"\0" * (_round4(len(data)) - len(data))
                self.queue.write_buffer(self.buffers[p["tensor"]["buffer"]], 0, data)
            enc = self.device.create_command_encoder()
            cp = enc.begin_compute_pass()
            for pipeline, group, grid, _ in self.launches:
                cp.set_pipeline(pipeline)
                cp.set_bind_group(0, group)
                cp.dispatch_workgroups(*grid)
            cp.end()
            for t, rb in zip(self.plan["outputs"], self.readback):
                enc.copy_buffer_to_buffer(self.buffers[t["buffer"]], t["offset"], rb, 0, rb.size)
            self.queue.submit([enc.finish()])
            raw = []
            for rb in self.readback:
                rb.map_sync(wgpu.MapMode.READ)
                try:
                    raw.append(bytes(rb.read_mapped()))
                finally:
                    rb.unmap()
        out = {}
        for spec, t, data in zip(self.output_specs, self.plan["outputs"], raw):
            arr = np.frombuffer(data[:_nbytes(t)], dtype=t["dtype"]).reshape(t["shape"]).copy()
            out[spec.name] = arr if arr.dtype.name == spec.dtype else arr.astype(spec.dtype)
        return out


def _nbytes(t: dict) -> int:
    return int(np.prod(t["shape"], dtype=np.int64)) * np.dtype(t["dtype"]).itemsize
