"""The Relax pass lists the build and the tuner share.

Both compile/build.py and compile/tune.py run the same fusion passes (the tuner
extracts its tasks from exactly the functions the build schedules); they live
here so that neither module imports the other.
"""

from __future__ import annotations

import logging

log = logging.getLogger("hyperinfer.compile")


def call_rewrite_pass(op_name: str, pass_name: str, rewrite, *, strict: bool = False):
    """A Relax module pass that replaces each call of ``op_name`` by ``rewrite(mutator, call)``
    (None: keep the call). An error in ``rewrite`` leaves a speed rewrite's call to TVM's own
    lowering (logged at debug level); with ``strict`` (a rewrite that safety depends on) it raises."""
    import tvm
    from tvm import relax

    op = tvm.ir.Op.get(op_name)

    @relax.expr_functor.mutator
    class Rewriter(relax.PyExprMutator):
        def visit_call_(self, call):  # noqa: N802 - TVM visitor naming
            call = super().visit_call_(call)
            if not isinstance(call, relax.Call) or not call.op.same_as(op):
                return call
            try:
                new = rewrite(self, call)
            except Exception as e:  # noqa: BLE001 - leave anything unusual as it is
                if strict:
                    raise
                log.debug("%s left as it is (%s): %s", op_name, pass_name, e)
                return call
            return call if new is None else new

    @tvm.transform.module_pass(opt_level=0, name=pass_name)
    def apply(mod, _ctx):
        rw = Rewriter(mod)
        for gv, func in list(mod.functions_items()):
            if isinstance(func, relax.Function):
                rw.builder_.update_func(gv, rw.visit_expr(func))
        return rw.builder_.get()

    return apply


def fusion_passes() -> list:
    """Legalize to TIR, annotate patterns, fold constants, fuse operators and their TIR."""
    import tvm

    t = tvm.relax.transform
    from hyperinfer.compile.schedules import blocked

    legalize = t.LegalizeOps({"relax.nn.conv2d": blocked.legalize_conv2d})
    return [legalize, t.AnnotateTIROpPattern(), t.FoldConstant(), t.FuseOps(), t.FuseTIR()]


def cpu_layout(target=None) -> str:
    """The activation layout of a CPU build for ``target`` (``schedules/blocked.layout_for``)."""
    from hyperinfer.compile.schedules import blocked

    return blocked.layout_for(target)


def cpu_pre_fusion_passes(target=None, layout: str | None = None) -> list:
    """Relax rewrites the CPU build (and its tuner) run before legalization for ``target``, with
    its activation layout (``layout`` overrides it)."""
    from hyperinfer.compile.schedules import rewrites

    layout = layout or cpu_layout(target)
    return rewrites.cpu_pre_fusion_passes(blocked=layout != "NCHW", whole_graph=layout == "auto")


def cpu_post_fusion_passes() -> list:
    """Run after fusion on CPU (build and tuner alike: tuned records are keyed by the functions
    these produce): mark the parameters that receive constant weights as layout-free, so a
    schedule may repack them at compile time."""
    import tvm

    return [tvm.relax.transform.AttachAttrLayoutFreeBuffers()]


def cpu_post_schedule_passes() -> list:
    """Split each scheduled weight repack into its own function and run it on the constant
    weight now (compile-time packing)."""
    import tvm

    t = tvm.relax.transform
    # the split-off repack functions are dead once folded: drop them before codegen
    return [t.SplitLayoutRewritePreproc(), t.FoldConstant(), t.DeadCodeElimination()]
