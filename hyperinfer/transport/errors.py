"""Map :class:`HyperinferError` to gRPC status codes in one place (a server interceptor).

Unknown exceptions become INTERNAL "internal server error" to the client and a
logged traceback on the server: they are never leaked and never kill the process.
"""

from __future__ import annotations

import logging

import grpc

from hyperinfer.errors import Code, HyperinferError

log = logging.getLogger("hyperinfer.grpc")

STATUS = {code: getattr(grpc.StatusCode, code.value) for code in Code}
FROM_STATUS = {v: k for k, v in STATUS.items()}


def status_of(err: HyperinferError) -> grpc.StatusCode:
    return STATUS[err.code]


def error_from_rpc(e: grpc.RpcError) -> HyperinferError:
    """Turn a client-side RpcError back into a HyperinferError (for CLIs and the gateway)."""
    code = e.code() if hasattr(e, "code") else None
    details = e.details() if hasattr(e, "details") else str(e)
    return HyperinferError(details or str(code), FROM_STATUS.get(code, Code.UNAVAILABLE))


class _Malformed:
    """What a request that does not parse deserializes to; the handler answers INVALID_ARGUMENT
    (gRPC itself would say INTERNAL, as if the server were broken)."""

    def __init__(self, error: Exception):
        self.error = error


def _lenient(deserializer):
    if deserializer is None:
        return None

    def parse(data: bytes):
        try:
            return deserializer(data)
        except Exception as e:  # noqa: BLE001 - protobuf DecodeError and friends
            return _Malformed(e)

    return parse


def _malformed(request, method: str, context) -> bool:
    if isinstance(request, _Malformed):
        log.info("%s -> INVALID_ARGUMENT: undecodable request (%s)", method, request.error)
        context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                      f"request is not a valid {method.rsplit('/', 1)[-1]} protobuf message")
        return True
    return False


def _as_is(serializer):
    """A servicer may answer with its message already serialized (transport/wire.py): bytes go out
    as they are."""
    if serializer is None:
        return None
    return lambda response: response if type(response) is bytes else serializer(response)


def _wrap_unary(behavior, method: str):
    def handler(request, context):
        if _malformed(request, method, context):
            return None
        try:
            return behavior(request, context)
        except HyperinferError as e:
            log.info("%s -> %s: %s", method, e.code.value, e)
            context.abort(status_of(e), str(e))
        except Exception:  # noqa: BLE001 - the one place unknown errors are caught
            if context.code() is not None and context.code() != grpc.StatusCode.OK:
                raise  # context.abort() already set a status
            log.exception("%s failed", method)
            context.abort(grpc.StatusCode.INTERNAL, "internal server error")

    return handler


def _wrap_stream(behavior, method: str):
    def handler(request, context):
        if _malformed(request, method, context):
            return
        try:
            yield from behavior(request, context)
        except HyperinferError as e:
            log.info("%s -> %s: %s", method, e.code.value, e)
            context.abort(status_of(e), str(e))
        except Exception:  # noqa: BLE001
            if context.code() is not None and context.code() != grpc.StatusCode.OK:
                raise
            log.exception("%s failed", method)
            context.abort(grpc.StatusCode.INTERNAL, "internal server error")

    return handler


class ErrorInterceptor(grpc.ServerInterceptor):
    def intercept_service(self, continuation, handler_call_details):
        handler = continuation(handler_call_details)
        if handler is None:
            return None
        method = handler_call_details.method
        if handler.unary_unary:
            return grpc.unary_unary_rpc_method_handler(
                _wrap_unary(handler.unary_unary, method),
                request_deserializer=_lenient(handler.request_deserializer),
                response_serializer=_as_is(handler.response_serializer),
            )
        if handler.unary_stream:
            return grpc.unary_stream_rpc_method_handler(
                _wrap_stream(handler.unary_stream, method),
                request_deserializer=_lenient(handler.request_deserializer),
                response_serializer=handler.response_serializer,
            )
        if handler.stream_stream:  # servicers answer per message (ModelStreamInfer); this catches the rest
            return grpc.stream_stream_rpc_method_handler(
                _wrap_stream(handler.stream_stream, method),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        return handler
