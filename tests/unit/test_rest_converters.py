"""KServe v2 REST bodies <-> data-plane values (no server), and the HTTP listening socket."""

from __future__ import annotations

import json
import socket

import numpy as np
import pytest

from hyperinfer.errors import InvalidArgument
from hyperinfer.gateway.dataplane import InferResponse, OutputTensor
from hyperinfer.gateway.rest_converters import request_from_rest, response_to_rest
from hyperinfer.transport.http import bind_socket


def binary_body(doc: dict, *blobs: bytes) -> tuple[bytes, str]:
    head = json.dumps(doc).encode()
    return head + b"".join(blobs), str(len(head))


def test_json_inputs_flat_or_nested_with_every_dtype():
    doc = {"id": "r1", "parameters": {"verify": "sync", "binary_data_output": True},
           "inputs": [{"name": "f", "shape": [2, 2], "datatype": "FP32", "data": [[1, 2.5], [3, 4]]},
                      {"name": "b", "shape": [3], "datatype": "BOOL", "data": [True, False, True]},
                      {"name": "i", "shape": [2], "datatype": "INT8", "data": [-128, 127]},
                      {"name": "u", "shape": [1], "datatype": "UINT64", "data": [2**64 - 1]},
                      {"name": "h", "shape": [1], "datatype": "FP16", "data": [0.5]}],
           "outputs": [{"name": "y", "parameters": {"binary_data": False}}]}
    req = request_from_rest(json.dumps(doc).encode(), None, "m", "2")
    assert (req.model_name, req.model_version, req.id) == ("m", "2", "r1")
    assert req.parameters == {"verify": "sync"} and req.binary_output is True  # wire flag taken out
    got = {t.name: t.array for t in req.inputs}
    np.testing.assert_array_equal(got["f"], np.array([[1, 2.5], [3, 4]], np.float32))
    assert got["f"].dtype == np.float32 and got["b"].dtype == np.bool_ and got["i"].dtype == np.int8
    assert got["u"][0] == 2**64 - 1 and got["h"].dtype == np.float16
    assert [(o.name, o.binary) for o in req.outputs] == [("y", False)]


def test_binary_inputs_are_read_in_order_without_copy():
    a, b = np.arange(6, dtype=np.float32).reshape(2, 3), np.array([1, 0, 1], np.bool_)
    body, n = binary_body({"inputs": [
        {"name": "a", "shape": [2, 3], "datatype": "FP32", "parameters": {"binary_data_size": 24}},
        {"name": "b", "shape": [3], "datatype": "BOOL", "parameters": {"binary_data_size": 3}}]},
        a.tobytes(), b.tobytes())
    req = request_from_rest(body, n, "m", "")
    np.testing.assert_array_equal(req.inputs[0].array, a)
    np.testing.assert_array_equal(req.inputs[1].array, b)
    assert not req.inputs[0].array.flags.owndata  # a view of the request body


@pytest.mark.parametrize("doc, fragment", [
    ({"inputs": [{"name": "x", "shape": [2], "datatype": "INT8", "data": [1, 300]}]}, "outside the INT8 range"),
    ({"inputs": [{"name": "x", "shape": [2], "datatype": "INT32", "data": [1, 2.5]}]}, "takes integers"),
    ({"inputs": [{"name": "x", "shape": [2], "datatype": "BOOL", "data": [1, 0]}]}, "true/false"),
    ({"inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": [True]}]}, "takes numbers"),
    ({"inputs": [{"name": "x", "shape": [1], "datatype": "BYTES", "data": ["a"]}]}, "unsupported datatype"),
    ({"inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": [1]},
                 {"name": "x", "shape": [1], "datatype": "FP32", "data": [1]}]}, "more than once"),
    ({"inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": [1],
                  "parameters": {"shared_memory_region": "r"}}]}, "shared memory"),
    ({"inputs": [], "outputs": [{"name": "y"}, {"name": "y"}]}, "requested more than once"),
    ({"inputs": [], "id": 5}, "id: expected a string"),
])
def test_malformed_json_names_the_field(doc, fragment):
    with pytest.raises(InvalidArgument) as e:
        request_from_rest(json.dumps(doc).encode(), None, "m", "")
    assert fragment in str(e.value)


def test_bool_bytes_other_than_0_and_1_are_refused():
    body, n = binary_body({"inputs": [{"name": "b", "shape": [2], "datatype": "BOOL",
                                       "parameters": {"binary_data_size": 2}}]}, b"\x01\x02")
    with pytest.raises(InvalidArgument, match="other than 0 and 1"):
        request_from_rest(body, n, "m", "")


def test_response_binary_and_json_outputs():
    y, z = np.array([[1.5, -2.0]], np.float32), np.array([True, False])
    resp = InferResponse("m", "1", "r1", [OutputTensor("y", "FP32", y), OutputTensor("z", "BOOL", z)],
                         parameters={"hyperinfer.receipt": "{}"})
    req = request_from_rest(json.dumps({"inputs": [], "outputs": [
        {"name": "y", "parameters": {"binary_data": True}}, {"name": "z"}]}).encode(), None, "m", "")
    body, n = response_to_rest(resp, req)
    head = json.loads(body[:n])
    assert head["id"] == "r1" and head["parameters"] == {"hyperinfer.receipt": "{}"}
    assert head["outputs"][0] == {"name": "y", "datatype": "FP32", "shape": [1, 2],
                                  "parameters": {"binary_data_size": 8}}
    assert head["outputs"][1]["data"] == [True, False]
    np.testing.assert_array_equal(np.frombuffer(body[n:], "<f4").reshape(1, 2), y)
    # no binary asked for: plain JSON, no header length
    body, n = response_to_rest(resp, request_from_rest(b'{"inputs": []}', None, "m", ""))
    assert n is None and json.loads(body)["outputs"][0]["data"] == [1.5, -2.0]


def test_listening_socket_is_tcp_so_asyncio_sets_nodelay():
    # proto 0 would make asyncio skip TCP_NODELAY: every response then waits ~40 ms on delayed ACKs
    sock = bind_socket("127.0.0.1:0", "test", "--http-listen")
    try:
        assert sock.proto == socket.IPPROTO_TCP
    finally:
        sock.close()


def test_non_finite_values_round_trip_as_python_writes_them():
    body = b'{"inputs": [{"name": "x", "shape": [3], "datatype": "FP32", "data": [NaN, Infinity, -Infinity]}]}'
    x = request_from_rest(body, None, "m", "").inputs[0].array
    assert np.isnan(x[0]) and x[1] == np.inf and x[2] == -np.inf
    resp = InferResponse("m", "1", "", [OutputTensor("y", "FP32", x), OutputTensor("h", "FP16", x.astype(np.float16))])
    out, n = response_to_rest(resp, request_from_rest(b'{"inputs": []}', None, "m", ""))
    assert n is None
    data = json.loads(out)["outputs"]
    assert np.isnan(data[0]["data"][0]) and data[0]["data"][1:] == [float("inf"), float("-inf")]
    assert data[1]["data"][1] == float("inf")


def test_http_requests_beyond_the_limit_get_429_at_once():
    import asyncio

    from hyperinfer.gateway.rest import ConcurrencyLimit

    async def main():
        release = asyncio.Event()

        async def slow_app(scope, receive, send):
            await release.wait()
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": b"ok"})

        app = ConcurrencyLimit(slow_app, 1)
        sent: list[list[dict]] = [[], []]

        async def request(i):
            async def send(msg):
                sent[i].append(msg)

            async def receive():
                return {"type": "http.request", "body": b"", "more_body": False}
            await app({"type": "http", "method": "GET", "path": "/", "headers": []}, receive, send)

        first = asyncio.create_task(request(0))
        await asyncio.sleep(0.01)
        await request(1)  # refused while the first is in the app, without waiting for it
        assert sent[1][0]["status"] == 429 and b"limit of 1" in sent[1][1]["body"]
        release.set()
        await first
        assert sent[0][0]["status"] == 200 and app.active == 0

    asyncio.run(main())
