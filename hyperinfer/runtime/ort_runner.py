"""ONNX Runtime on a package's cleaned model: the reference every artifact is held to."""

from __future__ import annotations

import os
from typing import Mapping, Sequence

import numpy as np

from hyperinfer.errors import InvalidArgument
from hyperinfer.package import ModelPackage, TensorSpec
from hyperinfer.runtime.validation import check_inputs


def session_options(threads: int | None):
    import onnxruntime as ort

    so = ort.SessionOptions()
    if threads:
        so.intra_op_num_threads = int(threads)
        so.inter_op_num_threads = 1
    so.log_severity_level = 3
    return so


class ORTRunner:
    def __init__(self, onnx_path: str | os.PathLike, inputs: Sequence[TensorSpec] | None = None,
                 outputs: Sequence[str] | None = None, threads: int | None = None):
        import onnxruntime as ort

        try:
            self.session = ort.InferenceSession(
                str(onnx_path), session_options(threads), providers=["CPUExecutionProvider"]
            )
        except Exception as e:  # onnxruntime raises its own untyped errors for bad models
            raise InvalidArgument(f"ONNX Runtime cannot load {onnx_path}: {e}") from None
        self.input_specs = list(inputs) if inputs is not None else None
        self.output_names = list(outputs) if outputs is not None else [o.name for o in self.session.get_outputs()]

    @classmethod
    def for_package(cls, package: ModelPackage, threads: int | None = None) -> "ORTRunner":
        m = package.manifest
        return cls(package.onnx_path, m.inputs, [o.name for o in m.outputs], threads)

    def run(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        feeds = check_inputs(self.input_specs, inputs) if self.input_specs is not None else dict(inputs)
        values = self.session.run(self.output_names, feeds)
        return {n: np.asarray(v) for n, v in zip(self.output_names, values)}
