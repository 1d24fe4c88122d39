import math
import secrets

import pytest

from hyperinfer.errors import InvalidArgument
from hyperinfer.verify.sampling import Mode, NodeRef, SamplingPolicy, choose_validator, draw

K = b"\0" * 32


def node(i, op, target="cpu-a", sha="a" * 64):
    return NodeRef(f"n{i}", K, op, "", target, sha)


def test_draw_extremes_and_rate():
    assert not any(draw(0.0) for _ in range(1000))
    assert all(draw(1.0) for _ in range(1000))
    n = 20000
    hits = sum(draw(0.3) for _ in range(n))
    sd = math.sqrt(n * 0.3 * 0.7)
    assert abs(hits - 0.3 * n) < 4.5 * sd


def test_draw_uses_the_os_csprng(monkeypatch):
    calls = []
    monkeypatch.setattr(secrets, "randbelow", lambda k: calls.append(k) or 0)
    assert draw(0.5) and calls == [1 << 53]


def test_rates_probation_low_reputation_and_modes():
    pol = SamplingPolicy(default_rate=0.1, rates={"big": 0.02}, probation_rate=1.0,
                         low_reputation=0.6, low_reputation_rate=0.5)
    assert pol.model_rate("big") == 0.02 and pol.model_rate("other") == 0.1
    assert pol.rate("big", {"probation": True}) == 1.0
    assert pol.rate("big", {"probation": False, "checks": 5, "reputation": 0.4}) == 0.5
    assert pol.rate("big", {"probation": False, "checks": 0, "reputation": 0.4}) == 0.02
    assert SamplingPolicy(default_rate=0.0).decide("m", {}, "always")
    assert not SamplingPolicy(default_rate=0.0).decide("m", {}, Mode.SYNC)
    assert not SamplingPolicy(default_rate=0.0, probation_rate=0.0).decide("m", {"probation": True}, "auto")


@pytest.mark.parametrize("kw", [{"default_rate": 1.5}, {"rates": {"m": -0.1}}, {"probation_rate": "x"}])
def test_bad_rates_name_the_field(kw):
    name = next(iter(kw))
    with pytest.raises(InvalidArgument, match=name):
        SamplingPolicy(**kw)


def test_choose_validator_prefers_same_artifact_of_other_operator():
    p = node(0, "op1")
    same_op = node(1, "op1")
    other_target = node(2, "op2", "cpu-b", "b" * 64)
    same = node(3, "op3")
    for _ in range(50):
        c = choose_validator(p, [p, same_op, other_target, same])
        assert c.node is same and c.same_artifact
    c = choose_validator(p, [p, same_op, other_target])
    assert c.node is other_target and not c.same_artifact
    assert choose_validator(p, [p, same_op]) is None
    assert choose_validator(p, [same], exclude_operators=["op3"]) is None


def test_same_sha_different_target_is_not_same_artifact():
    p = node(0, "op1")
    assert not choose_validator(p, [node(1, "op2", "cpu-b", "a" * 64)]).same_artifact


def test_nodes_without_operator_are_their_own_operator():
    p = NodeRef("n0", K, "", "", "cpu-a", "a" * 64)
    v = NodeRef("n1", K, "", "", "cpu-a", "a" * 64)
    assert choose_validator(p, [v]).node is v


def test_validator_pick_is_spread_over_candidates():
    p = node(0, "op1")
    cands = [node(i, f"op{i}") for i in range(2, 6)]
    seen = {choose_validator(p, cands).node.node_id for _ in range(200)}
    assert seen == {c.node_id for c in cands}
