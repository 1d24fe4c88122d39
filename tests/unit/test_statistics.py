"""Per model+version statistics: the counters themselves, and the gateway data plane filling them
(successes with durations that add up, failures by error code, unknown models not counted)."""

from __future__ import annotations

import sys
import threading
from pathlib import Path

import pytest

from hyperinfer.errors import InvalidArgument, NotFound, Unavailable
from hyperinfer.statistics import Duration, Statistics

sys.path.insert(0, str(Path(__file__).parent))  # importlib mode does not put test dirs on sys.path
from test_scheduler_dataplane import env, request  # noqa: E402,F401  (env is a fixture)


def test_counts_and_durations_per_model_version():
    st = Statistics(clock=lambda: 1234.5)
    st.record_success("a", 1, queue_ns=10, input_ns=1, infer_ns=100, output_ns=5)
    st.record_success("a", 1, queue_ns=20, input_ns=2, infer_ns=200, output_ns=6)
    st.record_failure("a", 1, 50, "UNAVAILABLE")
    st.record_failure("a", 2, 7, "INVALID_ARGUMENT")
    a1 = st.get("a", 1)
    assert a1.success == Duration(2, 10 + 1 + 100 + 5 + 20 + 2 + 200 + 6)
    assert a1.queue == Duration(2, 30) and a1.compute_input == Duration(2, 3)
    assert a1.compute_infer == Duration(2, 300) and a1.compute_output == Duration(2, 11)
    assert a1.fail == Duration(1, 50) and a1.failures == {"UNAVAILABLE": 1}
    assert a1.inference_count == 2 and a1.execution_count == 2 and a1.last_inference_ms == 1234500
    assert st.get("a", 2).success == Duration() and st.get("a", 2).fail == Duration(1, 7)
    assert st.get("b", 1).inference_count == 0 and st.get("b", 1).last_inference_ms == 0
    assert [(s.name, s.version) for s in st.snapshot()] == [("a", 1), ("a", 2)]


def test_counters_are_thread_safe():
    st = Statistics()

    def work():
        for _ in range(500):
            st.record_success("m", 1, queue_ns=1, input_ns=1, infer_ns=1, output_ns=1)
            st.record_failure("m", 1, 1, "UNAVAILABLE")

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    s = st.get("m", 1)
    assert s.success.count == 2000 and s.fail.count == 2000 and s.failures["UNAVAILABLE"] == 2000
    assert s.queue.ns == 2000


def test_dataplane_counts_what_it_serves(env):
    dp = env["dp"]
    for _ in range(3):
        dp.infer(request())
    with pytest.raises(InvalidArgument):
        dp.infer(request(inputs=[]))
    with pytest.raises(NotFound):
        dp.infer(request(model_name="nope"))  # no such model: nothing to count it against
    for n in env["nodes"]:
        env["client"].behaviour[n.node_id] = Unavailable("down")
    with pytest.raises(Unavailable):
        dp.infer(request())
    s = dp.statistics.get("m", 2)
    assert s.success.count == 3 and s.inference_count == 3 and s.execution_count == 3
    assert s.fail.count == 2 and s.failures == {"INVALID_ARGUMENT": 1, "UNAVAILABLE": 1}
    assert s.compute_infer.count == 3 and s.compute_infer.ns > 0
    # the stages add up to the whole request
    assert s.queue.ns + s.compute_input.ns + s.compute_infer.ns + s.compute_output.ns == s.success.ns
    assert [(x.name, x.version) for x in dp.statistics.snapshot()] == [("m", 2)]
