"""One guard on every pairline method: authenticate the caller, bind its tenant,
map errors.

Health and reflection need no key. Every other call needs
``authorization: Bearer <api key>``; the key's SHA-256 is looked up in the
configuration and the tenant is bound to a context variable for the handler.
A :class:`PairlineError` becomes its status (with ``google.rpc.BadRequest``
details naming the field for INVALID_ARGUMENT); anything else is logged and
answered INTERNAL without internals.
"""

from __future__ import annotations

import contextvars
import hashlib
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
import structlog
from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from pairline.errors import PairlineError, Unauthenticated

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


def _bearer(metadata: Any) -> str | None:
    for key, value in metadata or ():
        if key == "authorization":
            if isinstance(value, bytes):
                return None
            scheme, _, token = value.partition(" ")
            return token.strip() if scheme.lower() == "bearer" else None
    return None


class Guard:
    """Authentication, tenant binding and error mapping for every pairline method.

    Applied once, when the servicers are registered (see :class:`GuardedServer`),
    rather than as a ``grpc.aio.ServerInterceptor``: an interceptor runs a
    coroutine per call to choose the handler, which measured ~60 us of the
    ~130 us a RouteContact adds over a bare Health/Check here. Health and
    reflection are registered unguarded.
    """

    def __init__(self, key_hashes: Callable[[], dict[str, str]]) -> None:
        """``key_hashes()`` maps hex SHA-256 of each API key to its tenant; it is
        called per request so keys can change without a restart."""
        self._key_hashes = key_hashes

    def authenticate(self, metadata: Any) -> str:
        token = _bearer(metadata)
        if not token:
            raise Unauthenticated("missing 'authorization: Bearer <api key>' metadata")
        tenant = self._key_hashes().get(hashlib.sha256(token.encode()).hexdigest())
        if tenant is None:
            raise Unauthenticated("unknown API key")
        return tenant

    def wrap(self, handler: grpc.RpcMethodHandler, method: str) -> grpc.RpcMethodHandler:
        auth = self.authenticate

        async def fail(context: grpc.aio.ServicerContext[Any, Any], exc: BaseException) -> None:
            if isinstance(exc, PairlineError):
                log.info("rpc_rejected", method=method, code=exc.code.name, error=exc.message)
                await context.abort_with_status(rpc_status.to_status(to_rpc_status(exc)))
            log.error("rpc_failed", method=method, exc_info=exc)
            await context.abort_with_status(rpc_status.to_status(internal_status()))

        def bind(context: grpc.aio.ServicerContext[Any, Any]) -> None:
            _tenant.set(auth(context.invocation_metadata()))

        def unary_response(inner: Any) -> Any:
            async def call(request: Any, context: Any) -> Any:
                try:
                    bind(context)
                    return await inner(request, context)
                except Exception as exc:
                    if isinstance(exc, grpc.aio.AbortError):
                        raise
                    await fail(context, exc)

            return call

        def stream_response(inner: Any) -> Any:
            async def call(request: Any, context: Any) -> AsyncIterator[Any]:
                try:
                    bind(context)
                    async for reply in inner(request, context):
                        yield reply
                except Exception as exc:
                    if isinstance(exc, grpc.aio.AbortError):
                        raise
                    await fail(context, exc)

            return call

        kinds = (
            ("unary_unary", grpc.unary_unary_rpc_method_handler, unary_response),
            ("stream_unary", grpc.stream_unary_rpc_method_handler, unary_response),
            ("unary_stream", grpc.unary_stream_rpc_method_handler, stream_response),
            ("stream_stream", grpc.stream_stream_rpc_method_handler, stream_response),
        )
        for attr, make, wrap in kinds:
            inner = getattr(handler, attr)
            if inner is not None:
                return make(  # type: ignore[no-any-return]
                    wrap(inner),
                    request_deserializer=handler.request_deserializer,
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
