"""hyperinfer's Open Inference Protocol messages and an OIP client library in one process.

Both define ``inference.ModelInferRequest`` and the rest; protobuf's default pool
refuses a second definition, so hyperinfer keeps its copy in a private pool
(hyperinfer.proto.OIP_POOL). Run in a fresh interpreter: the test session may
have imported either module already.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

SCRIPT = """
from hyperinfer.proto.inference import grpc_service_pb2 as ours
import tritonclient.grpc
from tritonclient.grpc import service_pb2 as theirs
req = ours.ModelInferRequest(model_name="mlp", raw_input_contents=[b"\\x00\\x01"])
back = theirs.ModelInferRequest.FromString(req.SerializeToString())
assert back.model_name == "mlp" and back.raw_input_contents[0] == b"\\x00\\x01", back
assert ours.ModelInferRequest.FromString(back.SerializeToString()) == req
print("ok")
"""


@pytest.mark.parametrize("order", ["hyperinfer-first", "tritonclient-first"])
def test_hyperinfer_and_tritonclient_import_in_one_process(order):
    pytest.importorskip("tritonclient.grpc")
    script = SCRIPT if order == "hyperinfer-first" else "import tritonclient.grpc\n" + SCRIPT
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "ok"


def test_oip_messages_are_not_in_the_default_pool():
    from google.protobuf import descriptor_pool

    from hyperinfer.proto import OIP_POOL
    from hyperinfer.proto.inference import grpc_service_pb2

    assert grpc_service_pb2.ModelInferRequest.DESCRIPTOR.file.pool is OIP_POOL
    assert grpc_service_pb2.DESCRIPTOR.pool is not descriptor_pool.Default()
