"""Cleaned ONNX model -> Relax IRModule, with errors that name the node.

TVM's ONNX frontend reports an unsupported operator as a set of op types and a
failing conversion as whatever the converter raised (after printing every input
expression to stdout). Here the importer is TVM's own, with the conversion of
each node recorded, so that a failure says which step, which node (op type and
name) and what the user can do.
"""

from __future__ import annotations

import contextlib
import io
import logging

from hyperinfer.errors import FailedPrecondition

log = logging.getLogger("hyperinfer.compile")

STEP = "import into TVM Relax"

# what a user can do about an operator TVM's importer lacks, where there is a known way round it
_ADVICE = {
    "LSTM": "export the recurrent layer unrolled over a fixed sequence length (MatMul/Sigmoid/Tanh), "
            "or keep this model on ONNX Runtime",
    "GRU": "export the recurrent layer unrolled over a fixed sequence length, or keep this model on ONNX Runtime",
    "RNN": "export the recurrent layer unrolled over a fixed sequence length, or keep this model on ONNX Runtime",
    "Loop": "export with a fixed iteration count so the loop is unrolled, or keep this model on ONNX Runtime",
    "Scan": "export with a fixed iteration count so the scan is unrolled, or keep this model on ONNX Runtime",
}


def _node_label(node) -> str:
    return f"{node.op_type} node {node.name!r}" if node.name else f"{node.op_type} node (unnamed, output {node.output[0]!r})"


def unsupported_nodes(model) -> list:
    """Nodes whose op type TVM's ONNX importer has no converter for (default domain only)."""
    from tvm.relax.frontend.onnx.onnx_frontend import _get_convert_map

    known = set(_get_convert_map()) | {"If", "Constant"}
    return [n for n in model.graph.node if n.op_type not in known]


def _first_line(e: BaseException) -> str:
    lines = [ln.strip() for ln in str(e).strip().splitlines() if ln.strip()]
    # TVM errors end with the message after a C++ backtrace
    return (lines[-1] if lines else type(e).__name__)[:300]


def import_onnx(model):
    """ONNX (cleaned, static shapes) -> Relax IRModule with weights bound as constants."""
    from tvm import relax
    from tvm.relax.frontend.onnx import onnx_frontend as fe

    bad = unsupported_nodes(model)
    if bad:
        types = sorted({n.op_type for n in bad})
        first = bad[0]
        advice = "; ".join(f"{t}: {_ADVICE[t]}" for t in types if t in _ADVICE) or \
            "replace these operators in the export (or keep this model on ONNX Runtime)"
        more = f" and {len(bad) - 1} more node(s)" if len(bad) > 1 else ""
        raise FailedPrecondition(
            f"{STEP}: TVM {_tvm_version()} cannot import {_node_label(first)}{more} "
            f"(op types without a converter: {', '.join(types)}); to do: {advice}")

    nodes_by_out = {}
    for n in model.graph.node:
        for o in n.output:
            nodes_by_out[o] = n

    class Importer(fe.ONNXGraphImporter):
        current = None

        def _convert_operator(self, op_name, inputs, attrs, opset):
            Importer.current = attrs.get("tvm_custom", {}).get("name"), op_name
            return super()._convert_operator(op_name, inputs, attrs, opset)

    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 1)
    importer = Importer(None, "float32", keep_params_in_input=False, sanitize=True)
    out = io.StringIO()
    try:
        # the frontend prints every input expression of a failing node to stdout
        with contextlib.redirect_stdout(out):
            mod = importer.from_onnx(model.graph, opset)
    except Exception as e:  # the converters raise assorted errors
        name, op = Importer.current or (None, None)
        node = next((n for n in model.graph.node if n.name == name), None) if name else None
        where = _node_label(node) if node is not None else (f"{op} node {name!r}" if op else "the graph")
        raise FailedPrecondition(
            f"{STEP}: converting {where} failed ({type(e).__name__}: {_first_line(e)}); to do: check the "
            f"node's attributes and input shapes (the error above), simplify or re-export that part of the "
            f"model, or keep this model on ONNX Runtime") from None
    try:
        mod = relax.transform.DecomposeOpsForInference()(mod)
    except Exception as e:  # noqa: BLE001
        raise FailedPrecondition(f"{STEP}: decomposing inference ops failed ({_first_line(e)})") from None
    return safe_gather_pass()(mod)


def safe_gather_pass():
    """Relax pass: ``take`` with run-time indices (token ids into an embedding) in ``wrap`` mode.

    The importer emits ``mode="fast"``, which reads out of bounds for an index
    outside ``[0, n)``: a request with token id -1 (valid ONNX: the last row) or
    one past the vocabulary would read memory outside the weight. ``wrap`` gives
    ONNX's meaning to negative indices and keeps every read in bounds (one modulo
    per index). Constant indices (shape arithmetic) are folded and left alone.
    """
    import tvm
    from tvm import relax

    from hyperinfer.compile.passes import call_rewrite_pass

    def rewrite(_rw, call):
        if str(call.attrs.mode) != "fast" or isinstance(call.args[1], tvm.ir.expr.Constant):
            return None
        axis = call.attrs.axis
        return relax.op.take(call.args[0], call.args[1], None if axis is None else int(axis), mode="wrap")

    # strict: an index left in "fast" mode would read outside the weight; never skip it silently
    return call_rewrite_pass("relax.take", "HyperinferSafeGather", rewrite, strict=True)


def _tvm_version() -> str:
    import tvm

    return str(tvm.__version__)
