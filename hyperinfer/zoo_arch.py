"""Public architectures built with ``onnx.helper``, random (seeded) weights.

No hub downloads: each network is written layer by layer the way the public
export looks (operator types, attributes, layout), so the compatibility test
and the benchmark exercise the same graphs a user brings, without fetching
hundreds of megabytes. Depth and width can be reduced for fast tests.

- ``resnet50`` / ``resnet18``: torchvision-style exports (Conv with bias after
  BN folding is *not* done: Conv + BatchNormalization + Relu, Add, GAP, Gemm).
- ``resnet50-caffe2``: how the original ONNX Model Zoo stores ResNet-50
  (Caffe2 export, IR version 3, opset 9): every initializer also listed
  among the graph inputs, ``Sum`` for the residual add, a ``Reshape`` whose
  shape is an initializer, plus an unused initializer.
- ``mobilenetv2``: inverted residuals, depthwise convs, Clip (ReLU6).
- ``densenet121``: dense blocks (Concat), transition layers with AveragePool.
- ``inception``: Inception-v1 blocks (four parallel branches, Concat).
- ``squeezenet``: Fire modules (1.1), Dropout, global average pool, Softmax.
- ``transformer``: a BERT-style encoder; int64 token ids -> Gather embedding,
  multi-head attention (MatMul, Softmax), LayerNormalization, Gelu via Erf.
- ``detector``: an anchor-free (FCOS/YOLOX-style) head, NMS-free: per-level
  class scores and box regressions concatenated, two outputs.
- ``lstm``: one ONNX ``LSTM`` layer then a Gemm.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

OPSET = 17


class Graph:
    """A tiny layer-by-layer ONNX graph writer with seeded random weights."""

    def __init__(self, seed: int = 0, prefix: str = ""):
        self.nodes: list = []
        self.inits: list = []
        self.rng = np.random.default_rng(seed)
        self.prefix = prefix
        self._n = 0

    def name(self, kind: str) -> str:
        self._n += 1
        return f"{self.prefix}{kind}_{self._n}"

    def const(self, arr: np.ndarray, kind: str = "w") -> str:
        from onnx import numpy_helper

        n = self.name(kind)
        self.inits.append(numpy_helper.from_array(np.asarray(arr), n))
        return n

    def op(self, op_type: str, inputs: list[str], n_out: int = 1, **attrs) -> str | list[str]:
        from onnx import helper

        name = self.name(op_type.lower())
        outs = [f"{name}_out{i}" if n_out > 1 else f"{name}_out" for i in range(n_out)]
        self.nodes.append(helper.make_node(op_type, inputs, outs, name=name, **attrs))
        return outs if n_out > 1 else outs[0]

    # layers -----------------------------------------------------------
    def conv(self, x: str, cin: int, cout: int, k: int = 3, stride: int = 1, pad: int | None = None,
             group: int = 1, bias: bool = False) -> str:
        pad = k // 2 if pad is None else pad
        fan_in = cin // group * k * k
        w = (self.rng.standard_normal((cout, cin // group, k, k)) * np.sqrt(2.0 / fan_in)).astype(np.float32)
        ins = [x, self.const(w)]
        if bias:
            ins.append(self.const((self.rng.standard_normal(cout) * 0.05).astype(np.float32), "b"))
        return self.op("Conv", ins, kernel_shape=[k, k], strides=[stride, stride], pads=[pad] * 4, group=group)

    def bn(self, x: str, c: int) -> str:
        r = self.rng
        scale = (1.0 + 0.1 * r.standard_normal(c)).astype(np.float32)
        shift = (0.1 * r.standard_normal(c)).astype(np.float32)
        mean = (0.1 * r.standard_normal(c)).astype(np.float32)
        var = (0.5 + r.random(c)).astype(np.float32)
        return self.op("BatchNormalization", [x, self.const(scale), self.const(shift), self.const(mean),
                                              self.const(var)], epsilon=1e-5)

    def cbr(self, x, cin, cout, k=3, stride=1, relu=True, group=1) -> str:
        y = self.bn(self.conv(x, cin, cout, k, stride, group=group), cout)
        return self.op("Relu", [y]) if relu else y

    def relu6(self, x: str) -> str:
        return self.op("Clip", [x, self.const(np.float32(0.0), "lo"), self.const(np.float32(6.0), "hi")])

    def gemm(self, x: str, cin: int, cout: int) -> str:
        w = (self.rng.standard_normal((cout, cin)) * np.sqrt(1.0 / cin)).astype(np.float32)
        b = (self.rng.standard_normal(cout) * 0.05).astype(np.float32)
        return self.op("Gemm", [x, self.const(w), self.const(b)], transB=1)

    def linear(self, x: str, cin: int, cout: int) -> str:
        """MatMul + Add, the way transformer exports write a Linear."""
        w = (self.rng.standard_normal((cin, cout)) * np.sqrt(1.0 / cin)).astype(np.float32)
        b = (self.rng.standard_normal(cout) * 0.02).astype(np.float32)
        return self.op("Add", [self.op("MatMul", [x, self.const(w)]), self.const(b)])

    def gap_flatten(self, x: str) -> str:
        return self.op("Flatten", [self.op("GlobalAveragePool", [x])], axis=1)

    def model(self, inputs: list, outputs: list, opset: int = OPSET, ir_version: int = 8,
              name: str = "net"):
        from onnx import helper

        graph = helper.make_graph(self.nodes, name, inputs, outputs, self.inits)
        m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)],
                              producer_name="hyperinfer.zoo_arch")
        m.ir_version = ir_version
        return m


def _img_input(name: str, size: int, dynamic_batch: bool = False):
    from onnx import TensorProto, helper

    return helper.make_tensor_value_info(name, TensorProto.FLOAT, ["N" if dynamic_batch else 1, 3, size, size])


def _out(name: str, shape):
    from onnx import TensorProto, helper

    return helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)


def _rename_output(g: Graph, produced: str, final: str) -> None:
    for n in g.nodes:
        for i, o in enumerate(n.output):
            if o == produced:
                n.output[i] = final


# ---------------------------------------------------------------- ResNet

def resnet(depth: int = 50, size: int = 224, width: int = 64, classes: int = 1000, blocks=None, seed: int = 0,
           dynamic_batch: bool = False):
    """torchvision ResNet (v1.5: stride in the 3x3 conv of bottlenecks)."""
    g = Graph(seed)
    layers = blocks or {18: (2, 2, 2, 2), 34: (3, 4, 6, 3), 50: (3, 4, 6, 3), 101: (3, 4, 23, 3)}[depth]
    bottleneck = depth >= 50
    y = g.cbr("input", 3, width, 7, 2)
    y = g.op("MaxPool", [y], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])
    cin = width
    for stage, n in enumerate(layers):
        planes = width * 2 ** stage
        cout = planes * (4 if bottleneck else 1)
        for i in range(n):
            stride = 2 if stage > 0 and i == 0 else 1
            if bottleneck:
                z = g.cbr(y, cin, planes, 1)
                z = g.cbr(z, planes, planes, 3, stride)
                z = g.cbr(z, planes, cout, 1, relu=False)
            else:
                z = g.cbr(y, cin, planes, 3, stride)
                z = g.cbr(z, planes, cout, 3, relu=False)
            short = y if (stride == 1 and cin == cout) else g.cbr(y, cin, cout, 1, stride, relu=False)
            y = g.op("Relu", [g.op("Add", [z, short])])
            cin = cout
    y = g.gemm(g.gap_flatten(y), cin, classes)
    _rename_output(g, y, "logits")
    return g.model([_img_input("input", size, dynamic_batch)], [_out("logits", ["N" if dynamic_batch else 1, classes])],
                   name=f"resnet{depth}")


def resnet50_caffe2(size: int = 224, width: int = 64, classes: int = 1000, blocks=(3, 4, 6, 3), seed: int = 0):
    """ResNet-50 as the Caffe2 exports in the original ONNX Model Zoo store it: IR 3, opset 9,
    ``gpu_0/...`` names, every initializer also a graph input, ``Sum`` residuals, ``Reshape``
    with an initializer shape before the Gemm, a Softmax output, and an unused initializer."""
    from onnx import TensorProto, helper

    g = Graph(seed, prefix="gpu_0/")
    y = g.cbr("gpu_0/data_0", 3, width, 7, 2)
    y = g.op("MaxPool", [y], kernel_shape=[3, 3], strides=[2, 2], pads=[0, 0, 1, 1])
    cin = width
    for stage, n in enumerate(blocks):
        planes = width * 2 ** stage
        cout = planes * 4
        for i in range(n):
            stride = 2 if stage > 0 and i == 0 else 1
            z = g.cbr(y, cin, planes, 1, stride)  # Caffe2's ResNet: stride in the first 1x1 conv
            z = g.cbr(z, planes, planes, 3)
            z = g.cbr(z, planes, cout, 1, relu=False)
            short = y if (stride == 1 and cin == cout) else g.cbr(y, cin, cout, 1, stride, relu=False)
            y = g.op("Relu", [g.op("Sum", [z, short])])
            cin = cout
    pool = size // 32
    y = g.op("AveragePool", [y], kernel_shape=[pool, pool], strides=[1, 1])
    y = g.op("Reshape", [y, g.const(np.array([1, cin], dtype=np.int64), "pool5_SHAPE")])
    y = g.op("Softmax", [g.gemm(y, cin, classes)])
    _rename_output(g, y, "gpu_0/softmax_1")
    g.const(np.zeros(7, dtype=np.float32), "unused_momentum")  # training state left in the file
    inputs = [_img_input("gpu_0/data_0", size)]
    inputs += [helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)) for t in g.inits]
    _ = TensorProto
    return g.model(inputs, [_out("gpu_0/softmax_1", [1, classes])], opset=9, ir_version=3, name="resnet50_caffe2")


# ---------------------------------------------------------------- MobileNetV2

def mobilenetv2(size: int = 224, width_mult: float = 1.0, classes: int = 1000, seed: int = 0, reduced: bool = False):
    g = Graph(seed)

    def ch(c):
        return max(8, int(c * width_mult + 4) // 8 * 8)

    cfg = [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1)]
    if reduced:  # one block a stage, stages 1, 2, 3 and 5 (stride 1, 2, 2 and a wider stride-1 stage)
        cfg = [(t, c, 1, s) for t, c, _n, s in (cfg[0], cfg[1], cfg[2], cfg[4])]
    cin = ch(32)
    y = g.relu6(g.bn(g.conv("input", 3, cin, 3, 2), cin))
    for t, c, n, s in cfg:
        cout = ch(c)
        for i in range(n):
            stride = s if i == 0 else 1
            hidden = cin * t
            z = y
            if t != 1:
                z = g.relu6(g.bn(g.conv(z, cin, hidden, 1), hidden))
            z = g.relu6(g.bn(g.conv(z, hidden, hidden, 3, stride, group=hidden), hidden))
            z = g.bn(g.conv(z, hidden, cout, 1), cout)
            y = g.op("Add", [y, z]) if stride == 1 and cin == cout else z
            cin = cout
    last = ch(1280) if width_mult > 1 else 1280
    y = g.relu6(g.bn(g.conv(y, cin, last, 1), last))
    y = g.gemm(g.gap_flatten(y), last, classes)
    _rename_output(g, y, "logits")
    return g.model([_img_input("input", size)], [_out("logits", [1, classes])], name="mobilenetv2")


# ---------------------------------------------------------------- DenseNet

def densenet(size: int = 224, growth: int = 32, blocks=(6, 12, 24, 16), init: int = 64, classes: int = 1000,
             seed: int = 0):
    """DenseNet-121 (blocks 6, 12, 24, 16); pass fewer layers per block for a reduced-depth net."""
    g = Graph(seed)
    y = g.cbr("input", 3, init, 7, 2)
    y = g.op("MaxPool", [y], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])
    c = init

    def bn_relu(x, ch):
        return g.op("Relu", [g.bn(x, ch)])

    for bi, n in enumerate(blocks):
        for _ in range(n):
            z = g.conv(bn_relu(y, c), c, 4 * growth, 1)
            z = g.conv(bn_relu(z, 4 * growth), 4 * growth, growth, 3)
            y = g.op("Concat", [y, z], axis=1)
            c += growth
        if bi != len(blocks) - 1:
            y = g.conv(bn_relu(y, c), c, c // 2, 1)
            c //= 2
            y = g.op("AveragePool", [y], kernel_shape=[2, 2], strides=[2, 2])
    y = g.gemm(g.gap_flatten(bn_relu(y, c)), c, classes)
    _rename_output(g, y, "logits")
    return g.model([_img_input("input", size)], [_out("logits", [1, classes])], name="densenet")


# ---------------------------------------------------------------- Inception

def inception(size: int = 224, classes: int = 1000, seed: int = 0, n_blocks: int = 2):
    """GoogLeNet stem + Inception-v1 blocks (1x1 | 1x1-3x3 | 1x1-5x5 | pool-1x1, Concat)."""
    g = Graph(seed)
    y = g.cbr("input", 3, 64, 7, 2)
    y = g.op("MaxPool", [y], kernel_shape=[3, 3], strides=[2, 2], pads=[0, 0, 1, 1])
    y = g.cbr(y, 64, 64, 1)
    y = g.cbr(y, 64, 192, 3)
    y = g.op("MaxPool", [y], kernel_shape=[3, 3], strides=[2, 2], pads=[0, 0, 1, 1])
    c = 192
    specs = [(64, 96, 128, 16, 32, 32), (128, 128, 192, 32, 96, 64), (192, 96, 208, 16, 48, 64),
             (160, 112, 224, 24, 64, 64)][:n_blocks]
    for i, (b1, r3, b3, r5, b5, bp) in enumerate(specs):
        p1 = g.cbr(y, c, b1, 1)
        p2 = g.cbr(g.cbr(y, c, r3, 1), r3, b3, 3)
        p3 = g.cbr(g.cbr(y, c, r5, 1), r5, b5, 5)
        p4 = g.cbr(g.op("MaxPool", [y], kernel_shape=[3, 3], strides=[1, 1], pads=[1, 1, 1, 1]), c, bp, 1)
        y = g.op("Concat", [p1, p2, p3, p4], axis=1)
        c = b1 + b3 + b5 + bp
        if i == 1:
            y = g.op("MaxPool", [y], kernel_shape=[3, 3], strides=[2, 2], pads=[0, 0, 1, 1])
    y = g.op("Dropout", [g.gap_flatten(y)])
    y = g.gemm(y, c, classes)
    _rename_output(g, y, "logits")
    return g.model([_img_input("input", size)], [_out("logits", [1, classes])], name="inception")


# ---------------------------------------------------------------- SqueezeNet

def squeezenet(size: int = 224, classes: int = 1000, seed: int = 0):
    """SqueezeNet 1.1 (torchvision export: Conv with bias, no BN, Fire modules, conv classifier)."""
    g = Graph(seed)

    def conv_relu(x, cin, cout, k, stride=1, pad=0):
        return g.op("Relu", [g.conv(x, cin, cout, k, stride, pad, bias=True)])

    def fire(x, cin, s, e):
        sq = conv_relu(x, cin, s, 1)
        return g.op("Concat", [conv_relu(sq, s, e, 1), conv_relu(sq, s, e, 3, pad=1)], axis=1)

    y = conv_relu("input", 3, 64, 3, 2)
    y = g.op("MaxPool", [y], kernel_shape=[3, 3], strides=[2, 2], ceil_mode=1)
    y = fire(y, 64, 16, 64)
    y = fire(y, 128, 16, 64)
    y = g.op("MaxPool", [y], kernel_shape=[3, 3], strides=[2, 2], ceil_mode=1)
    y = fire(y, 128, 32, 128)
    y = fire(y, 256, 32, 128)
    y = g.op("MaxPool", [y], kernel_shape=[3, 3], strides=[2, 2], ceil_mode=1)
    y = fire(y, 256, 48, 192)
    y = fire(y, 384, 48, 192)
    y = fire(y, 384, 64, 256)
    y = fire(y, 512, 64, 256)
    y = g.op("Dropout", [y])
    y = conv_relu(y, 512, classes, 1)
    y = g.op("Softmax", [g.gap_flatten(y)], axis=1)
    _rename_output(g, y, "probs")
    return g.model([_img_input("input", size)], [_out("probs", [1, classes])], name="squeezenet")


# ---------------------------------------------------------------- transformer encoder

def transformer(seq: int = 128, vocab: int = 30522, hidden: int = 256, heads: int = 4, layers: int = 2,
                ffn: int | None = None, seed: int = 0, dynamic: bool = False):
    """BERT-style encoder over int64 token ids ``[1, seq]``; output: hidden states ``[1, seq, hidden]``."""
    from onnx import TensorProto, helper

    g = Graph(seed)
    ffn = ffn or 4 * hidden
    hd = hidden // heads
    emb = (g.rng.standard_normal((vocab, hidden)) * 0.02).astype(np.float32)
    pos = (g.rng.standard_normal((seq, hidden)) * 0.02).astype(np.float32)
    x = g.op("Gather", [g.const(emb, "word_embeddings"), "input_ids"], axis=0)
    x = g.op("Add", [x, g.const(pos[None], "position_embeddings")])

    def ln(v):
        return g.op("LayerNormalization", [v, g.const(np.ones(hidden, np.float32)),
                                           g.const(np.zeros(hidden, np.float32))], axis=-1, epsilon=1e-12)

    x = ln(x)
    shape_heads = g.const(np.array([1, seq, heads, hd], dtype=np.int64), "shape")
    shape_back = g.const(np.array([1, seq, hidden], dtype=np.int64), "shape")
    scale = g.const(np.float32(1.0 / np.sqrt(hd)), "scale")
    for _ in range(layers):
        def heads_of(v, perm):
            return g.op("Transpose", [g.op("Reshape", [v, shape_heads])], perm=perm)

        q = heads_of(g.linear(x, hidden, hidden), [0, 2, 1, 3])
        k = heads_of(g.linear(x, hidden, hidden), [0, 2, 3, 1])
        v = heads_of(g.linear(x, hidden, hidden), [0, 2, 1, 3])
        att = g.op("Softmax", [g.op("Mul", [g.op("MatMul", [q, k]), scale])], axis=-1)
        ctx = g.op("Transpose", [g.op("MatMul", [att, v])], perm=[0, 2, 1, 3])
        ctx = g.op("Reshape", [ctx, shape_back])
        x = ln(g.op("Add", [x, g.linear(ctx, hidden, hidden)]))
        h = g.linear(x, hidden, ffn)
        # exact GELU as exported by PyTorch: 0.5 * h * (1 + erf(h / sqrt(2)))
        e = g.op("Erf", [g.op("Div", [h, g.const(np.float32(np.sqrt(2.0)), "c")])])
        h = g.op("Mul", [g.op("Mul", [h, g.op("Add", [e, g.const(np.float32(1.0), "c")])]),
                         g.const(np.float32(0.5), "c")])
        x = ln(g.op("Add", [x, g.linear(h, ffn, hidden)]))
    _rename_output(g, x, "last_hidden_state")
    dim = "sequence" if dynamic else seq
    inp = helper.make_tensor_value_info("input_ids", TensorProto.INT64, [1, dim])
    out = _out("last_hidden_state", [1, dim, hidden])
    return g.model([inp], [out], name="transformer")


# ---------------------------------------------------------------- detector

def detector(size: int = 320, classes: int = 80, width: int = 32, seed: int = 0):
    """Anchor-free single-stage detector without NMS in the graph (FCOS/YOLOX-style):
    a small backbone, three pyramid levels (strides 8, 16, 32) with a top-down path
    (Resize), per-level class scores (Sigmoid) and box distances (Exp), flattened and
    concatenated. Outputs ``scores [1, A, classes]`` and ``boxes [1, A, 4]``."""
    g = Graph(seed)
    y = g.cbr("input", 3, width, 3, 2)
    feats = []
    c = width
    for i in range(4):  # strides 4, 8, 16, 32
        y = g.cbr(y, c, c * 2, 3, 2)
        c *= 2
        y = g.cbr(y, c, c, 3)
        if i >= 1:
            feats.append((y, c))
    # FPN: lateral 1x1 to a common width, top-down upsample-and-add
    lat = [g.conv(f, fc, width * 2, 1, bias=True) for f, fc in feats]
    for i in range(len(lat) - 2, -1, -1):
        up = g.op("Resize", [lat[i + 1], "", g.const(np.array([1, 1, 2, 2], np.float32), "scales")],
                  mode="nearest")
        lat[i] = g.op("Add", [lat[i], up])
    scores, boxes = [], []
    hw = size // 8
    for f in lat:
        h = g.cbr(f, width * 2, width * 2, 3)
        s = g.op("Sigmoid", [g.conv(h, width * 2, classes, 1, bias=True)])
        # box distances: exp of a scaled regression (FCOS's learnable per-level scale)
        b = g.op("Exp", [g.op("Mul", [g.conv(h, width * 2, 4, 1, bias=True), g.const(np.float32(0.05), "s")])])
        n = hw * hw
        hw //= 2
        for t, ch, out in ((s, classes, scores), (b, 4, boxes)):
            t = g.op("Reshape", [t, g.const(np.array([1, ch, n], np.int64), "shape")])
            out.append(g.op("Transpose", [t], perm=[0, 2, 1]))
    sc = g.op("Concat", scores, axis=1)
    bx = g.op("Concat", boxes, axis=1)
    _rename_output(g, sc, "scores")
    _rename_output(g, bx, "boxes")
    a = sum((size // s) ** 2 for s in (8, 16, 32))
    return g.model([_img_input("input", size)], [_out("scores", [1, a, classes]), _out("boxes", [1, a, 4])],
                   name="detector")


# ---------------------------------------------------------------- LSTM

def lstm(seq: int = 16, features: int = 32, hidden: int = 64, classes: int = 10, seed: int = 0):
    """One forward ONNX ``LSTM`` over ``[seq, 1, features]``, the last hidden state through a Gemm."""
    from onnx import TensorProto, helper

    g = Graph(seed)
    r = g.rng
    w = (r.standard_normal((1, 4 * hidden, features)) * 0.1).astype(np.float32)
    rw = (r.standard_normal((1, 4 * hidden, hidden)) * 0.1).astype(np.float32)
    b = (r.standard_normal((1, 8 * hidden)) * 0.05).astype(np.float32)
    _y, y_h, _c = g.op("LSTM", ["x", g.const(w), g.const(rw), g.const(b)], n_out=3, hidden_size=hidden)
    h = g.op("Reshape", [y_h, g.const(np.array([1, hidden], np.int64), "shape")])
    out = g.gemm(h, hidden, classes)
    _rename_output(g, out, "logits")
    inp = helper.make_tensor_value_info("x", TensorProto.FLOAT, [seq, 1, features])
    return g.model([inp], [_out("logits", [1, classes])], name="lstm")


# ---------------------------------------------------------------- registry

@dataclass(frozen=True)
class Arch:
    name: str
    build: Callable  # (**kwargs) -> ModelProto
    full: dict  # arguments of the published architecture
    reduced: dict  # arguments for the fast test
    description: str


ARCHS: dict[str, Arch] = {a.name: a for a in [
    Arch("resnet50", lambda **k: resnet(50, **k), {}, {"size": 64, "width": 16, "blocks": (1, 1, 1, 1)},
         "ResNet-50 (torchvision export; reduced: one bottleneck a stage, width 16)"),
    Arch("resnet18", lambda **k: resnet(18, **k), {}, {"size": 64, "width": 16, "blocks": (1, 1, 1, 1)},
         "ResNet-18 (torchvision export)"),
    Arch("resnet50-caffe2", resnet50_caffe2, {}, {"size": 64, "width": 16, "blocks": (1, 1, 1, 1)},
         "ResNet-50 as in the original ONNX Model Zoo (Caffe2, IR 3, opset 9, initializers as inputs)"),
    Arch("mobilenetv2", mobilenetv2, {}, {"size": 64, "reduced": True, "width_mult": 0.5},
         "MobileNetV2 1.0 (reduced: four stages of one block, width 0.5)"),
    Arch("densenet121", densenet, {}, {"size": 64, "blocks": (2, 1, 1, 1), "growth": 8, "init": 16},
         "DenseNet-121 (reduced: fewer layers a block, growth 8)"),
    Arch("inception", inception, {"n_blocks": 4}, {"size": 64, "n_blocks": 2}, "GoogLeNet stem + Inception-v1 blocks"),
    Arch("squeezenet", squeezenet, {}, {"size": 64}, "SqueezeNet 1.1"),
    Arch("transformer", transformer, {"hidden": 768, "heads": 12, "layers": 12},
         {"seq": 32, "vocab": 1000, "hidden": 64, "heads": 4, "layers": 1},
         "BERT-style encoder (int64 token ids)"),
    Arch("detector", detector, {}, {"size": 128, "classes": 8, "width": 16},
         "anchor-free detector, NMS-free head (scores + boxes)"),
    Arch("lstm", lstm, {}, {}, "one LSTM layer + Gemm"),
]}


def build(name: str, reduced: bool = False, **overrides):
    """The ModelProto of architecture ``name`` (``reduced``: the fast test's size)."""
    try:
        arch = ARCHS[name]
    except KeyError:
        raise KeyError(f"unknown architecture {name!r}; known: {', '.join(ARCHS)}") from None
    kwargs = dict(arch.reduced if reduced else arch.full)
    kwargs.update(overrides)
    return arch.build(**kwargs)


def save(name: str, dest: str | os.PathLike, reduced: bool = False, **overrides) -> Path:
    import onnx

    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(build(name, reduced, **overrides), str(dest))
    return dest
