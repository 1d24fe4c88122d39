"""The rule-based CPU schedules: results match ONNX Runtime, and the functions are really scheduled."""

from __future__ import annotations

import re

import numpy as np
import pytest
from support import build_and_compare, workspace_allocations

pytest.importorskip("tvm")
pytest.importorskip("onnxruntime")

TARGET = "cpu-x86_64-avx512"


@pytest.fixture(autouse=True)
def _nchw(monkeypatch):
    """These are the NCHW rules' tests (every target without AVX-512, and the convs the
    channel-blocked layout leaves alone); the blocked layout has its own (test_blocked_layout)."""
    monkeypatch.setenv("HYPERINFER_LAYOUT", "NCHW")


def _can_run(target_id: str) -> bool:
    from hyperinfer.compile import targets

    return target_id in targets.runnable_cpu_targets()


def _target_id() -> str:
    return TARGET if _can_run(TARGET) else "cpu-x86_64"


def _clean(path, shapes):
    from hyperinfer.compile import cleanup

    m = cleanup.load_onnx(path)
    return cleanup.clean(m, shapes, threads=2)


def _build_and_compare(tmp_path, name, clean, rtol=1e-4, tuning_db=None):
    from hyperinfer.compile import targets

    return build_and_compare(tmp_path, clean, targets.get(_target_id()), name, rtol, tuning_db)


@pytest.mark.parametrize("name", ["cnn", "mlp", "two-inputs", "int-bool"])
def test_small_models_match_onnxruntime(tmp_path, name):
    from hyperinfer import zoo

    path, shapes = zoo.build_small(name, tmp_path)
    _build_and_compare(tmp_path, name, _clean(path, shapes))


@pytest.mark.slow
def test_ppocr_cls_matches_onnxruntime(tmp_path):
    from hyperinfer import zoo

    paths = zoo.fetch_ppocr(names=("ppocr-cls",), quiet=True)
    clean = _clean(paths["ppocr-cls"], {"x": zoo.PPOCR["ppocr-cls"].input_shape})
    _build_and_compare(tmp_path, "ppocr-cls", clean)


def _fused(name, tmp_path):
    from hyperinfer import zoo
    from hyperinfer.compile import build, targets, tune

    path, shapes = zoo.build_small(name, tmp_path)
    clean = _clean(path, shapes)
    return tune.fused_module(build.import_onnx(clean.model), targets.get(_target_id()))


def _loops(func):
    """(kind, extent) of every For in a PrimFunc."""
    from hyperinfer.compile.schedules.cpu import _walk

    from tvm import tirx

    found = []

    def visit(n):
        if isinstance(n, tirx.For):
            found.append((n.kind, n.extent))
        return True

    def walk_stmt(s):
        # statements: follow bodies and sequences
        stack = [s]
        while stack:
            n = stack.pop()
            if n is None:
                continue
            if isinstance(n, tirx.For):
                found.append((n.kind, int(n.extent)))
            for attr in ("body", "seq", "block", "init", "then_case", "else_case"):
                try:
                    c = getattr(n, attr)
                except Exception:  # noqa: BLE001
                    continue
                if c is None:
                    continue
                if isinstance(c, (list, tuple)) or type(c).__name__ == "Array":
                    stack.extend(list(c))
                else:
                    stack.append(c)

    walk_stmt(func.body)
    _ = (_walk, visit)
    return found


def test_conv_function_is_tiled_parallel_and_vectorized(tmp_path):
    from tvm import tirx

    from hyperinfer.compile import targets
    from hyperinfer.compile.schedules import cpu as cpu_sched

    mod = _fused("cnn", tmp_path)
    target = targets.get(_target_id())
    convs = [(gv.name_hint, f) for gv, f in mod.functions_items()
             if isinstance(f, tirx.PrimFunc) and "conv2d" in gv.name_hint]
    assert convs
    for name, func in convs:
        report = cpu_sched.CpuScheduleReport()
        out = cpu_sched.schedule_function(func, target, 2, report, name)
        assert out.attrs["tirx.is_scheduled"]
        assert report.rules[name].startswith("tiled"), (name, report.rules, report.fallbacks)
        kinds = [k for k, _ in _loops(out)]
        assert tirx.ForKind.VECTORIZED in kinds, name
        assert tirx.ForKind.UNROLLED in kinds, name
    # the larger conv has enough work for a parallel loop
    big = max(convs, key=lambda c: len(c[1].script()))
    out = cpu_sched.schedule_function(big[1], target, 2)
    assert tirx.ForKind.PARALLEL in [k for k, _ in _loops(out)]


def test_vector_width_comes_from_the_target(tmp_path):
    from tvm import tirx

    from hyperinfer.compile import targets
    from hyperinfer.compile.schedules import cpu as cpu_sched

    mod = _fused("cnn", tmp_path)
    name, func = next((gv.name_hint, f) for gv, f in mod.functions_items()
                      if isinstance(f, tirx.PrimFunc) and gv.name_hint.startswith("fused_conv2d1"))
    widths = {}
    for tid in ("cpu-x86_64", "cpu-x86_64-avx2", "cpu-x86_64-avx512"):
        out = cpu_sched.schedule_function(func, targets.get(tid), 2)
        vec = [e for k, e in _loops(out) if k == tirx.ForKind.VECTORIZED]
        lanes = targets.get(tid).vector_lanes
        tiles = [e for e in vec if e % lanes == 0]  # the conv's tile (padding copies have their own widths)
        assert tiles, (tid, vec)
        widths[tid] = max(tiles)
    assert widths["cpu-x86_64"] < widths["cpu-x86_64-avx512"]


def test_a_throwing_rule_falls_back_and_never_fails(tmp_path, monkeypatch):
    from tvm import tirx

    from hyperinfer.compile import targets
    from hyperinfer.compile.schedules import cpu as cpu_sched

    mod = _fused("cnn", tmp_path)
    target = targets.get(_target_id())

    def boom(*_a, **_k):
        raise RuntimeError("rule exploded")

    monkeypatch.setattr(cpu_sched, "_schedule_func", boom)
    for gv, func in mod.functions_items():
        if isinstance(func, tirx.PrimFunc):
            report = cpu_sched.CpuScheduleReport()
            out = cpu_sched.schedule_function(func, target, 2, report, gv.name_hint)
            assert out is not None
            assert report.rules[gv.name_hint] in ("simple", "unscheduled")
            assert any("rule exploded" in f for f in report.fallbacks)


def test_conv_transpose_rewrite_matches_onnxruntime(tmp_path):
    """stride == kernel ConvTranspose becomes 1x1 conv + depth-to-space; same numbers."""
    from onnx import TensorProto, helper, numpy_helper

    from hyperinfer.zoo import _finish

    rng = np.random.default_rng(5)
    w = rng.standard_normal((8, 3, 2, 2)).astype(np.float32)
    b = rng.standard_normal(3).astype(np.float32)
    g = helper.make_graph(
        [helper.make_node("ConvTranspose", ["x", "w", "b"], ["y"], strides=[2, 2], kernel_shape=[2, 2]),
         helper.make_node("Sigmoid", ["y"], ["z"])],
        "ct",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8, 12, 20])],
        [helper.make_tensor_value_info("z", TensorProto.FLOAT, [1, 3, 24, 40])],
        [numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b")],
    )
    path = _finish(g, tmp_path / "ct.onnx")
    _build_and_compare(tmp_path, "ct", _clean(path, {}))


def _svtr_like(tmp_path):
    """Depthwise 5x5 conv + hardswish, then a transformer-style head: matmul to an awkward
    width (203 classes, no 8-lane divisor) and a softmax over it."""
    from onnx import TensorProto, helper, numpy_helper

    from hyperinfer.zoo import _finish

    rng = np.random.default_rng(7)
    c, h, w, n = 24, 6, 40, 203
    dw = (rng.standard_normal((c, 1, 5, 5)) * 0.2).astype(np.float32)
    fc = (rng.standard_normal((c * h, n)) * 0.1).astype(np.float32)
    g = helper.make_graph(
        [helper.make_node("Conv", ["x", "dw"], ["y"], group=c, kernel_shape=[5, 5], pads=[2, 2, 2, 2]),
         helper.make_node("HardSwish", ["y"], ["z"]),
         helper.make_node("Transpose", ["z"], ["zt"], perm=[0, 3, 1, 2]),
         helper.make_node("Reshape", ["zt", "shape"], ["seq"]),
         helper.make_node("MatMul", ["seq", "fc"], ["logits"]),
         helper.make_node("Softmax", ["logits"], ["p"], axis=-1)],
        "svtr_like",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, c, h, w])],
        [helper.make_tensor_value_info("p", TensorProto.FLOAT, [1, w, n])],
        [numpy_helper.from_array(dw, "dw"), numpy_helper.from_array(fc, "fc"),
         numpy_helper.from_array(np.array([1, w, c * h], dtype=np.int64), "shape")],
    )
    return _finish(g, tmp_path / "svtr_like.onnx")


def test_depthwise_softmax_and_awkward_matmul_match_onnxruntime(tmp_path):
    _build_and_compare(tmp_path, "svtr_like", _clean(_svtr_like(tmp_path), {}))


def test_depthwise_rows_tile_pads_per_plane_and_softmax_reduces_in_vectors(tmp_path):
    from tvm import tirx

    from hyperinfer.compile import build, targets, tune
    from hyperinfer.compile.schedules import cpu as cpu_sched

    target = targets.get(_target_id())
    mod = tune.fused_module(build.import_onnx(_clean(_svtr_like(tmp_path), {}).model), target)
    funcs = {gv.name_hint: f for gv, f in mod.functions_items() if isinstance(f, tirx.PrimFunc)}
    # softmax became fast_softmax (a vectorizable exp), its max and sum reduce in vectors
    soft = [n for n in funcs if "softmax" in n]
    assert soft and all("fast_softmax" in n for n in soft), soft
    report = cpu_sched.CpuScheduleReport()
    out = cpu_sched.schedule_function(funcs[soft[0]], target, 2, report, soft[0])
    assert "T_softmax_maxelem_rf" in out.script() and "T_softmax_expsum_rf" in out.script()
    # the 203-wide matmul reads a weight padded at compile time (no padding copy per call)
    mm = next(n for n in funcs if "matmul" in n)
    assert [int(d) for d in funcs[mm].params[1].shape][-1] % 8 == 0
    assert "_pad" not in cpu_sched.schedule_function(funcs[mm], target, 2).script()
    # depthwise conv: the pad runs inside the parallel loop over planes, rows are the register axis
    conv = next(n for n in funcs if "conv2d" in n)
    report = cpu_sched.CpuScheduleReport()
    out = cpu_sched.schedule_function(funcs[conv], target, 2, report, conv)
    assert report.rules[conv] == "tiled", (report.rules, report.fallbacks)
    body = out.body
    while not isinstance(body, tirx.For):
        body = body.body if hasattr(body, "body") else body.block.body
    assert body.kind == tirx.ForKind.PARALLEL and int(body.extent) == 24  # one iteration per (n, c) plane
    script = out.script()
    assert script.index('T.sblock("pad_temp")') > script.index("T.parallel(")


def test_constant_weights_repacked_at_compile_time(tmp_path):
    """Convs vectorized over output channels read weights repacked to [O/V, I, KH, KW, V]: the
    repack is split off and folded on the constant weight, so the built module calls no repack
    and the artifact still matches ONNX Runtime."""
    import tvm
    from tvm.relax.backend.cpu_generic import pipeline

    from hyperinfer import zoo_arch
    from hyperinfer.compile import build, passes, targets
    from hyperinfer.compile.schedules import cpu as cpu_sched

    # 7x7 planes (ResNet-50's last stage) and a stride-2 conv: the channel-vectorized rule
    clean = _clean(zoo_arch.save("resnet50", tmp_path / "r.onnx", size=32, width=8, blocks=(1, 1, 1, 1),
                                 classes=10), {})
    target = targets.get(_target_id())
    tt = target.tvm_target()
    report = cpu_sched.CpuScheduleReport()
    with tt, tvm.transform.PassContext(opt_level=3):
        mod = tvm.transform.Sequential(
            pipeline.library_dispatch_passes(tt) + passes.cpu_pre_fusion_passes() + passes.fusion_passes()
            + passes.cpu_post_fusion_passes() + [cpu_sched.schedule_pass(target, report)]
            + passes.cpu_post_schedule_passes())(build.import_onnx(clean.model))
    assert report.count().get("tiled-channels-packed", 0) >= 3, report.count()
    assert "weight_prepack" not in mod["main"].script()  # folded at compile time
    _build_and_compare(tmp_path, "resnet-packed", clean)


def test_large_1x1_conv_walks_pixels_outside_channel_blocks(tmp_path):
    """A 1x1 conv whose input outgrows L2 (128x50x50, 1.3 MB) runs its output-channel blocks
    innermost of the parallel loop (each input tile stays in L1 across them), writes its
    epilogue (bias, residual, relu) with vector stores, and matches ONNX Runtime."""
    from onnx import TensorProto, helper, numpy_helper
    from tvm import tirx

    from hyperinfer.compile import build, targets, tune
    from hyperinfer.compile.schedules import cpu as cpu_sched
    from hyperinfer.zoo import _finish

    rng = np.random.default_rng(3)
    w = (rng.standard_normal((32, 128, 1, 1)) * 0.1).astype(np.float32)
    b = rng.standard_normal(32).astype(np.float32)
    g = helper.make_graph(
        [helper.make_node("Conv", ["x", "w", "b"], ["y"], kernel_shape=[1, 1]),
         helper.make_node("Add", ["y", "r"], ["s"]),
         helper.make_node("Relu", ["s"], ["z"])],
        "conv1x1",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 128, 50, 50]),
         helper.make_tensor_value_info("r", TensorProto.FLOAT, [1, 32, 50, 50])],
        [helper.make_tensor_value_info("z", TensorProto.FLOAT, [1, 32, 50, 50])],
        [numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b")],
    )
    clean = _clean(_finish(g, tmp_path / "conv1x1.onnx"), {})
    mod = tune.fused_module(build.import_onnx(clean.model), targets.get(_target_id()))
    name, func = next((gv.name_hint, f) for gv, f in mod.functions_items()
                      if isinstance(f, tirx.PrimFunc) and "conv2d" in gv.name_hint)
    report = cpu_sched.CpuScheduleReport()
    out = cpu_sched.schedule_function(func, targets.get(_target_id()), 2, report, name)
    assert report.rules[name].startswith("tiled-channels"), (report.rules, report.fallbacks)
    lines = out.script().splitlines()
    par = [re.search(r"for (\w+) in T.parallel", ln).group(1) for ln in lines if "T.parallel" in ln]
    # TOPI names the conv's loops nn, ff, yy, xx: the channel blocks are fused in last
    assert any(p.startswith("nn_yy_xx") and p.endswith("ff_0_fused") for p in par), par
    epi = next(i for i, ln in enumerate(lines) if 'T.sblock("compute")' in ln)
    assert "T.vectorized" in lines[epi - 1], lines[epi - 1]
    _build_and_compare(tmp_path, "conv1x1", clean)


def _gemm_head(tmp_path, seed: int, k: int, n: int):
    """A classifier head ``x[1, k] @ W + b`` (Gemm) cleaned and fused for the native target:
    ``(clean model, target, name of its matmul function, that PrimFunc)``."""
    from onnx import TensorProto, helper
    from tvm import tirx

    from hyperinfer.compile import build, targets, tune
    from hyperinfer.zoo import _finish
    from hyperinfer.zoo_arch import Graph

    g = Graph(seed)
    y = g.gemm("x", k, n)
    graph = helper.make_graph(g.nodes, "head", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, k])],
                              [helper.make_tensor_value_info(y, TensorProto.FLOAT, [1, n])], g.inits)
    clean = _clean(_finish(graph, tmp_path / "head.onnx"), {})
    target = targets.get(_target_id())
    mod = tune.fused_module(build.import_onnx(clean.model), target)
    name, mm = next((gv.name_hint, f) for gv, f in mod.functions_items()
                    if isinstance(f, tirx.PrimFunc) and "matmul" in gv.name_hint)
    return clean, target, name, mm


def test_gemm_head_weight_padded_at_compile_time(tmp_path):
    """A classifier Gemm (transB=1, imported as matmul by a transposed constant) to 200 classes
    (whole 8-lane but not 16-lane vectors, like ResNet's 1000) reads a weight padded to 208 at
    compile time: no copy of the whole weight per call; same numbers as ONNX Runtime."""
    from hyperinfer.compile.schedules import cpu as cpu_sched

    clean, target, _, mm = _gemm_head(tmp_path, seed=4, k=96, n=200)
    assert [int(d) for d in mm.params[1].shape] == [96, 208]
    assert "_pad" not in cpu_sched.schedule_function(mm, target, 2).script()
    _build_and_compare(tmp_path, "head", clean)


def test_classifier_head_at_batch_1_streams_a_repacked_weight(tmp_path):
    """A 1000-class Gemm at batch 1 (a matrix-vector product) tiles a few vectors of columns and
    reads its weight repacked at compile time to [N/t, K, t] (each tile's weights contiguous);
    same numbers as ONNX Runtime."""
    from hyperinfer.compile.schedules import cpu as cpu_sched

    clean, target, name, mm = _gemm_head(tmp_path, seed=6, k=64, n=1000)
    report = cpu_sched.CpuScheduleReport()
    script = cpu_sched.schedule_function(mm, target, 2, report, name).script()
    assert report.rules[name] == "tiled-gemv-packed", (report.rules, report.fallbacks)
    assert "meta_schedule.layout_rewrite_preproc" in script
    _build_and_compare(tmp_path, "head", clean)


def test_strided_max_pool_runs_row_by_row_over_a_local_window(tmp_path):
    """ResNet's 3x3/2 max pool (padding 1): parallel over output rows, each row's three padded
    input rows built in a local buffer (no padded copy of the whole input, no masked gathers),
    while a stride-1 pool keeps its padded plane; same numbers as ONNX Runtime (the -inf
    border included: a negative input)."""
    from onnx import TensorProto, helper
    from tvm import tirx

    from hyperinfer.compile import build, targets, tune
    from hyperinfer.compile.schedules import cpu as cpu_sched
    from hyperinfer.zoo import _finish

    nodes = [helper.make_node("MaxPool", ["x"], ["p"], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1]),
             helper.make_node("MaxPool", ["p"], ["y"], kernel_shape=[3, 3], strides=[1, 1], pads=[1, 1, 1, 1])]
    graph = helper.make_graph(nodes, "pools", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 32, 30, 30])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 32, 15, 15])])
    clean = _clean(_finish(graph, tmp_path / "pools.onnx"), {})
    target = targets.get(_target_id())
    mod = tune.fused_module(build.import_onnx(clean.model), target)
    pools, rules = {}, {}
    for gv, f in mod.functions_items():
        if isinstance(f, tirx.PrimFunc) and "pool" in gv.name_hint:
            report = cpu_sched.CpuScheduleReport()
            size = int(f.params[0].shape[-1])
            pools[size] = cpu_sched.schedule_function(f, target, 2, report, gv.name_hint).script()
            rules[size] = report.rules[gv.name_hint]
    assert sorted(pools) == [15, 30]
    assert rules[30] == "pool-rows", rules
    # 32 channels x 15 output rows in parallel, the padded window in a local buffer under that loop
    assert re.search(r"in T.parallel\(T.int64\(480\)\)", pools[30]), pools[30][:3000]
    assert re.search(r"pad_temp_local = T.sblock_alloc_buffer\(.*scope=\"local\"\)", pools[30])
    assert rules[15] != "pool-rows" and "pad_temp = T.sblock_alloc_buffer" in pools[15]  # padded plane
    _build_and_compare(tmp_path, "pools", clean)


def test_1x1_convs_over_56x56_planes_are_gemms_over_the_flat_plane(tmp_path):
    """With 16 lanes a 56-wide row is no whole vector but a 56x56 plane is: a 1x1 conv runs as
    a GEMM over the flattened plane (pixels vectorized, output channels in registers): a
    reduction over more inputs than outputs (128 -> 32) walks pixel tiles outside and copies
    each tile's input; one with more outputs (32 -> 128) walks chunks of pixel tiles outside and
    copies each chunk's input; same numbers as ONNX Runtime."""
    from onnx import TensorProto, helper

    from tvm import tirx

    from hyperinfer.compile import build, targets, tune
    from hyperinfer.compile.schedules import cpu as cpu_sched
    from hyperinfer.zoo import _finish
    from hyperinfer.zoo_arch import Graph

    g = Graph(5)
    a = g.op("Relu", [g.conv("x", 128, 32, k=1, bias=True)])
    y = g.op("Relu", [g.op("Add", [g.conv(a, 32, 128, k=1, bias=True), "x"])])
    graph = helper.make_graph(g.nodes, "bottleneck", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 128, 56, 56])],
                              [helper.make_tensor_value_info(y, TensorProto.FLOAT, [1, 128, 56, 56])], g.inits)
    clean = _clean(_finish(graph, tmp_path / "bottleneck.onnx"), {})
    avx512 = targets.get("cpu-x86_64-avx512")
    mod = tune.fused_module(build.import_onnx(clean.model), avx512)
    convs = sorted((gv.name_hint, f) for gv, f in mod.functions_items()
                   if isinstance(f, tirx.PrimFunc) and "conv2d" in gv.name_hint)
    assert len(convs) == 2
    order = {}
    for name, func in convs:
        report = cpu_sched.CpuScheduleReport()
        script = cpu_sched.schedule_function(func, avx512, 2, report, name).script()
        assert report.rules[name] == "tiled-pixels-packed", (report.rules, report.fallbacks)
        par = [p for p in re.findall(r"for (\w+) in T.parallel", script) if p != "ax0_ax1_ax2_ax3_fused_0"]
        assert len(par) == 1, script[:2000]  # the conv's loop (not the weight repack's)
        order[int(func.params[0].shape[1])] = (par[0], script)
    # loops (n, c, pixel): ax0, ax1, ax2; 128 input channels (4x the outputs) at 56x56 walk the
    # pixels outside (parallel) and copy each pixel tile's input into a local buffer that every
    # output-channel block reads; 32 -> 128 keeps the channel blocks outermost
    assert order[128][0].startswith("ax0_ax2_0_fused"), order[128][0]
    # (a flat-plane local copy of the input, computed per pixel tile: lowering compacts it to [128, 32])
    assert re.search(r"x_local = T.sblock_alloc_buffer\(\(T.int64\(1\), T.int64\(128\), T.int64\(3136\)\), "
                     r"scope=\"local\"\)", order[128][1]), order[128][1][:3000]
    # 32 -> 128 (more outputs than inputs) walks chunks of 14 pixel tiles (448 pixels) outside,
    # copies each chunk's input [32, 448] once, and runs every output-channel block over it
    assert order[32][0].startswith("ax0_ax2_0_0_fused"), order[32][0]
    assert re.search(r"(\w+)_global = T.sblock_alloc_buffer\(\(T.int64\(1\), T.int64\(32\), T.int64\(3136\)\)\)",
                     order[32][1]), order[32][1][:3000]
    assert "* T.int64(448) + " in order[32][1]
    # the accumulators (2 pixel vectors x 4 channels) are stack arrays LLVM keeps in registers:
    # what is allocated at run time is the input copies alone (128 inputs x 32 pixels; 32 x 448)
    for cin, func in ((int(f.params[0].shape[1]), f) for _, f in convs):
        sizes = workspace_allocations(cpu_sched.schedule_function(func, avx512, 2), avx512)
        assert sorted(sizes.values()) == [cin * (32 if cin == 128 else 448) * 4], (cin, sizes)
    if _can_run("cpu-x86_64-avx512"):
        _build_and_compare(tmp_path, "bottleneck", clean)


def _scheduled_conv(clean, target, threads: int):
    """The one conv function of ``clean``'s fused module scheduled for ``target``: (rule, or
    the rule and its fallbacks; TVMScript)."""
    from tvm import tirx

    from hyperinfer.compile import build, tune
    from hyperinfer.compile.schedules import cpu as cpu_sched

    mod = tune.fused_module(build.import_onnx(clean.model), target)
    name, func = next((gv.name_hint, f) for gv, f in mod.functions_items()
                      if isinstance(f, tirx.PrimFunc) and "conv2d" in gv.name_hint)
    report = cpu_sched.CpuScheduleReport()
    script = cpu_sched.schedule_function(func, target, threads, report, name).script()
    return (report.rules[name] if not report.fallbacks else f"{report.rules[name]} {report.fallbacks}"), script


def _residual_1x1(tmp_path, name: str, seed: int, cin: int, cout: int, hw: int):
    """``relu(conv1x1(x) + b + r)``, x [1, cin, hw, hw], r [1, cout, hw, hw], cleaned."""
    from onnx import TensorProto, helper

    from hyperinfer.zoo import _finish
    from hyperinfer.zoo_arch import Graph

    g = Graph(seed)
    y = g.op("Relu", [g.op("Add", [g.conv("x", cin, cout, k=1, bias=True), "r"])])
    graph = helper.make_graph(g.nodes, name,
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, cin, hw, hw]),
                               helper.make_tensor_value_info("r", TensorProto.FLOAT, [1, cout, hw, hw])],
                              [helper.make_tensor_value_info(y, TensorProto.FLOAT, [1, cout, hw, hw])], g.inits)
    return _clean(_finish(graph, tmp_path / f"{name}.onnx"), {})


def test_1x1_conv_chunks_split_channel_blocks_for_many_threads(tmp_path, monkeypatch):
    """Built where the node may have 16 threads, the chunked 1x1 GEMM (32 -> 128 at 56x56: 7
    chunks of 448 pixels) also splits its 16 output-channel blocks into 8 groups, so that the
    parallel loop has 56 items (each group copies its chunk's input again); with a residual
    and a relu in its epilogue it computes what ONNX Runtime does."""
    from hyperinfer.compile import targets
    from hyperinfer.compile.schedules import cpu as cpu_sched

    monkeypatch.setattr(cpu_sched.os, "cpu_count", lambda: 16)
    clean = _residual_1x1(tmp_path, "expand", 7, 32, 128, 56)
    rule, script = _scheduled_conv(clean, targets.get("cpu-x86_64-avx512"), 0)
    assert rule.startswith("tiled-pixels"), rule
    par = re.findall(r"for (\w+) in T.parallel\(T.int64\((\d+)\)\)", script)
    assert ("ax0_ax2_0_0_ax1_0_0_fused", "56") in par, par
    if _can_run("cpu-x86_64-avx512"):
        _build_and_compare(tmp_path, "expand", clean)


def test_strided_1x1_conv_runs_on_a_sliced_input(tmp_path):
    """ResNet's downsampling shortcut (1x1, stride 2, odd plane 15x15) becomes a strided slice
    and a stride-1 1x1 conv on the quarter-size input; same numbers as ONNX Runtime."""
    from onnx import TensorProto, helper

    from tvm import tirx

    from hyperinfer.compile import build, targets, tune
    from hyperinfer.zoo import _finish
    from hyperinfer.zoo_arch import Graph

    g = Graph(6)
    y = g.op("Relu", [g.conv("x", 16, 32, k=1, stride=2, bias=True)])
    graph = helper.make_graph(g.nodes, "shortcut", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 16, 15, 15])],
                              [helper.make_tensor_value_info(y, TensorProto.FLOAT, [1, 32, 8, 8])], g.inits)
    clean = _clean(_finish(graph, tmp_path / "shortcut.onnx"), {})
    mod = tune.fused_module(build.import_onnx(clean.model), targets.get(_target_id()))
    funcs = {gv.name_hint: f for gv, f in mod.functions_items() if isinstance(f, tirx.PrimFunc)}
    assert any("strided_slice" in n for n in funcs), list(funcs)
    conv = next(f for n, f in funcs.items() if "conv2d" in n)
    assert [int(d) for d in conv.params[0].shape] == [1, 16, 8, 8]
    _build_and_compare(tmp_path, "shortcut", clean)


def test_1x1_conv_with_a_large_weight_block_consumes_it_in_slices(tmp_path):
    """256 -> 512 channels over 7x7 (ResNet-50's last stage): 256 input channels by 32 output
    channels of packed weights (32 KB) outgrow half an L1, so the reduction is split and each
    slice serves every pixel of the plane; same numbers as ONNX Runtime."""
    from hyperinfer.compile import targets

    clean = _residual_1x1(tmp_path, "last_stage", 8, 256, 512, 7)
    target = targets.get(_target_id())
    rule, script = _scheduled_conv(clean, target, 2)
    assert rule.startswith("tiled-channels"), rule
    if target.vector_lanes == 16:  # 2 x 16 output channels a block: 32 KB of weights per block
        assert re.search(r"for rc_0, yy, .* in T.grid", script), script[:3000]
    _build_and_compare(tmp_path, "last_stage", clean)


def test_schedule_knobs_change_one_function_and_reach_the_build(tmp_path):
    """Knobs other than the defaults change the schedule of the function they are given for
    (one output-channel vector instead of two: weights packed [O/16, ...] instead of [O/32, ...])
    and nothing else; a tuning database whose choice for a function is ``rules`` makes the
    build use those knobs for it (the build says it is tuned) and the artifact still computes
    what ONNX Runtime does."""
    import json

    from hyperinfer.compile import build, targets, tune
    from hyperinfer.compile.schedules import cpu as cpu_sched

    clean = _residual_1x1(tmp_path, "stage", 9, 64, 64, 14)
    target = targets.get(_target_id())
    if target.vector_lanes != 16:
        pytest.skip("the packed widths below are AVX-512's")
    default_rule, default = _scheduled_conv(clean, target, 2)
    one = cpu_sched.ScheduleKnobs(ch_vectors=1)
    assert one.changed() == {"ch_vectors": 1}
    assert cpu_sched.ScheduleKnobs.from_changed({"ch_vectors": 1, "from_a_newer_release": 3}) == one
    for bad in ({"ch_vectors": "1"}, {"unroll": -2}, {"pack_input": 1}):
        with pytest.raises(ValueError):
            cpu_sched.ScheduleKnobs.from_changed(bad)
    mod = tune.fused_module(build.import_onnx(clean.model), target)
    func = next(f for gv, f in mod.functions_items() if "conv2d" in gv.name_hint and hasattr(f, "params"))
    narrow = cpu_sched.schedule_function(func, target, 2, knobs=one).script()
    assert default_rule.startswith("tiled-channels"), default_rule
    packed = r"_global = T.sblock_alloc_buffer\(\(T.int64\({}\), T.int64\(64\), T.int64\(1\), T.int64\(1\), T.int64\({}\)\)\)"
    assert re.search(packed.format(2, 32), default) and not re.search(packed.format(2, 32), narrow)
    assert re.search(packed.format(4, 16), narrow), narrow[:3000]
    assert _scheduled_conv(clean, target, 2)[1] == default  # the knobs did not stay behind
    db = tmp_path / "tuning"
    db.mkdir()
    (db / tune.CHOICES).write_text(json.dumps({"target": target.id, "functions": {tune.function_key(func): {
        "name": "conv", "choice": "rules", "knobs": {"ch_vectors": 1}, "default_us": 2.0, "rules_us": 1.0}}}))
    assert tune.rule_knobs(db) == {tune.function_key(func): one}
    damaged = json.loads((db / tune.CHOICES).read_text())
    damaged["functions"]["other"] = {"name": "x", "choice": "rules", "knobs": {"unroll": "many"}}
    (db / tune.CHOICES).write_text(json.dumps(damaged))
    assert tune.rule_knobs(db) == {tune.function_key(func): one}  # the damaged record is skipped
    assert _build_and_compare(tmp_path, "stage", clean, tuning_db=db).tuned
