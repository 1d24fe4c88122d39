"""`hyperinfer models list` and `models build` errors (a build itself runs in tests/e2e/test_triton_examples.py)."""

from __future__ import annotations

from support import assert_one_line_error, run_cli


def test_list_names_every_known_model():
    p = run_cli("models", "list", timeout=120)
    assert p.returncode == 0, p.stderr
    names = [ln.split(":")[0] for ln in p.stdout.splitlines()]
    assert names == ["ppocr-det", "ppocr-rec", "ppocr-cls", "mlp", "cnn", "two-inputs", "int-bool", "simple",
                     "simple_int8"]
    assert "[batch, 16]" in p.stdout  # printed as is, not eaten as console markup


def test_build_refuses_an_unknown_name_before_building_anything(tmp_path):
    p = run_cli("models", "build", "simple", "nope", "--out", str(tmp_path / "repo"), timeout=120)
    assert_one_line_error(p, "unknown model 'nope'", "simple_int8")
    assert not (tmp_path / "repo").exists()
