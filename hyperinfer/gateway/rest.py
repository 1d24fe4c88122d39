"""The KServe v2 REST front door (HTTP/1.1, Starlette on uvicorn) on its own port (default 8000).

Thin, like the gRPC servicer: HTTP in (:mod:`~hyperinfer.gateway.rest_converters`),
the gateway's one data plane (:func:`~hyperinfer.gateway.assembly.dataplane_for`),
HTTP out. Routes (``/versions/V`` optional wherever a model is named)::

    GET  /v2/health/live            200 {"live": true}
    GET  /v2/health/ready           200 {"ready": true}
    GET  /v2                        server metadata
    GET  /v2/models/M[/versions/V]  model metadata
    GET  /v2/models/M[/versions/V]/ready   200 ready, 503 no node serves it, 404 unknown model
    POST /v2/models/M[/versions/V]/infer   JSON tensors or Triton's binary tensor extension
    GET  /v2/models[/M[/versions/V]]/stats, /v2/models/M[/versions/V]/config
    POST /v2/repository/index, /v2/repository/models/M/load, .../unload   (Triton's extensions)

Errors are JSON ``{"error": "..."}`` with the status of the same error on the
gRPC side (400 bad input, 404 unknown model or path, 503 no node, 429 out of
capacity; 413 body over the gateway's message limit, ...). Responses carry the receipt in
``parameters["hyperinfer.receipt"]``, as over gRPC.

uvicorn runs on a thread of the gateway process (its own event loop); blocking
data-plane calls go to Starlette's thread pool. :func:`install` wires it to a
:class:`~hyperinfer.gateway.app.Gateway`: started with it, stopped with it.
"""

from __future__ import annotations

import logging
import zlib
from typing import Any

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from hyperinfer.errors import Code, HyperinferError, InvalidArgument, NotFound, Unavailable
from hyperinfer.gateway import rest_converters as conv
from hyperinfer.gateway.dataplane import DataPlane, deadline_from
from hyperinfer.transport.http import HttpServer

log = logging.getLogger("hyperinfer.gateway.rest")

DEFAULT_HTTP_PORT = 8000

# one mapping, as the gRPC interceptor has one: KServe/Triton clients read the status and "error"
HTTP_STATUS = {
    Code.INVALID_ARGUMENT: 400, Code.FAILED_PRECONDITION: 400, Code.NOT_FOUND: 404,
    Code.ALREADY_EXISTS: 409, Code.PERMISSION_DENIED: 403, Code.UNAUTHENTICATED: 401,
    Code.RESOURCE_EXHAUSTED: 429, Code.UNAVAILABLE: 503, Code.DEADLINE_EXCEEDED: 504,
    Code.UNIMPLEMENTED: 501, Code.DATA_LOSS: 500, Code.INTERNAL: 500,
}
_DECOMPRESS = {"gzip": 16 + zlib.MAX_WBITS, "deflate": zlib.MAX_WBITS}


class _HttpError(HyperinferError):
    """An error with a status of its own: 413 (body too large), 415 (unknown Content-Encoding)."""

    def __init__(self, status: int, message: str, code: Code = Code.INVALID_ARGUMENT):
        super().__init__(message, code)
        self.status = status


def error_response(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


class ConcurrencyLimit:
    """ASGI middleware: at most ``limit`` HTTP requests in the app at once; more get 429 at once
    (as gRPC calls beyond ``--max-concurrent-rpcs`` get RESOURCE_EXHAUSTED). One event loop
    runs it: the counter needs no lock."""

    def __init__(self, app: Any, limit: int):
        self.app, self.limit, self.active = app, int(limit), 0

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if self.active >= self.limit:
            await error_response(429, f"the gateway is at its limit of {self.limit} concurrent HTTP "
                                      "requests; retry later")(scope, receive, send)
            return
        self.active += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.active -= 1


class RestFrontDoor:
    """The Starlette app over one data plane; ``max_body_bytes`` bounds a request body (decompressed too)."""

    def __init__(self, dataplane: DataPlane, max_body_bytes: int, control: Any = None, max_concurrent: int = 256):
        self.dataplane = dataplane
        self.control = control  # gateway.model_control.ModelControl: config, repository index/load/unload
        self.max_body_bytes = int(max_body_bytes)
        model = "/v2/models/{model}"
        version = "/v2/models/{model}/versions/{version}"
        routes = [
            Route("/v2/health/live", self.live, methods=["GET"]),
            Route("/v2/health/ready", self.ready, methods=["GET"]),
            Route("/v2", self.server_metadata, methods=["GET"]),
            # Triton's extensions, as tritonclient.http calls them
            Route("/v2/models/stats", self.statistics, methods=["GET"]),
            Route("/v2/repository/index", self.repository_index, methods=["POST"]),
            Route("/v2/repository/models/{model}/load", self.load, methods=["POST"]),
            Route("/v2/repository/models/{model}/unload", self.unload, methods=["POST"]),
        ]
        for base in (model, version):
            routes += [
                Route(base, self.model_metadata, methods=["GET"]),
                Route(base + "/ready", self.model_ready, methods=["GET"]),
                Route(base + "/infer", self.infer, methods=["POST"]),
                Route(base + "/stats", self.statistics, methods=["GET"]),
                Route(base + "/config", self.model_config, methods=["GET"]),
            ]
        self.starlette = Starlette(routes=routes, exception_handlers={
            HTTPException: self._http_exception, HyperinferError: self._error, Exception: self._internal})
        self.app = ConcurrencyLimit(self.starlette, max_concurrent)

    # ------------------------------------------------------------ errors

    @staticmethod
    async def _http_exception(request: Request, exc: HTTPException) -> Response:
        if exc.status_code == 404:
            return error_response(404, f"no such endpoint: {request.method} {request.url.path} (KServe v2 paths "
                                       "start with /v2: /v2/health/live, /v2/models/NAME/infer, ...)")
        if exc.status_code == 405:
            return error_response(405, f"{request.method} is not allowed on {request.url.path}")
        return error_response(exc.status_code, str(exc.detail))

    @staticmethod
    async def _error(request: Request, exc: HyperinferError) -> Response:
        status = exc.status if isinstance(exc, _HttpError) else HTTP_STATUS.get(exc.code, 500)
        log.info("%s %s -> %d: %s", request.method, request.url.path, status, exc)
        return error_response(status, str(exc))

    @staticmethod
    async def _internal(request: Request, exc: Exception) -> Response:
        log.error("%s %s failed", request.method, request.url.path, exc_info=exc)
        return error_response(500, "internal server error")

    # ------------------------------------------------------------ health and metadata

    async def live(self, request: Request) -> Response:
        return JSONResponse({"live": self.dataplane.live()})

    async def ready(self, request: Request) -> Response:
        ok = self.dataplane.ready()
        return JSONResponse({"ready": ok}, status_code=200 if ok else 503)

    async def server_metadata(self, request: Request) -> Response:
        m = self.dataplane.server_metadata()
        return JSONResponse({"name": m.name, "version": m.version, "extensions": m.extensions})

    async def model_metadata(self, request: Request) -> Response:
        name, version = _model(request)
        m = await run_in_threadpool(self.dataplane.model_metadata, name, version)
        return JSONResponse(conv.model_metadata_json(m))

    async def model_ready(self, request: Request) -> Response:
        name, version = _model(request)

        def check() -> tuple[str, int, bool]:
            m = self.dataplane.manifest(name, version)  # NotFound -> 404; readiness alone would say False
            return m.name, m.version, self.dataplane.model_ready(name, version)

        found, v, ok = await run_in_threadpool(check)
        if not ok:
            raise Unavailable(f"model {found} version {v} is not ready: no healthy node serves it")
        return JSONResponse({"name": found, "version": str(v), "ready": True})

    # ------------------------------------------------------------ Triton's extensions

    async def statistics(self, request: Request) -> Response:
        name, version = request.path_params.get("model", ""), request.path_params.get("version", "")
        stats = await run_in_threadpool(self.dataplane.model_statistics, name, version)
        return JSONResponse(conv.model_stats_json(stats))

    def _control(self) -> Any:
        if self.control is None:
            raise HyperinferError("model control is not enabled on this gateway", Code.UNIMPLEMENTED)
        return self.control

    async def model_config(self, request: Request) -> Response:
        name, version = _model(request)
        config = await run_in_threadpool(self._control().model_config, name, version)
        return JSONResponse(conv.model_config_json(config))

    async def repository_index(self, request: Request) -> Response:
        ready = conv.index_request(await self._body(request))
        entries = await run_in_threadpool(self._control().index, ready)
        return JSONResponse([{"name": e.name, "version": e.version, "state": e.state, "reason": e.reason}
                             for e in entries])

    async def load(self, request: Request) -> Response:
        control = self._control()
        control.authorize(_metadata(request))
        config, files = conv.load_request(await self._body(request))
        await run_in_threadpool(lambda: control.load(request.path_params["model"], config=config, files=files))
        return JSONResponse({})

    async def unload(self, request: Request) -> Response:
        control = self._control()
        control.authorize(_metadata(request))
        conv.unload_request(await self._body(request))
        await run_in_threadpool(control.unload, request.path_params["model"])
        return JSONResponse({})

    # ------------------------------------------------------------ infer

    async def infer(self, request: Request) -> Response:
        name, version = _model(request)
        body = await self._body(request)
        header_length = request.headers.get(conv.HEADER_LENGTH)
        payload, json_length = await run_in_threadpool(self._infer, body, header_length, name, version)
        headers = {}
        if json_length is not None:
            headers[conv.HEADER_LENGTH] = str(json_length)
            media = "application/octet-stream"
        else:
            media = "application/json"
        return Response(payload, media_type=media, headers=headers)

    def _infer(self, body: bytes, header_length: str | None, name: str, version: str) -> tuple[bytes, int | None]:
        # an unknown model is a 404 whatever the body, in Triton's words (its HTTP clients test them)
        if name and not self.dataplane.catalog.versions(name):
            raise NotFound(f"Request for unknown model: {name!r} is not found in the repository")
        self.dataplane.manifest(name, version, "model_")
        req = conv.request_from_rest(body, header_length, name, version)
        resp = self.dataplane.infer(req, deadline=deadline_from(_timeout_s(req.parameters)))
        return conv.response_to_rest(resp, req)

    async def _body(self, request: Request) -> bytes:
        limit = self.max_body_bytes
        length = request.headers.get("content-length", "")
        if length.isdigit() and int(length) > limit:
            raise _HttpError(413, f"request body of {int(length)} bytes is over the gateway's limit of {limit}",
                             Code.RESOURCE_EXHAUSTED)
        chunks, n = [], 0
        async for chunk in request.stream():
            n += len(chunk)
            if n > limit:
                raise _HttpError(413, f"request body is over the gateway's limit of {limit} bytes",
                                 Code.RESOURCE_EXHAUSTED)
            chunks.append(chunk)
        body = b"".join(chunks)
        encoding = request.headers.get("content-encoding", "identity").strip().lower()
        if encoding in ("", "identity"):
            return body
        if encoding not in _DECOMPRESS:
            raise _HttpError(415, f"Content-Encoding {encoding!r} is not supported; use gzip, deflate or none")
        d = zlib.decompressobj(_DECOMPRESS[encoding])
        try:
            out = d.decompress(body, limit + 1)
        except zlib.error as e:
            raise InvalidArgument(f"request body: not valid {encoding} data ({e})") from None
        if len(out) > limit or d.unconsumed_tail:
            raise _HttpError(413, f"decompressed request body is over the gateway's limit of {limit} bytes",
                             Code.RESOURCE_EXHAUSTED)
        return out


def _model(request: Request) -> tuple[str, str]:
    p = request.path_params
    return p["model"], p.get("version", "")


def _metadata(request: Request) -> list[tuple[str, str]]:
    """HTTP headers as gRPC metadata (lower-case names): what the admin check reads on both doors."""
    return [(k.lower(), v) for k, v in request.headers.items()]


def _timeout_s(parameters: dict[str, Any]) -> float | None:
    """Triton's request parameter ``timeout`` (microseconds), as tritonclient.http sends it."""
    value = parameters.get("timeout")
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise InvalidArgument(f"parameters.timeout: {value!r} is not a number of microseconds")
    return value / 1e6 if value else None


def install(gateway: Any) -> HttpServer | None:
    """Serve KServe v2 REST on ``gateway.config.http_listen`` (``None`` or "off": not at all),
    started and stopped with the gateway, over the gateway's one data plane."""
    from hyperinfer.gateway.assembly import dataplane_for, model_control_for

    listen = getattr(gateway.config, "http_listen", None)
    if not listen or listen == "off":
        return None
    door = RestFrontDoor(dataplane_for(gateway), gateway.config.max_message_bytes, model_control_for(gateway),
                         max_concurrent=getattr(gateway.config, "max_concurrent_rpcs", None) or 256)
    cert, key = tls_files(gateway.config)
    server = HttpServer(door.app, listen, what="HTTP/REST", flag="--http-listen", ssl_certfile=cert, ssl_keyfile=key)
    gateway.rest = server
    gateway.add_start_hook(server.start)
    gateway.add_shutdown_hook(server.stop)
    return server


def tls_files(config: Any) -> tuple[str | None, str | None]:
    """The gateway's TLS certificate and key, if it has them (the gRPC port's, reused for HTTPS)."""
    cert, key = getattr(config, "tls_cert", None), getattr(config, "tls_key", None)
    return (str(cert), str(key)) if cert and key else (None, None)
