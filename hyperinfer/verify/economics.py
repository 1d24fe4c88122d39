"""When cheating does not pay (design §6, after Proof of Sampling).

Per job a cheating node saves the compute cost C. Unchecked (probability
1 - p) it keeps the reward R as usual; checked (probability p) it forfeits R
and loses the slashed stake S. Against working honestly, its expected gain is

    gain(p) = (1 - p) * C + p * (C - R - S) = C - p * (R + S)

so cheating is unprofitable exactly when p > C / (R + S). If C >= R + S no
sample rate below 1 is enough, and even p = 1 only breaks even at C = R + S.

The gateway's own audits (``--audit-rate`` a: ONNX Runtime at the gateway re-runs
a share of requests) are drawn independently of the sampled checks. A lone
cheater is caught with probability ``p + a - p a``. Colluding nodes can agree
with each other on every sampled check, so against a colluding pool only the
audits count: the probability is ``a`` (:func:`detection_rate`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from hyperinfer.errors import InvalidArgument


def _nonneg(name: str, x: float) -> float:
    try:
        x = float(x)
    except (TypeError, ValueError):
        raise InvalidArgument(f"{name}: expected a number, got {x!r}") from None
    if not math.isfinite(x) or x < 0:
        raise InvalidArgument(f"{name}: must be a finite number >= 0, got {x}")
    return x


def _rate(p: float) -> float:
    p = _nonneg("sample rate", p)
    if p > 1:
        raise InvalidArgument(f"sample rate: must be between 0 and 1, got {p}")
    return p


def min_sample_rate(reward: float, stake: float, cost: float) -> float:
    """C / (R + S): cheating is unprofitable for any sample rate strictly above this."""
    r, s, c = _nonneg("reward", reward), _nonneg("stake", stake), _nonneg("cost", cost)
    if r + s == 0:
        raise InvalidArgument("reward + stake: must be > 0 (with nothing to lose no sample rate deters cheating)")
    return c / (r + s)


def detection_rate(sample_rate: float, audit_rate: float = 0.0, colluding: bool = False) -> float:
    """Probability a wrong answer is caught: ``p + a - p a`` for a lone cheater, ``a`` for a
    colluding pool (its members agree on every sampled check)."""
    p, a = _rate(sample_rate), _rate(audit_rate)
    return a if colluding else p + a - p * a


def expected_cheating_gain(sample_rate: float, reward: float, stake: float, cost: float) -> float:
    """Expected gain per job of cheating over honest work: C - p (R + S)."""
    p = _rate(sample_rate)
    r, s, c = _nonneg("reward", reward), _nonneg("stake", stake), _nonneg("cost", cost)
    return c - p * (r + s)


@dataclass(frozen=True)
class Assessment:
    reward: float
    stake: float
    cost: float
    bound: float  # C / (R + S)
    sample_rate: float
    gain: float  # expected gain of cheating per job at sample_rate
    safe: bool  # sample_rate > bound

    def verdict(self) -> str:
        if self.safe:
            return (f"safe: sample rate {self.sample_rate:g} > bound {self.bound:.6g}; "
                    f"cheating loses {-self.gain:.6g} per job on average")
        if self.bound >= 1:
            return (f"unsafe: bound {self.bound:.6g} >= 1, no sample rate deters cheating; "
                    "raise the stake or the reward")
        return (f"unsafe: sample rate {self.sample_rate:g} <= bound {self.bound:.6g}; "
                f"cheating gains {self.gain:.6g} per job on average; raise the rate above {self.bound:.6g}")


def assess(reward: float, stake: float, cost: float, sample_rate: float) -> Assessment:
    bound = min_sample_rate(reward, stake, cost)
    p = _rate(sample_rate)
    gain = expected_cheating_gain(p, reward, stake, cost)
    return Assessment(float(reward), float(stake), float(cost), bound, p, gain, p > bound)
