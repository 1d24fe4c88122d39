"""The channel-blocked activation layout (NCHW16c) of AVX-512 builds: which convs take it, the
rules that schedule them, the same numbers as ONNX Runtime, and the ways back to NCHW."""

from __future__ import annotations

import re

import pytest
from support import build_and_compare, workspace_allocations

pytest.importorskip("tvm")
pytest.importorskip("onnxruntime")

AVX512 = "cpu-x86_64-avx512"


def _runnable(target_id: str) -> bool:
    from hyperinfer.compile import targets

    return target_id in targets.runnable_cpu_targets()


def _net(tmp_path):
    """A small net with every kind of conv a CNN has: a 7x7/2 stem over 3 channels, a 3x3/2 max
    pool, a 3x3 conv to 48 channels (3 blocks: one block per register tile), a 1x1 conv with a
    residual, a 3x3/2 conv beside a strided 1x1 shortcut, then a depthwise 3x3 and a 1x1 to 24
    channels (neither blocks: they stay NCHW)."""
    from onnx import TensorProto, helper

    from hyperinfer.compile import cleanup
    from hyperinfer.zoo import _finish
    from hyperinfer.zoo_arch import Graph

    g = Graph(11)
    stem = g.op("Relu", [g.conv("x", 3, 32, k=7, stride=2, bias=True)])
    pooled = g.op("MaxPool", [stem], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])
    a = g.op("Relu", [g.conv(pooled, 32, 48, k=3, bias=True)])
    c = g.op("Relu", [g.op("Add", [g.conv(a, 48, 32, k=1, bias=True), pooled])])
    f = g.op("Relu", [g.op("Add", [g.conv(c, 32, 64, k=3, stride=2, bias=True),
                                   g.conv(c, 32, 64, k=1, stride=2, bias=True)])])
    y = g.op("Relu", [g.conv(g.conv(f, 64, 64, k=3, group=64), 64, 24, k=1, bias=True)])
    graph = helper.make_graph(g.nodes, "blocked", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 32, 32])],
                              [helper.make_tensor_value_info(f, TensorProto.FLOAT, [1, 64, 4, 4]),
                               helper.make_tensor_value_info(y, TensorProto.FLOAT, [1, 24, 4, 4])], g.inits)
    return cleanup.clean(cleanup.load_onnx(_finish(graph, tmp_path / "blocked.onnx")), {}, threads=2)


def _conv_layouts(clean, target) -> list[str]:
    """The data layout of every conv after the CPU build's graph passes."""
    import tvm
    from tvm import relax

    from hyperinfer.compile import build, passes

    with target.tvm_target(), tvm.transform.PassContext(opt_level=3):
        mod = tvm.transform.Sequential(passes.cpu_pre_fusion_passes(target))(build.import_onnx(clean.model))
    found = []

    def visit(e):
        if isinstance(e, relax.Call) and getattr(e.op, "name", "") == "relax.nn.conv2d":
            found.append(str(e.attrs.data_layout))

    relax.analysis.post_order_visit(mod["main"], visit)
    return sorted(found)


def _rules(clean, target) -> dict[str, str]:
    """{function: rule} of the fused module scheduled for ``target`` (2 threads)."""
    from tvm import tirx

    from hyperinfer.compile import build, tune
    from hyperinfer.compile.schedules import cpu as cpu_sched

    mod = tune.fused_module(build.import_onnx(clean.model), target)
    report = cpu_sched.CpuScheduleReport()
    for gv, f in mod.functions_items():
        if isinstance(f, tirx.PrimFunc):
            cpu_sched.schedule_function(f, target, 2, report, gv.name_hint)
    assert not [f for f in report.fallbacks if "nchwc" in f or "blocked" in f], report.fallbacks
    return dict(report.rules)


def _build_and_compare(tmp_path, clean, target, name="blocked"):
    return build_and_compare(tmp_path, clean, target, name)


def test_blocked_layout_blocks_every_conv_that_blocks(tmp_path, monkeypatch):
    """In the blocked layout (forced: this net also has convs that do not block) the convs whose
    channels are whole blocks of 16 run NCHW16c (the stem reads its 3 channels as one block and
    writes blocks), the depthwise conv and the one to 24 channels stay NCHW; each blocked conv
    is scheduled by the blocked rule (weights repacked for two blocks per tile), the max pool by
    the blocked pool rule (no padded copy); same numbers as ONNX Runtime."""
    from hyperinfer.compile import targets

    monkeypatch.setenv("HYPERINFER_LAYOUT", "NCHW16c")
    target = targets.get(AVX512)
    clean = _net(tmp_path)
    assert _conv_layouts(clean, target) == ["NCHW", "NCHW", "NCHW16c", "NCHW16c", "NCHW16c", "NCHW16c",
                                            "NCHW3c"]
    rules = _rules(clean, target)
    convs = {k: v for k, v in rules.items() if "conv2d" in k}
    assert sum(v.startswith("tiled-nchwc") for v in convs.values()) == 5, rules
    assert sum(v == "tiled-nchwc-packed" for v in convs.values()) >= 3, rules  # 48 channels: one block a tile
    assert any(v == "pool-blocked" for k, v in rules.items() if "pool" in k), rules
    if _runnable(AVX512):
        _build_and_compare(tmp_path, clean, target)


def test_avx512_default_blocks_a_graph_only_when_every_conv_blocks(tmp_path, monkeypatch):
    """The AVX-512 default (``auto``): a graph where every conv blocks runs blocked; one with a
    depthwise conv and a conv to 24 channels stays NCHW as a whole (a transform at every switch
    between layouts cost more than the blocked convs gained)."""
    from hyperinfer.compile import targets

    monkeypatch.delenv("HYPERINFER_LAYOUT", raising=False)
    target = targets.get(AVX512)
    assert set(_conv_layouts(_net(tmp_path), target)) == {"NCHW"}
    assert _conv_layouts(_residual_3x3(tmp_path), target) == ["NCHW16c"]
    monkeypatch.setenv("HYPERINFER_LAYOUT", "NCHW")
    assert _conv_layouts(_residual_3x3(tmp_path), target) == ["NCHW"]


def test_blocked_conv_tile_is_a_row_of_pixels_by_two_blocks(tmp_path, monkeypatch):
    """A 3x3 conv at 14x14 (256 -> 256 in ResNet; here 32 -> 64): parallel over (channel block
    pairs, rows, 7-pixel runs), the accumulator a buffer of its own (lowering compacts it to the
    [2 blocks, 7 pixels, 16] tile, 896 bytes: a stack array LLVM keeps in registers, not a
    workspace allocated per parallel item), two input channels per inner step, the 16 output
    channels of a block one vector."""
    from tvm import tirx

    from hyperinfer.compile import build, targets, tune
    from hyperinfer.compile.schedules import cpu as cpu_sched

    monkeypatch.delenv("HYPERINFER_LAYOUT", raising=False)
    clean = _residual_3x3(tmp_path)
    target = targets.get(AVX512)
    mod = tune.fused_module(build.import_onnx(clean.model), target)
    name, func = next((gv.name_hint, f) for gv, f in mod.functions_items()
                      if isinstance(f, tirx.PrimFunc) and "conv2d" in gv.name_hint)
    report = cpu_sched.CpuScheduleReport()
    script = cpu_sched.schedule_function(func, target, 2, report, name).script()
    assert report.rules[name] == "tiled-nchwc-packed", (report.rules, report.fallbacks)
    # 64 channels = 2 pairs of blocks, x 14 rows x 2 runs of 7 pixels
    assert re.search(r"in T.parallel\(T.int64\(56\)\)", script), script[:3000]
    assert re.search(r"conv2d_nchwc_intermediate = T.sblock_alloc_buffer\(\(T.int64\(1\), T.int64\(4\), "
                     r"T.int64\(14\), T.int64\(14\), T.int64\(16\)\)\)", script), script[:3000]
    # compiled, one workspace is left: the padded input (once a call), none for the accumulator
    assert list(workspace_allocations(cpu_sched.schedule_function(func, target, 2, None, name), target)) == ["pad_temp"]
    assert re.search(r"T.vectorized\(T.int64\(16\)\)", script)
    # one knob changes it: a single block per tile (no repack), four input channels per step
    narrow = cpu_sched.schedule_function(func, target, 2, report, name,
                                         knobs=cpu_sched.ScheduleKnobs(ch_vectors=1, k_unroll=4)).script()
    assert report.rules[name] == "tiled-nchwc" and narrow != script
    if _runnable(AVX512):
        _build_and_compare(tmp_path, clean, target, "res3x3")


def _residual_3x3(tmp_path):
    """``relu(conv3x3(x) + b + r)``, x [1, 32, 14, 14], r [1, 64, 14, 14], cleaned."""
    from onnx import TensorProto, helper

    from hyperinfer.compile import cleanup
    from hyperinfer.zoo import _finish
    from hyperinfer.zoo_arch import Graph

    g = Graph(3)
    y = g.op("Relu", [g.op("Add", [g.conv("x", 32, 64, k=3, bias=True), "r"])])
    graph = helper.make_graph(g.nodes, "res3x3",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 32, 14, 14]),
                               helper.make_tensor_value_info("r", TensorProto.FLOAT, [1, 64, 14, 14])],
                              [helper.make_tensor_value_info(y, TensorProto.FLOAT, [1, 64, 14, 14])], g.inits)
    return cleanup.clean(cleanup.load_onnx(_finish(graph, tmp_path / "res3x3.onnx")), {}, threads=2)


def test_layout_follows_the_vector_width_unless_forced(monkeypatch):
    """A block of 16 is one AVX-512 vector: those targets block (``auto``: when every conv of
    the graph does), AVX2/SSE/NEON stay NCHW; HYPERINFER_LAYOUT forces a layout, and a value
    that is none of them is refused by name."""
    from hyperinfer.compile import targets
    from hyperinfer.compile.schedules import blocked
    from hyperinfer.errors import InvalidArgument

    monkeypatch.delenv("HYPERINFER_LAYOUT", raising=False)
    assert blocked.layout_for(targets.get(AVX512)) == "auto"
    assert blocked.layout_for(targets.get("cpu-x86_64-avx2")) == "NCHW"
    assert blocked.layout_for(targets.get("cpu-aarch64")) == "NCHW"
    monkeypatch.setenv("HYPERINFER_LAYOUT", "NCHW")
    assert blocked.layout_for(targets.get(AVX512)) == "NCHW"
    monkeypatch.setenv("HYPERINFER_LAYOUT", "NCHW16c")
    assert blocked.layout_for(targets.get("cpu-x86_64-avx2")) == "NCHW16c"
    monkeypatch.setenv("HYPERINFER_LAYOUT", "NHWC")
    with pytest.raises(InvalidArgument, match="HYPERINFER_LAYOUT='NHWC': expected one of NCHW, NCHW16c, auto"):
        blocked.layout_for(targets.get(AVX512))


def test_a_bad_layout_override_is_one_line_from_compile(tmp_path, monkeypatch, capsys):
    """`hyperinfer compile` with HYPERINFER_LAYOUT set to no layout: a non-zero exit with one
    error line naming the variable and the values it takes, no traceback, no package written."""
    from hyperinfer.cli import main

    clean = _residual_3x3(tmp_path)
    monkeypatch.setenv("HYPERINFER_LAYOUT", "NHWC")
    code = main(["compile", str(tmp_path / "res3x3.onnx"), "--name", "r", "--target", AVX512,
                 "--out", str(tmp_path / "repo")])
    out = capsys.readouterr()
    assert code != 0, out
    assert "Error: HYPERINFER_LAYOUT='NHWC': expected one of NCHW, NCHW16c, auto" in out.err, out
    assert "Traceback" not in out.err + out.out
    assert not (tmp_path / "repo" / "r" / "1").exists()  # no package version written
    assert clean is not None


def test_blocked_layout_forced_on_avx2_uses_two_vectors_a_block(tmp_path, monkeypatch):
    """Forced on an AVX2 target a block is two 8-lane vectors (one block per tile, fewer
    pixels: AVX2 has 16 registers); still the same numbers as ONNX Runtime."""
    from hyperinfer.compile import targets

    monkeypatch.setenv("HYPERINFER_LAYOUT", "NCHW16c")
    target = targets.get("cpu-x86_64-avx2")
    clean = _net(tmp_path)
    rules = _rules(clean, target)
    assert sum(v.startswith("tiled-nchwc") for k, v in rules.items() if "conv2d" in k) == 5, rules
    if _runnable(target.id):
        _build_and_compare(tmp_path, clean, target)


def test_a_graph_the_conversion_cannot_take_stays_nchw(tmp_path, monkeypatch):
    """When Relax's layout conversion throws (an op with no layout rule for blocked channels),
    the whole graph stays NCHW, the strided 1x1 shortcut still reads a sliced input, and the
    build computes what ONNX Runtime does."""
    import tvm

    from hyperinfer.compile import targets
    from hyperinfer.compile.schedules import blocked

    @tvm.transform.module_pass(opt_level=0, name="Throws")
    def throws(mod, _ctx):
        raise tvm.error.InternalError("Check failed: Layouts must have the same size")

    monkeypatch.setenv("HYPERINFER_LAYOUT", "NCHW16c")
    monkeypatch.setattr(blocked, "convert_layout_pass", lambda: throws)
    target = targets.get(AVX512)
    clean = _net(tmp_path)
    assert set(_conv_layouts(clean, target)) == {"NCHW"}
    if _runnable(AVX512):
        _build_and_compare(tmp_path, clean, target)


def test_a_blocked_build_that_fails_is_built_again_in_nchw(tmp_path, monkeypatch):
    """A failure anywhere in the blocked build (here the blocked conv's compute) costs a second
    build in NCHW, said in the build's notes, never a failed compile."""
    from hyperinfer.compile import targets
    from hyperinfer.compile.schedules import blocked

    def broken(*_a, **_k):
        raise RuntimeError("no blocked conv today")

    monkeypatch.setenv("HYPERINFER_LAYOUT", "NCHW16c")
    monkeypatch.setattr(blocked, "conv2d_nchwc", broken)
    if not _runnable(AVX512):
        pytest.skip("builds for AVX-512 and runs the artifact")
    built = _build_and_compare(tmp_path, _net(tmp_path), targets.get(AVX512))
    assert any("built in NCHW" in n for n in built.notes), built.notes


def test_tune_keeps_the_other_layout_only_when_it_is_clearly_faster():
    from hyperinfer.compile.retune import LAYOUT_MARGIN, pick_layout

    assert LAYOUT_MARGIN == 0.03
    assert pick_layout("NCHW", "NCHW16c", [10.0, 10.2, 9.9], [9.0, 9.5, 9.4]) == ("NCHW16c", pytest.approx(0.931, abs=0.001))
    assert pick_layout("NCHW", "NCHW16c", [10.0, 10.0, 10.0], [9.9, 9.8, 9.9])[0] == "NCHW"  # 1-2%: noise
    assert pick_layout("NCHW16c", "NCHW", [10.0, 10.0, 10.0], [11.0, 12.0, 9.0])[0] == "NCHW16c"


def test_tune_times_both_layouts_and_builds_in_the_one_it_keeps(tmp_path, monkeypatch, capsys):
    """`hyperinfer tune` on an AVX-512 package of a net whose convs only partly block: both
    layouts are built and timed whole, the one kept is recorded in choices.json, the rebuilt
    artifact (in that layout) reproduces the package's reference outputs."""
    import json

    from hyperinfer.cli import main
    from hyperinfer.compile import compile_model, retune, tune
    from hyperinfer.compile.schedules import blocked

    if not _runnable(AVX512):
        pytest.skip("tunes and runs an AVX-512 artifact")
    monkeypatch.delenv("HYPERINFER_LAYOUT", raising=False)
    _net(tmp_path)  # writes blocked.onnx
    p = compile_model(tmp_path / "blocked.onnx", "blocked", out_dir=tmp_path / "repo", targets_=[AVX512],
                      samples=2, threads=2, progress=False)
    import onnx

    from hyperinfer.compile import build, targets

    mod = build.import_onnx(onnx.load(str(p.path / "model.onnx")))
    assert retune._layout_candidates(mod, targets.get(AVX512)) == ("NCHW", "NCHW16c")
    code = main(["tune", str(p.path), "--target", AVX512, "--trials", "0", "--functions", "2", "--threads", "2"])
    out = capsys.readouterr().out
    assert code == 0, out
    m = re.search(r"Activation layout (\S+) \(whole model: NCHW [\d.]+ ms, NCHW16c [\d.]+ ms\)", out)
    assert m and m.group(1) in blocked.LAYOUTS, out
    db = p.path / "tuning" / AVX512
    choices = json.loads((db / tune.CHOICES).read_text())
    assert (choices["layout"], choices["layout_default"]) == (m.group(1), "NCHW")
    assert tune.layout_choice(db) == m.group(1)
    # a build with this database differs from the default one exactly when the layout changed
    changed = m.group(1) != "NCHW"
    assert tune.layout_changed(db) == changed
    if not tune.has_records(db) and not tune.rule_knobs(db):
        assert tune.has_tuning(db) == changed
    built = build.build_artifact(mod, targets.get(AVX512), tmp_path / "again.so", tuning_db=db)
    assert built.tuned == (changed or bool(tune.rule_knobs(db)) or tune.has_records(db))
