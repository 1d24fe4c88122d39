"""``hyperinfer tune``: re-tunes one target of an existing package in place (tiny trial counts)."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("tvm")
pytest.importorskip("onnxruntime")
pytest.importorskip("xgboost")


def _native() -> str:
    from hyperinfer.compile import targets

    return targets.native_target()


@pytest.fixture(scope="module")
def keyfile(tmp_path_factory):
    from hyperinfer.identity import load_or_create_key

    p = tmp_path_factory.mktemp("keys") / "publisher.pem"
    load_or_create_key(p)
    return p


@pytest.fixture(scope="module")
def signed_package(tmp_path_factory, keyfile):
    """A signed MLP package with one artifact for this machine."""
    from hyperinfer import zoo
    from hyperinfer.compile import compile_model

    d = tmp_path_factory.mktemp("tunecmd")
    path, shapes = zoo.build_small("mlp", d)
    p = compile_model(path, "mlp", out_dir=d / "repo", targets_=[_native()], input_shapes=shapes,
                      samples=2, sign_key=keyfile, threads=2, progress=False)
    return p.path


def _trusted(keyfile) -> bytes:
    from hyperinfer.identity import load_key
    from hyperinfer.verify.signing import public_bytes

    return public_bytes(load_key(keyfile))


def _run(argv, capsys):
    from hyperinfer.cli import main

    code = main(argv)
    out = capsys.readouterr()
    return code, out.out, out.err


def test_tune_rebuilds_updates_manifest_and_removes_a_stale_signature(signed_package, keyfile, capsys):
    from hyperinfer import package as pkg
    from hyperinfer.compile import self_test, tune

    tid = _native()
    assert (signed_package / pkg.SIGNATURE).exists()
    before = pkg.ModelPackage.open(signed_package).manifest.artifacts[tid]
    code, out, err = _run(["tune", str(signed_package), "--target", "native", "--trials", "4",
                           "--minutes", "3", "--threads", "2", "--functions", "2"], capsys)
    assert code == 0, err
    assert "Tuned" in out and tid in out
    # the stale signature is gone and the user is told
    assert not (signed_package / pkg.SIGNATURE).exists()
    assert "signature" in out and "sign" in out
    p = pkg.ModelPackage.open(signed_package)
    after = p.manifest.artifacts[tid]
    assert after.sha256 == pkg.sha256_file(signed_package / after.file)
    assert after.size == (signed_package / after.file).stat().st_size
    assert after.calibrated and after.file == before.file
    db = signed_package / "tuning" / tid
    assert tune.has_records(db)
    choices = json.loads((db / tune.CHOICES).read_text())
    assert choices["target"] == tid and 1 <= len(choices["functions"]) <= 2
    assert after.tuned == any(c["choice"] == "tuned" for c in choices["functions"].values())
    # no staging leftovers; the package passes its own self-test
    assert not [q for q in signed_package.iterdir() if q.name.startswith(".")]
    assert self_test(p, threads=2) == []


def test_tune_with_a_key_re_signs_and_continues_from_the_database(signed_package, keyfile, capsys):
    from hyperinfer import package as pkg
    from hyperinfer.compile import tune
    from hyperinfer.verify.publisher import verify_manifest_signature

    tid = _native()
    db = signed_package / "tuning" / tid
    records_before = sum(1 for _ in open(db / tune.RECORDS)) if tune.has_records(db) else 0
    code, out, err = _run(["tune", str(signed_package), "-t", tid, "--trials", "4", "--minutes", "3",
                           "--threads", "2", "--functions", "1", "--sign-key", str(keyfile)], capsys)
    assert code == 0, err
    assert "re-signed" in out
    data = (signed_package / pkg.MANIFEST).read_bytes()
    sig = (signed_package / pkg.SIGNATURE).read_bytes()
    assert verify_manifest_signature(sig, data, [_trusted(keyfile)])
    assert sum(1 for _ in open(db / tune.RECORDS)) >= records_before


def test_errors_are_one_line(signed_package, tmp_path, capsys, monkeypatch):
    from hyperinfer.compile import targets

    code, _out, err = _run(["tune", str(tmp_path / "missing"), "--target", "native"], capsys)
    assert code != 0 and err.startswith("Error: ") and err.count("\n") == 1 and "no model package" in err

    code, _out, err = _run(["tune", str(signed_package), "--target", "cuda-sm90"], capsys)
    assert code != 0 and err.startswith("Error: ") and err.count("\n") == 1
    assert "cuda-sm90" in err and _native() in err  # says which targets the package has

    code, _out, err = _run(["tune", str(signed_package), "--target", "no-such-target"], capsys)
    assert code != 0 and err.startswith("Error: ") and err.count("\n") == 1

    # the package's target, on a machine that cannot run it
    tid = _native()
    monkeypatch.setattr(targets, "runnable_cpu_targets", lambda *a, **k: [])
    code, _out, err = _run(["tune", str(signed_package), "--target", tid], capsys)
    assert code != 0 and err.startswith("Error: ") and err.count("\n") == 1
    assert "cannot run on this machine" in err


def test_bad_trials_is_an_error(signed_package, capsys):
    code, _out, err = _run(["tune", str(signed_package), "--target", "native", "--trials", "-1"], capsys)
    assert code != 0 and err.startswith("Error: ") and "--trials" in err
