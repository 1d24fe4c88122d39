"""protobuf <-> plain values for the node (hyperinfer.v1 Device, LoadedModel, ModelOffer)."""

from __future__ import annotations

from typing import Iterable

from hyperinfer.node.devices import Device
from hyperinfer.node.models import Offer
from hyperinfer.proto.v1 import pool_pb2


def device_to_proto(d: Device) -> pool_pb2.Device:
    return pool_pb2.Device(kind=d.kind, name=d.name, arch=d.arch, count=d.count, features=list(d.features))


def loaded_to_proto(items: Iterable[tuple[str, int, str, str]]) -> list[pool_pb2.LoadedModel]:
    return [pool_pb2.LoadedModel(name=n, version=v, target_id=t, artifact_sha256=s) for n, v, t, s in items]


def offers_from_proto(items: Iterable[pool_pb2.ModelOffer]) -> list[Offer]:
    return [Offer(o.name, int(o.version), bytes(o.manifest), bytes(o.manifest_signature)) for o in items]
