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
