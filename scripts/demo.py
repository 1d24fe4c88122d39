"""Demo client: PP-OCR text detection through the gateway on a rendered page, with receipts.

Waits (bounded) until the model is ready, then sends each request with
verification mode `always` (every answer re-computed blind on another
operator's node), prints the text regions found and each signed receipt.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import grpc
import numpy as np

from hyperinfer.imaging import render_text, to_nchw
from hyperinfer.proto.inference import grpc_service_pb2 as pb
from hyperinfer.proto.inference import grpc_service_pb2_grpc as pb_grpc


def wait_ready(stub, model: str, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            if stub.ModelReady(pb.ModelReadyRequest(name=model), timeout=2).ready:
                return
        except grpc.RpcError:
            pass
        time.sleep(1)
    sys.exit(f"Error: model {model} not ready after {seconds:.0f} s (see the gateway and node logs)")


def regions(prob: np.ndarray, threshold: float = 0.3) -> list[tuple[int, int, int, int]]:
    """Row bands of the probability map with text: (y0, y1, x0, x1)."""
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


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--url", default="127.0.0.1:8001")
    ap.add_argument("--model", default="ppocr-det")
    ap.add_argument("--requests", type=int, default=4)
    ap.add_argument("--wait", type=float, default=120)
    ap.add_argument("--verify", default="always")
    args = ap.parse_args()
    channel = grpc.insecure_channel(args.url, options=[("grpc.max_receive_message_length", 64 << 20)])
    stub = pb_grpc.GRPCInferenceServiceStub(channel)
    wait_ready(stub, args.model, args.wait)
    meta = stub.ModelMetadata(pb.ModelMetadataRequest(name=args.model))
    (inp,) = meta.inputs
    _, _, h, w = inp.shape
    for i in range(args.requests):
        image, lines = render_text(w, h, seed=i)
        x = to_nchw(image)
        req = pb.ModelInferRequest(model_name=args.model, id=f"demo-{i}")
        req.inputs.add(name=inp.name, datatype="FP32", shape=list(x.shape))
        req.raw_input_contents.append(x.tobytes())
        req.parameters["verify"].string_param = args.verify
        t = time.perf_counter()
        resp = stub.ModelInfer(req, timeout=120)
        ms = (time.perf_counter() - t) * 1e3
        out = resp.outputs[0]
        prob = np.frombuffer(resp.raw_output_contents[0], np.float32).reshape(out.shape)[0, 0]
        found = regions(prob)
        receipt = json.loads(resp.parameters["hyperinfer.receipt"].string_param)
        print(f"page {i}: {len(lines)} lines drawn, {len(found)} text bands found in {ms:.0f} ms")
        for y0, y1, x0, x1 in found[:3]:
            print(f"   text at rows {y0}-{y1}, cols {x0}-{x1}")
        print(f"   receipt: node {receipt.get('node_id', '?')[:12]}… status {receipt.get('status')} "
              f"validator {str(receipt.get('validator_node_id') or '-')[:12]}")
    print("Check a receipt offline with: hyperinfer audit verify RECEIPT.json")


if __name__ == "__main__":
    main()
