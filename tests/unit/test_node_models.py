"""Offers -> trust check -> target choice -> verified download -> loaded model."""

from __future__ import annotations

import hashlib
import os

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from hyperinfer import zoo
from hyperinfer.node.cache import ArtifactCache, Chunk
from hyperinfer.node.dataplane import DataPlane, TrustPolicy
from hyperinfer.node.models import ModelManager, Offer
from hyperinfer.package import ArtifactInfo, Manifest, OutputSpec, TensorSpec
from hyperinfer.runtime import ORTRunner
from hyperinfer.verify.publisher import sign_manifest
from hyperinfer.verify.signing import key_id, public_bytes

# stand-in artifact bytes: the runner below is ONNX Runtime, the bytes only travel
ARTIFACTS = {t: os.urandom(50_000 + i) for i, t in enumerate(["cpu-x86_64", "cpu-x86_64-avx2", "cuda-sm90"])}


def manifest_bytes(version=1, targets=("cpu-x86_64", "cpu-x86_64-avx2", "cuda-sm90"), name="two") -> bytes:
    m = Manifest(
        name=name, version=version, source_sha256="0" * 64, model_sha256="1" * 64,
        inputs=[TensorSpec("a", "float32", (2, 16)), TensorSpec("b", "float32", (2, 16))],
        outputs=[OutputSpec("product", "float32", (2, 16)), OutputSpec("total", "float32", (2,))],
        tvm_version="test",
        artifacts={t: ArtifactInfo(t, {}, f"artifacts/{t}.so", hashlib.sha256(ARTIFACTS[t]).hexdigest(),
                                   len(ARTIFACTS[t])) for t in targets},
    )
    return m.dumps()


@pytest.fixture(scope="module")
def onnx_path(tmp_path_factory):
    return zoo.build_small("two-inputs", tmp_path_factory.mktemp("zoo"))[0]


@pytest.fixture(scope="module")
def publisher():
    return Ed25519PrivateKey.generate()


class Gateway:
    """Serves ARTIFACTS by target, recording requests; ``corrupt`` flips a byte."""

    def __init__(self):
        self.requests: list[tuple] = []
        self.corrupt = False

    def fetch(self, name, version, target_id, sha256):
        def chunks(offset):
            self.requests.append((name, version, target_id, sha256, offset))
            data = bytearray(ARTIFACTS[target_id])
            if self.corrupt:
                data[7] ^= 1
            for pos in range(offset, len(data), 16_000):
                yield Chunk(pos, bytes(data[pos:pos + 16_000]), len(data))

        return chunks


@pytest.fixture()
def setup(tmp_path, onnx_path, publisher):
    gw = Gateway()
    dp = DataPlane(Ed25519PrivateKey.generate())
    made = []

    def runner_factory(path, manifest, target):
        made.append((path.read_bytes() == ARTIFACTS[target], target))
        return ORTRunner(onnx_path, manifest.inputs, [o.name for o in manifest.outputs], threads=1)

    mgr = ModelManager(dp, ArtifactCache(tmp_path / "cache", progress=False, sleep=lambda s: None, retries=1),
                       ["cpu-x86_64-avx512", "cpu-x86_64-avx2", "cpu-x86_64"],
                       TrustPolicy([public_bytes(publisher)]), gw.fetch, runner_factory)
    return gw, dp, mgr, made


def signed_offer(publisher, version=1, **kw) -> Offer:
    mb = manifest_bytes(version, **kw)
    return Offer(kw.get("name", "two"), version, mb, sign_manifest(publisher, mb))


def test_signed_offer_is_loaded_with_best_target(setup, publisher):
    gw, dp, mgr, made = setup
    loaded = mgr.apply([signed_offer(publisher)])
    assert [m.as_tuple()[:3] for m in loaded] == [("two", 1, "cpu-x86_64-avx2")]
    assert loaded[0].publisher_id == key_id(publisher)
    assert made == [(True, "cpu-x86_64-avx2")]  # the runner got the verified bytes
    assert dp.loaded_tuples()[0][3] == hashlib.sha256(ARTIFACTS["cpu-x86_64-avx2"]).hexdigest()
    x = {"a": np.ones((2, 16), np.float32), "b": np.ones((2, 16), np.float32)}
    assert dp.infer("r", "two", 1, x).outputs["total"].shape == (2,)
    # offered again (every heartbeat): nothing re-downloaded
    assert mgr.apply([signed_offer(publisher)]) == [] and len(gw.requests) == 1


def test_unsigned_and_untrusted_offers_are_never_downloaded(setup, caplog):
    gw, dp, mgr, _ = setup
    mb = manifest_bytes()
    stranger = Ed25519PrivateKey.generate()
    assert mgr.apply([Offer("two", 1, mb, b""), Offer("two", 1, mb, sign_manifest(stranger, mb))]) == []
    assert gw.requests == [] and dp.loaded() == []
    assert "unsigned" in caplog.text and "not trusted" in caplog.text
    # refusals are remembered: no log spam on every heartbeat
    caplog.clear()
    mgr.apply([Offer("two", 1, mb, b"")])
    assert caplog.text == ""


def test_tampered_manifest_is_refused(setup, publisher):
    gw, dp, mgr, _ = setup
    good = signed_offer(publisher)
    bad = Offer("two", 1, good.manifest.replace(b'"test"', b'"evil"'), good.signature)
    assert mgr.apply([bad]) == [] and gw.requests == []
    assert "altered" in next(iter(mgr.failed.values()))[1]


def test_no_runnable_target(setup, publisher):
    gw, dp, mgr, _ = setup
    assert mgr.apply([signed_offer(publisher, targets=("cuda-sm90",))]) == []
    assert "no artifact this node can run" in next(iter(mgr.failed.values()))[1]


def test_corrupt_artifact_is_refused_then_retried_later(setup, publisher):
    gw, dp, mgr, made = setup
    gw.corrupt = True
    offer = signed_offer(publisher)
    assert mgr.apply([offer]) == []
    assert made == [] and dp.loaded() == []
    assert len(gw.requests) == 2  # first attempt + one retry, both discarded
    mgr.retry_after_s = 0
    gw.corrupt = False
    assert len(mgr.apply([offer])) == 1


def test_offer_name_must_match_manifest(setup, publisher):
    gw, dp, mgr, _ = setup
    o = signed_offer(publisher)
    assert mgr.apply([Offer("other", 1, o.manifest, o.signature)]) == []
    assert "carries the manifest" in next(iter(mgr.failed.values()))[1]


def test_one_bad_offer_does_not_block_others(setup, publisher):
    gw, dp, mgr, _ = setup
    loaded = mgr.apply([Offer("two", 9, b"{not json", b""), signed_offer(publisher, version=2)])
    assert [m.key for m in loaded] == [("two", 2)]


def test_republished_package_is_loaded_again(setup, publisher):
    gw, dp, mgr, made = setup
    mgr.apply([signed_offer(publisher, targets=("cpu-x86_64",))])
    assert dp.loaded_tuples()[0][2] == "cpu-x86_64"
    # same name and version, new manifest (now with an avx2 artifact): replaces the loaded one
    new = signed_offer(publisher)
    assert mgr.wanted([new]) == [new]
    assert [m.target_id for m in mgr.apply([new])] == ["cpu-x86_64-avx2"]
    assert [t[2] for t in dp.loaded_tuples()] == ["cpu-x86_64-avx2"]
    assert mgr.wanted([new]) == []
