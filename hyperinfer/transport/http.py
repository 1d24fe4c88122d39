"""HTTP servers next to the gRPC ports: uvicorn on a thread of the process, on a socket bound
at start (so a busy port fails at once with one clear line), with the process's TLS
certificate when it has one. Used by the gateway's REST front door and by the gateway's
and nodes' Prometheus endpoints. No model logic here."""

from __future__ import annotations

import re
import socket
import threading
import time
from typing import Any, Callable

from hyperinfer.errors import FailedPrecondition, InvalidArgument, Unavailable


def parse_listen(listen: str, flag: str = "--http-listen") -> tuple[str, int]:
    host, sep, port = listen.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise InvalidArgument(f"{flag} {listen!r}: expected HOST:PORT (port 0 picks a free one) or off")
    return host, int(port)


def bind_socket(listen: str, what: str, flag: str) -> socket.socket:
    """A listening TCP socket, bound now so that a busy port fails at start with one clear line."""
    host, port = parse_listen(listen, flag)
    try:
        family, kind, proto, _, addr = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                                          proto=socket.IPPROTO_TCP)[0]
        # proto IPPROTO_TCP, not 0: asyncio sets TCP_NODELAY only on such sockets, and without it
        # a response's header and body writes wait on the client's delayed ACK (~40 ms each request)
        sock = socket.socket(family, kind, proto)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(addr)
        sock.listen(1024)
    except OSError as e:
        raise Unavailable(f"cannot listen on {listen} for {what}: {e.strerror or e}; "
                          f"pass {flag} HOST:PORT (or off)") from None
    sock.setblocking(False)
    return sock


class HttpServer:
    """uvicorn serving an ASGI app on a thread, on a socket bound at :meth:`start`."""

    def __init__(self, app: Any, listen: str, *, what: str = "HTTP", flag: str = "--http-listen",
                 ssl_certfile: str | None = None, ssl_keyfile: str | None = None):
        self.app, self.listen, self.what, self.flag = app, listen, what, flag
        self.ssl_certfile, self.ssl_keyfile = ssl_certfile, ssl_keyfile
        self.port: int | None = None
        self._server: Any = None
        self._thread: threading.Thread | None = None

    @property
    def scheme(self) -> str:
        return "https" if self.ssl_certfile else "http"

    @property
    def address(self) -> str:
        host = self.listen.rpartition(":")[0]
        return f"{host}:{self.port}" if self.port is not None else self.listen

    def start(self, timeout: float = 30.0) -> int:
        import uvicorn

        sock = bind_socket(self.listen, self.what, self.flag)
        self.port = sock.getsockname()[1]
        config = uvicorn.Config(self.app, lifespan="off", access_log=False, log_level="warning",
                                log_config=None, timeout_graceful_shutdown=5,
                                ssl_certfile=self.ssl_certfile, ssl_keyfile=self.ssl_keyfile)
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": [sock]},
                                        name=f"{self.what}-server", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                sock.close()
                raise FailedPrecondition(f"the {self.what} server on {self.address} did not start")
            time.sleep(0.01)
        return self.port

    def stop(self, timeout: float = 10.0) -> None:
        if self._server is None:
            return
        self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout)
        self._server = None



def metrics_app(render: Callable[[], bytes]) -> Any:
    """A Starlette app: ``GET /metrics`` -> Prometheus text; anything else -> 404 JSON error."""
    from starlette.applications import Starlette
    from starlette.concurrency import run_in_threadpool
    from starlette.exceptions import HTTPException
    from starlette.responses import JSONResponse, Response
    from starlette.routing import Route
    from prometheus_client.exposition import CONTENT_TYPE_LATEST

    async def metrics(request):
        return Response(await run_in_threadpool(render), media_type=CONTENT_TYPE_LATEST)

    async def not_found(request, exc: HTTPException):
        msg = (f"no such endpoint: {request.method} {request.url.path}; metrics are at GET /metrics"
               if exc.status_code in (404, 405) else str(exc.detail))
        return JSONResponse({"error": msg}, status_code=exc.status_code)

    return Starlette(routes=[Route("/metrics", metrics, methods=["GET"])],
                     exception_handlers={HTTPException: not_found})


_NV_TOTAL = re.compile(rb"^# (HELP|TYPE) (nv_\w+?)_total ", re.M)


def prometheus_text(registry: Any) -> bytes:
    """Prometheus text of ``registry``; Triton's ``nv_*`` counters keep their names without the
    ``_total`` that prometheus_client adds to their HELP/TYPE lines (Triton writes none)."""
    from prometheus_client.exposition import generate_latest

    return _NV_TOTAL.sub(rb"# \1 \2 ", generate_latest(registry))
