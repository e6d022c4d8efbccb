"""One guard on every pairline method: authenticate the caller, check its role,
apply the limits, bind its tenant and deadline, map errors.

Health and reflection need no key. Every other call needs
``authorization: Bearer <api key>``; the key's SHA-256 is looked up in the
key ring (:mod:`pairline.security`), its role checked against the method, and
the tenant is bound to a context variable for the handler.
A :class:`PairlineError` becomes its status (with ``google.rpc.BadRequest``
details naming the field for INVALID_ARGUMENT); anything else is logged and
answered INTERNAL without internals.
"""

from __future__ import annotations

import asyncio
import contextvars
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, NoReturn

import grpc
import structlog
from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status
from redis.exceptions import RedisError

from pairline.errors import (
    Code,
    DeadlineExceeded,
    InvalidArgument,
    PairlineError,
    PermissionDenied,
    Unauthenticated,
)
from pairline.limits import Limits, bind_deadline, deadline_passed
from pairline.logs import bind_call, request_id_or_new
from pairline.security import ApiKey, KeyRing, role_for

log = structlog.get_logger()

_tenant: contextvars.ContextVar[str] = contextvars.ContextVar("pairline_tenant")


def current_tenant() -> str:
    """The tenant of the call being handled (set by :class:`Guard`)."""
    return _tenant.get()


def to_rpc_status(exc: PairlineError) -> status_pb2.Status:
    status = status_pb2.Status(code=int(exc.code), message=exc.message)
    if exc.field is not None:
        detail = any_pb2.Any()
        detail.Pack(
            error_details_pb2.BadRequest(
                field_violations=[
                    error_details_pb2.BadRequest.FieldViolation(
                        field=exc.field, description=exc.message
                    )
                ]
            )
        )
        status.details.append(detail)
    return status


def internal_status() -> status_pb2.Status:
    return status_pb2.Status(code=code_pb2.INTERNAL, message="internal error (logged)")


_GRPC_CODES = {c.value[0]: c for c in grpc.StatusCode}
# Refusals a flood produces are logged at most once per second per method and
# code (with the number left out), so that logging does not amplify the flood.
_FLOOD_CODES = frozenset({Code.RESOURCE_EXHAUSTED, Code.UNAUTHENTICATED})
_last_logged: dict[tuple[str, int], list[float]] = {}


def _sampled(method: str, code: int) -> int:
    """-1 to skip this log line; else how many were skipped since the last one."""
    now = time.monotonic()
    seen = _last_logged.setdefault((method, code), [-1.0, 0.0])
    if now - seen[0] < 1.0:
        seen[1] += 1
        return -1
    skipped = int(seen[1])
    seen[0], seen[1] = now, 0.0
    return skipped


def _bearer(value: Any) -> str | None:
    if isinstance(value, bytes):
        return None
    scheme, _, token = value.partition(" ")
    return token.strip() if scheme.lower() == "bearer" else None


def _caller(metadata: Any) -> tuple[str | None, object]:
    """(bearer token, x-request-id) from the call's metadata, in one pass."""
    token: str | None = None
    request_id: object = None
    seen_auth = False
    for key, value in metadata or ():
        if key == "authorization" and not seen_auth:
            seen_auth = True
            token = _bearer(value)
        elif key == "x-request-id" and request_id is None:
            request_id = value
    return token, request_id


class Malformed:
    """Stands for a request message that did not parse (see :meth:`Guard.wrap`)."""

    __slots__ = ("error",)

    def __init__(self, error: str) -> None:
        self.error = error


def _message_name(deserializer: Any, method: str) -> str:
    descriptor = getattr(getattr(deserializer, "__self__", None), "DESCRIPTOR", None)
    name = getattr(descriptor, "full_name", None)
    return str(name) if name else f"{method} request"


def _tolerant(deserializer: Callable[[bytes], Any] | None, name: str) -> Any:
    """A deserializer that returns :class:`Malformed` instead of raising: grpc
    would answer a request that does not parse with INTERNAL ("Exception
    deserializing request!"); the guard answers INVALID_ARGUMENT instead."""
    if deserializer is None:
        return None

    def parse(data: bytes) -> Any:
        try:
            return deserializer(data)
        except Exception:
            return Malformed(f"not a valid {name} message")

    return parse


class MalformedMessage(InvalidArgument):
    """A request message that did not parse; ``reason`` says which message type was
    expected. A streaming handler may name the message's place in the stream."""

    def __init__(self, reason: str) -> None:
        super().__init__("request", reason)
        self.reason = reason


def _refuse_malformed(request: Any) -> None:
    if type(request) is Malformed:
        raise MalformedMessage(request.error)


async def _checked(requests: AsyncIterator[Any]) -> AsyncIterator[Any]:
    async for request in requests:
        _refuse_malformed(request)
        yield request


async def _withhold(context: grpc.aio.ServicerContext[Any, Any]) -> NoReturn:
    """End a call without its answer, its caller being gone: CANCELLED or
    DEADLINE_EXCEEDED."""
    if context.cancelled():
        code, details = grpc.StatusCode.CANCELLED, "cancelled; what the call reserved was undone"
    else:
        code = grpc.StatusCode.DEADLINE_EXCEEDED
        details = "the deadline passed before the answer was ready; what it reserved was undone"
    try:
        await context.abort(code, details)
    except grpc.aio.AbortError:
        raise
    except Exception:
        # gRPC has ended the call already (no status can be sent any more): end
        # the handler as a cancelled call, which gRPC expects and does not log.
        raise asyncio.CancelledError from None
    raise AssertionError("abort returned")  # (abort always raises)


class Guard:
    """Authentication, roles, limits, deadlines and error mapping for every
    pairline method.

    Applied once, when the servicers are registered (see :class:`GuardedServer`),
    rather than as a ``grpc.aio.ServerInterceptor``: an interceptor runs a
    coroutine per call to choose the handler, which measured ~60 us of the
    ~130 us a RouteContact adds over a bare Health/Check here. Health and
    reflection are registered unguarded.

    Per call, in order: the call's ``rpc`` and request id bound for its log
    events (``x-request-id`` metadata, else a new id), the key
    (UNAUTHENTICATED), its role for the method (PERMISSION_DENIED), the
    server's and tenant's concurrency and the tenant's rate
    (RESOURCE_EXHAUSTED), the caller's deadline (DEADLINE_EXCEEDED when it has
    already passed).

    ``abandon(tenant, response)`` is called, in the call's context, for a
    response whose caller is gone (cancelled, or its deadline passed) by the time
    it is ready, or for a stream reply whose sending failed, so that what the call
    made can be undone. It returns None when there is nothing of the call's own to
    undo; otherwise an awaitable that finishes the undo, and then the response is
    not sent (DEADLINE_EXCEEDED or CANCELLED instead): a caller that gets an
    answer keeps what the answer reserved.
    """

    def __init__(
        self,
        keys: KeyRing,
        limits: Limits | None = None,
        abandon: Callable[[str, Any], Awaitable[None] | None] | None = None,
    ) -> None:
        """``keys`` is consulted per request, so keys change without a restart."""
        self.keys = keys
        self.limits = limits or Limits(1 << 30, ())
        self._abandon = abandon

    def authenticate(self, metadata: Any) -> ApiKey:
        return self._key(_caller(metadata)[0])

    def _key(self, token: str | None) -> ApiKey:
        if not token:
            raise Unauthenticated("missing 'authorization: Bearer <api key>' metadata")
        key = self.keys.lookup(token)
        if key is None:
            raise Unauthenticated("unknown API key")
        return key

    def wrap(self, handler: grpc.RpcMethodHandler, method: str) -> grpc.RpcMethodHandler:
        auth = self._key
        limits = self.limits
        abandon = self._abandon
        role = role_for(method)
        short = method.rsplit("/", 1)[-1]

        async def fail(context: grpc.aio.ServicerContext[Any, Any], exc: BaseException) -> None:
            if isinstance(exc, PairlineError):
                n = _sampled(method, exc.code) if exc.code in _FLOOD_CODES else 0
                if n >= 0:
                    log.info(
                        "rpc_rejected",
                        method=method,
                        code=exc.code.name,
                        error=exc.message,
                        **({"suppressed": n} if n > 0 else {}),
                    )
                if exc.field is None:  # no details to attach: the cheaper path
                    await context.abort(_GRPC_CODES[exc.code], exc.message)
                await context.abort_with_status(rpc_status.to_status(to_rpc_status(exc)))
            if isinstance(exc, (RedisError, OSError)):
                # The store is out of reach (a Redis outage): the caller retries.
                log.warning("rpc_store_unreachable", method=method, error=repr(exc))
                await context.abort(
                    grpc.StatusCode.UNAVAILABLE, "the store is out of reach right now: retry"
                )
            log.error("rpc_failed", method=method, exc_info=exc)
            await context.abort_with_status(rpc_status.to_status(internal_status()))

        def admit(context: grpc.aio.ServicerContext[Any, Any]) -> str:
            """Check the caller; returns its tenant, entered into the limits."""
            token, request_id = _caller(context.invocation_metadata())
            bind_call(short, request_id_or_new(request_id))
            key = auth(token)
            if not key.allows(role):
                raise PermissionDenied(
                    f"key {key.label} has roles {sorted(key.roles)}; {short} needs {role!r}"
                )
            tenant = key.tenant
            limits.enter(tenant)
            try:
                limits.take(tenant)
                remaining = context.time_remaining()
                if remaining is not None and remaining <= 0:
                    raise DeadlineExceeded("the deadline passed before the call started")
            except BaseException:
                limits.leave(tenant)
                raise
            _tenant.set(tenant)
            bind_deadline(remaining)
            return tenant

        def unary_response(inner: Any, streaming_in: bool) -> Any:
            async def call(request: Any, context: Any) -> Any:
                tenant = None
                try:
                    tenant = admit(context)
                    if streaming_in:
                        request = _checked(request)
                    else:
                        _refuse_malformed(request)
                    response = await inner(request, context)
                    if abandon is not None and (deadline_passed() or context.cancelled()):
                        undo = abandon(tenant, response)
                        if undo is not None:  # undone: the response must not be sent
                            await undo
                            await _withhold(context)
                    return response
                except Exception as exc:
                    if isinstance(exc, grpc.aio.AbortError):
                        raise
                    await fail(context, exc)
                finally:
                    if tenant is not None:
                        limits.leave(tenant)

            return call

        def stream_response(inner: Any, streaming_in: bool) -> Any:
            async def call(request: Any, context: Any) -> AsyncIterator[Any]:
                tenant = None
                try:
                    tenant = admit(context)
                    if streaming_in:
                        request = _checked(request)
                    else:
                        _refuse_malformed(request)
                    noted: contextvars.Context | None = None
                    async for reply in inner(request, context):
                        if abandon is not None:
                            if deadline_passed() or context.cancelled():
                                undo = abandon(tenant, reply)
                                if undo is not None:  # undone: the reply must not be sent
                                    await undo
                                    await _withhold(context)
                            # What the servicer noted for this reply (the generator
                            # may be closed from another task's context).
                            noted = contextvars.copy_context()
                        try:
                            yield reply
                        except BaseException:
                            # Closed while this reply was on its way (its sending
                            # failed, or the call ended meanwhile): taken as lost.
                            if abandon is not None and noted is not None:
                                undo = noted.run(abandon, tenant, reply)
                                if undo is not None:
                                    await undo
                            raise
                except Exception as exc:
                    if isinstance(exc, grpc.aio.AbortError):
                        raise
                    await fail(context, exc)
                finally:
                    if tenant is not None:
                        limits.leave(tenant)

            return call

        kinds = (
            ("unary_unary", grpc.unary_unary_rpc_method_handler, unary_response, False),
            ("stream_unary", grpc.stream_unary_rpc_method_handler, unary_response, True),
            ("unary_stream", grpc.unary_stream_rpc_method_handler, stream_response, False),
            ("stream_stream", grpc.stream_stream_rpc_method_handler, stream_response, True),
        )
        for attr, make, wrap, streaming_in in kinds:
            inner = getattr(handler, attr)
            if inner is not None:
                return make(  # type: ignore[no-any-return]
                    wrap(inner, streaming_in),
                    request_deserializer=_tolerant(
                        handler.request_deserializer,
                        _message_name(handler.request_deserializer, short),
                    ),
                    response_serializer=handler.response_serializer,
                )
        return handler


class GuardedServer:
    """Stands in for the server in the generated ``add_*Servicer_to_server``
    functions and registers every method handler wrapped by ``guard``."""

    def __init__(self, server: grpc.aio.Server, guard: Guard) -> None:
        self._server = server
        self._guard = guard

    def add_generic_rpc_handlers(self, handlers: Any) -> None:
        """Ignored: the same handlers arrive, guarded, through the call below."""

    def add_registered_method_handlers(
        self, service: str, handlers: dict[str, grpc.RpcMethodHandler]
    ) -> None:
        guarded = {n: self._guard.wrap(h, f"/{service}/{n}") for n, h in handlers.items()}
        self._server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler(service, guarded),)
        )
        self._server.add_registered_method_handlers(service, guarded)
