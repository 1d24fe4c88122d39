"""Run a package's artifacts (TVM Relax VM) and its reference model (ONNX Runtime)."""

from hyperinfer.runtime.validation import check_inputs
from hyperinfer.runtime.tvm_runner import TVMRunner, configure_threads
from hyperinfer.runtime.ort_runner import ORTRunner

__all__ = ["TVMRunner", "ORTRunner", "check_inputs", "configure_threads"]
