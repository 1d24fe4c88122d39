"""Transport-neutral errors.

Logic raises :class:`HyperinferError` with a :class:`Code`; the gRPC layer maps
the code to a status in exactly one place (an interceptor), and the CLI turns it
into ``Error: ...`` on stderr with a non-zero exit code in exactly one place.
"""

from __future__ import annotations

import enum


class Code(enum.Enum):
    INVALID_ARGUMENT = "INVALID_ARGUMENT"
    NOT_FOUND = "NOT_FOUND"
    ALREADY_EXISTS = "ALREADY_EXISTS"
    PERMISSION_DENIED = "PERMISSION_DENIED"
    UNAUTHENTICATED = "UNAUTHENTICATED"
    RESOURCE_EXHAUSTED = "RESOURCE_EXHAUSTED"
    FAILED_PRECONDITION = "FAILED_PRECONDITION"
    UNAVAILABLE = "UNAVAILABLE"
    DEADLINE_EXCEEDED = "DEADLINE_EXCEEDED"
    DATA_LOSS = "DATA_LOSS"
    UNIMPLEMENTED = "UNIMPLEMENTED"
    INTERNAL = "INTERNAL"


class HyperinferError(Exception):
    """An error meant for the user: its message is shown as is."""

    code: Code = Code.INTERNAL

    def __init__(self, message: str, code: Code | None = None):
        super().__init__(message)
        if code is not None:
            self.code = code

    @property
    def message(self) -> str:
        return str(self)


class InvalidArgument(HyperinferError):
    code = Code.INVALID_ARGUMENT


class NotFound(HyperinferError):
    code = Code.NOT_FOUND


class AlreadyExists(HyperinferError):
    code = Code.ALREADY_EXISTS


class PermissionDenied(HyperinferError):
    code = Code.PERMISSION_DENIED


class Unauthenticated(HyperinferError):
    code = Code.UNAUTHENTICATED


class ResourceExhausted(HyperinferError):
    code = Code.RESOURCE_EXHAUSTED


class FailedPrecondition(HyperinferError):
    code = Code.FAILED_PRECONDITION


class Unavailable(HyperinferError):
    code = Code.UNAVAILABLE


class Unimplemented(HyperinferError):
    """A standard RPC or feature hyperinfer does not offer (e.g. Triton's shared memory)."""

    code = Code.UNIMPLEMENTED


class DataLoss(HyperinferError):
    """Stored or downloaded bytes do not match their recorded digest."""

    code = Code.DATA_LOSS
