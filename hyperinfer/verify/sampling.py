"""Who gets checked, and by whom (design §6).

The draw comes from the operating system's CSPRNG (``secrets``) and is made by
:meth:`SamplingPolicy.decide`, which the orchestrator calls only after the
primary's signed result is in: nothing the primary sees beforehand depends on
whether it will be checked.

Rates:

- per model ``p`` (``rates[model]``, else ``default_rate``);
- probation: a node whose ledger summary says ``probation`` (fewer than K jobs,
  K is the ledger's ``probation_jobs``; K = 0 disables it) is checked with
  ``probation_rate`` (1.0 by default: every job);
- a node whose reputation fell below ``low_reputation`` (after at least one
  check) is checked with at least ``low_reputation_rate``;
- mode ``always`` checks every request regardless of the rate.

Validators (:func:`choose_validator`): never the primary itself and never a
node of the same operator. A node that declared no operator counts as its own
operator (operator names are self-declared, so this only guards against honest
mistakes such as two nodes of one operator checking each other). Among the
rest, nodes that run the same artifact (same target id and sha256) are
preferred: their digests must then be equal bit for bit. Otherwise a node on
another target is used and the outputs are compared within tolerance. The pick
within the preferred class is random (CSPRNG) so that no node can predict
which peer will check it.
"""

from __future__ import annotations

import enum
import secrets
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping, Sequence

from hyperinfer.errors import InvalidArgument

# 53 bits: the resolution of a float in [0, 1), so rate p is drawn exactly to double precision
_RESOLUTION = 1 << 53


class Mode(str, enum.Enum):
    AUTO = "auto"  # answer at once, check in the background if sampled
    SYNC = "sync"  # if sampled, answer only after the check
    ALWAYS = "always"  # always checked, answer after the check

    @classmethod
    def parse(cls, value: "str | Mode | None", field_name: str = "mode") -> "Mode":
        if value is None or value == "":
            return cls.AUTO
        if isinstance(value, Mode):
            return value
        try:
            return cls(str(value).strip().lower())
        except ValueError:
            raise InvalidArgument(
                f"{field_name}: unknown verification mode {value!r}; use one of: auto, sync, always"
            ) from None


@dataclass(frozen=True)
class NodeRef:
    """A node as the verifier needs it: identity, key, operator and what it runs for one model."""

    node_id: str
    public_key: bytes  # raw Ed25519 key the node joined with
    operator: str = ""
    address: str = ""  # host:port of its Worker service (used by the WorkerClient only)
    target_id: str = ""  # target of the artifact it loaded for this model
    artifact_sha256: str = ""  # sha256 of that artifact

    @property
    def effective_operator(self) -> str:
        return self.operator or f"node:{self.node_id}"

    def same_artifact(self, other: "NodeRef") -> bool:
        return bool(self.target_id) and (self.target_id, self.artifact_sha256) == (other.target_id, other.artifact_sha256)


@dataclass(frozen=True)
class ValidatorChoice:
    node: NodeRef
    same_artifact: bool  # True: digests must be equal; False: compare within tolerance


def draw(p: float) -> bool:
    """True with probability ``p``, from the OS CSPRNG."""
    if p <= 0.0:
        return False
    if p >= 1.0:
        return True
    return secrets.randbelow(_RESOLUTION) < int(p * _RESOLUTION)


def _check_rate(name: str, p: float) -> float:
    try:
        p = float(p)
    except (TypeError, ValueError):
        raise InvalidArgument(f"{name}: sample rate must be a number, got {p!r}") from None
    if not 0.0 <= p <= 1.0:
        raise InvalidArgument(f"{name}: sample rate must be between 0 and 1, got {p}")
    return p


@dataclass
class SamplingPolicy:
    default_rate: float = 0.1
    rates: dict[str, float] = field(default_factory=dict)  # model name -> p
    probation_rate: float = 1.0
    low_reputation: float = 0.0  # 0 disables the low-reputation boost
    low_reputation_rate: float = 0.5

    def __post_init__(self) -> None:
        self.default_rate = _check_rate("default_rate", self.default_rate)
        self.probation_rate = _check_rate("probation_rate", self.probation_rate)
        self.low_reputation_rate = _check_rate("low_reputation_rate", self.low_reputation_rate)
        self.rates = {m: _check_rate(f"rates[{m!r}]", p) for m, p in self.rates.items()}

    def model_rate(self, model: str) -> float:
        """The configured rate for a model (what Pool.Status reports as sample_rate)."""
        return self.rates.get(model, self.default_rate)

    def rate(self, model: str, node_summary: Mapping[str, Any] | None = None) -> float:
        """The rate that applies to one node for one model, given its ledger summary."""
        p = self.model_rate(model)
        s = node_summary or {}
        if s.get("probation"):
            p = max(p, self.probation_rate)
        if self.low_reputation > 0 and s.get("checks", 0) > 0 and s.get("reputation", 1.0) < self.low_reputation:
            p = max(p, self.low_reputation_rate)
        return p

    def decide(self, model: str, node_summary: Mapping[str, Any] | None, mode: Mode | str) -> bool:
        """Draw whether to check this request. Call only once the primary's signed result is in."""
        if Mode.parse(mode) is Mode.ALWAYS:
            return True
        return draw(self.rate(model, node_summary))


def choose_validator(
    primary: NodeRef, candidates: Iterable[NodeRef], exclude_operators: Sequence[str] = ()
) -> ValidatorChoice | None:
    """A node of a different operator to re-run the request; None when there is none.

    ``exclude_operators``: further operators to avoid (a tiebreaker must be
    independent of both the primary and the validator).
    """
    banned = {primary.effective_operator, *exclude_operators}
    eligible = [c for c in candidates if c.node_id != primary.node_id and c.effective_operator not in banned]
    same = [c for c in eligible if c.same_artifact(primary)]
    if same:
        return ValidatorChoice(secrets.choice(same), True)
    if eligible:
        return ValidatorChoice(secrets.choice(eligible), False)
    return None
