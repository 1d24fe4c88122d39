"""`hyperinfer up` without a real pool: argument errors are one `Error:` line, and
LocalPool's process handling (report a child that died, kill one that ignores SIGTERM)."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from hyperinfer.errors import InvalidArgument
from hyperinfer.local_pool import Child, LocalPool, UpOptions
from support import assert_one_line_error, run_cli


def run_up(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return run_cli("up", *args, cwd=cwd, timeout=120)


@pytest.mark.parametrize("args, needle", [
    (["--nodes", "0"], "--nodes 0"),
    (["--nodes", "1000"], "--nodes 1000"),
    (["--port", "70000"], "--port 70000"),
    (["--sample-rate", "1.5"], "--sample-rate"),
    (["--threads", "0"], "--threads"),
    (["--model-timeout", "0"], "--model-timeout"),
    (["--exit-after-demo"], "--demo"),
])
def test_bad_arguments_are_one_error_line(tmp_path, args, needle):
    proc = run_up(*args, cwd=tmp_path)
    assert_one_line_error(proc, needle)
    assert not (tmp_path / ".hyperinfer").exists()  # nothing created


def test_state_that_is_a_file(tmp_path):
    (tmp_path / "state").write_text("x")
    assert_one_line_error(run_up("--state", "state", cwd=tmp_path), "--state")


def test_busy_port_is_reported_before_any_compile(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        proc = run_up("--port", str(port), "--state", "st", cwd=tmp_path)
    assert_one_line_error(proc, f"port {port}", "in use")
    assert list((tmp_path / "st").glob("repo/*")) == []  # no PP-OCR fetched or compiled


def test_unsigned_package_needs_allow_unsigned(tmp_path):
    sys.path.insert(0, str(Path(__file__).parents[1] / "grpc"))
    from oip_harness import make_package

    make_package(tmp_path / "repo", "mlp")
    assert_one_line_error(run_up("--repository", "repo", "--port", "0", "--state", "st", cwd=tmp_path),
                          "mlp/1", "unsigned", "--allow-unsigned")


def test_options_validate():
    with pytest.raises(InvalidArgument, match="--nodes"):
        UpOptions(nodes=0).validate()
    o = UpOptions(state=Path("s")).validate()
    assert o.repository == Path("s") / "repo"
    with pytest.raises(InvalidArgument, match="--http-port"):
        UpOptions(http_port=70000).validate()


def test_rest_and_metrics_ports_follow_the_grpc_port():
    # Triton's 8000/8002 next to 8001; free ones (0, resolved at prepare) when the gRPC port is picked
    assert (LocalPool(UpOptions(state=Path("s"))).http_port, LocalPool(UpOptions(state=Path("s"))).metrics_port) \
        == (8000, 8002)
    free = LocalPool(UpOptions(state=Path("s"), port=0))
    assert (free.http_port, free.metrics_port) == (0, 0)
    assert LocalPool(UpOptions(state=Path("s"), http_port=9000, metrics_port=0)).http_port == 9000


def _child(tmp_path: Path, name: str, code: str) -> Child:
    c = Child(name, [], tmp_path / f"{name}.log")
    with open(c.log_path, "wb") as log:
        c.proc = subprocess.Popen([sys.executable, "-c", code], stdout=log, stderr=subprocess.STDOUT,
                                  start_new_session=True)
    return c


def test_reap_reports_a_dead_node_once_and_stop_kills_a_stubborn_one(tmp_path):
    pool = LocalPool(UpOptions(state=tmp_path / "state", stop_timeout=0.5))
    stubborn = _child(tmp_path, "node1", "import signal, time\n"
                                         "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
                                         "print('ready', flush=True)\ntime.sleep(60)")
    victim = _child(tmp_path, "node2", "import time; time.sleep(60)")
    pool.nodes = [stubborn, victim]
    deadline = time.monotonic() + 10
    while "ready" not in stubborn.log_path.read_text() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert pool.reap() == []
    victim.proc.send_signal(signal.SIGKILL)
    victim.proc.wait(10)
    gone = pool.reap()
    assert [c.name for c in gone] == ["node2"] and gone[0].exit_text() == "killed by SIGKILL"
    assert pool.reap() == []  # reported once
    t = time.monotonic()
    killed = pool.stop()
    assert [c.name for c in killed] == ["node1"]
    assert time.monotonic() - t < 10
    assert stubborn.proc.poll() == -signal.SIGKILL
