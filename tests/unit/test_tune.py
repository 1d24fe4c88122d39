"""MetaSchedule tuning: a tiny run writes a database, the next compile reuses it, results match ORT."""

from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("tvm")
pytest.importorskip("onnxruntime")
pytest.importorskip("xgboost")


def _target():
    from hyperinfer.compile import targets

    tid = "cpu-x86_64-avx512" if "cpu-x86_64-avx512" in targets.runnable_cpu_targets() else "cpu-x86_64"
    return targets.get(tid)


@pytest.fixture(scope="module")
def mlp(tmp_path_factory):
    from hyperinfer import zoo
    from hyperinfer.compile import build, cleanup

    d = tmp_path_factory.mktemp("mlp")
    path, shapes = zoo.build_small("mlp", d)
    clean = cleanup.clean(cleanup.load_onnx(path), shapes, threads=2)
    return d, clean, build.import_onnx(clean.model)


@pytest.fixture(scope="module")
def tuned(mlp):
    from hyperinfer.compile import tune

    d, _clean, mod = mlp
    db = d / "tuning" / _target().id
    events = []
    report = tune.tune(mod, _target(), db, trials=8, minutes=5, threads=2, progress=events.append)
    return db, report, events


def _matches_ort(d, clean, so):
    import onnx

    from hyperinfer.compile import cleanup
    from hyperinfer.runtime import ORTRunner, TVMRunner

    onnx_path = d / "mlp.clean.onnx"
    onnx.save(clean.model, str(onnx_path))
    ort = ORTRunner(onnx_path, clean.inputs, [o.name for o in clean.outputs], threads=2)
    tvm_r = TVMRunner(so, clean.inputs, clean.outputs, threads=2)
    x = cleanup.random_inputs(clean.inputs, np.random.default_rng(3))
    ref, got = ort.run(x), tvm_r.run(x)
    for k in ref:
        np.testing.assert_allclose(got[k], ref[k], rtol=1e-4, atol=1e-5)


def test_tiny_tuning_run_writes_a_database(tuned):
    from hyperinfer.compile import tune

    db, report, events = tuned
    assert (db / tune.RECORDS).stat().st_size > 0
    assert (db / tune.WORKLOADS).stat().st_size > 0
    assert tune.has_records(db)
    assert report.trials > 0 and report.tasks
    assert {e.phase for e in events} >= {"extract", "tune", "done"}
    assert any(e.best_us for e in events if e.phase == "tune")
    choices = json.loads((db / tune.CHOICES).read_text())
    assert choices["target"] == _target().id
    assert len(choices["functions"]) == len(report.tasks)
    for c in choices["functions"].values():
        assert c["choice"] in ("tuned", "rules", "default")
        assert c["default_us"] > 0


def test_tuned_schedules_match_onnxruntime(mlp, tuned, tmp_path):
    """Every tuned record applied (not only the winners): the artifact still matches ORT."""
    import tvm

    from hyperinfer.compile import build, tune

    d, clean, mod = mlp
    db, _report, _ = tuned
    target = _target()
    tvm_target = target.tvm_target()
    p = tune.apply_database_pass(db, tvm_target, only_winners=False)
    assert p is not None
    # the pass replaces functions with tuned ones and marks them scheduled
    fused = tune.fused_module(mod, target)
    with tvm_target:
        out = p(fused)
    scheduled = [f for _gv, f in out.functions_items()
                 if isinstance(f, tvm.tirx.PrimFunc) and f.attrs.get("tirx.is_scheduled", 0) == 1]
    assert scheduled
    # build with all tuned records applied through the normal build path
    real = tune.apply_database_pass
    try:
        tune.apply_database_pass = lambda db_dir, t: real(db_dir, t, only_winners=False)
        res = build.build_artifact(mod, target, tmp_path / "tuned.so", tuning_db=db)
    finally:
        tune.apply_database_pass = real
    assert res.tuned
    _matches_ort(d, clean, tmp_path / "tuned.so")


def test_second_compile_reuses_the_database(mlp, tuned, tmp_path):
    from hyperinfer.compile import build, tune

    d, clean, mod = mlp
    db, _report, _ = tuned
    res = build.build_artifact(mod, _target(), tmp_path / "again.so", tuning_db=db)
    winners = [c for c in tune.load_choices(db).values() if c["choice"] in ("tuned", "rules")]
    assert res.tuned == bool(winners)
    _matches_ort(d, clean, tmp_path / "again.so")


def test_retuning_continues_from_existing_records(mlp, tuned):
    from hyperinfer.compile import tune

    _d, _clean, mod = mlp
    db, _report, _ = tuned
    before = sum(1 for _ in open(db / tune.RECORDS))
    report = tune.tune(mod, _target(), db, trials=4, minutes=5, threads=2)
    after = sum(1 for _ in open(db / tune.RECORDS))
    assert after >= before  # records are appended, never dropped
    assert report.tasks


def test_no_database_means_no_pass(tmp_path):
    from hyperinfer.compile import tune

    assert tune.apply_database_pass(tmp_path / "missing", _target().tvm_target()) is None


def test_time_limit_stops_the_search_cleanly(mlp, tmp_path):
    """The time limit ends every task from the measure callback; MetaSchedule must not turn
    that into an error, and what was measured stays in the database."""
    from hyperinfer.compile import tune

    _d, _clean, mod = mlp
    db = tmp_path / "db"
    report = tune.tune(mod, _target(), db, trials=4096, minutes=0.001, threads=2)
    assert report.stopped_by_time and not report.interrupted
    assert report.trials < 4096
    assert tune.has_records(db)


def test_zero_trials_searches_only_the_rule_knobs(mlp, tmp_path):
    """``trials=0``: each function's rule knobs are searched (the default schedule and its
    distinct variants built and timed here), MetaSchedule does not run, and choices.json
    records per function the default latency, the knobs' best and which won."""
    from hyperinfer.compile import tune

    _d, _clean, mod = mlp
    db = tmp_path / "db"
    events = []
    report = tune.tune(mod, _target(), db, trials=0, threads=2, progress=events.append)
    assert report.trials == 0 and report.tasks
    assert not tune.has_records(db)
    assert {e.phase for e in events} >= {"extract", "rules", "done"} and "tune" not in {e.phase for e in events}
    assert all(r.variants >= 1 and r.default_us and r.default_us > 0 for r in report.tasks)
    choices = tune.load_choices(db)
    assert len(choices) == len(report.tasks)
    for r in report.tasks:
        c = choices[r.key]
        assert c["choice"] in ("rules", "default") and c["default_us"] > 0
        # a winner is kept only with its knobs and a measured gain
        assert (c["choice"] == "rules") == bool(c["knobs"])
        if c["knobs"]:
            assert c["rules_us"] < c["default_us"]
    assert set(tune.rule_knobs(db)) == {k for k, c in choices.items() if c["choice"] == "rules"}
