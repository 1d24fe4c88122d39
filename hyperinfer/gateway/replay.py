"""Single-use signed calls across the processes of ``hyperinfer gateway --workers N``.

Each process keeps :class:`~hyperinfer.verify.operators.ReplayGuard` in memory; its siblings
share the gateway id, so a signed call captured on the wire could otherwise be accepted
once by each of them. Here a signature that passed the in-memory check is also claimed
in the shared store (the join nonces' table, until the call window is over), for the
callers whose calls can succeed: admin keys and joined nodes. Any other caller is refused
by the membership check anyway, and so costs no database write (a flood of calls signed
with throwaway keys cannot fill the table).
"""

from __future__ import annotations

import hashlib
import time
from typing import Any

from hyperinfer.errors import NotFound, Unauthenticated
from hyperinfer.verify.operators import Caller, ReplayGuard
from hyperinfer.verify.signing import fingerprint


class SharedReplayGuard(ReplayGuard):
    def __init__(self, store: Any, access: Any, registry: Any):
        super().__init__()
        self._store, self._access, self._registry = store, access, registry

    def _may_succeed(self, public_key: bytes) -> bool:
        if public_key in self._access.admin_keys:
            return True
        try:
            return bytes(self._registry.get(fingerprint(public_key)).public_key) == public_key
        except (NotFound, ValueError):
            return False

    def check(self, caller: Caller, now_ms: int | None = None) -> None:
        super().check(caller, now_ms)
        key = bytes(caller.public_key)
        if not self._may_succeed(key):
            return
        now = int(time.time() * 1000) if now_ms is None else int(now_ms)
        claim = hashlib.sha256(b"hyperinfer-signed-call\0" + bytes(caller.signature)).digest()
        if not self._store.claim_nonce(claim, key, now + self.window_ms):
            raise Unauthenticated("signed call replayed (this signature was already used by another "
                                  "process of this gateway)")
