"""Graph rewrites applied before legalization on CPU targets.

``conv2d_transpose`` with stride equal to its kernel (the upsampling heads of
detection models: kernel 2, stride 2, no padding) legalizes to a convolution
over a zero-dilated, padded input: three quarters of its multiply-adds are by
zero and the dilated copy is four times the input. The same result is a 1x1
convolution to ``O*kh*kw`` channels followed by a depth-to-space shuffle:

    out[n, o, h*kh + a, w*kw + b] = sum_c x[n, c, h, w] * W[c, o, a, b]

which the CPU schedules tile like any other 1x1 convolution.

``softmax`` (float32) becomes TOPI's ``fast_softmax``, whose ``exp`` is a
polynomial LLVM vectorizes (the libm ``exp`` is called element by element).

``matmul`` by a constant weight whose width has no 8-lane divisor (a 6625-class
head) gets its weight padded to whole vectors once, at compile time, and the
result sliced back, instead of the schedule padding the weight on every call.
"""

from __future__ import annotations

from hyperinfer.compile.passes import call_rewrite_pass


def _ints(arr) -> list[int]:
    return [int(v) for v in arr]


def _const_numpy(expr):
    """A Relax constant's value as numpy; None if ``expr`` is not a constant."""
    import tvm

    if not isinstance(expr, tvm.ir.expr.Constant):
        return None
    data = getattr(expr, "data", None)
    if data is None:
        data = getattr(expr, "value", None)  # TVM 0.27: GenericConst.value
    return data.numpy() if data is not None and hasattr(data, "numpy") else None


def conv_transpose_rewrite_pass():
    """Relax function pass: stride == kernel ``conv2d_transpose`` -> 1x1 conv2d + reshape/permute."""
    import numpy as np
    from tvm import relax

    def rewrite(_rw, call):
        a = call.attrs
        x, w = call.args
        wnp = _const_numpy(w)
        if wnp is None:
            return None
        if (a.data_layout != "NCHW" or a.kernel_layout != "IOHW" or str(a.out_layout) not in ("NCHW", "")
                or int(a.groups) != 1):
            return None
        cin, cout, kh, kw = wnp.shape
        if (_ints(a.strides) != [kh, kw] or any(_ints(a.padding)) or any(_ints(a.output_padding))
                or _ints(a.dilation) != [1, 1]):
            return None
        info = x.ty if hasattr(x, "ty") else x.struct_info  # TVM 0.27: Expr.ty (TensorType)
        shape = [int(d) for d in info.shape]
        if len(shape) != 4 or shape[1] != cin:
            return None
        n, _, h, wd = shape
        od = a.out_dtype
        out_dtype = str(od) if od is not None and str(od) not in ("", "None", "void") else str(info.dtype)
        w2 = np.ascontiguousarray(wnp.transpose(1, 2, 3, 0).reshape(cout * kh * kw, cin, 1, 1))
        y = relax.op.nn.conv2d(x, relax.const(w2), out_dtype=out_dtype)
        y = relax.op.reshape(y, [n, cout, kh, kw, h, wd])
        y = relax.op.permute_dims(y, [0, 1, 4, 2, 5, 3])
        return relax.op.reshape(y, [n, cout, h * kh, wd * kw])

    return call_rewrite_pass("relax.nn.conv2d_transpose", "HyperinferConvTransposeRewrite", rewrite)


def fast_softmax_pass():
    """Relax function pass: float32 ``softmax`` -> TOPI's ``fast_softmax``.

    Legalized softmax calls ``exp`` per element, which LLVM cannot vectorize on x86
    (a libm call per element: most of a 40x6625 softmax's time). ``fast_softmax``
    uses a vectorizable polynomial ``exp`` (relative error ~1e-7).
    """
    from tvm import topi

    def rewrite(rw, call):
        info = call.args[0].ty if hasattr(call.args[0], "ty") else call.args[0].struct_info
        if str(getattr(info, "dtype", "")) != "float32":
            return None
        return rw.builder_.call_te(topi.nn.fast_softmax, call.args[0], int(call.attrs.axis))

    return call_rewrite_pass("relax.nn.softmax", "HyperinferFastSoftmax", rewrite)


_PAD_TO = 16  # float32 lanes of AVX-512; a multiple of every CPU target's vector width


def matmul_pad_pass():
    """Relax function pass: ``matmul(x, W)`` with a constant ``W [K, N]`` whose ``N`` does not
    split into whole vectors (a 6625-class head) -> ``matmul(x, W padded to N') [..., :N]``.

    The CPU schedule otherwise pads the weight inside the kernel on every call
    (a copy of the whole weight); here it is padded once, at compile time.
    """
    import numpy as np
    import tvm
    from tvm import relax

    op_permute = tvm.ir.Op.get("relax.permute_dims")

    def weight(rw, w):
        """The constant ``w`` as numpy, also through a transpose (a Gemm with transB=1
        imports as ``matmul(x, permute_dims(W))``); None if not constant."""
        transpose = False
        if isinstance(w, relax.Var):
            bound = rw.lookup_binding(w)
            if (isinstance(bound, relax.Call) and bound.op.same_as(op_permute)
                    and bound.attrs.axes is not None and [int(a) for a in bound.attrs.axes] == [1, 0]):
                w, transpose = bound.args[0], True
        wnp = _const_numpy(w)
        if wnp is None:
            return None
        return np.ascontiguousarray(wnp.T) if transpose and wnp.ndim == 2 else wnp

    def rewrite(rw, call):
        x, w = call.args
        wnp = weight(rw, w)
        if wnp is None or wnp.ndim != 2 or wnp.dtype != np.float32:
            return None
        k, n = wnp.shape
        if n % _PAD_TO == 0 or n < 4 * _PAD_TO:
            return None  # whole vectors already (a 1000-class head is not: 16-lane AVX-512 pads it)
        info = x.ty if hasattr(x, "ty") else x.struct_info
        if str(getattr(info, "dtype", "")) != "float32" or getattr(info, "ndim", -1) < 1:
            return None
        n2 = -(-n // _PAD_TO) * _PAD_TO
        wp = np.zeros((k, n2), dtype=np.float32)
        wp[:, :n] = wnp
        y = relax.op.matmul(x, relax.const(wp))
        return relax.op.strided_slice(y, axes=[-1 % (int(info.ndim))], begin=[0], end=[n])

    return call_rewrite_pass("relax.matmul", "HyperinferMatmulPad", rewrite)


def strided_1x1_conv_pass():
    """Relax function pass: a 1x1 ``conv2d`` with stride s > 1 and no padding (ResNet's
    downsampling shortcuts) -> ``strided_slice`` of every s-th row and column, then a stride-1
    1x1 conv.

    The strided conv reads its whole input (56x56x256: 3 MB) once per block of output
    channels, every other element unused; the slice reads it once and the conv then runs on
    an input a quarter the size (stays in L2), with the stride-1 schedules (1.3-1.7x faster
    on ResNet-50's three shortcuts, the slice included).
    """
    from tvm import relax

    def rewrite(_rw, call):
        a = call.attrs
        x, w = call.args
        strides = _ints(a.strides)
        if (a.data_layout != "NCHW" or a.kernel_layout != "OIHW" or str(a.out_layout) not in ("NCHW", "")
                or strides == [1, 1] or any(_ints(a.padding)) or _ints(a.dilation) != [1, 1]):
            return None
        winfo = w.ty if hasattr(w, "ty") else w.struct_info
        xinfo = x.ty if hasattr(x, "ty") else x.struct_info
        wshape = [int(d) for d in winfo.shape]
        xshape = [int(d) for d in xinfo.shape]
        if len(wshape) != 4 or wshape[2:] != [1, 1] or len(xshape) != 4:
            return None
        sliced = relax.op.strided_slice(x, axes=[2, 3], begin=[0, 0], end=xshape[2:], strides=strides)
        od = a.out_dtype
        out_dtype = str(od) if od is not None and str(od) not in ("", "None", "void") else str(xinfo.dtype)
        return relax.op.nn.conv2d(sliced, w, strides=1, padding=0, dilation=1, groups=int(a.groups),
                                  data_layout="NCHW", kernel_layout="OIHW", out_dtype=out_dtype)

    return call_rewrite_pass("relax.nn.conv2d", "HyperinferStrided1x1Conv", rewrite)


def cpu_pre_fusion_passes(blocked: bool = False, whole_graph: bool = False) -> list:
    """Relax passes the CPU build runs before LegalizeOps; ``blocked``: activations in the
    channel-blocked layout (``schedules/blocked.py``), where a strided 1x1 conv is a strided
    blocked conv (its input read in place); the convs that stay NCHW still read a slice.
    ``whole_graph``: blocked only if every conv blocks."""
    out = [conv_transpose_rewrite_pass(), fast_softmax_pass(), matmul_pad_pass()]
    if blocked:
        from hyperinfer.compile.schedules import blocked as blocked_layout

        out += blocked_layout.layout_passes(whole_graph=whole_graph)
    return out + [strided_1x1_conv_pass()]
