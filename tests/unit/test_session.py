"""Worker-call sessions (verify.session) and the node's check of them (node.gatekeeper): key
agreement at join, HMAC'd calls refused for a wrong key, replay, another node, tampered fields,
stale time, a gateway no longer in the pool, and a rotated session; signed calls still work."""

from __future__ import annotations

import time

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from hyperinfer.errors import InvalidArgument, PermissionDenied, Unauthenticated
from hyperinfer.node.gatekeeper import Gatekeeper
from hyperinfer.verify.operators import infer_fields, sign_call
from hyperinfer.verify.session import (
    MAC_HEADER, check_gateway_kx, check_node_kx, derive_session, gateway_kx_key, gateway_kx_offer, gateway_session,
    kx_public, mac_call, new_kx_key, sign_node_kx,
)
from hyperinfer.verify.signing import key_id, public_bytes

NONCE = b"\x05" * 32


def _join(gw: Ed25519PrivateKey, node: Ed25519PrivateKey, gk: Gatekeeper | None = None):
    """Both halves of one join's key agreement; returns (gateway's session, node's session)."""
    gw_id, node_id = key_id(gw), key_id(node)
    node_kx = new_kx_key()
    node_pub = kx_public(node_kx)
    check_node_kx(public_bytes(node), node_pub, sign_node_kx(node, node_pub, nonce=NONCE, gateway_id=gw_id),
                  nonce=NONCE, gateway_id=gw_id)
    gw_pub, gw_sig = gateway_kx_offer(gw)
    gw_side = derive_session(gateway_kx_key(gw), node_pub, gateway_id=gw_id, node_id=node_id,
                             node_kx_public_key=node_pub, gateway_kx_public_key=gw_pub)
    if gk is None:
        check_gateway_kx(public_bytes(gw), gw_pub, gw_sig)
        node_side = derive_session(node_kx, gw_pub, gateway_id=gw_id, node_id=node_id,
                                   node_kx_public_key=node_pub, gateway_kx_public_key=gw_pub)
    else:
        node_side = gk.establish(public_bytes(gw), gw_pub, gw_sig, node_kx, node_pub)
    return gw_side, node_side


def test_both_sides_derive_the_same_key_bound_to_gateway_and_node():
    gw, node, other = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    a, b = _join(gw, node)
    assert a == b and len(a.key) == 32 and len(a.session_id) == 32
    assert a.key.hex() not in repr(a)  # a session never prints its key
    c, _ = _join(gw, node)
    assert c.key != a.key  # a fresh node X25519 key per join: a re-join rotates the key
    assert _join(gw, other)[0].key != a.key
    # the gateway's X25519 key follows from its Ed25519 key: every worker process has the same
    assert kx_public(gateway_kx_key(gw)) == kx_public(gateway_kx_key(gw)) == gateway_kx_offer(gw)[0]
    assert kx_public(gateway_kx_key(other)) != kx_public(gateway_kx_key(gw))


def test_kx_keys_must_carry_their_owners_signatures():
    gw, node, stranger = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    pub = kx_public(new_kx_key())
    sig = sign_node_kx(node, pub, nonce=NONCE, gateway_id=key_id(gw))
    for kw in (dict(nonce=b"\x06" * 32, gateway_id=key_id(gw)), dict(nonce=NONCE, gateway_id=key_id(stranger))):
        with pytest.raises(Unauthenticated, match="kx_signature does not verify"):
            check_node_kx(public_bytes(node), pub, sig, **kw)  # another join, or meant for another gateway
    with pytest.raises(Unauthenticated, match="kx_signature"):
        check_node_kx(public_bytes(stranger), pub, sig, nonce=NONCE, gateway_id=key_id(gw))
    with pytest.raises(InvalidArgument, match="kx_public_key: expected 32 bytes"):
        check_node_kx(public_bytes(node), pub[:31], sig, nonce=NONCE, gateway_id=key_id(gw))
    gw_pub, gw_sig = gateway_kx_offer(gw)
    with pytest.raises(Unauthenticated, match="gateway_kx_signature"):
        check_gateway_kx(public_bytes(stranger), gw_pub, gw_sig)  # not the pinned gateway's key
    with pytest.raises(Unauthenticated, match="gateway_kx_signature"):
        check_gateway_kx(public_bytes(gw), kx_public(new_kx_key()), gw_sig)  # a substituted X25519 key


@pytest.fixture
def pool():
    gw, node = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    gk = Gatekeeper(key_id(node))
    gk.pin(public_bytes(gw), key_id(gw))
    gw_side, _ = _join(gw, node, gk)
    return gw, node, gk, gw_side


def test_gatekeeper_accepts_a_mac_once_and_refuses_tampering(pool):
    gw, node, gk, session = pool
    fields = infer_fields("r1", "mlp", 1)
    md = mac_call(session, "Infer", fields)
    gk.check(md, "Infer", fields)
    with pytest.raises(Unauthenticated, match="replayed"):
        gk.check(md, "Infer", fields)
    for method, f in (("Infer", infer_fields("r2", "mlp", 1)), ("Infer", infer_fields("r1", "mlp", 2)),
                      ("Info", fields)):
        with pytest.raises(Unauthenticated, match="MAC does not verify"):
            gk.check(mac_call(session, "Infer", fields), method, f)
    md = dict(mac_call(session, "Infer", fields))
    md[MAC_HEADER] = ("0" if md[MAC_HEADER][0] != "0" else "1") + md[MAC_HEADER][1:]
    with pytest.raises(Unauthenticated, match="MAC does not verify"):
        gk.check(list(md.items()), "Infer", fields)
    with pytest.raises(Unauthenticated, match="off this clock"):
        gk.check(mac_call(session, "Infer", fields, timestamp_ms=int(time.time() * 1000) - 10 * 60_000),
                 "Infer", fields)
    with pytest.raises(Unauthenticated, match="malformed"):
        gk.check([("x-hyperinfer-session", "zz"), (MAC_HEADER, "00")], "Infer", fields)
    # the Ed25519 fallback (a gateway without a session) still works, and still refuses strangers
    gk.check(sign_call(gw, "Infer", key_id(node), fields), "Infer", fields)
    with pytest.raises(PermissionDenied):
        gk.check(sign_call(Ed25519PrivateKey.generate(), "Infer", key_id(node), fields), "Infer", fields)


def test_wrong_key_other_node_and_rotation_are_refused(pool):
    gw, node, gk, session = pool
    fields = infer_fields("r1", "mlp", 1)
    # a key the node never agreed (same session id, another key): the MAC does not verify
    forged = type(session)(session.session_id, session.gateway_id, session.node_id, b"\x00" * 32)
    with pytest.raises(Unauthenticated, match="MAC does not verify"):
        gk.check(mac_call(forged, "Infer", fields), "Infer", fields)
    # a session with another node is unknown here
    other_gk = Gatekeeper(key_id(Ed25519PrivateKey.generate()))
    other_gk.pin(public_bytes(gw), key_id(gw))
    with pytest.raises(Unauthenticated, match="unknown worker-call session"):
        other_gk.check(mac_call(session, "Infer", fields), "Infer", fields)
    # a re-join rotates: the old session is refused, the new one accepted
    new_session, _ = _join(gw, node, gk)
    assert new_session.session_id != session.session_id and gk.session_count() == 1
    with pytest.raises(Unauthenticated, match="unknown worker-call session"):
        gk.check(mac_call(session, "Infer", fields), "Infer", fields)
    gk.check(mac_call(new_session, "Infer", fields), "Infer", fields)
    gk.forget_sessions()  # re-joined a gateway that agreed none
    with pytest.raises(Unauthenticated, match="unknown worker-call session"):
        gk.check(mac_call(new_session, "Infer", fields), "Infer", fields)


def test_session_of_a_gateway_that_left_the_pool_is_refused():
    pinned, second, node = (Ed25519PrivateKey.generate() for _ in range(3))
    gk = Gatekeeper(key_id(node))
    gk.pin(public_bytes(pinned), key_id(pinned))
    with pytest.raises(Unauthenticated, match="not pinned or announced"):
        _join(second, node, gk)
    gk.announce([public_bytes(second)])
    session, _ = _join(second, node, gk)
    fields = infer_fields("r1", "mlp", 1)
    gk.check(mac_call(session, "Infer", fields), "Infer", fields)
    # joining another gateway replaces the session: one at a time, the last join's
    _join(pinned, node, gk)
    with pytest.raises(Unauthenticated, match="unknown worker-call session"):
        gk.check(mac_call(session, "Infer", fields), "Infer", fields)
    session, _ = _join(second, node, gk)
    gk.announce([])  # the pinned gateway stopped announcing it
    with pytest.raises(PermissionDenied, match="not a gateway of this node's pool"):
        gk.check(mac_call(session, "Infer", fields), "Infer", fields)


def test_sessions_with_the_pools_other_gateways_are_learned_from_signed_announcements(pool):
    gw, node, gk, session = pool
    other, stranger = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    fields = infer_fields("r1", "mlp", 1)
    other_kx = gateway_kx_offer(other)
    entry = (public_bytes(other), *other_kx)
    assert gk.learn([entry]) == 0  # not announced by the pinned gateway: no session
    gk.announce([public_bytes(other), public_bytes(stranger)])
    forged = (public_bytes(stranger), other_kx[0], other_kx[1])  # someone else's X25519 key and signature
    assert gk.learn([forged, (public_bytes(gw), *gateway_kx_offer(gw))]) == 0  # forged; gw's already known
    assert gk.learn([entry]) == 1 and gk.learn([entry]) == 0 and gk.session_count() == 2
    # the other gateway derives its side from the node's stored X25519 key, as the worker client does
    theirs = gateway_session(other, key_id(node), gk._node_kx[1])  # the node's key as the store has it
    gk.check(mac_call(theirs, "Infer", fields), "Infer", fields)
    gk.check(mac_call(session, "Infer", fields), "Infer", fields)
    _join(gw, node, gk)  # a re-join: a new node key, every old session goes
    assert gk.session_count() == 1
    with pytest.raises(Unauthenticated, match="unknown worker-call session"):
        gk.check(mac_call(theirs, "Infer", fields), "Infer", fields)
