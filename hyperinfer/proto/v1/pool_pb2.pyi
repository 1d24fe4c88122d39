from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Tensor(_message.Message):
    __slots__ = ("name", "dtype", "shape", "data")
    NAME_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    name: str
    dtype: str
    shape: _containers.RepeatedScalarFieldContainer[int]
    data: bytes
    def __init__(self, name: _Optional[str] = ..., dtype: _Optional[str] = ..., shape: _Optional[_Iterable[int]] = ..., data: _Optional[bytes] = ...) -> None: ...

class ChallengeRequest(_message.Message):
    __slots__ = ("public_key",)
    PUBLIC_KEY_FIELD_NUMBER: _ClassVar[int]
    public_key: bytes
    def __init__(self, public_key: _Optional[bytes] = ...) -> None: ...

class ChallengeResponse(_message.Message):
    __slots__ = ("nonce", "gateway_id", "gateway_public_key", "expires_unix_ms")
    NONCE_FIELD_NUMBER: _ClassVar[int]
    GATEWAY_ID_FIELD_NUMBER: _ClassVar[int]
    GATEWAY_PUBLIC_KEY_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    nonce: bytes
    gateway_id: str
    gateway_public_key: bytes
    expires_unix_ms: int
    def __init__(self, nonce: _Optional[bytes] = ..., gateway_id: _Optional[str] = ..., gateway_public_key: _Optional[bytes] = ..., expires_unix_ms: _Optional[int] = ...) -> None: ...

class Device(_message.Message):
    __slots__ = ("kind", "name", "arch", "count", "features")
    KIND_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    ARCH_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    FEATURES_FIELD_NUMBER: _ClassVar[int]
    kind: str
    name: str
    arch: str
    count: int
    features: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, kind: _Optional[str] = ..., name: _Optional[str] = ..., arch: _Optional[str] = ..., count: _Optional[int] = ..., features: _Optional[_Iterable[str]] = ...) -> None: ...

class JoinRequest(_message.Message):
    __slots__ = ("public_key", "nonce", "signature", "operator", "listen_address", "targets", "devices", "max_concurrency", "software_version", "operator_cert", "kx_public_key", "kx_signature")
    PUBLIC_KEY_FIELD_NUMBER: _ClassVar[int]
    NONCE_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    OPERATOR_FIELD_NUMBER: _ClassVar[int]
    LISTEN_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    TARGETS_FIELD_NUMBER: _ClassVar[int]
    DEVICES_FIELD_NUMBER: _ClassVar[int]
    MAX_CONCURRENCY_FIELD_NUMBER: _ClassVar[int]
    SOFTWARE_VERSION_FIELD_NUMBER: _ClassVar[int]
    OPERATOR_CERT_FIELD_NUMBER: _ClassVar[int]
    KX_PUBLIC_KEY_FIELD_NUMBER: _ClassVar[int]
    KX_SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    public_key: bytes
    nonce: bytes
    signature: bytes
    operator: str
    listen_address: str
    targets: _containers.RepeatedScalarFieldContainer[str]
    devices: _containers.RepeatedCompositeFieldContainer[Device]
    max_concurrency: int
    software_version: str
    operator_cert: bytes
    kx_public_key: bytes
    kx_signature: bytes
    def __init__(self, public_key: _Optional[bytes] = ..., nonce: _Optional[bytes] = ..., signature: _Optional[bytes] = ..., operator: _Optional[str] = ..., listen_address: _Optional[str] = ..., targets: _Optional[_Iterable[str]] = ..., devices: _Optional[_Iterable[_Union[Device, _Mapping]]] = ..., max_concurrency: _Optional[int] = ..., software_version: _Optional[str] = ..., operator_cert: _Optional[bytes] = ..., kx_public_key: _Optional[bytes] = ..., kx_signature: _Optional[bytes] = ...) -> None: ...

class ModelOffer(_message.Message):
    __slots__ = ("name", "version", "manifest", "manifest_signature")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    MANIFEST_FIELD_NUMBER: _ClassVar[int]
    MANIFEST_SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    name: str
    version: int
    manifest: bytes
    manifest_signature: bytes
    def __init__(self, name: _Optional[str] = ..., version: _Optional[int] = ..., manifest: _Optional[bytes] = ..., manifest_signature: _Optional[bytes] = ...) -> None: ...

class JoinResponse(_message.Message):
    __slots__ = ("node_id", "heartbeat_interval_ms", "models", "gateway_id", "pool_gateway_keys", "gateway_kx_public_key", "gateway_kx_signature", "pool_gateway_kx")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_INTERVAL_MS_FIELD_NUMBER: _ClassVar[int]
    MODELS_FIELD_NUMBER: _ClassVar[int]
    GATEWAY_ID_FIELD_NUMBER: _ClassVar[int]
    POOL_GATEWAY_KEYS_FIELD_NUMBER: _ClassVar[int]
    GATEWAY_KX_PUBLIC_KEY_FIELD_NUMBER: _ClassVar[int]
    GATEWAY_KX_SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    POOL_GATEWAY_KX_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    heartbeat_interval_ms: int
    models: _containers.RepeatedCompositeFieldContainer[ModelOffer]
    gateway_id: str
    pool_gateway_keys: _containers.RepeatedScalarFieldContainer[bytes]
    gateway_kx_public_key: bytes
    gateway_kx_signature: bytes
    pool_gateway_kx: _containers.RepeatedCompositeFieldContainer[GatewayKx]
    def __init__(self, node_id: _Optional[str] = ..., heartbeat_interval_ms: _Optional[int] = ..., models: _Optional[_Iterable[_Union[ModelOffer, _Mapping]]] = ..., gateway_id: _Optional[str] = ..., pool_gateway_keys: _Optional[_Iterable[bytes]] = ..., gateway_kx_public_key: _Optional[bytes] = ..., gateway_kx_signature: _Optional[bytes] = ..., pool_gateway_kx: _Optional[_Iterable[_Union[GatewayKx, _Mapping]]] = ...) -> None: ...

class GatewayKx(_message.Message):
    __slots__ = ("gateway_public_key", "kx_public_key", "signature")
    GATEWAY_PUBLIC_KEY_FIELD_NUMBER: _ClassVar[int]
    KX_PUBLIC_KEY_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    gateway_public_key: bytes
    kx_public_key: bytes
    signature: bytes
    def __init__(self, gateway_public_key: _Optional[bytes] = ..., kx_public_key: _Optional[bytes] = ..., signature: _Optional[bytes] = ...) -> None: ...

class LoadedModel(_message.Message):
    __slots__ = ("name", "version", "target_id", "artifact_sha256")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    TARGET_ID_FIELD_NUMBER: _ClassVar[int]
    ARTIFACT_SHA256_FIELD_NUMBER: _ClassVar[int]
    name: str
    version: int
    target_id: str
    artifact_sha256: str
    def __init__(self, name: _Optional[str] = ..., version: _Optional[int] = ..., target_id: _Optional[str] = ..., artifact_sha256: _Optional[str] = ...) -> None: ...

class HeartbeatRequest(_message.Message):
    __slots__ = ("node_id", "timestamp_ms", "outstanding", "capacity", "loaded", "signature")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    TIMESTAMP_MS_FIELD_NUMBER: _ClassVar[int]
    OUTSTANDING_FIELD_NUMBER: _ClassVar[int]
    CAPACITY_FIELD_NUMBER: _ClassVar[int]
    LOADED_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    timestamp_ms: int
    outstanding: int
    capacity: int
    loaded: _containers.RepeatedCompositeFieldContainer[LoadedModel]
    signature: bytes
    def __init__(self, node_id: _Optional[str] = ..., timestamp_ms: _Optional[int] = ..., outstanding: _Optional[int] = ..., capacity: _Optional[int] = ..., loaded: _Optional[_Iterable[_Union[LoadedModel, _Mapping]]] = ..., signature: _Optional[bytes] = ...) -> None: ...

class HeartbeatResponse(_message.Message):
    __slots__ = ("heartbeat_interval_ms", "models", "pool_gateway_keys", "pool_gateway_kx")
    HEARTBEAT_INTERVAL_MS_FIELD_NUMBER: _ClassVar[int]
    MODELS_FIELD_NUMBER: _ClassVar[int]
    POOL_GATEWAY_KEYS_FIELD_NUMBER: _ClassVar[int]
    POOL_GATEWAY_KX_FIELD_NUMBER: _ClassVar[int]
    heartbeat_interval_ms: int
    models: _containers.RepeatedCompositeFieldContainer[ModelOffer]
    pool_gateway_keys: _containers.RepeatedScalarFieldContainer[bytes]
    pool_gateway_kx: _containers.RepeatedCompositeFieldContainer[GatewayKx]
    def __init__(self, heartbeat_interval_ms: _Optional[int] = ..., models: _Optional[_Iterable[_Union[ModelOffer, _Mapping]]] = ..., pool_gateway_keys: _Optional[_Iterable[bytes]] = ..., pool_gateway_kx: _Optional[_Iterable[_Union[GatewayKx, _Mapping]]] = ...) -> None: ...

class LeaveRequest(_message.Message):
    __slots__ = ("node_id", "timestamp_ms", "signature")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    TIMESTAMP_MS_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    timestamp_ms: int
    signature: bytes
    def __init__(self, node_id: _Optional[str] = ..., timestamp_ms: _Optional[int] = ..., signature: _Optional[bytes] = ...) -> None: ...

class LeaveResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class FetchArtifactRequest(_message.Message):
    __slots__ = ("model_name", "model_version", "target_id", "sha256", "offset")
    MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    TARGET_ID_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    model_name: str
    model_version: int
    target_id: str
    sha256: str
    offset: int
    def __init__(self, model_name: _Optional[str] = ..., model_version: _Optional[int] = ..., target_id: _Optional[str] = ..., sha256: _Optional[str] = ..., offset: _Optional[int] = ...) -> None: ...

class ArtifactChunk(_message.Message):
    __slots__ = ("offset", "data", "total_size")
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    TOTAL_SIZE_FIELD_NUMBER: _ClassVar[int]
    offset: int
    data: bytes
    total_size: int
    def __init__(self, offset: _Optional[int] = ..., data: _Optional[bytes] = ..., total_size: _Optional[int] = ...) -> None: ...

class StatusRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class NodeStatus(_message.Message):
    __slots__ = ("node_id", "operator", "address", "targets", "devices", "state", "outstanding", "capacity", "last_heartbeat_unix_ms", "loaded", "jobs", "checks", "faults", "credits", "stake", "slashed", "reputation", "probation", "operator_id", "admission")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    OPERATOR_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    TARGETS_FIELD_NUMBER: _ClassVar[int]
    DEVICES_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    OUTSTANDING_FIELD_NUMBER: _ClassVar[int]
    CAPACITY_FIELD_NUMBER: _ClassVar[int]
    LAST_HEARTBEAT_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    LOADED_FIELD_NUMBER: _ClassVar[int]
    JOBS_FIELD_NUMBER: _ClassVar[int]
    CHECKS_FIELD_NUMBER: _ClassVar[int]
    FAULTS_FIELD_NUMBER: _ClassVar[int]
    CREDITS_FIELD_NUMBER: _ClassVar[int]
    STAKE_FIELD_NUMBER: _ClassVar[int]
    SLASHED_FIELD_NUMBER: _ClassVar[int]
    REPUTATION_FIELD_NUMBER: _ClassVar[int]
    PROBATION_FIELD_NUMBER: _ClassVar[int]
    OPERATOR_ID_FIELD_NUMBER: _ClassVar[int]
    ADMISSION_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    operator: str
    address: str
    targets: _containers.RepeatedScalarFieldContainer[str]
    devices: _containers.RepeatedCompositeFieldContainer[Device]
    state: str
    outstanding: int
    capacity: int
    last_heartbeat_unix_ms: int
    loaded: _containers.RepeatedCompositeFieldContainer[LoadedModel]
    jobs: int
    checks: int
    faults: int
    credits: float
    stake: float
    slashed: float
    reputation: float
    probation: bool
    operator_id: str
    admission: str
    def __init__(self, node_id: _Optional[str] = ..., operator: _Optional[str] = ..., address: _Optional[str] = ..., targets: _Optional[_Iterable[str]] = ..., devices: _Optional[_Iterable[_Union[Device, _Mapping]]] = ..., state: _Optional[str] = ..., outstanding: _Optional[int] = ..., capacity: _Optional[int] = ..., last_heartbeat_unix_ms: _Optional[int] = ..., loaded: _Optional[_Iterable[_Union[LoadedModel, _Mapping]]] = ..., jobs: _Optional[int] = ..., checks: _Optional[int] = ..., faults: _Optional[int] = ..., credits: _Optional[float] = ..., stake: _Optional[float] = ..., slashed: _Optional[float] = ..., reputation: _Optional[float] = ..., probation: _Optional[bool] = ..., operator_id: _Optional[str] = ..., admission: _Optional[str] = ...) -> None: ...

class ModelStatus(_message.Message):
    __slots__ = ("name", "version", "targets", "sample_rate", "ready_nodes", "audit_rate")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    TARGETS_FIELD_NUMBER: _ClassVar[int]
    SAMPLE_RATE_FIELD_NUMBER: _ClassVar[int]
    READY_NODES_FIELD_NUMBER: _ClassVar[int]
    AUDIT_RATE_FIELD_NUMBER: _ClassVar[int]
    name: str
    version: int
    targets: _containers.RepeatedScalarFieldContainer[str]
    sample_rate: float
    ready_nodes: int
    audit_rate: float
    def __init__(self, name: _Optional[str] = ..., version: _Optional[int] = ..., targets: _Optional[_Iterable[str]] = ..., sample_rate: _Optional[float] = ..., ready_nodes: _Optional[int] = ..., audit_rate: _Optional[float] = ...) -> None: ...

class StatusResponse(_message.Message):
    __slots__ = ("gateway_id", "gateway_public_key", "nodes", "models", "open_pool")
    GATEWAY_ID_FIELD_NUMBER: _ClassVar[int]
    GATEWAY_PUBLIC_KEY_FIELD_NUMBER: _ClassVar[int]
    NODES_FIELD_NUMBER: _ClassVar[int]
    MODELS_FIELD_NUMBER: _ClassVar[int]
    OPEN_POOL_FIELD_NUMBER: _ClassVar[int]
    gateway_id: str
    gateway_public_key: bytes
    nodes: _containers.RepeatedCompositeFieldContainer[NodeStatus]
    models: _containers.RepeatedCompositeFieldContainer[ModelStatus]
    open_pool: bool
    def __init__(self, gateway_id: _Optional[str] = ..., gateway_public_key: _Optional[bytes] = ..., nodes: _Optional[_Iterable[_Union[NodeStatus, _Mapping]]] = ..., models: _Optional[_Iterable[_Union[ModelStatus, _Mapping]]] = ..., open_pool: _Optional[bool] = ...) -> None: ...

class InferRequest(_message.Message):
    __slots__ = ("request_id", "model_name", "model_version", "inputs")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    INPUTS_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    model_name: str
    model_version: int
    inputs: _containers.RepeatedCompositeFieldContainer[Tensor]
    def __init__(self, request_id: _Optional[str] = ..., model_name: _Optional[str] = ..., model_version: _Optional[int] = ..., inputs: _Optional[_Iterable[_Union[Tensor, _Mapping]]] = ...) -> None: ...

class InferResponse(_message.Message):
    __slots__ = ("outputs", "attestation", "signature")
    OUTPUTS_FIELD_NUMBER: _ClassVar[int]
    ATTESTATION_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    outputs: _containers.RepeatedCompositeFieldContainer[Tensor]
    attestation: bytes
    signature: bytes
    def __init__(self, outputs: _Optional[_Iterable[_Union[Tensor, _Mapping]]] = ..., attestation: _Optional[bytes] = ..., signature: _Optional[bytes] = ...) -> None: ...

class InfoRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class InfoResponse(_message.Message):
    __slots__ = ("node_id", "public_key", "operator", "targets", "devices", "loaded", "outstanding", "capacity")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    PUBLIC_KEY_FIELD_NUMBER: _ClassVar[int]
    OPERATOR_FIELD_NUMBER: _ClassVar[int]
    TARGETS_FIELD_NUMBER: _ClassVar[int]
    DEVICES_FIELD_NUMBER: _ClassVar[int]
    LOADED_FIELD_NUMBER: _ClassVar[int]
    OUTSTANDING_FIELD_NUMBER: _ClassVar[int]
    CAPACITY_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    public_key: bytes
    operator: str
    targets: _containers.RepeatedScalarFieldContainer[str]
    devices: _containers.RepeatedCompositeFieldContainer[Device]
    loaded: _containers.RepeatedCompositeFieldContainer[LoadedModel]
    outstanding: int
    capacity: int
    def __init__(self, node_id: _Optional[str] = ..., public_key: _Optional[bytes] = ..., operator: _Optional[str] = ..., targets: _Optional[_Iterable[str]] = ..., devices: _Optional[_Iterable[_Union[Device, _Mapping]]] = ..., loaded: _Optional[_Iterable[_Union[LoadedModel, _Mapping]]] = ..., outstanding: _Optional[int] = ..., capacity: _Optional[int] = ...) -> None: ...
