"""Node data plane on a real model (ONNX Runtime stands in for a TVM artifact here;
the gRPC tests use real compiled artifacts)."""

from __future__ import annotations

import threading

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from hyperinfer import zoo
from hyperinfer.errors import InvalidArgument, NotFound, ResourceExhausted
from hyperinfer.node.dataplane import DataPlane, LoadedModel, choose_target
from hyperinfer.package import ArtifactInfo, Manifest, OutputSpec, TensorSpec
from hyperinfer.runtime import ORTRunner
from hyperinfer.verify.attestation import Attestation, AttestationError, verify_attestation
from hyperinfer.verify.digest import tensors_digest
from hyperinfer.verify.signing import key_id, public_bytes

SHA = "ab" * 32


def two_inputs_manifest() -> Manifest:
    return Manifest(
        name="two", version=3, source_sha256="0" * 64, model_sha256="1" * 64,
        inputs=[TensorSpec("a", "float32", (2, 16)), TensorSpec("b", "float32", (2, 16))],
        outputs=[OutputSpec("product", "float32", (2, 16)), OutputSpec("total", "float32", (2,))],
        tvm_version="test",
        artifacts={t: ArtifactInfo(t, {}, f"artifacts/{t}.so", SHA, 1) for t in ("cpu-x86_64", "cpu-x86_64-avx2")},
    )


@pytest.fixture(scope="module")
def runner(tmp_path_factory):
    path, _ = zoo.build_small("two-inputs", tmp_path_factory.mktemp("zoo"))
    return ORTRunner(path, threads=1)


@pytest.fixture()
def key():
    return Ed25519PrivateKey.generate()


@pytest.fixture()
def plane(key, runner):
    dp = DataPlane(key, max_concurrency=2, clock_ms=lambda: 1_700_000_000_000)
    dp.add(LoadedModel(two_inputs_manifest(), "cpu-x86_64-avx2", SHA, runner))
    return dp


def inputs(seed=0):
    r = np.random.default_rng(seed)
    return {"a": r.standard_normal((2, 16)).astype(np.float32), "b": r.standard_normal((2, 16)).astype(np.float32)}


def test_infer_outputs_and_attestation(plane, key, runner):
    x = inputs()
    res = plane.infer("req-1", "two", 3, x)
    outputs, att_bytes, sig = res  # unpacks as a plain tuple too
    ref = runner.run(x)
    assert list(outputs) == ["product", "total"]
    np.testing.assert_array_equal(outputs["total"], ref["total"])
    att = verify_attestation(public_bytes(key), att_bytes, sig)
    assert att == Attestation(
        request_id="req-1", model_name="two", model_version=3, target_id="cpu-x86_64-avx2",
        artifact_sha256=SHA, input_digest=tensors_digest(["a", "b"], x),
        output_digest=tensors_digest(["product", "total"], ref), node_id=key_id(key),
        timestamp_ms=1_700_000_000_000,
    )


def test_version_zero_means_newest(plane, runner):
    m = two_inputs_manifest()
    m.version = 7
    plane.add(LoadedModel(m, "cpu-x86_64", SHA, runner))
    att = Attestation.from_bytes(plane.infer("r", "two", 0, inputs()).attestation)
    assert att.model_version == 7


def test_any_one_byte_change_breaks_verification(plane, key):
    _, data, sig = plane.infer("req-2", "two", 3, inputs())
    pub = public_bytes(key)
    verify_attestation(pub, data, sig)
    for i in range(len(data)):
        bad = bytearray(data)
        bad[i] ^= 0x01
        with pytest.raises(AttestationError):
            verify_attestation(pub, bytes(bad), sig)
    for i in range(len(sig)):
        bad = bytearray(sig)
        bad[i] ^= 0x01
        with pytest.raises(AttestationError):
            verify_attestation(pub, data, bytes(bad))
    with pytest.raises(AttestationError):
        verify_attestation(public_bytes(Ed25519PrivateKey.generate()), data, sig)


@pytest.mark.parametrize("mutate, field", [
    (lambda x: {**x, "c": x["a"]}, "'c'"),
    (lambda x: {"a": x["a"]}, "'b'"),
    (lambda x: {**x, "b": x["b"].astype(np.float64)}, "'b'.*float64"),
    (lambda x: {**x, "a": x["a"].reshape(4, 8)}, "'a'.*shape"),
])
def test_bad_inputs_name_the_field(plane, mutate, field):
    with pytest.raises(InvalidArgument, match=field):
        plane.infer("r", "two", 3, mutate(inputs()))


def test_unknown_model_or_version(plane):
    with pytest.raises(NotFound, match="'nope'"):
        plane.infer("r", "nope", 0, inputs())
    with pytest.raises(NotFound, match="version 9.*loaded: 3"):
        plane.infer("r", "two", 9, inputs())


@pytest.mark.parametrize("rid, model, version, match", [
    ("", "two", 3, "request_id"), ("x" * 300, "two", 3, "request_id"),
    ("r", "", 3, "model_name"), ("r", "two", -1, "model_version"),
])
def test_bad_request_fields(plane, rid, model, version, match):
    with pytest.raises(InvalidArgument, match=match):
        plane.infer(rid, model, version, inputs())


class GatedRunner:
    """Holds each call until released, so the test can fill every slot."""

    def __init__(self, inner):
        self.inner, self.entered, self.release = inner, threading.Semaphore(0), threading.Event()

    def run(self, feeds):
        self.entered.release()
        assert self.release.wait(10)
        return self.inner.run(feeds)


def test_concurrency_limit_is_resource_exhausted(key, runner):
    gated = GatedRunner(runner)
    dp = DataPlane(key, max_concurrency=2)
    dp.add(LoadedModel(two_inputs_manifest(), "cpu-x86_64", SHA, gated))
    results = []
    threads = [threading.Thread(target=lambda: results.append(dp.infer("r", "two", 3, inputs()))) for _ in range(2)]
    for t in threads:
        t.start()
    for _ in range(2):
        assert gated.entered.acquire(timeout=10)
    assert dp.outstanding == 2
    with pytest.raises(ResourceExhausted, match="concurrency limit.*2"):
        dp.infer("r", "two", 3, inputs())
    gated.release.set()
    for t in threads:
        t.join(10)
    assert len(results) == 2 and dp.outstanding == 0
    dp.infer("r", "two", 3, inputs())  # slots were given back


def test_runner_failure_frees_the_slot(key):
    class Boom:
        def run(self, feeds):
            raise RuntimeError("device lost")

    dp = DataPlane(key, max_concurrency=1)
    dp.add(LoadedModel(two_inputs_manifest(), "cpu-x86_64", SHA, Boom()))
    for _ in range(3):
        with pytest.raises(RuntimeError):
            dp.infer("r", "two", 3, inputs())
    assert dp.outstanding == 0


def test_loaded_tuples_and_choose_target(plane):
    assert plane.loaded_tuples() == [("two", 3, "cpu-x86_64-avx2", SHA)]
    m = two_inputs_manifest()
    assert choose_target(m, ["cpu-x86_64-avx512", "cpu-x86_64-avx2", "cpu-x86_64"]) == "cpu-x86_64-avx2"
    assert choose_target(m, ["cuda-sm90"]) is None
