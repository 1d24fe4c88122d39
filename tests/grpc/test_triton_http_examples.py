"""Triton's own HTTP Python client examples (tests/e2e/triton_examples, copied unmodified apart
from the server's name) against the gateway's KServe v2 REST port: infer (JSON and binary
tensors, gzip/deflate request bodies), async infer, health and metadata, model control
(repository index, load with a config override, unload) and statistics.

The pool is tests/grpc/oip_harness.py (a real gateway and two nodes in a child process, ONNX
Runtime instead of compiled artifacts) over a repository of 7 packages, the number Triton's
HTTP model control example expects.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from oip_harness import Harness, make_package  # noqa: E402

try:
    import tritonclient.http as httpclient
except ImportError:
    pytest.skip("tritonclient[http] is not installed", allow_module_level=True)

EXAMPLES = Path(__file__).parents[1] / "e2e" / "triton_examples"
# (script, extra arguments, the line it prints on success or None: exit 0 is the pass)
SCRIPTS = [
    ("simple_http_infer_client.py", [], None),
    ("simple_http_infer_client.py", ["--request-compression-algorithm", "gzip",
                                     "--response-compression-algorithm", "deflate"], None),
    ("simple_http_async_infer_client.py", [], None),
    ("simple_http_health_metadata.py", [], None),
    ("simple_http_model_control.py", [], "PASS: model control"),  # last: it unloads `simple`
]


@pytest.fixture(scope="module")
def pool(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("triton-http")
    repo = tmp / "repo"
    for name in ("simple", "simple_int8", "mlp", "int-bool", "two-inputs"):
        make_package(repo, name)
    make_package(repo, "mlp", version=2)
    make_package(repo, "cnn", target="cuda-sm90")  # in the repository, no node here runs it
    assert sum(1 for _ in repo.glob("*/*/manifest.json")) == 7
    with Harness(repo, tmp, http=True) as h:
        client = httpclient.InferenceServerClient(h.http_address)
        deadline = time.monotonic() + 30
        while not all(client.is_model_ready(m) for m in ("simple", "simple_int8")):
            assert time.monotonic() < deadline, "nodes did not serve simple within 30 s"
            time.sleep(0.05)
        yield {"address": h.http_address, "tmp": tmp, "client": client}
        client.close()


def run_example(script: str, args: list[str], address: str, tmp: Path) -> subprocess.CompletedProcess:
    path = EXAMPLES / script
    if script == "simple_http_health_metadata.py":  # the one change: the server's name
        text = path.read_text()
        assert text.count('metadata["name"] == "triton"') == 1
        path = tmp / script
        path.write_text(text.replace('metadata["name"] == "triton"', 'metadata["name"] == "hyperinfer"'))
    return subprocess.run([sys.executable, str(path), "-u", address, *args], capture_output=True, text=True,
                          timeout=120)


def test_tritons_http_examples_pass_unmodified(pool):
    failed = []
    for script, args, marker in SCRIPTS:
        p = run_example(script, args, pool["address"], pool["tmp"])
        if p.returncode != 0 or (marker and marker not in p.stdout) or "FAILED" in p.stdout:
            failed.append(f"{script} {' '.join(args)}: exit {p.returncode}\n{p.stdout[-1500:]}\n{p.stderr[-1500:]}")
    assert not failed, "\n\n".join(failed)
    # the model control example left `simple` unloaded; it loads again
    client = pool["client"]
    assert not client.is_model_ready("simple")
    client.load_model("simple")
    assert client.is_model_ready("simple")
