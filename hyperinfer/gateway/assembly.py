"""The gateway's data plane, built once and shared by every front door.

Scheduler, worker client, verifier (with the write-behind ledger and the ONNX
Runtime referee) over the gateway's catalog and registry. Front doors (the
Open Inference Protocol gRPC servicer, and any other adapter) call
:func:`dataplane_for` and translate their wire format to and from it.
"""

from __future__ import annotations

import sys
from typing import Any

from hyperinfer.gateway.config import DEFAULT_AUDIT_RATE
from hyperinfer.gateway.dataplane import DataPlane
from hyperinfer.gateway.model_control import ModelControl
from hyperinfer.gateway.referee import PackageReferee
from hyperinfer.gateway.scheduler import DEFAULT_CALL_TIMEOUT_S, DEFAULT_MAX_ATTEMPTS, Scheduler
from hyperinfer.gateway.verification import Verifier
from hyperinfer.gateway.worker_client import GrpcWorkerClient
from hyperinfer.gateway.write_behind import WriteBehindLedger
from hyperinfer.verify.probation import Probation, initial_streak
from hyperinfer.verify.sampling import SamplingPolicy


def _ledger(gateway: Any) -> Any:
    from hyperinfer.gateway.ledger import Ledger

    if gateway.ledger is None:
        gateway.ledger = Ledger(gateway.store)
    return gateway.ledger


def _policy(gateway: Any, policy: SamplingPolicy | None) -> SamplingPolicy:
    if policy is None:
        rate = getattr(gateway.config, "sample_rate", None)  # 0 is a valid rate: test for None
        policy = getattr(gateway, "sampling_policy", None) or SamplingPolicy(
            default_rate=SamplingPolicy.default_rate if rate is None else rate,
            rates=dict(getattr(gateway.config, "model_sample_rates", None) or {}))
    return policy


def make_probation(gateway: Any, policy: SamplingPolicy | None = None) -> Probation | None:
    """The gateway's probation state (verify.probation), K = the ledger's ``probation_jobs``;
    None when probation is off (K = 0, or a sampling policy with probation_rate 0). Nodes a
    gateway first sees start from their ledger record; the ledger's status view reads it."""
    ledger = _ledger(gateway)
    jobs = int(getattr(getattr(ledger, "config", None), "probation_jobs", 0) or 0)
    if jobs <= 0 or _policy(gateway, policy).probation_rate <= 0:
        return None
    counts = getattr(ledger, "counts", None)
    probation = Probation(jobs, seed=(lambda node_id: initial_streak(counts(node_id), jobs)) if counts else None)
    if hasattr(ledger, "probation"):
        ledger.probation = probation
    return probation


def make_verifier(gateway: Any, client: Any, policy: SamplingPolicy | None = None,
                  call_timeout: float = DEFAULT_CALL_TIMEOUT_S, probation: Probation | None = None) -> Verifier:
    """A Verifier on the gateway's ledger (created here if no component installed one),
    its key, and ONNX Runtime on the package as the referee."""
    _ledger(gateway)
    policy = _policy(gateway, policy)
    if gateway.sample_rate is None:
        gateway.sample_rate = lambda name, version: policy.model_rate(name)
    ledger = WriteBehindLedger(gateway.ledger)
    max_pending = getattr(gateway.config, "max_pending_checks", None) or 1000
    audit = getattr(gateway.config, "audit_rate", None)
    audit = DEFAULT_AUDIT_RATE if audit is None else float(audit)
    registry = getattr(gateway, "registry", None)

    def admission_of(node_id: str) -> str:
        op = registry.operator_of(node_id) if registry is not None and hasattr(registry, "operator_of") else None
        return op.admission if op is not None else ""

    verifier = Verifier(ledger, policy, PackageReferee(gateway.catalog), client, gateway.key,
                        call_timeout=call_timeout, max_pending_checks=max_pending, probation=probation,
                        audit_rate=audit, admission_of=admission_of)
    pool = getattr(gateway, "pool", None)
    if pool is not None and getattr(pool, "audit_rate", None) is None:
        pool.audit_rate = lambda name, version: audit
    # hooks run in reverse: background checks end first, then the queued ledger writes are committed
    gateway.add_shutdown_hook(ledger.close)
    gateway.add_shutdown_hook(lambda: verifier.close(wait=False))
    return verifier


def build_dataplane(gateway: Any, *, client: Any = None, verifier: Verifier | None = None,
          policy: SamplingPolicy | None = None, call_timeout: float | None = None,
          max_attempts: int | None = None) -> DataPlane:
    """The OIP data plane over a gateway's catalog and registry: scheduler, worker client, verifier.

    Defaults come from the gateway config when it has the field (``node_timeout``,
    ``max_attempts``, ``sample_rate``), else from the scheduler and sampling modules.
    """
    cfg = gateway.config
    call_timeout = call_timeout or getattr(cfg, "node_timeout", None) or DEFAULT_CALL_TIMEOUT_S
    max_attempts = max_attempts or getattr(cfg, "max_attempts", None) or DEFAULT_MAX_ATTEMPTS
    registry = gateway.registry
    if client is None:
        client = GrpcWorkerClient(timeout=call_timeout, max_message_bytes=cfg.max_message_bytes,
                                  tls=getattr(gateway, "tls", None), signer=gateway.key)
        gateway.add_shutdown_hook(client.close)

        def forget_left(node_id: str, old: str, new: str) -> None:
            if new == "left":  # its channel would only reconnect in vain
                client.forget(registry.get(node_id).address)

        registry.on_state_change(forget_left)
    # one probation state for who gets work (scheduler) and whose answers are held (verifier)
    probation = make_probation(gateway, policy) if verifier is None else getattr(verifier, "probation", None)
    # no check in the scheduler: verifier.verify checks the attestation (one Ed25519 verify per
    # result, not two) and a rejected result is retried elsewhere by the data plane
    def on_timeout(node_id: str, reason: str, request_id: str) -> None:
        if gateway.ledger is not None:  # a stalling node pays (less than for a wrong answer)
            gateway.ledger.record_timeout(node_id, reason, request_id)

    scheduler = Scheduler(registry, client, call_timeout=call_timeout, max_attempts=max_attempts, check=None,
                          known_nodes=lambda: sum(1 for n in registry.all_nodes() if n.state != "left"),
                          on_timeout=on_timeout, gate=probation)
    if verifier is None:
        verifier = make_verifier(gateway, scheduler.counted(client), policy, call_timeout, probation)
    return DataPlane(gateway.catalog, registry, scheduler, verifier)


# GIL switch interval for the gateway process. The default (5 ms) lets a background thread
# (ledger writer, background checks, heartbeats) hold the GIL for up to 5 ms while a request
# thread waits; 0.5 ms measured about 0.4 ms less added latency at p50 on the MLP.
SWITCH_INTERVAL_S = 0.0005


def dataplane_for(gateway: Any, **kwargs: Any) -> DataPlane:
    """The gateway's one data plane: built on first call (with ``kwargs``), then shared."""
    if sys.getswitchinterval() > SWITCH_INTERVAL_S:
        sys.setswitchinterval(SWITCH_INTERVAL_S)
    plane = getattr(gateway, "dataplane", None)
    if plane is None:
        plane = build_dataplane(gateway, **kwargs)
        gateway.dataplane = plane
    elif kwargs:
        raise ValueError("the gateway's data plane is already built; pass build options to the first front door")
    return plane


def model_control_for(gateway: Any) -> ModelControl:
    """The gateway's one model control (repository index, load, unload, ModelConfig), shared by
    every front door. Load and unload call ``gateway.authorize_admin(metadata)`` (a method of
    the gateway once it has an admin credential; raises Unauthenticated/PermissionDenied),
    looked up at call time, so a credential installed after this is built still applies."""
    control = getattr(gateway, "model_control", None)
    if control is None:
        def authorize(metadata):
            hook = getattr(gateway, "authorize_admin", None)
            if hook is not None:
                hook(metadata)

        control = ModelControl(gateway.catalog, gateway.registry, authorize=authorize)
        gateway.model_control = control
    return control
