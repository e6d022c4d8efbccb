"""Domain errors. Each carries the gRPC status it maps to; one guard maps them.

This module imports no gRPC: codes are the canonical status code numbers
(google.rpc.Code), which the guard turns into ``grpc.StatusCode``.
"""

from __future__ import annotations

from enum import IntEnum


class Code(IntEnum):
    """Canonical status codes (google.rpc.Code) used by pairline."""

    INVALID_ARGUMENT = 3
    DEADLINE_EXCEEDED = 4
    NOT_FOUND = 5
    ALREADY_EXISTS = 6
    PERMISSION_DENIED = 7
    RESOURCE_EXHAUSTED = 8
    FAILED_PRECONDITION = 9
    UNIMPLEMENTED = 12
    UNAVAILABLE = 14
    UNAUTHENTICATED = 16


class PairlineError(Exception):
    """A failure the caller can act on; never reported as INTERNAL."""

    code: Code = Code.FAILED_PRECONDITION

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.field = field


class InvalidArgument(PairlineError):
    """A request field is missing, malformed or out of range. ``field`` names it."""

    code = Code.INVALID_ARGUMENT

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}", field=field)


class DeadlineExceeded(PairlineError):
    code = Code.DEADLINE_EXCEEDED


class NotFound(PairlineError):
    code = Code.NOT_FOUND


class AlreadyExists(PairlineError):
    code = Code.ALREADY_EXISTS


class FailedPrecondition(PairlineError):
    code = Code.FAILED_PRECONDITION


class ResourceExhausted(PairlineError):
    code = Code.RESOURCE_EXHAUSTED


class Unauthenticated(PairlineError):
    code = Code.UNAUTHENTICATED


class PermissionDenied(PairlineError):
    code = Code.PERMISSION_DENIED


class Unimplemented(PairlineError):
    code = Code.UNIMPLEMENTED


class Unavailable(PairlineError):
    code = Code.UNAVAILABLE
