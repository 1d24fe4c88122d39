"""Every bad compile input is one `Error: ...` line and a non-zero exit, never a traceback."""

from __future__ import annotations

import shutil
from pathlib import Path

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
