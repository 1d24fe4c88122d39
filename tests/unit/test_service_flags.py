"""Bad values for the gateway's verification flags and the node's --target: one ``Error:``
line naming the flag, a non-zero exit, no traceback, and nothing started or written."""

from __future__ import annotations

import pytest

from support import assert_one_line_error, run_cli


@pytest.mark.parametrize("flags, needle", [
    (["--sample-rate", "1.5"], "--sample-rate"),
    (["--sample-rate", "-0.1"], "--sample-rate"),
    (["--model-sample-rate", "mlp"], "--model-sample-rate"),
    (["--model-sample-rate", "mlp=2"], "--model-sample-rate"),
    (["--probation-jobs", "-1"], "--probation-jobs"),
    (["--slash", "-3"], "--slash -3"),
    (["--stake", "nan"], "--stake"),
    (["--node-timeout", "0"], "--node-timeout"),
    (["--max-attempts", "0"], "--max-attempts"),
    (["--audit-rate", "2"], "--audit-rate"),
    (["--http-listen", "8000"], "--http-listen '8000'"),
    (["--metrics-listen", "localhost:99999"], "--metrics-listen"),
])
def test_gateway_rejects_bad_verification_flags(tmp_path, flags, needle):
    db = tmp_path / "gateway.db"
    proc = run_cli("gateway", "--repository", str(tmp_path), "--listen", "127.0.0.1:0", "--db", str(db),
                   "--key", str(tmp_path / "gateway.key"), *flags, timeout=60)
    assert_one_line_error(proc, needle)
    assert not db.exists() and not (tmp_path / "gateway.key").exists()


def test_node_rejects_a_target_it_cannot_run(tmp_path):
    proc = run_cli("node", "--gateway", "127.0.0.1:9", "--key", str(tmp_path / "node.key"),
                   "--allow-unsigned", str(tmp_path), "--target", "cuda-sm90", "--device", "cpu", timeout=60)
    assert_one_line_error(proc, "--target cuda-sm90", "not runnable")


def test_node_rejects_a_bad_metrics_address(tmp_path):
    proc = run_cli("node", "--gateway", "127.0.0.1:9", "--key", str(tmp_path / "node.key"),
                   "--allow-unsigned", str(tmp_path), "--device", "cpu", "--metrics-listen", "nowhere", timeout=60)
    assert_one_line_error(proc, "--metrics-listen 'nowhere'")


def test_gateway_reports_a_busy_rest_port(tmp_path):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        proc = run_cli("gateway", "--repository", str(tmp_path), "--listen", "127.0.0.1:0",
                       "--db", str(tmp_path / "gateway.db"), "--key", str(tmp_path / "gateway.key"),
                       "--http-listen", f"127.0.0.1:{port}", timeout=60)
    assert_one_line_error(proc, f"cannot listen on 127.0.0.1:{port} for HTTP/REST", "--http-listen")
