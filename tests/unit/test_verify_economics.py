import pytest

from hyperinfer.errors import InvalidArgument
from hyperinfer.verify.economics import assess, expected_cheating_gain, min_sample_rate


def test_bound_and_gain():
    assert min_sample_rate(1, 9, 2) == pytest.approx(0.2)
    assert expected_cheating_gain(0.2, 1, 9, 2) == pytest.approx(0.0)
    assert expected_cheating_gain(0.1, 1, 9, 2) == pytest.approx(1.0)
    assert expected_cheating_gain(0.3, 1, 9, 2) == pytest.approx(-1.0)


def test_assessment_verdicts():
    assert assess(1, 9, 2, 0.25).safe
    a = assess(1, 9, 2, 0.2)  # at the bound cheating breaks even: not safe
    assert not a.safe and a.verdict().startswith("unsafe")
    a = assess(1, 1, 5, 1.0)
    assert not a.safe and "no sample rate" in a.verdict()
    assert "safe: sample rate 0.5" in assess(1, 9, 2, 0.5).verdict()


@pytest.mark.parametrize("args, field", [((-1, 1, 1), "reward"), ((1, float("nan"), 1), "stake"),
                                         ((1, 1, "x"), "cost"), ((0, 0, 1), "reward \\+ stake")])
def test_inputs_validated(args, field):
    with pytest.raises(InvalidArgument, match=field):
        min_sample_rate(*args)


def test_rate_validated():
    with pytest.raises(InvalidArgument, match="sample rate"):
        assess(1, 1, 1, 1.5)


def test_audits_are_the_floor_against_collusion(capsys):
    from hyperinfer.cli import main
    from hyperinfer.verify.economics import detection_rate

    assert detection_rate(0.1, 0.0) == 0.1
    assert abs(detection_rate(0.1, 0.2) - 0.28) < 1e-12  # a lone cheater: p + a - pa
    assert detection_rate(0.1, 0.2, colluding=True) == 0.2  # colluders vouch for each other: audits only
    assert main(["economics", "--reward", "1", "--stake", "9", "--cost", "2", "--sample-rate", "0.15",
                 "--audit-rate", "0.1"]) == 0
    out = capsys.readouterr().out
    assert "lone cheater, caught with p=0.235" in out and "colluding pool, caught with p=0.1" in out
    assert out.count("): safe:") == 1 and out.count("): unsafe:") == 1
