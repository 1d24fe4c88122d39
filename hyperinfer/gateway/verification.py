"""The verification orchestrator (design §5–§6): transport-free.

How the Open Inference Protocol front door uses it::

    verifier = Verifier(
        ledger,                       # gateway.ledger.Ledger
        SamplingPolicy(default_rate=0.1, rates={...}),
        referee,                      # (model name, version, inputs) -> outputs; ONNX Runtime
                                      #   on the package, e.g. ORTRunner.for_package(pkg).run
        worker_client,                # WorkerClient: infer(node, request_id, name, version, inputs, timeout=None)
        gateway_key,                  # Ed25519PrivateKey that signs receipts
    )
    # optional: Scheduler(..., check=verifier.check_result) so that a bad
    # attestation on ANY attempt is recorded as a fault in the ledger

    scheduled = scheduler.run(manifest, inputs)            # the primary's checked result
    receipt = verifier.verify(VerifyRequest(
        manifest=manifest, inputs=inputs,
        primary=scheduled.node, request_id=scheduled.request_id,
        result=WorkerResult(scheduled.outputs, scheduled.attestation_bytes, scheduled.signature),
        candidates=registry.schedulable_nodes(manifest.name, manifest.version),
        mode=Mode.parse(params.get("hyperinfer.verify")),   # auto | sync | always
        input_digest=digest,                                 # optional, computed if absent
        deadline=deadline,                                   # optional time.monotonic() bound for sync checks
    ))
    response.parameters[RECEIPT_PARAMETER] = receipt_to_json(receipt)

``verify`` raises :class:`ResultRejected` (code UNAVAILABLE) when the primary's
result must not be returned: its attestation does not check out (every
request), or, in mode ``sync``/``always``, the check found it at fault. The
caller retries on another node, as for any node failure. Otherwise it returns
the signed receipt: ``unchecked``; ``pending`` (mode ``auto``, the check runs
on a background thread and the final receipt replaces it in the ledger, see
:meth:`Verifier.receipt`); or the final status. ``close(wait=False)`` at
shutdown drops background checks not yet started: their receipts stay
``pending``.

Nodes are duck-typed: a :class:`~hyperinfer.verify.sampling.NodeRef`, or a
registry entry with ``node_id``, ``public_key``, ``operator``, ``address`` and
``loaded`` (``(name, version) -> (target id, artifact sha256)``). The node object
itself is what the WorkerClient receives.

One check, step by step:

1. the primary's attestation: signature with the key it joined with; request
   id, model, version, node id, the input digest of what was sent, an artifact
   of the manifest (and the one the node reported), the returned outputs'
   digest. Failure: ledger fault (slashed), :class:`ResultRejected`.
2. the job is credited and the attestation stored.
3. only now the CSPRNG draw (``SamplingPolicy.decide``).
4. a validator of another operator (same artifact preferred) runs the same
   inputs under a fresh request id, exactly like ordinary traffic; its result
   passes the same checks (a bad one is a fault of the validator, and another
   validator is tried). None available: ``skipped``, never a pass.
5. same artifact: digests must be equal; else within tolerance. Agreement
   credits a check to both.
6. otherwise the referee runs; for a same-artifact tie a third node breaks it
   (see :mod:`hyperinfer.verify.dispute`); the verdict slashes, may quarantine,
   and the evidence is stored. While the referee decides, both nodes are
   suspended from new primary work (``probation.suspend``).

Probation (``probation=``, a :class:`~hyperinfer.verify.probation.Probation`):
a primary on probation is checked before its answer is returned, whatever the
mode (steps 3–6 run synchronously, validators trusted nodes first); with no
validator available the referee alone checks it (status ``refereed``). Only
``agreed``, ``disputed-won`` and ``refereed`` answers are served; any other
outcome raises :class:`ResultRejected`. Its receipt carries ``probation: true``.
Every check outcome feeds the probation state (a pass, or a fault that puts the
node back on probation). Without ``probation`` the ledger's job-count probation
only raises the sample rate, as before.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Protocol, Sequence

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from hyperinfer.dtypes import name_of
from hyperinfer.errors import Code, HyperinferError
from hyperinfer.package import Manifest
from hyperinfer.verify import receipt as rc
from hyperinfer.verify.agreement import agree, within_tolerance
from hyperinfer.verify.attestation import Attestation, AttestationError, verify_attestation
from hyperinfer.verify.digest import tensors_digest
from hyperinfer.verify.dispute import Execution, needs_tiebreaker, new_dispute
from hyperinfer.verify.probation import Probation
from hyperinfer.verify.receipt import RECEIPT_PARAMETER, Receipt, sign_receipt
from hyperinfer.verify.sampling import Mode, NodeRef, SamplingPolicy, _check_rate, choose_validator, draw
from hyperinfer.verify.signing import fingerprint, key_id

log = logging.getLogger("hyperinfer.gateway.verification")

__all__ = ["Verifier", "VerifyRequest", "WorkerResult", "WorkerClient", "ResultRejected", "Referee",
           "node_ref", "Mode", "RECEIPT_PARAMETER"]

Referee = Callable[[str, int, Mapping[str, np.ndarray]], Mapping[str, np.ndarray]]


@dataclass(frozen=True)
class WorkerResult:
    outputs: dict[str, np.ndarray]
    attestation_bytes: bytes
    signature: bytes


class WorkerClient(Protocol):
    def infer(self, node: Any, request_id: str, model_name: str, model_version: int,
              inputs: Mapping[str, np.ndarray], timeout: float | None = None) -> Any:
        """Run one request on ``node``; return an object with ``outputs``, ``attestation_bytes``,
        ``signature``; raise HyperinferError when the node fails."""


class ResultRejected(HyperinferError):
    """The node's result must not be used; retry on another node."""

    code = Code.UNAVAILABLE

    def __init__(self, message: str, node_id: str = "", receipt: Receipt | None = None):
        super().__init__(message)
        self.node_id = node_id
        self.receipt = receipt


@dataclass
class VerifyRequest:
    manifest: Manifest
    inputs: Mapping[str, np.ndarray]  # exactly what was sent to the primary
    primary: Any  # NodeRef or registry node
    request_id: str  # the id the primary was sent (and attested)
    result: Any  # WorkerResult-like: outputs, attestation_bytes, signature
    candidates: Sequence[Any] = field(default_factory=tuple)  # nodes serving the model; the primary is skipped
    mode: Mode | str = Mode.AUTO
    input_digest: str | None = None  # computed from inputs if not given
    # time.monotonic() by which a sync/always check must end (the client's deadline); a check
    # that cannot start in time is recorded as skipped. Background (auto) checks ignore it.
    deadline: float | None = None


def node_ref(node: Any, model_name: str, model_version: int) -> NodeRef:
    """A NodeRef for one model from a NodeRef or a registry node (``loaded`` mapping)."""
    if isinstance(node, NodeRef):
        return node
    target, sha = "", ""
    loaded = getattr(node, "loaded", None)
    if isinstance(loaded, Mapping):
        target, sha = loaded.get((model_name, int(model_version)), ("", ""))
    else:
        target, sha = getattr(node, "target_id", ""), getattr(node, "artifact_sha256", "")
    return NodeRef(node.node_id, bytes(node.public_key), getattr(node, "operator", "") or "",
                   getattr(node, "address", "") or "", target or "", sha or "")


def _now_ms() -> int:
    return int(time.time() * 1000)


@dataclass
class _Run:
    """One accepted execution."""

    node: NodeRef
    handle: Any
    request_id: str
    result: Any
    attestation: Attestation

    def execution(self, role: str) -> Execution:
        return Execution(role, self.node.node_id, self.node.public_key, bytes(self.result.attestation_bytes),
                         bytes(self.result.signature), dict(self.result.outputs))


class Verifier:
    def __init__(self, ledger: Any, policy: SamplingPolicy, referee: Referee, client: WorkerClient,
                 gateway_key: Ed25519PrivateKey, *, background_workers: int = 2, call_timeout: float = 30.0,
                 max_validator_attempts: int = 2, probation: Probation | None = None,
                 max_pending_checks: int = 1000, audit_rate: float = 0.0,
                 admission_of: Callable[[str], str] | None = None):
        """``audit_rate``: share of requests the gateway re-runs itself with the referee (ONNX
        Runtime), drawn independently of the sampled checks: the floor that no collusion of
        nodes can fool. ``admission_of(node_id)``: ``admitted``/``open``, written into receipts."""
        self.audit_rate = _check_rate("audit_rate", audit_rate)
        self.admission_of = admission_of
        self.ledger = ledger
        self.policy = policy
        self.referee = referee
        self.client = client
        self.gateway_key = gateway_key
        self.gateway_id = key_id(gateway_key)
        self.call_timeout = float(call_timeout)
        self.max_validator_attempts = max(1, int(max_validator_attempts))
        self.probation = probation if probation is not None and probation.enabled else None
        # background checks queued or running; beyond this a sampled request's check is recorded
        # as skipped ("check queue full"), never dropped silently and never an unbounded queue
        self.max_pending_checks = max(1, int(max_pending_checks))
        self._pool = ThreadPoolExecutor(max_workers=max(1, int(background_workers)),
                                        thread_name_prefix="verify")
        self._lock = threading.Lock()
        self._pending: set[Future] = set()

    # ------------------------------------------------------------ checks

    def _check(self, manifest: Manifest, node: NodeRef, request_id: str, input_digest: str,
               result: Any) -> Attestation:
        """Raise ResultRejected (without touching the ledger) if the result does not check out."""
        who = f"node {node.node_id}"
        if len(node.public_key) != 32 or fingerprint(node.public_key) != node.node_id:
            raise ResultRejected(f"{who}: its public key does not match its node id", node.node_id)
        try:
            att = verify_attestation(node.public_key, bytes(result.attestation_bytes), bytes(result.signature))
        except AttestationError as e:
            raise ResultRejected(f"{who}: {e}", node.node_id) from None
        expected = {"request_id": request_id, "model_name": manifest.name, "model_version": manifest.version,
                    "node_id": node.node_id, "input_digest": input_digest}
        for key, value in expected.items():
            if getattr(att, key) != value:
                raise ResultRejected(f"{who}: attestation {key} {getattr(att, key)!r} is not {value!r}"
                                     + (" (replayed result?)" if key in ("request_id", "input_digest") else ""),
                                     node.node_id)
        art = manifest.artifacts.get(att.target_id)
        if art is None or art.sha256 != att.artifact_sha256:
            raise ResultRejected(f"{who}: attested artifact {att.target_id}/{att.artifact_sha256[:16]} is not in "
                                 f"the manifest of {manifest.name}/{manifest.version}", node.node_id)
        if node.target_id and (att.target_id, att.artifact_sha256) != (node.target_id, node.artifact_sha256):
            raise ResultRejected(f"{who}: attested artifact {att.target_id} differs from the one it reported "
                                 f"loaded ({node.target_id})", node.node_id)
        outputs = result.outputs
        names = [o.name for o in manifest.outputs]
        if set(outputs) != set(names):
            raise ResultRejected(f"{who}: returned outputs {sorted(outputs)}, the manifest has {names}", node.node_id)
        for spec in manifest.outputs:
            a = outputs[spec.name]
            if not isinstance(a, np.ndarray) or name_of(a.dtype) != spec.dtype or a.shape != tuple(spec.shape):
                got = f"{a.dtype.name}{list(a.shape)}" if isinstance(a, np.ndarray) else type(a).__name__
                raise ResultRejected(f"{who}: output {spec.name!r} is {got}, the manifest says "
                                     f"{spec.dtype}{list(spec.shape)}", node.node_id)
        if tensors_digest(names, outputs) != att.output_digest:
            raise ResultRejected(f"{who}: outputs do not match the attested output digest", node.node_id)
        return att

    def check_result(self, manifest: Manifest, node: Any, request_id: str, input_digest: str,
                     result: Any) -> Attestation:
        """Drop-in for ``Scheduler(check=...)``: check, and record a rejected result as a ledger fault."""
        ref = node_ref(node, manifest.name, manifest.version)
        try:
            return self._check(manifest, ref, request_id, input_digest, result)
        except ResultRejected as e:
            self.ledger.record_fault(ref.node_id, str(e), request_id)
            if self.probation is not None:
                self.probation.fault(ref.node_id)
            raise

    def _accept(self, manifest: Manifest, node: Any, request_id: str, input_digest: str, result: Any,
                role: str, checked: "bool | Attestation" = False, ref: NodeRef | None = None) -> _Run:
        ref = ref or node_ref(node, manifest.name, manifest.version)
        if isinstance(checked, Attestation):  # already checked by the caller
            att = checked
        elif checked:  # already checked by the caller: parse only
            att = Attestation.from_bytes(bytes(result.attestation_bytes))
        else:
            att = self.check_result(manifest, ref, request_id, input_digest, result)
        self.ledger.record_job(ref.node_id, request_id, result.attestation_bytes, result.signature, role)
        return _Run(ref, node, request_id, result, att)

    # ------------------------------------------------------------ receipts

    def _receipt(self, primary: _Run, status: str, detail: str = "", validator: _Run | None = None,
                 dispute_id: str = "", probation: bool = False) -> Receipt:
        m = primary.attestation
        r = Receipt(
            request_id=primary.request_id, model_name=m.model_name, model_version=m.model_version,
            node_id=primary.node.node_id, node_public_key=primary.node.public_key,
            attestation=bytes(primary.result.attestation_bytes), node_signature=bytes(primary.result.signature),
            status=status, gateway_id=self.gateway_id, issued_ms=_now_ms(), detail=detail,
            validator_node_id=validator.node.node_id if validator else None,
            validator_public_key=validator.node.public_key if validator else None,
            validator_attestation=bytes(validator.result.attestation_bytes) if validator else None,
            validator_signature=bytes(validator.result.signature) if validator else None,
            dispute_id=dispute_id, probation=probation, admission=self._admission(primary.node.node_id),
        )
        signed = sign_receipt(self.gateway_key, r, self.gateway_id)
        self.ledger.store_receipt(signed)
        return signed

    def _admission(self, node_id: str) -> str:
        if self.admission_of is None:
            return ""
        try:
            return self.admission_of(node_id) or ""
        except Exception:  # noqa: BLE001 - a receipt without the field beats no receipt
            log.exception("admission lookup failed for node %s", node_id)
            return ""

    def receipt(self, request_id: str) -> Receipt | None:
        """The latest stored receipt (the final one once a background check has finished)."""
        return self.ledger.receipt(request_id)

    # ------------------------------------------------------------ flow

    def verify(self, req: VerifyRequest) -> Receipt:
        manifest = req.manifest
        mode = Mode.parse(req.mode)
        input_digest = req.input_digest or tensors_digest([s.name for s in manifest.inputs], req.inputs)
        ref = node_ref(req.primary, manifest.name, manifest.version)
        att = self.check_result(manifest, ref, req.request_id, input_digest, req.result)
        if self.probation is not None and self.probation.on_probation(ref.node_id):
            return self._held(req, manifest, input_digest, att)
        # standing before this job: probation covers a node's first K jobs, this one included
        standing = self.ledger.summary(ref.node_id)
        if self.probation is not None:  # probation is decided above, not by the job count
            standing = {**standing, "probation": False}
        primary = self._accept(manifest, req.primary, req.request_id, input_digest, req.result, "primary",
                               checked=att, ref=ref)

        # the draws, strictly after the primary's signed result was accepted: the sampled check on
        # another operator's node, and (independently) the gateway's own audit with ONNX Runtime,
        # which colluding nodes cannot answer for each other
        inputs = dict(req.inputs)
        audit = draw(self.audit_rate)
        check = self.policy.decide(manifest.name, standing, mode)
        if not (audit or check):
            return self._receipt(primary, rc.UNCHECKED)
        candidates = list(req.candidates)
        if mode is Mode.AUTO:
            with self._lock:
                full = len(self._pending) >= self.max_pending_checks
            if full:
                log.warning("check queue full (%d checks pending): check of request %s skipped",
                            self.max_pending_checks, primary.request_id)
                self.ledger.record_skipped(primary.node.node_id)
                return self._receipt(primary, rc.SKIPPED, f"check queue full ({self.max_pending_checks} pending)")
            what = " and ".join(w for w, on in (("check", check), ("audit", audit)) if on)
            pending = self._receipt(primary, rc.PENDING, f"{what} running in the background")
            self._submit(self._background, manifest, inputs, input_digest, primary, candidates, check, audit)
            return pending
        final = self._check_and_audit(manifest, inputs, input_digest, primary, candidates, req.deadline, check, audit)
        if final.status in (rc.DISPUTED_LOST, rc.AUDIT_FAILED):
            raise ResultRejected(f"node {primary.node.node_id}: result failed verification "
                                 f"({final.status}{' ' + final.dispute_id if final.dispute_id else ''}): "
                                 f"{final.detail}", primary.node.node_id, final)
        return final

    def _check_and_audit(self, manifest, inputs, input_digest: str, primary: _Run, candidates, deadline,
                         check: bool, audit: bool) -> Receipt:
        receipt = self._run_check(manifest, inputs, input_digest, primary, candidates, deadline) if check else None
        if audit and (receipt is None or receipt.status != rc.DISPUTED_LOST):
            # a validator that agreed with a result the audit refutes answered wrong too (collusion)
            accomplice = receipt.validator_node_id if receipt is not None and receipt.status == rc.AGREED else None
            audited = self._audit(manifest, inputs, primary, accomplice)
            if receipt is None or audited.status != rc.AUDITED:
                return audited
        return receipt  # type: ignore[return-value]

    def _submit(self, fn: Callable[..., Any], *args: Any) -> None:
        fut = self._pool.submit(fn, *args)
        with self._lock:
            self._pending.add(fut)
        fut.add_done_callback(self._done)

    def _audit(self, manifest: Manifest, inputs, primary: _Run, accomplice: str | None = None,
               probation: bool = False) -> Receipt:
        """Re-run on the referee at the gateway: agreement within tolerance credits a check,
        anything else is the primary's fault (slashed; it and its operator count toward quarantine),
        and the fault of ``accomplice``, a validator that agreed with it."""
        name, version = manifest.name, manifest.version
        try:
            reference = {k: np.asarray(v) for k, v in self.referee(name, version, inputs).items()}
        except Exception as e:  # noqa: BLE001 - no audit without the referee; nobody is blamed
            log.exception("audit referee failed for %s/%s", name, version)
            return self._receipt(primary, rc.SKIPPED, f"audit: referee failed ({type(e).__name__})",
                                 probation=probation)
        cmp = within_tolerance(primary.result.outputs, reference, manifest.outputs)
        if cmp.agree:
            self.ledger.record_check([primary.node.node_id], True)
            return self._receipt(primary, rc.AUDITED, f"gateway ONNX Runtime re-run: {cmp.reason}",
                                 probation=probation)
        reason = f"gateway audit: outputs differ from ONNX Runtime: {cmp.reason}"
        self.ledger.record_check([primary.node.node_id], False)
        self.ledger.record_fault(primary.node.node_id, reason, primary.request_id, kind="audit")
        if accomplice:
            self.ledger.record_fault(accomplice, f"{reason} (as validator it agreed with that result)",
                                     primary.request_id, kind="audit")
            reason += f"; validator {accomplice} had agreed with it"
        if self.probation is not None:  # back on probation, like a lost dispute
            for n in filter(None, (primary.node.node_id, accomplice)):
                self.probation.fault(n)
        return self._receipt(primary, rc.AUDIT_FAILED, reason, probation=probation)

    def _held(self, req: VerifyRequest, manifest: Manifest, input_digest: str, att: Attestation) -> Receipt:
        """A probation primary: check now, serve only what someone independent found right."""
        primary = self._accept(manifest, req.primary, req.request_id, input_digest, req.result, "primary",
                               checked=att)
        final = self._run_check(manifest, dict(req.inputs), input_digest, primary, list(req.candidates),
                                req.deadline, probation=True)
        if final.status in (rc.AGREED, rc.DISPUTED_WON) and draw(self.audit_rate):
            # audited on probation too: else colluders would pass each other's probation for free
            accomplice = final.validator_node_id if final.status == rc.AGREED else None
            audited = self._audit(manifest, dict(req.inputs), primary, accomplice, probation=True)
            if audited.status == rc.AUDIT_FAILED:
                final = audited
        if final.status not in rc.PROBATION_SERVED:
            raise ResultRejected(f"node {primary.node.node_id} (on probation): answer not served, check "
                                 f"{final.status}: {final.detail}", primary.node.node_id, final)
        return final

    def _passed(self, *node_ids: str) -> None:
        if self.probation is not None:
            for n in node_ids:
                self.probation.passed(n)

    def _refereed(self, manifest: Manifest, inputs, primary: _Run, notes: list[str]) -> Receipt:
        """No validator for a probation primary: ONNX Runtime on the gateway checks it."""
        name, version = manifest.name, manifest.version
        why = "no independent validator" + (f" ({'; '.join(notes)})" if notes else "")
        try:
            reference = {k: np.asarray(v) for k, v in self.referee(name, version, inputs).items()}
        except Exception as e:  # noqa: BLE001 - nobody checked it: not served, nobody slashed
            log.exception("referee failed for %s/%s", name, version)
            self.ledger.record_skipped(primary.node.node_id)
            return self._receipt(primary, rc.SKIPPED, f"{why}; referee failed ({type(e).__name__})",
                                 probation=True)
        cmp = within_tolerance(primary.result.outputs, reference, manifest.outputs)
        if cmp.agree:
            self.ledger.record_check([primary.node.node_id], True)
            self._passed(primary.node.node_id)
            return self._receipt(primary, rc.REFEREED, f"{why}; ONNX Runtime referee: {cmp.reason}",
                                 probation=True)
        reason = f"{why}; ONNX Runtime referee: {cmp.reason}"
        self.ledger.record_fault(primary.node.node_id, reason, primary.request_id, kind="referee")
        self.probation.fault(primary.node.node_id)
        return self._receipt(primary, rc.DISPUTED_LOST, reason, probation=True)

    def _done(self, fut: Future) -> None:
        with self._lock:
            self._pending.discard(fut)

    def _background(self, manifest, inputs, input_digest, primary: _Run, candidates, check: bool = True,
                    audit: bool = False) -> Receipt:
        try:
            return self._check_and_audit(manifest, inputs, input_digest, primary, candidates, None, check, audit)
        except Exception as e:  # noqa: BLE001 - a background failure must still leave a final receipt
            log.exception("background check of request %s failed", primary.request_id)
            return self._receipt(primary, rc.SKIPPED, f"check failed: {type(e).__name__}")

    def _run_on(self, manifest: Manifest, inputs, input_digest: str, handle: Any, role: str,
                timeout: float) -> _Run:
        request_id = uuid.uuid4().hex  # fresh: a check looks like any other request
        result = self.client.infer(handle, request_id, manifest.name, manifest.version, inputs, timeout=timeout)
        return self._accept(manifest, handle, request_id, input_digest, result, role)

    def _find(self, manifest, inputs, input_digest, primary: _Run, pool: list[tuple[NodeRef, Any]],
              role: str, exclude_operators: Sequence[str] = (), same_artifact_only: bool = False,
              deadline: float | None = None) -> tuple[_Run | None, list[str]]:
        """Run on an independent node; try another if one fails. Returns (run, failure notes)."""
        notes: list[str] = []
        left = list(pool)
        for _ in range(self.max_validator_attempts):
            timeout = self.call_timeout
            if deadline is not None:
                timeout = min(timeout, deadline - time.monotonic())
                if timeout <= 0:
                    notes.append("the client's deadline left no time for a check")
                    break
            refs = [r for r, _ in left]
            if same_artifact_only:
                refs = [r for r in refs if r.same_artifact(primary.node)]
            choice = choose_validator(primary.node, refs, exclude_operators)
            if choice is None:
                break
            handle = next(h for r, h in left if r is choice.node)
            left = [(r, h) for r, h in left if r is not choice.node]
            try:
                return self._run_on(manifest, inputs, input_digest, handle, role, timeout), notes
            except HyperinferError as e:
                if e.code == Code.DEADLINE_EXCEEDED and timeout >= self.call_timeout:
                    # the validator stalled past the node timeout (not a client deadline): its fault
                    self._record_timeout(choice.node.node_id, f"{role} gave no answer within {timeout:.3g} s")
                notes.append(f"{role} {choice.node.node_id}: {e}")
                log.warning("%s %s failed: %s", role, choice.node.node_id, e)
            except Exception as e:  # noqa: BLE001 - a broken client call is that validator's failure only
                notes.append(f"{role} {choice.node.node_id}: {type(e).__name__}")
                log.exception("%s %s failed", role, choice.node.node_id)
        return None, notes

    def _record_timeout(self, node_id: str, reason: str) -> None:
        record = getattr(self.ledger, "record_timeout", None)
        if record is None:
            return
        try:
            record(node_id, reason)
        except Exception:  # noqa: BLE001 - bookkeeping must not end the check
            log.exception("recording the timeout of node %s failed", node_id)

    def _run_check(self, manifest: Manifest, inputs, input_digest: str, primary: _Run,
                   candidates: Sequence[Any], deadline: float | None = None, probation: bool = False) -> Receipt:
        name, version = manifest.name, manifest.version
        pool = []
        for c in candidates:
            loaded = getattr(c, "loaded", None)
            if isinstance(loaded, Mapping) and (name, int(version)) not in loaded:
                continue  # a registry node that has not loaded this model cannot run it
            ref = node_ref(c, name, version)
            if ref.node_id != primary.node.node_id:
                pool.append((ref, c))
        validator, notes, rest = None, [], pool
        if self.probation is not None:  # trusted validators first; probation ones only if none can
            trusted = [(r, c) for r, c in pool if self.probation.trusted(r.node_id)]
            if trusted:
                validator, notes = self._find(manifest, inputs, input_digest, primary, trusted, "validator",
                                              deadline=deadline)
                rest = [(r, c) for r, c in pool if not self.probation.trusted(r.node_id)]
            # a probation node holding a job of its own (or with a dispute pending) validates nothing
            # meanwhile: one job at a time, so its faults come one by one
            rest = [(r, c) for r, c in rest if not self.probation.blocked(r.node_id)]
        if validator is None:
            validator, more = self._find(manifest, inputs, input_digest, primary, rest, "validator",
                                         deadline=deadline)
            notes += more
        if validator is None:
            if probation:
                return self._refereed(manifest, inputs, primary, notes)
            self.ledger.record_skipped(primary.node.node_id)
            detail = "no independent validator" + (f" ({'; '.join(notes)})" if notes else "")
            return self._receipt(primary, rc.SKIPPED, detail)

        pa, va = primary.attestation, validator.attestation
        # the signed claims decide, not what the registry last heard
        same_artifact = (pa.target_id, pa.artifact_sha256) == (va.target_id, va.artifact_sha256)
        if same_artifact:
            agreed = pa.output_digest == va.output_digest
            how = "same artifact, digests equal" if agreed else "same artifact, digests differ"
        else:
            cmp = agree(primary.result.outputs, validator.result.outputs, manifest.outputs)
            agreed = cmp.agree
            how = f"different artifacts ({pa.target_id} vs {va.target_id}): {cmp.reason}"
        if agreed:
            self.ledger.record_check([primary.node.node_id, validator.node.node_id], True)
            self._passed(primary.node.node_id, validator.node.node_id)
            return self._receipt(primary, rc.AGREED, how, validator, probation=probation)

        parties = [primary.node.node_id, validator.node.node_id]
        if self.probation is None:
            return self._dispute(manifest, inputs, input_digest, primary, validator, pool, same_artifact, how,
                                 deadline, probation)
        self.probation.suspend(parties)  # no new primary work for either until the verdict
        try:
            return self._dispute(manifest, inputs, input_digest, primary, validator, pool, same_artifact, how,
                                 deadline, probation)
        finally:
            self.probation.resume(parties)

    def _dispute(self, manifest: Manifest, inputs, input_digest: str, primary: _Run, validator: _Run,
                 pool: list, same_artifact: bool, how: str, deadline: float | None, probation: bool) -> Receipt:
        name, version = manifest.name, manifest.version
        pa = primary.attestation
        try:
            reference = {k: np.asarray(v) for k, v in self.referee(name, version, inputs).items()}
        except Exception as e:  # noqa: BLE001 - no verdict without a referee; nobody is slashed
            log.exception("referee failed for %s/%s", name, version)
            self.ledger.record_check([primary.node.node_id, validator.node.node_id], False)
            return self._receipt(primary, rc.DISPUTED_UNRESOLVED,
                                 f"{how}; referee failed ({type(e).__name__})", validator, probation=probation)

        p_exec, v_exec = primary.execution("primary"), validator.execution("validator")
        tiebreaker = None
        if needs_tiebreaker(p_exec, v_exec, reference, manifest.outputs, same_artifact):
            rest = [(r, h) for r, h in pool if r.node_id != validator.node.node_id]
            run, _ = self._find(manifest, inputs, input_digest, primary, rest, "tiebreaker",
                                exclude_operators=[validator.node.effective_operator], same_artifact_only=True,
                                deadline=deadline)
            if run is not None and (run.attestation.target_id, run.attestation.artifact_sha256) == (
                    pa.target_id, pa.artifact_sha256):
                tiebreaker = run.execution("tiebreaker")
        dispute = new_dispute(
            dispute_id=uuid.uuid4().hex, model_name=name, model_version=version, created_ms=_now_ms(),
            input_names=[s.name for s in manifest.inputs], outputs=manifest.outputs, inputs=inputs,
            primary=p_exec, validator=v_exec, referee_outputs=reference, same_artifact=same_artifact,
            tiebreaker=tiebreaker,
        )
        self.ledger.record_dispute(dispute)
        v = dispute.verdict
        if self.probation is not None:
            for e in (dispute.primary, dispute.validator):
                if e.node_id in v.faults:
                    self.probation.fault(e.node_id)
                elif v.resolved:
                    self.probation.passed(e.node_id)
        status = v.outcome_for(primary.node.node_id)
        return self._receipt(primary, status, f"{how}; {v.reason}", validator, dispute.dispute_id,
                             probation=probation)

    # ------------------------------------------------------------ lifecycle

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the background checks submitted so far are done; False on timeout."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            with self._lock:
                pending = list(self._pending)
            if not pending:
                return True
            for f in pending:
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return False
                try:
                    f.result(timeout=left)
                except Exception:  # noqa: BLE001 - logged in _background
                    pass

    def close(self, wait: bool = True) -> None:
        self._pool.shutdown(wait=wait, cancel_futures=not wait)

