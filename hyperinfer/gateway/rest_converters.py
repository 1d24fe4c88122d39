"""KServe v2 REST bodies <-> the data plane's plain values (no HTTP here).

Two request forms, as tritonclient.http and curl send them:

- JSON only: ``{"id", "parameters", "inputs": [{"name", "shape", "datatype", "data"}], "outputs"}``;
  ``data`` is a flat row-major list or nested lists of the tensor's shape.
- Triton's binary tensor extension: the JSON header, then the raw bytes of the
  inputs whose ``parameters.binary_data_size`` is set, in input order. The
  header's length comes in the ``Inference-Header-Content-Length`` HTTP header.

Responses: outputs as JSON ``data``, or as binary after the JSON header when the
client asks (``outputs[i].parameters.binary_data`` or the request parameter
``binary_data_output``; tritonclient.http asks for binary by default). Tensor
bytes are little-endian and row-major. Errors are :class:`InvalidArgument` naming
the field, as on the gRPC side.
"""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np
import orjson

from hyperinfer import dtypes
from hyperinfer.errors import InvalidArgument
from hyperinfer.gateway.dataplane import InferInput, InferRequest, InferResponse, ModelMetadata, RequestedOutput
from hyperinfer.verify.digest import canonical_array

HEADER_LENGTH = "Inference-Header-Content-Length"

_LE = {d.oip: np.dtype(d.name).newbyteorder("<") for d in dtypes.BY_OIP.values()}
_UNSUPPORTED_PARAMETERS = {
    "shared_memory_region": "shared memory is not supported by the gateway; send the data in the request",
    "shared_memory_byte_size": "shared memory is not supported by the gateway; send the data in the request",
    "shared_memory_offset": "shared memory is not supported by the gateway; send the data in the request",
    "classification": "classification outputs are not supported; request the tensor and rank it client-side",
}
# Triton's reserved request parameters that only steer the wire format: not passed on as model parameters
_WIRE_PARAMETERS = ("binary_data_output",)


# ---------------------------------------------------------------- request

def loads(data: bytes | memoryview) -> Any:
    """orjson (a tensor's numbers parse several times faster than with json); Python's json
    only for what orjson refuses but Python clients write: NaN, Infinity."""
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError:
        pass
    try:
        return json.loads(bytes(data))
    except (UnicodeDecodeError, ValueError) as e:
        raise InvalidArgument(f"request body: not valid JSON ({e})") from None


def split_body(body: bytes, header_length: str | None) -> tuple[dict[str, Any], memoryview]:
    """(JSON header, binary tail) of a request body; the tail is empty without the extension."""
    if header_length is None:
        head, tail = body, memoryview(b"")
    else:
        if not header_length.strip().isdigit():
            raise InvalidArgument(f"{HEADER_LENGTH}: {header_length!r} is not a byte count")
        n = int(header_length)
        if n > len(body):
            raise InvalidArgument(f"{HEADER_LENGTH}: {n} bytes, but the body has only {len(body)}")
        view = memoryview(body)
        head, tail = view[:n], view[n:]
    doc = loads(head)
    if not isinstance(doc, dict):
        raise InvalidArgument(f"request body: expected a JSON object, got {type(doc).__name__}")
    return doc, tail


def _parameters(value: Any, where: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise InvalidArgument(f"{where}: expected a JSON object of parameters")
    for k, v in value.items():
        if not isinstance(v, (bool, int, float, str)):
            raise InvalidArgument(f"{where}.{k}: a parameter is a bool, number or string, got {type(v).__name__}")
    return value


def _bool_parameter(params: dict[str, Any], key: str, where: str) -> bool | None:
    if key not in params:
        return None
    if not isinstance(params[key], bool):
        raise InvalidArgument(f"{where}.{key}: expected true or false, got {params[key]!r}")
    return params[key]


def _check_tensor_parameters(params: dict[str, Any], where: str) -> None:
    for key in params:
        if key in _UNSUPPORTED_PARAMETERS:
            raise InvalidArgument(f"{where}.parameters.{key}: {_UNSUPPORTED_PARAMETERS[key]}")


def _shape(value: Any, where: str) -> tuple[int, ...]:
    if not isinstance(value, list) or not all(isinstance(d, int) and not isinstance(d, bool) for d in value):
        raise InvalidArgument(f"{where}.shape: expected a list of integers, got {value!r}")
    if any(d < 0 for d in value):
        raise InvalidArgument(f"{where}.shape: negative dimension in {value}")
    return tuple(value)


def _decode_json_data(data: Any, datatype: str, shape: tuple[int, ...], count: int, where: str,
                      name: str) -> np.ndarray:
    if not isinstance(data, list):
        raise InvalidArgument(f"{where}.data: expected a list of values for input {name!r} "
                              "(or parameters.binary_data_size with the binary extension)")
    dt = np.dtype(dtypes.from_oip(datatype).name)
    try:  # numpy infers bool / int / float from the JSON values: one vectorized check, no Python loop
        arr = np.asarray(data)
    except (ValueError, OverflowError):
        raise InvalidArgument(f"{where}.data: ragged nested lists or out-of-range values for input {name!r}") from None
    if arr.size != count:
        raise InvalidArgument(f"{where}.data: {arr.size} values for input {name!r}, but shape {list(shape)} "
                              f"needs {count}")
    if count == 0:
        return np.zeros(shape, dtype=dt)
    kind = arr.dtype.kind
    if datatype == "BOOL":
        if kind != "b":
            raise InvalidArgument(f"{where}.data: BOOL input {name!r} takes true/false values")
    elif dt.kind in "iu":
        if kind not in "iu":
            raise InvalidArgument(f"{where}.data: {datatype} input {name!r} takes integers")
        info = np.iinfo(dt)
        if arr.min() < info.min or arr.max() > info.max:
            raise InvalidArgument(f"{where}.data: values outside the {datatype} range [{info.min}, {info.max}]")
    elif kind not in "iuf":
        raise InvalidArgument(f"{where}.data: {datatype} input {name!r} takes numbers")
    return arr.astype(dt).reshape(shape)


def _decode_binary(tail: memoryview, offset: int, size: Any, datatype: str, shape: tuple[int, ...],
                   count: int, where: str, name: str) -> np.ndarray:
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise InvalidArgument(f"{where}.parameters.binary_data_size: expected a byte count, got {size!r}")
    dt = _LE[datatype]
    need = count * dt.itemsize
    if size != need:
        raise InvalidArgument(f"{where}.parameters.binary_data_size: {size} bytes for input {name!r}, but "
                              f"shape {list(shape)} of {datatype} needs {need}")
    if offset + size > len(tail):
        raise InvalidArgument(f"{where}: input {name!r} needs bytes {offset}..{offset + size} of the binary data, "
                              f"but only {len(tail)} follow the JSON header")
    arr = np.frombuffer(tail[offset:offset + size], dtype=dt)
    if datatype == "BOOL" and count and arr.view(np.uint8).max() > 1:
        raise InvalidArgument(f"{where}: BOOL input {name!r} has bytes other than 0 and 1")
    return arr.reshape(shape)


def request_from_rest(body: bytes, header_length: str | None, model_name: str, model_version: str) -> InferRequest:
    """Decode an infer request body; InvalidArgument names the field that is wrong."""
    doc, tail = split_body(body, header_length)
    rid = doc.get("id", "")
    if not isinstance(rid, str):
        raise InvalidArgument(f"id: expected a string, got {rid!r}")
    params = dict(_parameters(doc.get("parameters"), "parameters"))
    binary_output = _bool_parameter(params, "binary_data_output", "parameters")
    for key in _WIRE_PARAMETERS:
        params.pop(key, None)
    raw_inputs = doc.get("inputs")
    if not isinstance(raw_inputs, list):
        raise InvalidArgument("inputs: expected a list of input tensors")
    inputs: list[InferInput] = []
    seen: set[str] = set()
    offset = 0
    for i, t in enumerate(raw_inputs):
        where = f"inputs[{i}]"
        if not isinstance(t, dict):
            raise InvalidArgument(f"{where}: expected a JSON object")
        name = t.get("name")
        if not isinstance(name, str) or not name:
            raise InvalidArgument(f"{where}.name: missing or empty input name")
        if name in seen:
            raise InvalidArgument(f"{where}.name: input {name!r} is given more than once")
        seen.add(name)
        datatype = t.get("datatype")
        if datatype not in _LE:
            raise InvalidArgument(f"{where}.datatype: unsupported datatype {datatype!r} for input {name!r}; "
                                  f"supported: {', '.join(dtypes.BY_OIP)}")
        shape = _shape(t.get("shape"), where)
        count = math.prod(shape)
        tparams = _parameters(t.get("parameters"), f"{where}.parameters")
        _check_tensor_parameters(tparams, where)
        if "binary_data_size" in tparams:
            if "data" in t:
                raise InvalidArgument(f"{where}: input {name!r} has both data and parameters.binary_data_size; "
                                      "use one or the other")
            size = tparams["binary_data_size"]
            arr = _decode_binary(tail, offset, size, datatype, shape, count, where, name)
            offset += size
        else:
            arr = _decode_json_data(t.get("data"), datatype, shape, count, where, name)
        inputs.append(InferInput(name, datatype, shape, arr))
    if offset != len(tail):
        raise InvalidArgument(f"request body: {len(tail)} bytes of binary data follow the JSON header, but the "
                              f"inputs' binary_data_size add up to {offset}")

    outputs: list[RequestedOutput] = []
    raw_outputs = doc.get("outputs", [])
    if not isinstance(raw_outputs, list):
        raise InvalidArgument("outputs: expected a list of requested outputs")
    seen = set()
    for i, o in enumerate(raw_outputs):
        where = f"outputs[{i}]"
        if not isinstance(o, dict) or not isinstance(o.get("name"), str) or not o["name"]:
            raise InvalidArgument(f"{where}.name: missing or empty output name")
        if o["name"] in seen:
            raise InvalidArgument(f"{where}.name: output {o['name']!r} is requested more than once")
        seen.add(o["name"])
        oparams = _parameters(o.get("parameters"), f"{where}.parameters")
        _check_tensor_parameters(oparams, where)
        outputs.append(RequestedOutput(o["name"], _bool_parameter(oparams, "binary_data", f"{where}.parameters")))
    return InferRequest(model_name=model_name, model_version=model_version, id=rid, parameters=params,
                        inputs=inputs, outputs=outputs, binary_output=binary_output)


# ---------------------------------------------------------------- response

def _binary_outputs(req: InferRequest) -> dict[str, bool]:
    """Which outputs go as binary: an output's own binary_data, else the request's
    binary_data_output, else JSON (the KServe default; tritonclient.http always says which)."""
    default = bool(req.binary_output)
    return {o.name: (default if o.binary is None else o.binary) for o in req.outputs}


def response_to_rest(resp: InferResponse, req: InferRequest) -> tuple[bytes, int | None]:
    """(body, JSON header length or None when every output is JSON)."""
    chosen = _binary_outputs(req)
    default = bool(req.binary_output)
    outputs, blobs = [], []
    for o in resp.outputs:
        entry: dict[str, Any] = {"name": o.name, "datatype": o.datatype, "shape": list(o.array.shape)}
        if chosen.get(o.name, default):
            raw = canonical_array(o.array).tobytes()
            entry["parameters"] = {"binary_data_size": len(raw)}
            blobs.append(raw)
        else:
            entry["data"] = np.ascontiguousarray(o.array).ravel()  # orjson writes numpy arrays itself
        outputs.append(entry)
    doc: dict[str, Any] = {"model_name": resp.model_name, "model_version": resp.model_version}
    if resp.id:
        doc["id"] = resp.id
    if resp.parameters:
        doc["parameters"] = dict(resp.parameters)
    doc["outputs"] = outputs
    head = dumps(doc)
    if not blobs:
        return head, None
    return b"".join([head, *blobs]), len(head)


def dumps(doc: dict[str, Any]) -> bytes:
    try:
        if not any(_nonfinite(o.get("data")) for o in doc.get("outputs", ())):
            return orjson.dumps(doc, option=orjson.OPT_SERIALIZE_NUMPY)
    except orjson.JSONEncodeError:  # a dtype orjson does not write: lists instead
        pass
    # NaN/Inf have no JSON spelling (orjson would write null): Python writes NaN/Infinity, as
    # Triton does, which tritonclient's rapidjson and Python's json read back
    for o in doc.get("outputs", ()):
        if isinstance(o.get("data"), np.ndarray):
            o["data"] = o["data"].tolist()
    return json.dumps(doc, separators=(",", ":")).encode()


def _nonfinite(data: Any) -> bool:
    return isinstance(data, np.ndarray) and data.dtype.kind == "f" and not np.isfinite(data).all()


def model_metadata_json(m: ModelMetadata) -> dict[str, Any]:
    tensors = lambda items: [{"name": t.name, "datatype": t.datatype, "shape": list(t.shape)} for t in items]  # noqa: E731
    return {"name": m.name, "versions": m.versions, "platform": m.platform,
            "inputs": tensors(m.inputs), "outputs": tensors(m.outputs)}


# ---------------------------------------------------------------- Triton's HTTP extensions

def _duration(d: Any) -> dict[str, int]:
    return {"count": int(d.count), "ns": int(d.ns)}


def model_stats_json(stats: list[Any]) -> dict[str, Any]:
    """statistics.ModelStats -> Triton's HTTP statistics JSON (the gRPC ModelStatistics fields)."""
    out = []
    for s in stats:
        durations = {k: _duration(getattr(s, k))
                     for k in ("success", "fail", "queue", "compute_input", "compute_infer", "compute_output")}
        out.append({
            "name": s.name, "version": str(s.version), "last_inference": int(s.last_inference_ms),
            "inference_count": int(s.inference_count), "execution_count": int(s.execution_count),
            "inference_stats": durations,
            # one inference per node run: every execution is a batch of 1 at the gateway
            "batch_stats": [{"batch_size": 1, **{k: durations[k] for k in
                                                 ("compute_input", "compute_infer", "compute_output")}}]
            if s.execution_count else [],
        })
    return {"model_stats": out}


def model_config_json(config: dict[str, Any]) -> dict[str, Any]:
    """Triton's ModelConfig as its HTTP endpoint writes it: every field, integers as numbers
    (a config override may hold "16" where Triton's JSON reads an int64)."""
    from google.protobuf import json_format

    from hyperinfer.proto.inference import model_config_pb2

    try:
        msg = json_format.ParseDict(config, model_config_pb2.ModelConfig())
    except json_format.ParseError as e:
        raise InvalidArgument(f"config: not a Triton ModelConfig: {e}") from None
    return json_format.MessageToDict(msg, preserving_proto_field_name=True, always_print_fields_with_no_presence=True,
                                     unquote_int64_if_possible=True)


def _body_parameters(body: bytes, what: str) -> dict[str, Any]:
    if not body.strip():
        return {}
    doc = loads(body)
    if not isinstance(doc, dict):
        raise InvalidArgument(f"{what} request body: expected a JSON object")
    params = doc.get("parameters", {})
    if not isinstance(params, dict):
        raise InvalidArgument(f"{what} request: parameters must be a JSON object")
    return params


def load_request(body: bytes) -> tuple[str, dict[str, bytes]]:
    """(config JSON, {"file:<version>/<path>": bytes}) of a repository load request, as
    tritonclient.http sends them (files base64-encoded); anything else is refused by name."""
    import base64
    import binascii

    config, files = "", {}
    for key, value in _body_parameters(body, "load").items():
        if key == "config":
            if not isinstance(value, str):
                raise InvalidArgument("parameters.config: must be a string holding JSON")
            config = value
        elif key.startswith("file:"):
            if not isinstance(value, str):
                raise InvalidArgument(f"parameters[{key!r}]: a package file is a base64 string")
            try:
                files[key] = base64.b64decode(value, validate=True)
            except (binascii.Error, ValueError):
                raise InvalidArgument(f"parameters[{key!r}]: not valid base64") from None
        else:
            raise InvalidArgument(f"parameters[{key!r}]: unknown parameter (known: config, file:<version>/<path>)")
    return config, files


def unload_request(body: bytes) -> None:
    for key, value in _body_parameters(body, "unload").items():
        if key != "unload_dependents":
            raise InvalidArgument(f"parameters[{key!r}]: unknown parameter (known: unload_dependents)")
        if not isinstance(value, bool):
            raise InvalidArgument("parameters.unload_dependents: expected true or false")


def index_request(body: bytes) -> bool:
    """``ready`` of a repository index request (an empty body: false)."""
    if not body.strip():
        return False
    doc = loads(body)
    if not isinstance(doc, dict):
        raise InvalidArgument("index request body: expected a JSON object")
    ready = doc.get("ready", False)
    if not isinstance(ready, bool):
        raise InvalidArgument(f"ready: expected true or false, got {ready!r}")
    return ready
