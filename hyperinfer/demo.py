"""Demo client: verified requests through a gateway, with what came back and each receipt.

For an image model (one NCHW input with 3 channels, like PP-OCR detection) every
request is a rendered text page (:mod:`hyperinfer.imaging`); when the output is
a probability map the text bands found are printed. Any other model gets seeded
random inputs of its declared shapes and dtypes. Each request asks for
verification mode ``always`` by default: every answer is re-computed, blind, on
another operator's node, and the receipt says which node answered, which one
validated and the status. What ``hyperinfer demo`` and ``hyperinfer up --demo`` run.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from hyperinfer.errors import InvalidArgument, Unavailable

VERIFY_MODES = ("auto", "sync", "always")


@dataclass
class DemoResult:
    request_id: str
    ms: float
    status: str
    node_id: str
    validator_node_id: str
    outputs: dict[str, np.ndarray]
    receipt_json: str


def regions(prob: np.ndarray, threshold: float = 0.3) -> list[tuple[int, int, int, int]]:
    """Row bands of a probability map with text: (y0, y1, x0, x1)."""
    mask = prob > threshold
    rows = np.where(mask.any(axis=1))[0]
    out, start = [], None
    for i, r in enumerate(rows):
        if start is None:
            start = r
        if i + 1 == len(rows) or rows[i + 1] != r + 1:
            cols = np.where(mask[start:r + 1].any(axis=0))[0]
            out.append((int(start), int(r), int(cols.min()), int(cols.max())))
            start = None
    return out


def _channel(url: str, tls=None):
    from hyperinfer.transport.server import channel

    return channel(url, 64 << 20, tls=tls)


def wait_ready(stub, model: str, seconds: float) -> None:
    import grpc

    from hyperinfer.proto.inference import grpc_service_pb2 as pb

    from hyperinfer.transport.errors import error_from_rpc

    deadline = time.monotonic() + seconds
    while True:
        try:
            if stub.ModelReady(pb.ModelReadyRequest(name=model), timeout=2).ready:
                return
            stub.ModelMetadata(pb.ModelMetadataRequest(name=model), timeout=2)  # unknown model: say so now
        except grpc.RpcError as e:
            if e.code() == grpc.StatusCode.NOT_FOUND:
                raise error_from_rpc(e) from None
        if time.monotonic() > deadline:
            raise Unavailable(f"model {model} not ready after {seconds:.0f} s "
                              "(is the gateway running, does its repository have the model, have nodes loaded it? "
                              "see `hyperinfer pool status` and the gateway and node logs)")
        time.sleep(0.5)


def make_inputs(meta, seed: int) -> tuple[dict[str, np.ndarray], str]:
    """Inputs for one request and a line describing them."""
    specs = list(meta.inputs)
    if len(specs) == 1 and len(specs[0].shape) == 4 and specs[0].shape[1] == 3 and specs[0].datatype == "FP32":
        from hyperinfer.imaging import render_text, to_nchw

        _, _, h, w = specs[0].shape
        image, lines = render_text(w, h, seed=seed)
        return {specs[0].name: to_nchw(image)}, f"{len(lines)} lines of text drawn"
    rng = np.random.default_rng(seed)
    arrays = {}
    for s in specs:
        if any(d < 0 for d in s.shape):
            raise InvalidArgument(f"model {meta.name}: input {s.name} has a dynamic shape {list(s.shape)}; "
                                  "the demo only makes inputs of static shapes")
        dt = _np_dtype(s.datatype)
        if np.issubdtype(dt, np.floating):
            a = rng.standard_normal(tuple(s.shape)).astype(dt)
        elif dt == np.bool_:
            a = rng.random(tuple(s.shape)) > 0.5
        else:
            a = rng.integers(0, 10, tuple(s.shape)).astype(dt)
        arrays[s.name] = a
    return arrays, "random inputs " + ", ".join(f"{k}{list(v.shape)}" for k, v in arrays.items())


def _np_dtype(datatype: str) -> np.dtype:
    from hyperinfer import dtypes

    return np.dtype(dtypes.from_oip(datatype).name)


def run(url: str = "127.0.0.1:8001", model: str = "ppocr-det", requests: int = 4, verify: str = "always",
        wait: float = 120.0, timeout: float = 120.0, receipts_dir: str | os.PathLike | None = None,
        say: Callable[[str], None] = print, tls=None) -> list[DemoResult]:
    """Send ``requests`` requests to ``model`` at ``url``, print a summary of each; return the results.

    With ``receipts_dir`` each receipt is also written to ``DIR/demo-<i>.json``.
    """
    import grpc

    from hyperinfer.proto.inference import grpc_service_pb2 as pb
    from hyperinfer.proto.inference import grpc_service_pb2_grpc as pb_grpc
    from hyperinfer.transport.errors import error_from_rpc

    if requests < 1:
        raise InvalidArgument(f"--requests {requests}: must be >= 1")
    if verify not in VERIFY_MODES:
        raise InvalidArgument(f"--verify {verify!r}: expected one of {', '.join(VERIFY_MODES)}")
    if wait < 0 or timeout <= 0:
        raise InvalidArgument("--wait must be >= 0 and --timeout > 0 seconds")
    results = []
    saved: list[Path] = []
    if receipts_dir is not None:
        Path(receipts_dir).mkdir(parents=True, exist_ok=True)
    with _channel(url, tls) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        wait_ready(stub, model, wait)
        try:
            meta = stub.ModelMetadata(pb.ModelMetadataRequest(name=model), timeout=timeout)
        except grpc.RpcError as e:
            raise error_from_rpc(e) from None
        say(f"demo: {requests} request(s) to {model} at {url}, verification mode {verify}")
        for i in range(requests):
            arrays, described = make_inputs(meta, seed=i)
            req = pb.ModelInferRequest(model_name=model, id=f"demo-{i}")
            for name, a in arrays.items():
                spec = next(s for s in meta.inputs if s.name == name)
                req.inputs.add(name=name, datatype=spec.datatype, shape=list(a.shape))
                req.raw_input_contents.append(np.ascontiguousarray(a).tobytes())
            req.parameters["verify"].string_param = verify
            t = time.perf_counter()
            try:
                resp = stub.ModelInfer(req, timeout=timeout)
            except grpc.RpcError as e:
                raise error_from_rpc(e) from None
            ms = (time.perf_counter() - t) * 1e3
            outputs = {}
            for o, raw in zip(resp.outputs, resp.raw_output_contents):
                outputs[o.name] = np.frombuffer(raw, _np_dtype(o.datatype)).reshape(tuple(o.shape))
            rj = resp.parameters["hyperinfer.receipt"].string_param
            receipt = json.loads(rj) if rj else {}
            r = DemoResult(f"demo-{i}", ms, str(receipt.get("status", "?")), str(receipt.get("node_id") or ""),
                           str(receipt.get("validator_node_id") or ""), outputs, rj)
            results.append(r)
            say(f"request {i}: {described}; answered in {ms:.0f} ms")
            first = next(iter(outputs.values()), None)
            if first is not None and first.ndim == 4 and first.shape[:2] == (1, 1) and first.dtype == np.float32:
                found = regions(first[0, 0])
                say(f"   {len(found)} text bands found")
                for y0, y1, x0, x1 in found[:3]:
                    say(f"   text at rows {y0}-{y1}, cols {x0}-{x1}")
            else:
                for name, a in outputs.items():
                    flat = a.reshape(-1)
                    head = ", ".join(f"{v:.4g}" if a.dtype.kind == "f" else str(v) for v in flat[:4])
                    say(f"   {name} {a.dtype}{list(a.shape)}: {head}{', …' if flat.size > 4 else ''}")
            say(f"   receipt: node {r.node_id[:12] or '?'} status {r.status} validator {r.validator_node_id[:12] or '-'}"
                + (" (probation: held until checked)" if receipt.get("probation") else ""))
            if receipts_dir is not None and rj:
                path = Path(receipts_dir) / f"{r.request_id}.json"
                path.write_text(rj + "\n")
                saved.append(path)
    if saved:
        say(f"receipts saved in {Path(receipts_dir)}; check one offline with: "
            f"hyperinfer audit verify {saved[0]} --gateway {url}")
    else:
        say("check a receipt offline with: hyperinfer audit verify RECEIPT.json --gateway-key KEY")
    return results
