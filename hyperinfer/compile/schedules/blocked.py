"""The channel-blocked activation layout (``NCHW16c``) for CPU builds.

In plain NCHW a conv's output pixels are the vector and its output channels the
register tile, so every output tile is scattered over as many planes as it has
channels, and a plane whose row is not a whole number of vectors (ResNet's 28x28,
14x14, 7x7) needs a GEMM over the flattened plane or a transpose on the way out.
Blocked by 16 channels, the channel block is the vector: every conv of a network
reads and writes whole, contiguous vectors, and the layout carries from one conv
to the next through the elementwise ops between them (the layout oneDNN and ONNX
Runtime's NCHWc transformer use on CPUs with AVX-512).

Relax's ``ConvertLayout`` rewrites the graph (``layout_transform`` only where the
layout changes: the stem, whose 3 input channels do not block, and the head);
its legalization has no NCHWc conv, so ``legalize_conv2d`` supplies the compute,
with the input-channel reduction split into the block and the rest
(``rc, ry, rx, rc'``), which the ``_tile_nchwc`` rule schedules.
"""

from __future__ import annotations

import logging
import os

log = logging.getLogger("hyperinfer.compile")

BLOCK = 16  # channels per block: one AVX-512 vector of float32 (two of AVX2's)
LAYOUTS = ("NCHW", f"NCHW{BLOCK}c", "auto")


def layout_for(target) -> str:
    """The activation layout of a CPU build: ``auto`` where a block is one vector (AVX-512):
    blocked when every conv of the graph blocks, else NCHW; ``NCHW`` elsewhere.
    ``HYPERINFER_LAYOUT`` overrides it: ``NCHW``, ``NCHW16c`` (every conv that blocks does, the
    others stay NCHW with transforms between) or ``auto``."""
    forced = os.environ.get("HYPERINFER_LAYOUT", "").strip()
    if forced:
        if forced not in LAYOUTS:
            from hyperinfer.errors import InvalidArgument

            raise InvalidArgument(f"HYPERINFER_LAYOUT={forced!r}: expected one of {', '.join(LAYOUTS)}")
        return forced
    lanes = getattr(target, "vector_lanes", 0) if target is not None else 0
    return "auto" if lanes >= BLOCK else "NCHW"


def conv2d_nchwc(data, kernel, strides, padding, dilation):
    """TE compute of a conv over ``[n, C/x, h, w, x]`` data and ``[O/y, C/x, kh, kw, x, y]``
    weights, written ``[n, O/y, oh, ow, y]``."""
    from tvm import te, topi

    n, ic_o, ih, iw, ic_b = (int(v) for v in data.shape)
    oc_o, _, kh, kw, _, oc_b = (int(v) for v in kernel.shape)
    sh, sw = strides
    dh, dw = dilation
    pt, pl, pb, pr = padding
    oh = (ih + pt + pb - (kh - 1) * dh - 1) // sh + 1
    ow = (iw + pl + pr - (kw - 1) * dw - 1) // sw + 1
    if pt or pl or pb or pr:
        data = topi.nn.pad(data, (0, 0, pt, pl, 0), (0, 0, pb, pr, 0), name="pad_temp")
    rc = te.reduce_axis((0, ic_o), "rc")
    ry = te.reduce_axis((0, kh), "ry")
    rx = te.reduce_axis((0, kw), "rx")
    ri = te.reduce_axis((0, ic_b), "ri")
    return te.compute(
        (n, oc_o, oh, ow, oc_b),
        lambda b, c, y, x, k: te.sum(
            data[b, rc, y * sh + ry * dh, x * sw + rx * dw, ri] * kernel[c, rc, ry, rx, ri, k], axis=[rc, ry, rx, ri]),
        name="conv2d_nchwc",
    )


def legalize_conv2d(bb, call):
    """``LegalizeOps`` entry for ``relax.nn.conv2d``: the blocked layout's convs get
    ``conv2d_nchwc``; every other conv TVM's own legalization."""
    import re

    import tvm

    a = call.attrs
    data = re.fullmatch(r"NCHW(\d+)c", str(a.data_layout))
    kernel = re.fullmatch(r"OIHW(\d+)i(\d+)o", str(a.kernel_layout))
    out = re.fullmatch(r"NCHW(\d+)c", str(a.out_layout) or str(a.data_layout))
    if not (data and kernel and out and int(a.groups) == 1 and data.group(1) == kernel.group(1)
            and kernel.group(2) == out.group(1)):
        return tvm.ir.Op.get("relax.nn.conv2d").get_attr("FLegalize")(bb, call)
    return bb.call_te(conv2d_nchwc, call.args[0], call.args[1], [int(v) for v in a.strides],
                      [int(v) for v in a.padding], [int(v) for v in a.dilation], primfunc_name_hint="conv2d")


def _plain_conv(call) -> tuple[list[int], list[int]] | None:
    """(input shape, weight shape) of a float32, NCHW/OIHW, ungrouped 2-d conv with static
    shapes; None for any other."""
    a = call.attrs
    if str(a.data_layout) != "NCHW" or str(a.kernel_layout) != "OIHW" or int(a.groups) != 1:
        return None
    try:
        x, w = (_shape(arg) for arg in call.args[:2])
    except (TypeError, ValueError, AttributeError):
        return None  # a symbolic dim
    if {str(_info(arg).dtype) for arg in call.args[:2]} != {"float32"} or len(x) != 4 or len(w) != 4:
        return None
    return x, w


def blockable(call) -> bool:
    """Does this ``relax.nn.conv2d`` call go to the blocked layout: a plain conv whose input and
    output channels are whole blocks."""
    shapes = _plain_conv(call)
    return shapes is not None and shapes[0][1] % BLOCK == 0 and shapes[1][0] % BLOCK == 0


def stem_blockable(call) -> bool:
    """A network's first conv (3 or 4 input channels of an image, output channels whole blocks):
    its input is one block of all its channels and its output the blocked layout."""
    shapes = _plain_conv(call)
    return shapes is not None and shapes[0][1] <= 4 and shapes[1][0] % BLOCK == 0


def _info(expr):
    return expr.ty if hasattr(expr, "ty") else expr.struct_info  # TVM 0.27: Expr.ty


def _shape(expr) -> list[int]:
    return [int(d) for d in _info(expr).shape]  # a symbolic dim raises TypeError


def convert_layout_pass():
    """Relax pass: every conv that ``blockable`` accepts to ``NCHW16c`` (grouped, depthwise,
    few-channel and dynamic-shape convs keep NCHW; Relax inserts the transforms between)."""
    from tvm import relax

    layouts = {"relax.nn.conv2d": [f"NCHW{BLOCK}c", f"OIHW{BLOCK}i{BLOCK}o"]}

    def layout_cb(call):
        name = getattr(call.op, "name", "")
        if name != "relax.nn.conv2d":
            return {}
        if blockable(call):
            return layouts
        if stem_blockable(call):
            c = _shape(call.args[0])[1]
            return {"relax.nn.conv2d": [f"NCHW{c}c", f"OIHW{c}i{BLOCK}o", f"NCHW{BLOCK}c"]}
        # any other conv reads NCHW (left to infer, one fed a blocked tensor would take its
        # layout, which its 4-d weight cannot)
        return {"relax.nn.conv2d": ["NCHW", "OIHW"]}

    return relax.transform.ConvertLayout(layouts, layout_cb)


def conv_layouts(mod) -> list[str]:
    """The data layout of every conv in ``mod``'s Relax functions."""
    from tvm import relax

    found: list[str] = []

    def visit(e):
        if isinstance(e, relax.Call) and getattr(e.op, "name", "") == "relax.nn.conv2d":
            found.append(str(e.attrs.data_layout))

    for _, func in mod.functions_items():
        if isinstance(func, relax.Function):
            relax.analysis.post_order_visit(func, visit)
    return found


def layout_passes(whole_graph: bool = False) -> list:
    """The blocked layout's graph passes: the conversion, then one transform per tensor (the
    conversion transforms a tensor once per consumer: ResNet's pooled stem twice). A graph the
    conversion cannot take (an op whose layout inference has no rule for blocked channels) stays
    in NCHW as a whole: slower, never wrong. ``whole_graph``: keep the conversion only if every
    conv blocks; a graph that switches layouts between convs (depthwise convs, channel counts
    that are no multiple of 16) pays a transform at every switch, which cost more than the
    blocked convs gained on MobileNetV2, SqueezeNet, the detector and PP-OCR (1.2-1.6x slower)."""
    import tvm
    from tvm import relax

    convert = tvm.transform.Sequential([convert_layout_pass(), relax.transform.EliminateCommonSubexpr()])

    @tvm.transform.module_pass(opt_level=0, name="HyperinferBlockedLayout")
    def apply(mod, _ctx):
        try:
            out = convert(mod)
        except Exception as e:  # noqa: BLE001 - an optimization: keep the NCHW graph
            lines = [ln for ln in str(e).strip().splitlines() if ln.strip()]
            log.info("activations stay NCHW (the blocked layout conversion failed: %s)",
                     (lines[-1] if lines else type(e).__name__)[:200])
            return mod
        if whole_graph:
            layouts = conv_layouts(out)
            left = sum(1 for lay in layouts if lay == "NCHW")
            if left:
                log.info("activations stay NCHW: %d of %d convs do not block", left, len(layouts))
                return mod
        return out

    return [apply]
