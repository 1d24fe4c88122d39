"""Who may join: admitted operators (closed pool, the default) or anyone (``--open-pool``).

Plain Python over :class:`~hyperinfer.gateway.operators.OperatorBook`. The registry
calls :func:`admit` on every join; the answer is the operator the node is filed
under. Its id (never the name a node declares) is what the verifier keeps apart:
validators are always of another operator.

=====================  ==========================  =====================================
join carries           closed pool                 open pool
=====================  ==========================  =====================================
cert of an admitted    that operator               that operator
operator
cert of an unknown     PERMISSION_DENIED           a new ``open`` operator: bond 0,
operator key                                       probation
no cert                PERMISSION_DENIED           the node is its own ``open`` operator
                                                   (``node:<node id>``): bond 0, probation
=====================  ==========================  =====================================

A removed operator is refused; a quarantined one's nodes join quarantined (a
fresh node key under it washes nothing away).
"""

from __future__ import annotations

from hyperinfer.errors import PermissionDenied
from hyperinfer.gateway.operators import ADMITTED, QUARANTINED, REMOVED, Operator, OperatorBook, node_operator_id
from hyperinfer.verify.operators import verify_cert
from hyperinfer.verify.signing import fingerprint


def admit(book: OperatorBook, *, open_pool: bool, node_public_key: bytes, cert: bytes, declared_name: str) -> Operator:
    """The operator a joining node belongs to; PermissionDenied/Unauthenticated if it may not join."""
    node_id = fingerprint(bytes(node_public_key))
    if cert:
        c = verify_cert(bytes(cert), bytes(node_public_key))
        op = book.get(c.operator_id, fresh=True)
        if op is None:
            if not open_pool:
                raise PermissionDenied(
                    f"operator {c.operator_id} is not admitted to this pool; the gateway operator admits it with "
                    f"`hyperinfer operators add {c.operator_public_key.hex()} --name NAME --bond B`")
            op = book.add_open(c.operator_id, c.name or declared_name, c.operator_public_key)
    else:
        if not open_pool:
            raise PermissionDenied("this pool admits operators: join with --operator-cert FILE "
                                   "(`hyperinfer operators certify` by an admitted operator)")
        op = book.add_open(node_operator_id(node_id), declared_name)
    if op.state == REMOVED:
        raise PermissionDenied(f"operator {op.operator_id} ({op.name}) was removed from this pool")
    if not open_pool and op.admission != ADMITTED:
        raise PermissionDenied(f"operator {op.operator_id} ({op.name}) joined in open mode and is not admitted "
                               "to this closed pool")
    return op


def is_quarantined(op: Operator | None) -> bool:
    return op is not None and op.state == QUARANTINED
