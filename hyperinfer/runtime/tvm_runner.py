"""Load a TVM artifact (a Relax VM executable in a shared library) and run it.

Loading a shared library runs native code: callers pass paths that
:meth:`ModelPackage.artifact_path` has checked against the manifest's sha256.
"""

from __future__ import annotations

import os
import threading
from typing import Mapping, Sequence

import numpy as np

from hyperinfer.errors import FailedPrecondition, InvalidArgument
from hyperinfer.package import BatchInfo, ModelPackage, OutputSpec, TensorSpec
from hyperinfer.runtime.validation import check_inputs

_threads_lock = threading.Lock()
_configured_threads: int | None = None


def configure_threads(threads: int | None) -> int:
    """Fix TVM's CPU thread pool size for this process; returns the count in force.

    TVM sizes its pool at first use (half the logical CPUs by default) and may
    pin the calling thread to CPU 0, which starves anything else in the process
    (ONNX Runtime in the same benchmark). So: set the count explicitly and never
    bind threads to cores.
    """
    global _configured_threads
    with _threads_lock:
        n = int(threads) if threads else (os.cpu_count() or 1)
        if n < 1:
            raise InvalidArgument(f"threads must be >= 1, got {n}")
        os.environ["TVM_NUM_THREADS"] = str(n)
        os.environ["TVM_BIND_THREADS"] = "0"
        if _configured_threads != n:
            import tvm

            cfg = tvm.get_global_func("runtime.config_threadpool", True)
            if cfg is not None:
                # mode 0 (default) with an explicit count re-sizes this thread's pool; TVM's pools
                # are per calling thread and can shrink but never grow past the size they were
                # created with (TVM_NUM_THREADS at first use), so the first call should be the largest
                try:
                    cfg(0, n)
                except Exception:  # older signatures: the env vars above still apply at first use
                    pass
            num = tvm.get_global_func("runtime.NumThreads", True)
            if num is not None:
                try:
                    got = int(num())
                except Exception:  # noqa: BLE001
                    got = n
                if got < n:
                    import logging

                    logging.getLogger("hyperinfer.runtime").warning(
                        "TVM thread pool of this thread already has %d threads; cannot grow it to %d", got, n)
            _configured_threads = n
        return n


def _device(kind: str, index: int = 0):
    import tvm

    kind = {"cpu": "cpu", "llvm": "cpu", "cuda": "cuda", "rocm": "rocm", "vulkan": "vulkan", "opencl": "opencl"}.get(kind)
    if kind is None:
        raise InvalidArgument(f"unknown device kind {kind!r}")
    dev = tvm.device(kind, index)
    if not dev.exist:
        raise FailedPrecondition(f"device {kind}:{index} is not available on this machine")
    return dev


def device_kind_of(target_id: str) -> str:
    return target_id.split("-", 1)[0]


class TVMRunner:
    """Runs one artifact. Thread-safe: the VM is guarded by a lock (one call at a time)."""

    def __init__(self, artifact_path: str | os.PathLike, inputs: Sequence[TensorSpec],
                 outputs: Sequence[TensorSpec], device: str = "cpu", threads: int | None = None,
                 batch: BatchInfo | None = None):
        import tvm
        from tvm import relax

        if device == "cpu":
            configure_threads(threads)
        self.input_specs = list(inputs)
        self.output_specs = list(outputs)
        self.device = _device(device)
        try:
            lib = tvm.runtime.load_module(str(artifact_path))
            self.vm = relax.VirtualMachine(lib, self.device)
        except Exception as e:  # tvm.error.* for a corrupt or foreign artifact
            raise FailedPrecondition(f"cannot load artifact {artifact_path}: {str(e).splitlines()[0] if str(e) else type(e).__name__}") from None
        self._main = self.vm["main"]
        self._lock = threading.Lock()
        self.batch = batch
        self._entries: dict[int, object] = {}
        if batch is not None:
            try:
                self._entries = {size: self.vm[BatchInfo.entry_point(size)] for size in batch.sizes[1:]}
            except Exception:  # noqa: BLE001 - tvm raises AttributeError/TVMError for a missing function
                raise FailedPrecondition(f"artifact {artifact_path} lacks the batched entry points its manifest lists "
                                         f"(sizes {list(batch.sizes)})") from None

    @classmethod
    def for_package(cls, package: ModelPackage, target_id: str, threads: int | None = None) -> "TVMRunner":
        path = package.artifact_path(target_id, check=True)
        m = package.manifest
        return cls(path, m.inputs, m.outputs, device_kind_of(target_id), threads, m.batch)

    def run(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        import tvm

        feeds = check_inputs(self.input_specs, inputs)
        if self.device.dlpack_device_type() == 1:  # CPU: hand numpy memory over without a copy where aligned
            args = [tvm.runtime.from_dlpack(_aligned(feeds[s.name])) for s in self.input_specs]
        else:
            args = [tvm.runtime.tensor(feeds[s.name], self.device) for s in self.input_specs]
        with self._lock:
            result = self._main(*args)
        out = {}
        for spec, arr in zip(self.output_specs, self._outputs(result)):
            # the VM may reuse its output buffers on the next call: copy out
            arr = arr.copy() if self.device.dlpack_device_type() == 1 else arr
            if arr.dtype.name != spec.dtype:
                arr = arr.astype(spec.dtype)
            out[spec.name] = arr
        return out

    def run_batch(self, items: Sequence[Mapping[str, np.ndarray]], size: int | None = None) -> list[dict[str, np.ndarray]]:
        """Run several batch-1 requests as one call of a batched entry point; one output dict per item.

        The items are stacked along dim 0 and zero-padded to ``size`` (default: the
        smallest compiled size that holds them). Rows never mix (compile checked each
        item is bit-identical to its batch-1 run), so the padding does not matter.
        """
        import tvm

        if not items:
            return []
        if self.batch is None:
            raise FailedPrecondition("this artifact was compiled without --max-batch")
        size = self.batch.size_for(len(items)) if size is None else size
        if size == 1:
            return [self.run(items[0])]
        if size not in self._entries or len(items) > size:
            raise InvalidArgument(f"no batched entry point for {len(items)} items at size {size} "
                                  f"(compiled sizes: {list(self.batch.sizes)})")
        feeds = [check_inputs(self.input_specs, x) for x in items]
        cpu = self.device.dlpack_device_type() == 1
        args = []
        for spec in self.input_specs:
            stacked = _aligned_empty((size, *spec.shape[1:]), feeds[0][spec.name].dtype)
            for j, f in enumerate(feeds):
                stacked[j] = f[spec.name][0]
            stacked[len(feeds):] = 0
            args.append(tvm.runtime.from_dlpack(stacked) if cpu else tvm.runtime.tensor(stacked, self.device))
        with self._lock:
            result = self._entries[size](*args)
        outs = [{} for _ in items]
        for spec, arr in zip(self.output_specs, self._outputs(result)):
            for j, out in enumerate(outs):
                item = arr[j:j + 1].copy()  # a copy: the VM may reuse its buffers
                out[spec.name] = item if item.dtype.name == spec.dtype else item.astype(spec.dtype)
        return outs

    def _outputs(self, result) -> list[np.ndarray]:
        values = _flatten(result)
        if len(values) != len(self.output_specs):
            raise FailedPrecondition(
                f"artifact returned {len(values)} outputs, manifest lists {len(self.output_specs)}"
            )
        if self.device.dlpack_device_type() == 1:
            return [np.from_dlpack(v) for v in values]
        return [v.numpy() for v in values]


def _aligned(arr: np.ndarray, alignment: int = 64) -> np.ndarray:
    """``arr`` if its data is C-contiguous and aligned as TVM requires, else an aligned copy."""
    # DLPack cannot export read-only memory (arrays over received protobuf bytes are read-only)
    if arr.flags.c_contiguous and arr.flags.writeable and arr.ctypes.data % alignment == 0:
        return arr
    raw = np.empty(arr.nbytes + alignment, dtype=np.uint8)
    offset = (-raw.ctypes.data) % alignment
    out = raw[offset:offset + arr.nbytes].view(arr.dtype).reshape(arr.shape)
    out[...] = arr
    return out


def _aligned_empty(shape: tuple[int, ...], dtype, alignment: int = 64) -> np.ndarray:
    nbytes = int(np.prod(shape)) * np.dtype(dtype).itemsize
    raw = np.empty(nbytes + alignment, dtype=np.uint8)
    offset = (-raw.ctypes.data) % alignment
    return raw[offset:offset + nbytes].view(dtype).reshape(shape)


def _flatten(result) -> list:
    import tvm

    if isinstance(result, tvm.runtime.Tensor) if hasattr(tvm.runtime, "Tensor") else hasattr(result, "numpy"):
        return [result]
    if hasattr(result, "numpy"):
        return [result]
    items = []
    for r in result:
        items.extend(_flatten(r))
    return items
