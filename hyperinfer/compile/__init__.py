"""ONNX -> TVM model packages: clean-up, per-target builds, calibration, package writer."""

from hyperinfer.compile.pipeline import DEFAULT_REPOSITORY, compile_model, self_test

__all__ = ["compile_model", "self_test", "DEFAULT_REPOSITORY"]
