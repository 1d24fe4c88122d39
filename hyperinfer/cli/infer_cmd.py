"""``hyperinfer infer``: call a gateway's Open Inference Protocol service with .npy inputs.

A thin adapter over :func:`infer`: load the arrays, send one ModelInfer with raw
contents, print each output (or save it with ``--out``) and the receipt.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

import numpy as np
import typer

from hyperinfer.cli import _tls

from hyperinfer.errors import HyperinferError, InvalidArgument, NotFound

DEFAULT_TIMEOUT_S = 60.0


def parse_input(item: str) -> tuple[str, Path]:
    name, sep, path = item.partition("=")
    if not sep or not name or not path:
        raise InvalidArgument(f"--input {item!r}: expected NAME=FILE.npy")
    return name, Path(path)


def load_inputs(items: list[str]) -> dict[str, np.ndarray]:
    arrays: dict[str, np.ndarray] = {}
    for item in items:
        name, path = parse_input(item)
        if name in arrays:
            raise InvalidArgument(f"--input {name}: given twice")
        if not path.is_file():
            raise NotFound(f"--input {name}: file {path} not found")
        try:
            arrays[name] = np.load(path, allow_pickle=False)
        except (ValueError, OSError) as e:
            raise InvalidArgument(f"--input {name}: {path} is not a .npy array ({e})") from None
    return arrays


def infer(url: str, model: str, inputs: dict[str, np.ndarray], version: str = "", verify: str = "",
          timeout: float = DEFAULT_TIMEOUT_S, request_id: str = "", tls: Any = None
          ) -> tuple[dict[str, np.ndarray], str, Any]:
    """One ModelInfer call; returns (outputs, receipt JSON or "", response)."""
    import grpc

    from hyperinfer import dtypes
    from hyperinfer.gateway.converters import outputs_from_proto
    from hyperinfer.proto.inference import grpc_service_pb2 as pb
    from hyperinfer.proto.inference import grpc_service_pb2_grpc as pb_grpc
    from hyperinfer.transport.errors import error_from_rpc
    from hyperinfer.transport.server import channel
    from hyperinfer.verify.digest import canonical_array
    from hyperinfer.verify.receipt import RECEIPT_PARAMETER

    req = pb.ModelInferRequest(model_name=model, model_version=version, id=request_id)
    if verify:
        req.parameters["verify"].string_param = verify
    for name, arr in inputs.items():
        try:
            oip = dtypes.from_name(arr.dtype.name).oip
        except InvalidArgument:
            raise InvalidArgument(f"--input {name}: unsupported dtype {arr.dtype.name}") from None
        req.inputs.add(name=name, datatype=oip, shape=arr.shape)
        req.raw_input_contents.append(canonical_array(arr).tobytes())
    with channel(url, tls=tls) as ch:
        try:
            resp = pb_grpc.GRPCInferenceServiceStub(ch).ModelInfer(req, timeout=timeout)
        except grpc.RpcError as e:
            err = error_from_rpc(e)
            if e.code() == grpc.StatusCode.UNAVAILABLE and "failed to connect" in (e.details() or "").lower():
                raise HyperinferError(f"cannot reach the gateway at {url}: {e.details()}", err.code) from None
            raise HyperinferError(f"{e.code().name}: {err}", err.code) from None
    receipt = resp.parameters[RECEIPT_PARAMETER].string_param if RECEIPT_PARAMETER in resp.parameters else ""
    return outputs_from_proto(resp), receipt, resp


def summarize(arr: np.ndarray, n: int = 6) -> dict[str, Any]:
    flat = arr.ravel()
    d: dict[str, Any] = {"dtype": arr.dtype.name, "shape": list(arr.shape),
                         "values": flat[:n].tolist(), "size": int(arr.size)}
    if arr.size and (np.issubdtype(arr.dtype, np.number)):
        f = flat.astype(np.float64)
        d.update(min=float(np.nanmin(f)), max=float(np.nanmax(f)), mean=float(np.nanmean(f)))
        if arr.ndim >= 1 and arr.shape[-1] > 1 and np.issubdtype(arr.dtype, np.floating):
            d["argmax"] = np.argmax(arr.reshape(-1, arr.shape[-1]), axis=-1)[:n].tolist()
    elif arr.size and arr.dtype == np.bool_:
        d["true"] = int(flat.sum())
    return d


def describe_receipt(receipt_json: str) -> dict[str, Any]:
    from hyperinfer.verify.receipt import receipt_from_json

    r = receipt_from_json(receipt_json)
    d = {"node_id": r.node_id, "status": r.status, "request_id": r.request_id, "gateway_id": r.gateway_id,
         "node_signature": r.node_signature.hex()[:32] + "…", "gateway_signature": r.gateway_signature.hex()[:32] + "…"}
    if r.validator_node_id:
        d["validator_node_id"] = r.validator_node_id
    if r.probation:
        d["probation"] = True
    if r.detail:
        d["detail"] = r.detail
    if r.dispute_id:
        d["dispute_id"] = r.dispute_id
    return d


def infer_command(
    url: str = typer.Option("127.0.0.1:8001", "--url", help="HOST:PORT of the gateway."),
    model: str = typer.Option(..., "--model", "-m", help="Model name."),
    version: Optional[int] = typer.Option(None, "--version", help="Model version (default: the newest)."),
    inputs: list[str] = typer.Option([], "--input", "-i", help="NAME=FILE.npy; repeat for each input."),
    verify: str = typer.Option("auto", "--verify", help="auto | sync | always."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object instead of text."),
    out_dir: Optional[Path] = typer.Option(None, "--out", help="Also save each output as DIR/NAME.npy and the receipt as DIR/receipt.json."),
    timeout: float = typer.Option(DEFAULT_TIMEOUT_S, "--timeout", help="Seconds to wait for the answer."),
    tls: bool = _tls.tls_option(),
    tls_ca: Optional[Path] = _tls.ca_option(),
    tls_cert: Optional[Path] = _tls.cert_option(),
    tls_key: Optional[Path] = _tls.key_option(),
) -> None:
    """Run one inference through a gateway and print the outputs and the signed receipt."""
    from hyperinfer.cli._console import out

    if verify not in ("auto", "sync", "always"):
        raise InvalidArgument(f"--verify {verify!r}: use auto, sync or always")
    if not inputs:
        raise InvalidArgument("give at least one --input NAME=FILE.npy")
    if version is not None and version < 1:
        raise InvalidArgument(f"--version {version}: must be >= 1")
    arrays = load_inputs(inputs)
    outputs, receipt, resp = infer(url, model, arrays, "" if version is None else str(version), verify, timeout,
                                   tls=_tls.client_tls(tls, tls_ca, tls_cert, tls_key))
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
        for name, arr in outputs.items():
            np.save(out_dir / f"{name.replace('/', '_')}.npy", arr)
        if receipt:
            (out_dir / "receipt.json").write_text(receipt + "\n")
    summary = {name: summarize(arr) for name, arr in outputs.items()}
    receipt_info = describe_receipt(receipt) if receipt else None
    if as_json:
        print(json.dumps({"model": resp.model_name, "version": resp.model_version, "outputs": summary,
                          "receipt": receipt_info, "receipt_json": receipt or None}))
        return
    out.print(f"model {resp.model_name} version {resp.model_version}")
    for name, d in summary.items():
        stats = "".join(f" {k}={d[k]:.6g}" for k in ("min", "max", "mean") if k in d)
        extra = f" argmax={d['argmax']}" if "argmax" in d else (f" true={d['true']}" if "true" in d else "")
        more = "…" if d["size"] > len(d["values"]) else ""
        out.print(f"output {name}: {d['dtype']}{d['shape']}{stats}{extra}", soft_wrap=True)
        out.print(f"  values: {d['values']}{more}", soft_wrap=True)
    if receipt_info is None:
        out.print("receipt: none (the gateway has no verifier)")
    else:
        out.print(f"receipt: status={receipt_info['status']} node={receipt_info['node_id']}"
                  + (f" validator={receipt_info['validator_node_id']}" if "validator_node_id" in receipt_info else "")
                  + (" probation (held until checked)" if receipt_info.get("probation") else ""),
                  soft_wrap=True)
        out.print(f"  request {receipt_info['request_id']}, gateway {receipt_info['gateway_id']}", soft_wrap=True)
        out.print(f"  node signature {receipt_info['node_signature']} gateway signature "
                  f"{receipt_info['gateway_signature']}", soft_wrap=True)
        if "detail" in receipt_info:
            out.print(f"  {receipt_info['detail']}", soft_wrap=True)
    if out_dir is not None:
        out.print(f"saved outputs{' and receipt' if receipt else ''} to {out_dir}")


def register(app: typer.Typer) -> None:
    app.command("infer")(infer_command)
