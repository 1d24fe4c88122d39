"""`hyperinfer audit` and `hyperinfer economics`, in process."""

import json

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from hyperinfer.cli import main
from hyperinfer.gateway.ledger import Ledger
from hyperinfer.gateway.store import open_store
from hyperinfer.package import OutputSpec, Tolerance
from hyperinfer.verify import receipt as rc
from hyperinfer.verify.attestation import Attestation
from hyperinfer.verify.digest import tensors_digest
from hyperinfer.verify.dispute import Execution, new_dispute
from hyperinfer.verify.receipt import Receipt, receipt_to_json, sign_receipt
from hyperinfer.verify.signing import key_id, public_bytes

OUT = [OutputSpec("y", "float32", (2,), tolerance=Tolerance(1e-3, 0.0))]
X = {"x": np.array([1.0], dtype=np.float32)}


def run(role, y, request_id, key):
    out = {"y": np.array(y, dtype=np.float32)}
    att = Attestation(request_id, "toy", 1, "cpu-a", "a" * 64, tensors_digest(["x"], X),
                      tensors_digest(["y"], out), key_id(key), 1)
    data, sig = att.sign(key)
    return Execution(role, key_id(key), public_bytes(key), data, sig, out)


@pytest.fixture
def db(tmp_path):
    path = tmp_path / "gw.db"
    store = open_store(str(path))
    lg = Ledger(store)
    p, v = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    d = new_dispute(dispute_id="feedface" * 4, model_name="toy", model_version=1, created_ms=1_700_000_000_000,
                    input_names=["x"], outputs=OUT, inputs=X, primary=run("primary", [0.5, 0.5], "r1", p),
                    validator=run("validator", [0.1, 0.2], "r2", v),
                    referee_outputs={"y": np.array([0.1, 0.2], dtype=np.float32)}, same_artifact=True)
    lg.record_dispute(d)
    store.close()
    return path, d


def test_evidence_shows_and_rechecks(db, capsys):
    path, d = db
    assert main(["audit", "evidence", "feedface", "--db", str(path)]) == 0
    out = capsys.readouterr().out
    assert d.primary.node_id in out and "at fault: " + d.primary.node_id in out
    assert "✓ verdict re-computed from the stored tensors" in out and "✗" not in out
    assert main(["audit", "evidence", "--db", str(path)]) == 0
    assert "feedface" in capsys.readouterr().out


def test_evidence_tampered_fails(db, capsys):
    import sqlite3

    path, d = db
    data = json.loads(d.to_json())
    data["verdict"]["faults"] = []
    with sqlite3.connect(path) as c:
        c.execute("UPDATE evidence SET data = ?", (json.dumps(data),))
    assert main(["audit", "evidence", d.dispute_id, "--db", str(path)]) == 1
    assert "✗ verdict re-computed" in capsys.readouterr().out


def test_evidence_unknown_id(db, capsys):
    path, _ = db
    assert main(["audit", "evidence", "0000", "--db", str(path)]) == 1
    assert "no evidence with dispute id '0000'" in capsys.readouterr().err


def make_receipt(tmp_path):
    gw, node = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    e = run("primary", [0.1, 0.2], "r1", node)
    data, sig = e.attestation, e.signature
    r = sign_receipt(gw, Receipt("r1", "toy", 1, key_id(node), public_bytes(node), data, sig, rc.UNCHECKED, "", 5))
    path = tmp_path / "receipt.json"
    path.write_text(receipt_to_json(r))
    return path, gw, node


def test_audit_verify_ok_and_tampered(tmp_path, capsys):
    path, gw, node = make_receipt(tmp_path)
    key = public_bytes(gw).hex()
    assert main(["audit", "verify", str(path), "--gateway-key", key,
                 "--node-key", f"{key_id(node)}={public_bytes(node).hex()}"]) == 0
    out = capsys.readouterr().out
    assert "✓ gateway signature over the receipt" in out and "all checks passed" in out
    text = path.read_text().replace('"status":"unchecked"', '"status":"agreed"')
    path.write_text(text)
    assert main(["audit", "verify", str(path), "--gateway-key", key]) == 1
    assert "✗ gateway signature over the receipt" in capsys.readouterr().out


def test_audit_verify_reads_oip_response_and_json_output(tmp_path, capsys):
    path, gw, _ = make_receipt(tmp_path)
    resp = tmp_path / "resp.json"
    resp.write_text(json.dumps({"parameters": {"hyperinfer.receipt": {"string_param": path.read_text()}}}))
    assert main(["audit", "verify", str(resp), "--gateway-key", public_bytes(gw).hex(), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["ok"] is True


def test_audit_verify_needs_a_gateway_key(tmp_path, capsys):
    path, _, _ = make_receipt(tmp_path)
    assert main(["audit", "verify", str(path)]) == 1
    assert "--gateway-key" in capsys.readouterr().err
    assert main(["audit", "verify", str(path), "--gateway-key", "00", "--node-key", "junk"]) == 1


def test_economics(capsys):
    assert main(["economics", "--reward", "1", "--stake", "9", "--cost", "2", "--sample-rate", "0.25"]) == 0
    out = capsys.readouterr().out
    assert "= 0.2" in out and "safe: sample rate 0.25 > bound 0.2" in out
    assert main(["economics", "--reward", "1", "--stake", "9", "--cost", "2", "--sample-rate", "0.2"]) == 0
    assert "unsafe" in capsys.readouterr().out
    assert main(["economics", "--reward", "0", "--stake", "0", "--cost", "2"]) == 1
    assert "reward + stake" in capsys.readouterr().err


def test_gateway_lookups_use_pool_status(tmp_path, capsys, monkeypatch):
    import hyperinfer.pool_status as pool_status

    path, gw, _ = make_receipt(tmp_path)
    status = {"gateway_public_key": public_bytes(gw).hex(),
              "models": [{"name": "toy", "version": 1, "sample_rate": 0.3},
                         {"name": "big", "version": 2, "sample_rate": 0.1}]}
    monkeypatch.setattr(pool_status, "fetch_status", lambda address, timeout=10.0, tls=None, key=None: status)
    monkeypatch.setattr(pool_status, "fetch_gateway_key", lambda address, timeout=10.0, tls=None: public_bytes(gw))
    assert main(["audit", "verify", str(path), "--gateway", "127.0.0.1:1"]) == 0
    other = Ed25519PrivateKey.generate()
    assert main(["audit", "verify", str(path), "--gateway", "127.0.0.1:1",
                 "--gateway-key", public_bytes(other).hex()]) == 1
    assert "✗ --gateway-key matches the key gateway 127.0.0.1:1 reports" in capsys.readouterr().out
    assert main(["economics", "--reward", "1", "--stake", "9", "--cost", "2", "--gateway", "127.0.0.1:1"]) == 0
    out = capsys.readouterr().out
    assert "model toy/1: safe" in out and "model big/2: unsafe" in out


def test_audit_verify_takes_the_key_a_gateway_registered_in_the_database(tmp_path, capsys):
    path, gw, _ = make_receipt(tmp_path)
    db = tmp_path / "gw.db"
    store = open_store(str(db))
    Ledger(store)  # a gateway's database has its ledger tables
    store.register_gateway(key_id(gw), public_bytes(gw), "127.0.0.1:8001", 1)
    store.close()
    assert main(["audit", "verify", str(path), "--db", str(db)]) == 0
    assert "all checks passed" in capsys.readouterr().out
    other = tmp_path / "other.db"
    store = open_store(str(other))
    Ledger(store)
    store.close()
    assert main(["audit", "verify", str(path), "--db", str(other)]) == 1  # that gateway never used it
    assert "never used the database" in capsys.readouterr().err
