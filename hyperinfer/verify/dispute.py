"""Dispute resolution with a referee, and the evidence anyone can re-check (design §6.4).

A dispute starts when a validator's result does not match the primary's: a
different digest for the same artifact, or outside tolerance for different
artifacts. The referee is ONNX Runtime on the package's cleaned model, run by
the gateway; its outputs are the ground truth the tolerances were calibrated
against.

The rule (:func:`resolve`):

1. Whoever is outside tolerance of the referee is at fault. Both can be.
2. Same artifact, digests differ, and both are within tolerance of the
   referee: one deterministic artifact gives identical bits on honest nodes of
   one target, so at least one of the two did not run the artifact it
   attested (a cheaper, lower-precision variant often stays within
   tolerance). Closeness to the referee cannot tell which: the honest
   artifact's own error may be larger than the variant's. So a third node of
   a third operator running the same artifact breaks the tie (BOINC's
   homogeneous redundancy): whoever's digest differs from the tiebreaker's is
   at fault. If the tiebreaker matches neither, or no tiebreaker is available,
   the dispute is *unresolved*: nobody is slashed (never slash an honest node
   on a guess), the evidence is kept, and neither check counts as an
   agreement, so both reputations fall and both nodes get checked more often.
3. Different artifacts, both within tolerance of the referee: nobody is at
   fault (pairwise tolerance is not transitive; the referee settles it).

A :class:`Dispute` holds the evidence: each execution's attestation bytes,
signature and public key, the input tensors, the outputs of each node and of
the referee, the output specs (tolerances) used, and the verdict.
:func:`recheck` re-derives every part of it from those bytes alone.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np

from hyperinfer.errors import InvalidArgument
from hyperinfer.package import OutputSpec
from hyperinfer.verify.agreement import AgreementResult, within_tolerance
from hyperinfer.verify.attestation import Attestation, AttestationError
from hyperinfer.verify.checks import Check, b64, tensors_from_json, tensors_to_json, unb64, unhex
from hyperinfer.verify.digest import tensors_digest
from hyperinfer.verify.signing import fingerprint, verify_signature

FORMAT_VERSION = 1
REFEREE_ORT = "onnxruntime"


@dataclass(frozen=True)
class Execution:
    """One node's signed run of the disputed input."""

    role: str  # primary, validator, tiebreaker
    node_id: str
    public_key: bytes
    attestation: bytes
    signature: bytes
    outputs: dict[str, np.ndarray]

    @property
    def parsed(self) -> Attestation:
        return Attestation.from_bytes(self.attestation)

    def to_json(self) -> dict[str, Any]:
        return {
            "role": self.role, "node_id": self.node_id, "public_key": self.public_key.hex(),
            "attestation": b64(self.attestation), "signature": b64(self.signature),
            "outputs": tensors_to_json(self.outputs),
        }

    @classmethod
    def from_json(cls, d: Any, field_name: str) -> "Execution":
        if not isinstance(d, dict):
            raise InvalidArgument(f"{field_name}: expected an object")
        try:
            return cls(
                str(d["role"]), str(d["node_id"]), unhex(d["public_key"], f"{field_name}.public_key"),
                unb64(d["attestation"], f"{field_name}.attestation"), unb64(d["signature"], f"{field_name}.signature"),
                tensors_from_json(d["outputs"], f"{field_name}.outputs"),
            )
        except KeyError as e:
            raise InvalidArgument(f"{field_name}: missing field {e.args[0]!r}") from None


@dataclass(frozen=True)
class NodeFinding:
    node_id: str
    within_tolerance: bool
    tolerance_ratio: float  # worst |x-ref| / (atol + rtol*|ref|); <= 1 within tolerance
    reason: str  # the first failing output, or "" when within tolerance
    matches_tiebreaker: bool | None = None  # same-artifact tie only

    def to_json(self) -> dict[str, Any]:
        return {"node_id": self.node_id, "within_tolerance": self.within_tolerance,
                "tolerance_ratio": _finite(self.tolerance_ratio), "reason": self.reason,
                "matches_tiebreaker": self.matches_tiebreaker}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> "NodeFinding":
        r = d["tolerance_ratio"]
        return cls(str(d["node_id"]), bool(d["within_tolerance"]), math.inf if r is None else float(r),
                   str(d["reason"]), d.get("matches_tiebreaker"))


def _finite(x: float) -> float | None:
    return None if not math.isfinite(x) else x  # JSON has no inf


@dataclass(frozen=True)
class Verdict:
    faults: tuple[str, ...]  # node ids at fault (primary and/or validator; never the tiebreaker)
    resolved: bool
    reason: str
    findings: tuple[NodeFinding, ...] = ()

    def outcome_for(self, node_id: str) -> str:
        """Receipt status for a party: disputed-lost, disputed-won or disputed-unresolved."""
        if node_id in self.faults:
            return "disputed-lost"
        return "disputed-won" if self.resolved else "disputed-unresolved"

    def to_json(self) -> dict[str, Any]:
        return {"faults": list(self.faults), "resolved": self.resolved, "reason": self.reason,
                "findings": [f.to_json() for f in self.findings]}

    @classmethod
    def from_json(cls, d: Any) -> "Verdict":
        try:
            return cls(tuple(d["faults"]), bool(d["resolved"]), str(d["reason"]),
                       tuple(NodeFinding.from_json(f) for f in d.get("findings", [])))
        except (KeyError, TypeError, ValueError) as e:
            raise InvalidArgument(f"verdict: malformed ({type(e).__name__}: {e})") from None


def _digest(outputs: Sequence[OutputSpec], tensors: Mapping[str, np.ndarray]) -> str | None:
    try:
        return tensors_digest([o.name for o in outputs], tensors)
    except KeyError:
        return None


def _finding(node_id: str, cmp: AgreementResult) -> NodeFinding:
    return NodeFinding(node_id, cmp.agree, cmp.tolerance_ratio, "" if cmp.agree else cmp.reason)


def needs_tiebreaker(primary: Execution, validator: Execution, referee_outputs: Mapping[str, np.ndarray],
                     outputs: Sequence[OutputSpec], same_artifact: bool) -> bool:
    """True when rule 2 applies: same artifact, different digests, both within tolerance."""
    if not same_artifact or _digest(outputs, primary.outputs) == _digest(outputs, validator.outputs):
        return False
    return bool(within_tolerance(primary.outputs, referee_outputs, outputs)) and bool(
        within_tolerance(validator.outputs, referee_outputs, outputs))


def resolve(primary: Execution, validator: Execution, referee_outputs: Mapping[str, np.ndarray],
            outputs: Sequence[OutputSpec], same_artifact: bool, tiebreaker: Execution | None = None) -> Verdict:
    """Apply the rule in the module docstring."""
    cp = within_tolerance(primary.outputs, referee_outputs, outputs)
    cv = within_tolerance(validator.outputs, referee_outputs, outputs)
    fp, fv = _finding(primary.node_id, cp), _finding(validator.node_id, cv)
    faults = tuple(e.node_id for e, c in ((primary, cp), (validator, cv)) if not c.agree)
    if faults:
        names = " and ".join(f"{e.role} {e.node_id}" for e, c in ((primary, cp), (validator, cv)) if not c.agree)
        return Verdict(faults, True, f"{names} outside tolerance of the referee", (fp, fv))
    dp, dv = _digest(outputs, primary.outputs), _digest(outputs, validator.outputs)
    if not same_artifact or dp == dv:
        return Verdict((), True, "both within tolerance of the referee", (fp, fv))
    # rule 2: same artifact, different bits, both plausible
    if tiebreaker is None:
        return Verdict((), False, "same artifact but different digests, both within tolerance of the referee; "
                       "no independent tiebreaker available", (fp, fv))
    dt = _digest(outputs, tiebreaker.outputs)
    fp = NodeFinding(fp.node_id, fp.within_tolerance, fp.tolerance_ratio, fp.reason, dp == dt)
    fv = NodeFinding(fv.node_id, fv.within_tolerance, fv.tolerance_ratio, fv.reason, dv == dt)
    if dp == dt:
        return Verdict((validator.node_id,), True, f"same artifact: validator's digest differs from both the "
                       f"primary's and tiebreaker {tiebreaker.node_id}'s", (fp, fv))
    if dv == dt:
        return Verdict((primary.node_id,), True, f"same artifact: primary's digest differs from both the "
                       f"validator's and tiebreaker {tiebreaker.node_id}'s", (fp, fv))
    return Verdict((), False, "same artifact but three different digests (artifact not deterministic?)", (fp, fv))


@dataclass(frozen=True)
class Dispute:
    dispute_id: str
    model_name: str
    model_version: int
    created_ms: int
    input_names: tuple[str, ...]  # manifest order, for the input digest
    outputs: tuple[OutputSpec, ...]  # manifest order and the tolerances used
    inputs: dict[str, np.ndarray]
    primary: Execution
    validator: Execution
    referee_outputs: dict[str, np.ndarray]
    same_artifact: bool
    verdict: Verdict
    tiebreaker: Execution | None = None
    referee: str = REFEREE_ORT
    format_version: int = FORMAT_VERSION

    def executions(self) -> list[Execution]:
        return [e for e in (self.primary, self.validator, self.tiebreaker) if e is not None]

    def to_json(self) -> str:
        d = {
            "format_version": self.format_version, "dispute_id": self.dispute_id,
            "model_name": self.model_name, "model_version": self.model_version, "created_ms": self.created_ms,
            "input_names": list(self.input_names), "outputs": [o.to_json() for o in self.outputs],
            "inputs": tensors_to_json(self.inputs), "primary": self.primary.to_json(),
            "validator": self.validator.to_json(),
            "tiebreaker": self.tiebreaker.to_json() if self.tiebreaker else None,
            "referee": self.referee, "referee_outputs": tensors_to_json(self.referee_outputs),
            "same_artifact": self.same_artifact, "verdict": self.verdict.to_json(),
        }
        return json.dumps(d, sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_json(cls, data: str | bytes) -> "Dispute":
        try:
            d = json.loads(data)
        except ValueError as e:
            raise InvalidArgument(f"evidence is not valid JSON: {e}") from None
        if not isinstance(d, dict):
            raise InvalidArgument("evidence is not a JSON object")
        try:
            if d["format_version"] != FORMAT_VERSION:
                raise InvalidArgument(f"format_version: unsupported evidence format {d['format_version']!r}")
            return cls(
                dispute_id=str(d["dispute_id"]), model_name=str(d["model_name"]),
                model_version=int(d["model_version"]), created_ms=int(d["created_ms"]),
                input_names=tuple(d["input_names"]),
                outputs=tuple(OutputSpec.from_json(o) for o in d["outputs"]),
                inputs=tensors_from_json(d["inputs"], "inputs"),
                primary=Execution.from_json(d["primary"], "primary"),
                validator=Execution.from_json(d["validator"], "validator"),
                tiebreaker=Execution.from_json(d["tiebreaker"], "tiebreaker") if d.get("tiebreaker") else None,
                referee=str(d["referee"]), referee_outputs=tensors_from_json(d["referee_outputs"], "referee_outputs"),
                same_artifact=bool(d["same_artifact"]), verdict=Verdict.from_json(d["verdict"]),
            )
        except KeyError as e:
            raise InvalidArgument(f"evidence: missing field {e.args[0]!r}") from None
        except (TypeError, ValueError) as e:
            raise InvalidArgument(f"evidence: malformed ({type(e).__name__}: {e})") from None


def recheck(dispute: Dispute, trusted_keys: Mapping[str, bytes] | None = None) -> list[Check]:
    """Re-derive a dispute from its stored bytes: keys, signatures, digests and the verdict."""
    checks: list[Check] = []
    try:
        input_digest = tensors_digest(list(dispute.input_names), dispute.inputs)
    except KeyError as e:
        input_digest = None
        checks.append(Check("input tensors complete", False, f"input {e.args[0]!r} missing"))
    request_ids = []
    for e in dispute.executions():
        who = f"{e.role} {e.node_id}"
        ok = len(e.public_key) == 32 and fingerprint(e.public_key) == e.node_id
        checks.append(Check(f"{who}: public key matches node id", ok))
        if trusted_keys and e.node_id in trusted_keys:
            checks.append(Check(f"{who}: public key matches the trusted key", trusted_keys[e.node_id] == e.public_key))
        checks.append(Check(f"{who}: signature over attestation", verify_signature(e.public_key, e.attestation, e.signature)))
        try:
            att = e.parsed
        except AttestationError as err:
            checks.append(Check(f"{who}: attestation parses", False, str(err)))
            continue
        request_ids.append(att.request_id)
        checks.append(Check(f"{who}: attestation names this node", att.node_id == e.node_id))
        checks.append(Check(f"{who}: attestation names the model",
                            (att.model_name, att.model_version) == (dispute.model_name, dispute.model_version),
                            f"{att.model_name}/{att.model_version}"))
        checks.append(Check(f"{who}: input digest matches the stored input", att.input_digest == input_digest))
        checks.append(Check(f"{who}: output digest matches the stored output",
                            att.output_digest == _digest(dispute.outputs, e.outputs)))
    checks.append(Check("every run had its own request id", len(set(request_ids)) == len(request_ids)))
    if dispute.same_artifact:
        atts = []
        for e in dispute.executions():
            try:
                atts.append(e.parsed)
            except AttestationError:
                pass
        checks.append(Check("same artifact for every run (homogeneous redundancy)",
                            len({(a.target_id, a.artifact_sha256) for a in atts}) == 1))
    v = resolve(dispute.primary, dispute.validator, dispute.referee_outputs, dispute.outputs,
                dispute.same_artifact, dispute.tiebreaker)
    same = set(v.faults) == set(dispute.verdict.faults) and v.resolved == dispute.verdict.resolved
    checks.append(Check("verdict re-computed from the stored tensors", same,
                        f"faults: {', '.join(v.faults) or 'none'}; {v.reason}"))
    return checks


def new_dispute(*, dispute_id: str, model_name: str, model_version: int, created_ms: int,
                input_names: Sequence[str], outputs: Sequence[OutputSpec], inputs: Mapping[str, np.ndarray],
                primary: Execution, validator: Execution, referee_outputs: Mapping[str, np.ndarray],
                same_artifact: bool, tiebreaker: Execution | None = None) -> Dispute:
    """Resolve and package the evidence in one step."""
    verdict = resolve(primary, validator, referee_outputs, outputs, same_artifact, tiebreaker)
    return Dispute(dispute_id, model_name, int(model_version), int(created_ms), tuple(input_names), tuple(outputs),
                   dict(inputs), primary, validator, dict(referee_outputs), same_artifact, verdict, tiebreaker)


__all__ = ["Execution", "NodeFinding", "Verdict", "Dispute", "resolve", "needs_tiebreaker", "recheck",
           "new_dispute", "REFEREE_ORT"]
