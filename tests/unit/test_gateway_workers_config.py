"""`--workers N` settings: bounded, and only with a store the processes can share."""

from __future__ import annotations

import pytest

from hyperinfer.errors import InvalidArgument, Unavailable
from hyperinfer.gateway.config import GatewayConfig


def test_workers_need_a_shared_store_and_a_sane_count(tmp_path):
    ok = GatewayConfig(repository=tmp_path, listen="127.0.0.1:0", db=tmp_path / "g.db", workers=4).validate()
    assert ok.workers == 4 and ok.worker_index == 0
    with pytest.raises(InvalidArgument, match="--workers 0"):
        GatewayConfig(repository=tmp_path, listen="127.0.0.1:0", db=tmp_path / "g.db", workers=0).validate()
    with pytest.raises(InvalidArgument, match="share the store"):
        GatewayConfig(repository=tmp_path, listen="127.0.0.1:0", db=":memory:", workers=2).validate()


def test_only_worker_processes_share_the_port(tmp_path):
    from hyperinfer.transport.server import bind, make_server

    first = make_server(max_workers=1, reuse_port=False)
    port = bind(first, "127.0.0.1:0")
    try:
        # a plain gateway never shares its port by accident (SO_REUSEPORT off) ...
        with pytest.raises(Unavailable, match="cannot listen"):
            bind(make_server(max_workers=1, reuse_port=True), f"127.0.0.1:{port}")
    finally:
        first.stop(None)
    a, b = make_server(max_workers=1, reuse_port=True), make_server(max_workers=1, reuse_port=True)
    port = bind(a, "127.0.0.1:0")
    try:  # ... while the processes of one --workers gateway do
        assert bind(b, f"127.0.0.1:{port}") == port
    finally:
        a.stop(None)
        b.stop(None)


def test_a_signed_call_is_single_use_across_worker_processes(tmp_path):
    """Two worker processes' gateways on one store (in one process here): an admin's signed
    Status call accepted by one is refused as a replay by the other; a call signed with a
    throwaway key is refused without a database write."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from hyperinfer.errors import PermissionDenied, Unauthenticated
    from hyperinfer.gateway.app import Gateway
    from hyperinfer.verify.operators import sign_call
    from hyperinfer.verify.signing import public_bytes

    admin = Ed25519PrivateKey.generate()
    config = dict(repository=tmp_path, listen="127.0.0.1:0", db=tmp_path / "g.db", key=tmp_path / "g.key",
                  admin_keys=[public_bytes(admin).hex()], workers=2)
    a, b = Gateway(GatewayConfig(**config)), Gateway(GatewayConfig(**config, worker_index=1))
    try:
        call = sign_call(admin, "Status", "")
        a.access.check_status(call)
        with pytest.raises(Unauthenticated, match="replayed"):
            b.access.check_status(call)
        b.access.check_status(sign_call(admin, "Status", ""))  # a new signature is fine
        rows = a.store.count_challenges()
        with pytest.raises(PermissionDenied):
            a.access.check_status(sign_call(Ed25519PrivateKey.generate(), "Status", ""))
        assert a.store.count_challenges() == rows
    finally:
        a.stop(grace=0)
        b.stop(grace=0)
