"""Who may call what on the gateway's pool side (closed pool API), transport-free.

* ``Pool.FetchArtifact``: a joined node that is not quarantined or gone, signing the
  call with its node key (an artifact is the publisher's model: it goes to pool
  members only).
* ``Pool.Status``: an admin key (``hyperinfer gateway --admin-key``, ``pool status
  --key``) or a joined node. Without credentials only when the gateway runs an
  ``--open-pool`` and has no admin key (anyone may join such a pool anyway).
* :meth:`Access.authorize_admin`: the hook for admin-only RPCs (model control):
  an admin signature whenever the gateway has admin keys.

Callers sign with :func:`hyperinfer.verify.operators.sign_call` (method, the
gateway id as audience, the request fields); signatures are single use.
"""

from __future__ import annotations

from typing import Any, Iterable, Mapping, Sequence

from hyperinfer.errors import NotFound, PermissionDenied, Unauthenticated
from hyperinfer.verify.operators import Caller, ReplayGuard, caller_from_metadata, check_call
from hyperinfer.verify.signing import fingerprint

# Status and admin calls name no gateway: a client may not know the id of the gateway it
# dials. Signatures are still single use per gateway, and the calls are read-only or admin's.
ADMIN_AUDIENCE = ""


class Access:
    def __init__(self, registry: Any, gateway_id: str, admin_keys: Iterable[bytes] = (), open_pool: bool = False):
        self.registry = registry
        self.gateway_id = gateway_id
        self.admin_keys = {bytes(k) for k in admin_keys}
        self.open_pool = bool(open_pool)
        self._replay = ReplayGuard()

    @property
    def has_admin(self) -> bool:
        return bool(self.admin_keys)

    def _signed(self, metadata: Sequence[tuple[str, Any]] | None, method: str,
                fields: Mapping[str, Any] | None = None, audience: str | None = None) -> Caller:
        caller = check_call(caller_from_metadata(metadata), method,
                            self.gateway_id if audience is None else audience, fields)
        self._replay.check(caller)
        return caller

    def _member(self, caller: Caller, method: str) -> None:
        """A joined node of this pool, not quarantined and not gone."""
        try:
            node = self.registry.get(fingerprint(caller.public_key))
        except NotFound:
            raise PermissionDenied(f"{method}: key {caller.key_id[:12]} is neither an admin key nor a "
                                   "node of this pool") from None
        if bytes(node.public_key) != caller.public_key:
            raise PermissionDenied(f"{method}: key does not match node {node.node_id[:12]}")
        if node.state in ("quarantined", "left"):
            raise PermissionDenied(f"{method}: node {node.node_id[:12]} is {node.state}")

    def check_fetch(self, metadata, fields: Mapping[str, Any]) -> None:
        caller = self._signed(metadata, "FetchArtifact", fields)
        if caller.public_key in self.admin_keys:
            return
        self._member(caller, "FetchArtifact")

    def check_status(self, metadata) -> None:
        if caller_from_metadata(metadata) is None:
            if self.open_pool and not self.admin_keys:
                return
            raise Unauthenticated("Status: this pool's status is for its admins and nodes; the call must be "
                                  "signed with an admin key (`hyperinfer pool status --key ADMIN_KEY`)")
        caller = self._signed(metadata, "Status", audience=ADMIN_AUDIENCE)
        if caller.public_key in self.admin_keys:
            return
        self._member(caller, "Status")

    def authorize_admin(self, metadata, method: str = "admin") -> None:
        """Raise unless the call is signed by an admin key (no-op while the gateway has none)."""
        if not self.admin_keys:
            return
        caller = self._signed(metadata, method, audience=ADMIN_AUDIENCE)
        if caller.public_key not in self.admin_keys:
            raise PermissionDenied(f"{method}: needs an admin key (gateway --admin-key)")
