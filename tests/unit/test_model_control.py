"""Model control on a real Catalog over a folder (no network): index states, unload/load through
the UNLOADED marker, config overrides, the Triton config generated from a manifest, the admin hook."""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from hyperinfer.errors import InvalidArgument, NotFound, PermissionDenied
from hyperinfer.gateway.artifacts import Catalog
from hyperinfer.gateway.assembly import model_control_for
from hyperinfer.gateway.model_control import ModelControl, parse_override, triton_config
from hyperinfer.package import BatchInfo, Manifest

sys.path.insert(0, str(Path(__file__).parents[1] / "grpc"))
from oip_harness import make_package  # noqa: E402


@dataclass
class FakeNode:
    node_id: str
    targets: tuple = ("cpu-x86_64",)
    loaded: dict = field(default_factory=dict)
    schedulable: bool = True


class FakeRegistry:
    def __init__(self, catalog, nodes):
        self.catalog, self.nodes = catalog, nodes

    def all_nodes(self):
        return self.nodes

    def schedulable_nodes(self, name, version):
        if self.catalog.artifact_sha256(name, version, "cpu-x86_64") is None:
            return []
        return [n for n in self.nodes if (name, version) in n.loaded]


@pytest.fixture
def control(tmp_path):
    repo = tmp_path / "repo"
    make_package(repo, "mlp")
    make_package(repo, "int-bool")
    (repo / "broken" / "1").mkdir(parents=True)
    (repo / "broken" / "1" / "manifest.json").write_text("{not json")
    catalog = Catalog(repo)
    node = FakeNode("n1", loaded={("mlp", 1): ("cpu-x86_64", "x")})
    return ModelControl(catalog, FakeRegistry(catalog, [node]), load_timeout=1.0)


def test_index_names_every_package_and_why_it_is_not_ready(control):
    got = {(e.name, e.version): (e.state, e.reason) for e in control.index()}
    assert got == {("broken", "1"): ("UNAVAILABLE", "invalid package (see the gateway log)"),
                   ("int-bool", "1"): ("UNAVAILABLE", "no healthy node has it loaded"),
                   ("mlp", "1"): ("READY", "")}
    assert [e.name for e in control.index(ready_only=True)] == ["mlp"]


def test_unload_writes_a_marker_and_load_removes_it(control):
    control.unload("mlp")
    assert (control.root / "mlp" / "UNLOADED").is_file()
    assert control.catalog.versions("mlp") == []
    assert [(e.state, e.reason) for e in control.index() if e.name == "mlp"] == [("UNAVAILABLE", "unloaded")]
    control.load("mlp", config='{"max_batch_size": 4}')
    assert control.catalog.versions("mlp") == [1] and not (control.root / "mlp" / "UNLOADED").exists()
    assert control.model_config("mlp")["max_batch_size"] == 4
    control.unload("mlp")  # drops the override
    control.load("mlp")
    assert control.model_config("mlp")["max_batch_size"] == 0


def test_load_waits_for_a_node_and_says_when_none_loads_it(control):
    with pytest.raises(Exception, match="none has loaded it within 1s") as e:
        control.load("int-bool")  # a node could run it, but never reports it loaded
    assert e.value.code.value == "UNAVAILABLE"
    with pytest.raises(NotFound, match="failed to load 'nope'"):
        control.load("nope")
    with pytest.raises(NotFound, match="failed to unload 'nope'"):
        control.unload("nope")
    with pytest.raises(InvalidArgument, match="invalid model name"):
        control.load("a/b")


def test_override_cannot_change_what_was_compiled():
    assert parse_override("m", '{"max_batch_size": "16", "name": "m"}') == {"max_batch_size": "16", "name": "m"}
    for bad, needle in [('{"name": "other"}', "config.name"), ('{"output": []}', "config.output"),
                        ("[]", "JSON object"), ("{", "not valid JSON")]:
        with pytest.raises(InvalidArgument, match=needle):
            parse_override("m", bad)


def test_triton_config_from_a_batched_manifest(control):
    m = control.catalog.get("mlp").manifest
    plain = triton_config(m, nodes=control.registry.nodes)
    assert plain["max_batch_size"] == 0 and plain["input"] == [{"name": "x", "data_type": "TYPE_FP32", "dims": [1, 64]}]
    assert plain["instance_group"] == [{"name": "cpu-x86_64", "kind": "KIND_CPU", "count": 1}]
    d = m.to_json()
    d["batch"] = BatchInfo(8, (1, 2, 4, 8)).to_json()
    batched = triton_config(Manifest.from_json(d))
    assert batched["max_batch_size"] == 8 and batched["input"][0]["dims"] == [64]
    assert "dynamic_batching" in batched
    ints = triton_config(control.catalog.get("int-bool").manifest)
    assert {o["name"]: o["data_type"] for o in ints["output"]}["positive"] == "TYPE_BOOL"


def test_admin_hook_is_read_at_call_time(control):
    class Gw:
        catalog, registry = control.catalog, control.registry
        authorize_admin = None

    gw = Gw()
    c = model_control_for(gw)
    assert model_control_for(gw) is c
    c.authorize([])  # no credentials: open

    def deny(metadata):
        raise PermissionDenied(f"not an admin: {dict(metadata)}")

    gw.authorize_admin = deny  # installed later (the admin-key component)
    with pytest.raises(PermissionDenied, match="not an admin"):
        c.authorize([("x", "y")])
