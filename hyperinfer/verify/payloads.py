"""Canonical bytes that nodes sign for pool messages (join, heartbeat, leave).

Same scheme as attestations: a domain prefix per message kind, then canonical
JSON. A signature for one kind can never be replayed as another kind.
"""

from __future__ import annotations

import json
from typing import Any, Iterable


def canonical(kind: str, fields: dict[str, Any]) -> bytes:
    return f"hyperinfer-{kind}-v1\n".encode() + json.dumps(
        fields, sort_keys=True, separators=(",", ":")
    ).encode()


def join_payload(
    *, nonce: bytes, gateway_id: str, node_id: str, operator: str, listen_address: str,
    targets: Iterable[str], max_concurrency: int,
) -> bytes:
    return canonical("join", {
        "nonce": nonce.hex(), "gateway_id": gateway_id, "node_id": node_id, "operator": operator,
        "listen_address": listen_address, "targets": list(targets), "max_concurrency": int(max_concurrency),
    })


def heartbeat_payload(
    *, node_id: str, timestamp_ms: int, outstanding: int, capacity: int,
    loaded: Iterable[tuple[str, int, str, str]],
) -> bytes:
    """``loaded``: (model name, version, target id, artifact sha256) tuples."""
    return canonical("heartbeat", {
        "node_id": node_id, "timestamp_ms": int(timestamp_ms), "outstanding": int(outstanding),
        "capacity": int(capacity), "loaded": sorted([list(x) for x in loaded]),
    })


def leave_payload(*, node_id: str, timestamp_ms: int) -> bytes:
    return canonical("leave", {"node_id": node_id, "timestamp_ms": int(timestamp_ms)})


def manifest_signature_payload(manifest_bytes: bytes) -> bytes:
    """What a publisher signs: the exact manifest.json bytes, under a domain prefix."""
    return b"hyperinfer-manifest-v1\n" + manifest_bytes
