"""The Relax pass lists the build and the tuner share.

Both compile/build.py and compile/tune.py run the same fusion passes (the tuner
extracts its tasks from exactly the functions the build schedules); they live
here so that neither module imports the other.
"""

from __future__ import annotations


def fusion_passes() -> list:
    """Legalize to TIR, annotate patterns, fold constants, fuse operators and their TIR."""
    import tvm

    t = tvm.relax.transform
    return [t.LegalizeOps(), t.AnnotateTIROpPattern(), t.FoldConstant(), t.FuseOps(), t.FuseTIR()]


def cpu_pre_fusion_passes() -> list:
    """Relax rewrites the CPU build (and its tuner) run before legalization."""
    from hyperinfer.compile.schedules import rewrites

    return rewrites.cpu_pre_fusion_passes()


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
