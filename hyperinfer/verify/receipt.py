"""Signed receipts (design §5): which node computed a response and whether it was checked.

A receipt travels in the Open Inference Protocol response as the string
parameter ``hyperinfer.receipt`` (:data:`RECEIPT_PARAMETER`), a JSON object:

    format_version       1
    request_id           the request id the primary node attested
    model_name, model_version
    node_id              the primary node; node_public_key (hex) its key,
                         which the receipt carries so it can be checked
                         offline: fingerprint(node_public_key) == node_id
    attestation          the primary's attestation bytes (base64)
    node_signature       its Ed25519 signature over them (base64)
    status               see below
    detail               why (e.g. the dispute reason, "no independent validator")
    validator_*          node id, public key (hex), attestation and signature
                         (base64) of the validator when one ran, else null
    dispute_id           evidence id when a dispute was opened, else ""
    probation            present, and true, only when the node was on probation
                         (see verify.probation): the answer was held until a
                         validator agreed or the referee found it right
    admission            how the primary's operator got into the pool: ``admitted``
                         (by the gateway operator, with a bond) or ``open`` (an
                         --open-pool gateway: bond 0, probation); absent in
                         receipts from before admission existed
    gateway_id           fingerprint of the gateway's key
    issued_ms            when the gateway signed it
    gateway_signature    Ed25519 over b"hyperinfer-receipt-v1\\n" + canonical JSON
                         (sorted keys, no whitespace) of every other field

Status values:

    unchecked            not sampled
    pending              sampled in mode auto: answered now, the check runs in
                         the background; the gateway stores the final receipt
    skipped              sampled, but no node of another operator could check it
                         (never counted as a pass)
    agreed               a validator's result agreed
    refereed             (probation only) no validator was available; ONNX
                         Runtime on the gateway found the answer within tolerance
    disputed-won         disagreement; the referee found the primary right
    disputed-lost        disagreement; the referee found the primary at fault
    disputed-unresolved  disagreement nobody could be blamed for (see verify.dispute)
    audited              the gateway re-ran it with ONNX Runtime (--audit-rate) and
                         it agreed within the model's tolerance
    audit-failed         the gateway's ONNX Runtime re-run disagreed: the node is at fault
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass, fields, replace
from typing import Any, Mapping

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from hyperinfer.errors import InvalidArgument
from hyperinfer.verify.attestation import Attestation, AttestationError
from hyperinfer.verify.checks import Check, b64, unb64, unhex
from hyperinfer.verify.signing import fingerprint, key_id, sign, verify_signature

RECEIPT_PARAMETER = "hyperinfer.receipt"
FORMAT_VERSION = 1
_PREFIX = b"hyperinfer-receipt-v1\n"

UNCHECKED = "unchecked"
PENDING = "pending"
SKIPPED = "skipped"
AGREED = "agreed"
REFEREED = "refereed"
DISPUTED_WON = "disputed-won"
DISPUTED_LOST = "disputed-lost"
DISPUTED_UNRESOLVED = "disputed-unresolved"
AUDITED = "audited"
AUDIT_FAILED = "audit-failed"
STATUSES = (UNCHECKED, PENDING, SKIPPED, AGREED, REFEREED, DISPUTED_WON, DISPUTED_LOST, DISPUTED_UNRESOLVED,
            AUDITED, AUDIT_FAILED)
# statuses where a validator ran and its attestation is in the receipt
CHECKED_STATUSES = (AGREED, DISPUTED_WON, DISPUTED_LOST, DISPUTED_UNRESOLVED)
# what a probation answer may be served with: someone independent found it right
PROBATION_SERVED = (AGREED, DISPUTED_WON, REFEREED)
# written only when set, so receipts from before the fields still verify
_OPTIONAL = {"probation", "admission"}

_BYTES = {"attestation", "node_signature", "validator_attestation", "validator_signature", "gateway_signature"}
_HEX = {"node_public_key", "validator_public_key"}


@dataclass(frozen=True)
class Receipt:
    request_id: str
    model_name: str
    model_version: int
    node_id: str
    node_public_key: bytes
    attestation: bytes
    node_signature: bytes
    status: str
    gateway_id: str
    issued_ms: int
    detail: str = ""
    validator_node_id: str | None = None
    validator_public_key: bytes | None = None
    validator_attestation: bytes | None = None
    validator_signature: bytes | None = None
    dispute_id: str = ""
    gateway_signature: bytes = b""
    format_version: int = FORMAT_VERSION
    probation: bool = False  # served under probation rules (held until checked)
    admission: str = ""  # admitted | open; "" (left out of the JSON) for receipts from before

    def _json_fields(self) -> dict[str, Any]:
        d = {name: getattr(self, name) for name in _FIELDS}  # flat and immutable: asdict's deep copy is slow
        if not d["probation"]:
            del d["probation"]
        if not d["admission"]:
            del d["admission"]  # receipts signed before the field existed still verify
        for k in _BYTES:
            d[k] = None if d[k] is None else b64(d[k])
        for k in _HEX:
            d[k] = None if d[k] is None else d[k].hex()
        return d

    def signing_bytes(self) -> bytes:
        """What the gateway signs: every field but the signature itself."""
        d = self._json_fields()
        del d["gateway_signature"]
        return _PREFIX + json.dumps(d, sort_keys=True, separators=(",", ":")).encode()

    @functools.cached_property
    def json_text(self) -> str:
        """The receipt as sent and stored (made once: a receipt is immutable)."""
        return json.dumps(self._json_fields(), sort_keys=True, separators=(",", ":"))

    @property
    def checked(self) -> bool:
        return self.status in CHECKED_STATUSES


_FIELDS = tuple(f.name for f in fields(Receipt))


def sign_receipt(gateway_key: Ed25519PrivateKey, receipt: Receipt, gateway_id: str | None = None) -> Receipt:
    """The receipt with ``gateway_id`` set to the key's id and the gateway signature filled in.
    ``gateway_id``: the key's id if the caller has it (saves hashing the public key per receipt)."""
    if receipt.status not in STATUSES:
        raise InvalidArgument(f"status: unknown receipt status {receipt.status!r}")
    gateway_id = gateway_id or key_id(gateway_key)
    r = receipt if receipt.gateway_id == gateway_id and not receipt.gateway_signature else \
        replace(receipt, gateway_id=gateway_id, gateway_signature=b"")
    # one field dict for the signed bytes and the JSON sent, and no dataclasses.replace (slow)
    # for the signature: this runs on every request
    d = r._json_fields()
    del d["gateway_signature"]
    signature = sign(gateway_key, _PREFIX + json.dumps(d, sort_keys=True, separators=(",", ":")).encode())
    signed = object.__new__(Receipt)
    signed.__dict__.update(r.__dict__)  # frozen: fields are set through __dict__, as dataclasses do
    signed.__dict__.pop("json_text", None)
    signed.__dict__["gateway_signature"] = signature
    d["gateway_signature"] = b64(signature)
    signed.__dict__["json_text"] = json.dumps(d, sort_keys=True, separators=(",", ":"))
    return signed


def receipt_to_json(receipt: Receipt) -> str:
    return receipt.json_text


def receipt_from_json(data: str | bytes) -> Receipt:
    """Parse a receipt; InvalidArgument naming the field when it is malformed."""
    try:
        d = json.loads(data)
    except (ValueError, UnicodeDecodeError) as e:
        raise InvalidArgument(f"receipt is not valid JSON: {e}") from None
    if not isinstance(d, dict):
        raise InvalidArgument("receipt is not a JSON object")
    names = {f.name for f in fields(Receipt)}
    missing = sorted(names - _OPTIONAL - set(d))
    if missing:
        raise InvalidArgument(f"receipt: missing field {missing[0]!r}")
    extra = sorted(set(d) - names)
    if extra:
        raise InvalidArgument(f"receipt: unknown field {extra[0]!r}")
    if d["format_version"] != FORMAT_VERSION:
        raise InvalidArgument(f"format_version: unsupported receipt format {d['format_version']!r}")
    values: dict[str, Any] = {"admission": ""}
    for k, v in d.items():
        if k in _BYTES:
            values[k] = None if v is None else unb64(v, k)
        elif k in _HEX:
            values[k] = None if v is None else unhex(v, k)
        else:
            values[k] = v
    for k in ("request_id", "model_name", "node_id", "status", "gateway_id", "detail", "dispute_id", "admission"):
        if not isinstance(values[k], str):
            raise InvalidArgument(f"{k}: expected a string")
    for k in ("model_version", "issued_ms"):
        if not isinstance(values[k], int) or isinstance(values[k], bool):
            raise InvalidArgument(f"{k}: expected an integer")
    if "probation" in values and values["probation"] is not True:
        raise InvalidArgument("probation: expected true (the field is left out otherwise)")
    if values["validator_node_id"] is not None and not isinstance(values["validator_node_id"], str):
        raise InvalidArgument("validator_node_id: expected a string or null")
    for k in ("node_public_key", "attestation", "node_signature", "gateway_signature"):
        if values[k] is None:
            raise InvalidArgument(f"{k}: must not be null")
    return Receipt(**values)


def _check_attestation(role: str, node_id: str | None, public_key: bytes | None, data: bytes | None,
                       signature: bytes | None, known: Mapping[str, bytes]) -> tuple[list[Check], Attestation | None]:
    checks: list[Check] = []
    if not node_id or public_key is None or data is None or signature is None:
        return [Check(f"{role}: node id, key, attestation and signature present", False)], None
    ok = len(public_key) == 32 and fingerprint(public_key) == node_id
    checks.append(Check(f"{role}: public key matches node id {node_id}", ok))
    if node_id in known:
        checks.append(Check(f"{role}: public key matches the key you supplied", known[node_id] == public_key))
    checks.append(Check(f"{role}: node signature over the attestation", verify_signature(public_key, data, signature)))
    try:
        att = Attestation.from_bytes(data)
    except AttestationError as e:
        checks.append(Check(f"{role}: attestation parses", False, str(e)))
        return checks, None
    checks.append(Check(f"{role}: attestation names node {node_id}", att.node_id == node_id, att.node_id))
    return checks, att


def verify_receipt(receipt_json: str | bytes, gateway_public_key: bytes | None,
                   node_public_keys: Mapping[str, bytes] | None = None) -> list[Check]:
    """Check a receipt offline. Every line must pass for the receipt to be trusted.

    ``node_public_keys``: optional node id -> key you trust; the receipt's own
    keys must then match them (the receipt's keys are bound to its node ids by
    fingerprint, and to the gateway by its signature, either way).
    """
    known = dict(node_public_keys or {})
    try:
        r = receipt_from_json(receipt_json)
    except InvalidArgument as e:
        return [Check("receipt parses", False, str(e))]
    checks = [Check("receipt parses", True)]
    if gateway_public_key is None:
        checks.append(Check("gateway public key supplied", False, "pass --gateway-key or --gateway"))
    else:
        ok = len(gateway_public_key) == 32 and fingerprint(gateway_public_key) == r.gateway_id
        checks.append(Check(f"gateway key matches gateway id {r.gateway_id}", ok))
        checks.append(Check("gateway signature over the receipt",
                            verify_signature(gateway_public_key, r.signing_bytes(), r.gateway_signature)))
    checks.append(Check(f"status {r.status!r} is known", r.status in STATUSES))
    if r.probation:
        checks.append(Check("probation answer was checked before it was served", r.status in PROBATION_SERVED,
                            r.status))

    cs, att = _check_attestation("node", r.node_id, r.node_public_key, r.attestation, r.node_signature, known)
    checks += cs
    if att is not None:
        checks.append(Check("attestation request id matches the receipt", att.request_id == r.request_id,
                            att.request_id))
        checks.append(Check("attestation model matches the receipt",
                            (att.model_name, att.model_version) == (r.model_name, r.model_version),
                            f"{att.model_name}/{att.model_version}"))

    if r.checked:
        vcs, vatt = _check_attestation("validator", r.validator_node_id, r.validator_public_key,
                                       r.validator_attestation, r.validator_signature, known)
        checks += vcs
        checks.append(Check("validator is another node", bool(r.validator_node_id) and r.validator_node_id != r.node_id))
        if vatt is not None and att is not None:
            checks.append(Check("validator ran the same input (input digests equal)",
                                vatt.input_digest == att.input_digest))
            checks.append(Check("validator ran the same model",
                                (vatt.model_name, vatt.model_version) == (att.model_name, att.model_version)))
            checks.append(Check("validator request had its own id", vatt.request_id != att.request_id))
            if r.status == AGREED and (vatt.target_id, vatt.artifact_sha256) == (att.target_id, att.artifact_sha256):
                checks.append(Check("same artifact: output digests equal", vatt.output_digest == att.output_digest))
    elif r.validator_node_id is not None or r.validator_attestation is not None:
        checks.append(Check(f"no validator recorded for status {r.status!r}", False))
    return checks
