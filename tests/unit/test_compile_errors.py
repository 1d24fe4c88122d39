"""Every bad compile input is one `Error: ...` line and a non-zero exit, never a traceback."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from hyperinfer import zoo
from support import assert_one_line_error, run_cli


@pytest.fixture(scope="module")
def dynamic_model(tmp_path_factory) -> Path:
    """The MLP's input is [batch, 64]: a dynamic dim."""
    path, _ = zoo.build_small("mlp", tmp_path_factory.mktemp("dyn"))
    return path


def test_missing_file(tmp_path):
    assert_one_line_error(run_cli("compile", str(tmp_path / "nope.onnx"), "--name", "m"), "no such file")


def test_not_onnx(tmp_path):
    f = tmp_path / "notes.onnx"
    f.write_text("this is not a protobuf\n" * 10)
    assert_one_line_error(run_cli("compile", str(f), "--name", "m"), "not a valid ONNX model")


def test_truncated_onnx(tmp_path, dynamic_model):
    data = dynamic_model.read_bytes()
    f = tmp_path / "truncated.onnx"
    f.write_bytes(data[: len(data) // 2])
    assert_one_line_error(run_cli("compile", str(f), "--name", "m"), "not a valid ONNX model")


def test_unknown_target(dynamic_model):
    assert_one_line_error(run_cli("compile", str(dynamic_model), "--name", "m", "--target", "tpu-v5"),
                          "unknown target 'tpu-v5'", "cpu-x86_64")


def test_dynamic_dim_without_input_shape(dynamic_model, tmp_path):
    assert_one_line_error(run_cli("compile", str(dynamic_model), "--name", "m", "--out", str(tmp_path)),
                          "input 'x' has dynamic dims", "--input-shape x=")


def test_input_shape_names_no_input(dynamic_model, tmp_path):
    assert_one_line_error(run_cli("compile", str(dynamic_model), "--name", "m", "--out", str(tmp_path),
                                  "--input-shape", "y=1,64"), "'y'", "inputs are: x")


def test_bad_input_shape_syntax(dynamic_model, tmp_path):
    assert_one_line_error(run_cli("compile", str(dynamic_model), "--name", "m", "--out", str(tmp_path),
                                  "--input-shape", "x=1,sixty-four"), "--input-shape")


def test_existing_output_without_force(dynamic_model, tmp_path):
    args = ["compile", str(dynamic_model), "--name", "m", "--out", str(tmp_path), "--input-shape", "x=1,64",
            "--target", "cpu-x86_64"]
    first = run_cli(*args)
    assert first.returncode == 0, first.stderr
    before = (tmp_path / "m" / "1" / "manifest.json").read_bytes()
    assert_one_line_error(run_cli(*args), "already exists", "--force")
    assert (tmp_path / "m" / "1" / "manifest.json").read_bytes() == before  # nothing touched
    forced = run_cli(*args, "--force")
    assert forced.returncode == 0, forced.stderr


def test_corrupt_artifact_fails_verify(compiled_small, tmp_path):
    src = compiled_small("mlp").path
    pkg_dir = tmp_path / "mlp" / "1"
    shutil.copytree(src, pkg_dir)
    ok = run_cli("models", "verify", str(pkg_dir))
    assert ok.returncode == 0, ok.stdout + ok.stderr
    artifact = next((pkg_dir / "artifacts").glob("*.so"))
    data = bytearray(artifact.read_bytes())
    data[len(data) // 2] ^= 0xFF
    artifact.write_bytes(bytes(data))
    assert_one_line_error(run_cli("models", "verify", str(pkg_dir)), "sha256")


# ---------------------------------------------------------------- models as users bring them

def _model(nodes, inputs, outputs, inits=(), opset=17, ir=8):
    from onnx import helper

    m = helper.make_model(helper.make_graph(nodes, "g", inputs, outputs, list(inits)),
                          opset_imports=[helper.make_opsetid("", opset)])
    m.ir_version = ir
    return m


def _vi(name, shape, elem=None):
    from onnx import TensorProto, helper

    return helper.make_tensor_value_info(name, elem or TensorProto.FLOAT, shape)


def test_every_unresolved_dim_is_named(tmp_path):
    """Two inputs, named and unnamed dynamic dims: one error naming each, with a ready --input-shape."""
    import onnx
    from onnx import helper

    m = _model([helper.make_node("Add", ["a", "b"], ["y"], name="add0")],
               [_vi("a", ["batch", 8]), _vi("b", ["batch", None])], [_vi("y", ["batch", 8])])
    f = tmp_path / "dyn2.onnx"
    onnx.save(m, str(f))
    proc = run_cli("compile", str(f), "--name", "m", "--out", str(tmp_path))
    assert_one_line_error(proc, "input 'a'", "dim 0 ('batch')", "--input-shape a=N,8", "input 'b'",
                          "dim 1 (unnamed)")
    # fixing 'a' fixes the shared name 'batch' in 'b' too; the unnamed dim is still open
    assert_one_line_error(run_cli("compile", str(f), "--name", "m", "--out", str(tmp_path), "--input-shape",
                                  "a=2,8"), "input 'b'", "dim 1 (unnamed)", "--input-shape b=2,N")
    assert "input 'a'" not in run_cli("compile", str(f), "--name", "m", "--out", str(tmp_path),
                                      "--input-shape", "a=2,8").stderr


def test_shared_dim_names_and_int64_inputs():
    """int64 token ids with a named sequence dim shared by the mask: one --input-shape fixes both."""
    from onnx import TensorProto, helper

    from hyperinfer.compile import cleanup

    emb = helper.make_tensor("emb", TensorProto.FLOAT, [50, 4], np.arange(200, dtype=np.float32).tolist())
    m = _model([helper.make_node("Gather", ["emb", "ids"], ["e"], name="embed"),
                helper.make_node("Unsqueeze", ["mask", "ax"], ["m2"], name="unsq"),
                helper.make_node("Mul", ["e", "m2"], ["y"], name="mul")],
               [_vi("ids", [1, "seq"], TensorProto.INT64), _vi("mask", [1, "seq"])],
               [_vi("y", [1, "seq", 4])],
               [emb, helper.make_tensor("ax", TensorProto.INT64, [1], [2])])
    clean = cleanup.clean(m, {"ids": (1, 6)})
    assert [(i.name, i.shape, i.dtype) for i in clean.inputs] == [("ids", (1, 6), "int64"),
                                                                   ("mask", (1, 6), "float32")]
    assert clean.outputs[0].shape == (1, 6, 4)


def test_initializer_named_by_input_shape_stays_an_input():
    from onnx import TensorProto, helper

    from hyperinfer.compile import cleanup

    w = helper.make_tensor("w", TensorProto.FLOAT, [4], [1.0, 2.0, 3.0, 4.0])
    m = _model([helper.make_node("Mul", ["x", "w"], ["y"], name="mul")], [_vi("x", [4]), _vi("w", [4])],
               [_vi("y", [4])], [w], opset=9, ir=3)
    assert [i.name for i in cleanup.clean(m, {}).inputs] == ["x"]
    overridden = cleanup.clean(m, {"w": (4,)})
    assert [i.name for i in overridden.inputs] == ["x", "w"]
    assert any("kept as inputs" in s for s in overridden.steps)


def test_external_data_loaded_and_missing_file_named(tmp_path):
    import onnx
    from onnx import helper, numpy_helper

    from hyperinfer.compile import cleanup

    w = numpy_helper.from_array(np.ones((64, 64), np.float32), "w")
    m = _model([helper.make_node("MatMul", ["x", "w"], ["y"], name="mm")], [_vi("x", [1, 64])],
               [_vi("y", [1, 64])], [w])
    f = tmp_path / "ext.onnx"
    onnx.save(m, str(f), save_as_external_data=True, all_tensors_to_one_file=True, location="ext.weights",
              size_threshold=0)
    loaded = cleanup.load_onnx(f)
    assert numpy_helper.to_array(loaded.graph.initializer[0]).sum() == 64 * 64
    (tmp_path / "ext.weights").unlink()
    assert_one_line_error(run_cli("compile", str(f), "--name", "m", "--out", str(tmp_path / "r")),
                          "'w'", "ext.weights", "copy the model's external data files next to it")


def test_over_2gb_refused_without_reading(tmp_path):
    """External data over protobuf's 2 GB limit (a sparse file: nothing is written or read)."""
    import onnx
    from onnx import TensorProto, helper

    n = 600_000_000  # floats: 2.4 GB
    w = TensorProto(name="w", data_type=TensorProto.FLOAT, dims=[n])
    w.data_location = TensorProto.EXTERNAL
    for k, v in (("location", "big.weights"), ("offset", "0"), ("length", str(4 * n))):
        e = w.external_data.add()
        e.key, e.value = k, v
    m = _model([helper.make_node("Add", ["x", "w"], ["y"], name="add")], [_vi("x", [n])], [_vi("y", [n])], [w])
    f = tmp_path / "big.onnx"
    f.write_bytes(m.SerializeToString())
    with open(tmp_path / "big.weights", "wb") as fh:
        fh.truncate(4 * n)
    assert_one_line_error(run_cli("compile", str(f), "--name", "m", "--out", str(tmp_path / "r")),
                          "2.40 GB", "over the 2 GB protobuf limit")


def test_unsupported_op_names_node_and_step(tmp_path):
    import onnx
    from onnx import TensorProto, helper

    m = _model([helper.make_node("Relu", ["x"], ["r"], name="relu0"),
                helper.make_node("Det", ["r"], ["y"], name="the_determinant")],
               [_vi("x", [3, 3])], [_vi("y", [], TensorProto.FLOAT)])
    f = tmp_path / "det.onnx"
    onnx.save(m, str(f))
    assert_one_line_error(run_cli("compile", str(f), "--name", "m", "--out", str(tmp_path / "r")),
                          "import into TVM Relax", "Det node 'the_determinant'", "to do:")


def test_data_dependent_output_names_step_and_output(tmp_path):
    import onnx
    from onnx import TensorProto, helper

    m = _model([helper.make_node("NonZero", ["x"], ["y"], name="nz")], [_vi("x", [4, 4])],
               [_vi("y", [2, None], TensorProto.INT64)])
    f = tmp_path / "nz.onnx"
    onnx.save(m, str(f))
    assert_one_line_error(run_cli("compile", str(f), "--name", "m", "--out", str(tmp_path / "r")),
                          "clean-up (shape inference)", "output 'y'", "dynamic shape")
