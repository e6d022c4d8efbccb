"""``pairline.client``: the Python client for switches and data pipelines.

Typed wrappers for every RPC of the v1 contract, asyncio (:class:`AsyncClient`)
and blocking (:class:`Client`), with what a production caller needs and would
otherwise get wrong:

* **API key** on every call (``authorization: Bearer <key>``) and **TLS**
  (``tls=True``, optional private CA and client certificate for mTLS).
* **Default deadlines** per kind of call (:class:`Deadlines`); every method takes
  ``timeout=`` to override one call. Decisions get a short one: a switch cannot
  hold a caller while pairline thinks.
* **Retries for the idempotent calls only**, done by gRPC itself through the
  channel's service config (:class:`RetryPolicy`, :data:`IDEMPOTENT`): a retry
  happens on ``UNAVAILABLE`` (the request never reached a handler that could act,
  or the server asked for a retry), within the call's one deadline, with
  exponential backoff. Calls that change state in a way a repeat would change
  again (``AgentReady``, ``ConfirmDecision``...) are never retried by the client:
  an error reaches the caller, who knows what it attempted.
* **Fallback**: with ``fallback=hook``, a ``RouteContact`` or ``AgentReady`` that
  pairline does not answer in time (``DEADLINE_EXCEEDED``, or ``UNAVAILABLE``
  after the retries) calls ``hook(request, code)``; the switch's own baseline
  decision it returns comes back as ``Routed(decision, fallback=True, code=...)``.
  The caller is never left unrouted. See docs/integration.md for what the switch
  should tell pairline afterwards.

Idempotency, call by call (why each is or is not in :data:`IDEMPOTENT`):

- ``RouteContact``: retried. Idempotent on ``contact_id``: a repeat returns the
  decision already made (or tries a waiting contact again).
- ``GetAgentState``, ``GetQueueStats``, ``GetModelInfo``, ``GetBenchmarkReport``,
  ``GetDeletion``, ``ListDeletions``: retried (reads).
- ``ReportOutcome``: retried. A later report for the same name replaces the
  earlier one, so a repeat leaves the same state.
- ``AgentReady``: not retried. A repeat after a lost answer can reserve a second
  contact for the agent.
- ``SetAgentState``: not retried. Absolute, but a late repeat can undo a change
  made in between (e.g. a reservation's effect on presence).
- ``ConfirmDecision``, ``ReleaseDecision``, ``EndContact``: not retried. A repeat
  of a call that took effect fails (``NOT_FOUND``...) and hides the first answer.
- ``Upsert*``, ``UploadModel``, ``ActivateModel``: not retried (bulk; a repeated
  versioned write is reported stale).
- ``OptOut``, ``WithdrawOptOut``: retried. Repeating one leaves the same state
  (the answer says ``changed: false``); a privacy write that could not be made
  durable is answered ``UNAVAILABLE`` precisely so that it is retried.
- ``RequestDeletion``: retried. A repeat while the ticket is open returns that
  ticket; after it completed, a repeat opens a ticket that finds nothing left to
  delete: the same end state.
- ``ReadAudit``: retried (a read).
- Streams (``Connect``, ``ConnectBatch``, ``UpsertCustomerProfiles``,
  ``BulkOptOut``, ``ExportHistory``) are never retried by gRPC.
"""

# The generated stubs are untyped (grpc ships no annotations): each wrapper
# returns what its stub returns, typed by the wrapper's signature.
# mypy: disable-error-code="no-any-return, no-untyped-call"

from __future__ import annotations

import inspect
import json
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, TypeAlias

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from pairline._proto.pairline.v1 import common_pb2 as cpb
from pairline._proto.pairline.v1 import insights_pb2 as ipb
from pairline._proto.pairline.v1 import insights_pb2_grpc as ipb_grpc
from pairline._proto.pairline.v1 import privacy_pb2 as xpb
from pairline._proto.pairline.v1 import privacy_pb2_grpc as xpb_grpc
from pairline._proto.pairline.v1 import profiles_pb2 as ppb
from pairline._proto.pairline.v1 import profiles_pb2_grpc as ppb_grpc
from pairline._proto.pairline.v1 import router_pb2 as rpb
from pairline._proto.pairline.v1 import router_pb2_grpc as rpb_grpc

__all__ = [
    "FALLBACK_CODES",
    "IDEMPOTENT",
    "AsyncClient",
    "Client",
    "Deadlines",
    "FallbackHook",
    "RetryPolicy",
    "Routed",
    "channel_options",
    "cpb",
    "ipb",
    "ppb",
    "rpb",
    "service_config",
    "xpb",
]

ROUTER = "pairline.v1.Router"
PROFILES = "pairline.v1.Profiles"
PRIVACY = "pairline.v1.Privacy"
INSIGHTS = "pairline.v1.Insights"

# (service, method) pairs the client lets gRPC retry; see the module docstring.
IDEMPOTENT: frozenset[tuple[str, str]] = frozenset({
    (ROUTER, "RouteContact"),
    (ROUTER, "GetAgentState"),
    (ROUTER, "ReportOutcome"),
    (PROFILES, "GetModelInfo"),
    (INSIGHTS, "GetQueueStats"),
    (INSIGHTS, "GetBenchmarkReport"),
    (PRIVACY, "OptOut"),
    (PRIVACY, "WithdrawOptOut"),
    (PRIVACY, "RequestDeletion"),
    (PRIVACY, "GetDeletion"),
    (PRIVACY, "ListDeletions"),
    (PRIVACY, "ReadAudit"),
})

# A decision that fails with one of these goes to the fallback hook (if any).
FALLBACK_CODES = frozenset({grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.UNAVAILABLE})

DecisionRequest: TypeAlias = rpb.RouteContactRequest | rpb.AgentReadyRequest
# hook(request, code) -> the switch's own decision (a Decision, or an awaitable of
# one for AsyncClient). Raising from the hook propagates to the caller.
FallbackHook: TypeAlias = Callable[
    [DecisionRequest, grpc.StatusCode], "cpb.Decision | Awaitable[cpb.Decision]"
]


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """gRPC's retry policy for the idempotent calls (gRFC A6), as service config."""

    max_attempts: int = 4  # first try included; gRPC caps it at 5
    initial_backoff_s: float = 0.01
    max_backoff_s: float = 0.2
    backoff_multiplier: float = 2.0
    retryable_codes: tuple[str, ...] = ("UNAVAILABLE",)

    def __post_init__(self) -> None:
        if not 2 <= self.max_attempts <= 5:
            raise ValueError("max_attempts must be 2..5 (gRPC caps retries at 5 attempts)")
        if self.initial_backoff_s <= 0 or self.max_backoff_s <= 0 or self.backoff_multiplier <= 0:
            raise ValueError("backoffs and multiplier must be > 0")
        for code in self.retryable_codes:
            if code not in grpc.StatusCode.__members__:
                raise ValueError(f"unknown status code {code!r}")

    def as_json(self) -> dict[str, Any]:
        return {
            "maxAttempts": self.max_attempts,
            "initialBackoff": f"{self.initial_backoff_s}s",
            "maxBackoff": f"{self.max_backoff_s}s",
            "backoffMultiplier": self.backoff_multiplier,
            "retryableStatusCodes": list(self.retryable_codes),
        }


@dataclass(frozen=True, slots=True)
class Deadlines:
    """Default deadline of each kind of call, in seconds."""

    decision_s: float = 0.25  # RouteContact, AgentReady: the switch's routing budget
    call_s: float = 2.0  # every other unary call
    bulk_s: float = 120.0  # profile and model uploads, history export, benchmark report


def service_config(retry: RetryPolicy | None) -> str:
    """The ``grpc.service_config`` JSON: ``retry`` on the :data:`IDEMPOTENT` calls only."""
    configs: list[dict[str, Any]] = []
    if retry is not None:
        names = [{"service": s, "method": m} for s, m in sorted(IDEMPOTENT)]
        configs.append({"name": names, "retryPolicy": retry.as_json()})
    return json.dumps({"methodConfig": configs})


def channel_options(
    retry: RetryPolicy | None = RetryPolicy(), extra: Iterable[tuple[str, Any]] = ()
) -> list[tuple[str, Any]]:
    """Channel options of a pairline client (also for callers who build channels)."""
    return [
        ("grpc.service_config", service_config(retry)),
        ("grpc.enable_retries", 1 if retry is not None else 0),
        # Quick reconnection after a replica restarts.
        ("grpc.initial_reconnect_backoff_ms", 100),
        ("grpc.max_reconnect_backoff_ms", 2_000),
        ("grpc.keepalive_time_ms", 30_000),
        *extra,
    ]


@dataclass(frozen=True, slots=True)
class Routed:
    """A decision, and whether it came from the fallback hook rather than pairline."""

    decision: cpb.Decision
    fallback: bool = False
    code: grpc.StatusCode | None = None  # why the fallback was taken


@dataclass(slots=True)
class _Config:
    metadata: tuple[tuple[str, str], ...]
    deadlines: Deadlines
    fallback: FallbackHook | None
    fallback_codes: frozenset[grpc.StatusCode] = field(default=FALLBACK_CODES)


def _credentials(
    tls: bool, root_certificates: bytes | None, private_key: bytes | None,
    certificate_chain: bytes | None,
) -> grpc.ChannelCredentials | None:
    if not tls:
        if root_certificates or private_key or certificate_chain:
            raise ValueError("certificates given without tls=True")
        return None
    return grpc.ssl_channel_credentials(root_certificates, private_key, certificate_chain)


def _config(api_key: str, deadlines: Deadlines, fallback: FallbackHook | None,
            fallback_codes: Iterable[grpc.StatusCode]) -> _Config:
    if not api_key:
        raise ValueError("an API key is required")
    return _Config((("authorization", f"Bearer {api_key}"),), deadlines, fallback,
                   frozenset(fallback_codes))


class AsyncClient:
    """pairline over ``grpc.aio``. Use as ``async with AsyncClient(...) as pl:``.

    ``target`` is ``host:port`` (or any gRPC target, e.g. ``dns:///pairline:50051``
    with ``options=[("grpc.lb_policy_name", "round_robin")]`` to spread calls over
    replicas).
    """

    def __init__(
        self,
        target: str,
        api_key: str,
        *,
        tls: bool = False,
        root_certificates: bytes | None = None,
        private_key: bytes | None = None,
        certificate_chain: bytes | None = None,
        deadlines: Deadlines = Deadlines(),
        retry: RetryPolicy | None = RetryPolicy(),
        fallback: FallbackHook | None = None,
        fallback_codes: Iterable[grpc.StatusCode] = FALLBACK_CODES,
        options: Iterable[tuple[str, Any]] = (),
    ) -> None:
        self._c = _config(api_key, deadlines, fallback, fallback_codes)
        creds = _credentials(tls, root_certificates, private_key, certificate_chain)
        opts = channel_options(retry, options)
        self.channel = (
            grpc.aio.secure_channel(target, creds, options=opts)
            if creds is not None
            else grpc.aio.insecure_channel(target, options=opts)
        )
        self.router = rpb_grpc.RouterStub(self.channel)
        self.profiles = ppb_grpc.ProfilesStub(self.channel)
        self.privacy = xpb_grpc.PrivacyStub(self.channel)
        self.insights = ipb_grpc.InsightsStub(self.channel)
        self._health = health_pb2_grpc.HealthStub(self.channel)

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        await self.channel.close()

    # ------------------------------------------------------------- internals
    async def _unary(self, method: Any, request: Any, timeout: float | None, default: float) -> Any:
        return await method(
            request, metadata=self._c.metadata, timeout=default if timeout is None else timeout
        )

    async def _decide(self, method: Any, request: DecisionRequest, timeout: float | None) -> Routed:
        try:
            return Routed(await self._unary(method, request, timeout, self._c.deadlines.decision_s))
        except grpc.aio.AioRpcError as err:
            code = err.code()
            if self._c.fallback is None or code not in self._c.fallback_codes:
                raise
            out = self._c.fallback(request, code)
            decision = await out if inspect.isawaitable(out) else out
            return Routed(decision, fallback=True, code=code)

    # --------------------------------------------------------------- Router
    async def route_contact(
        self, request: rpb.RouteContactRequest, *, timeout: float | None = None
    ) -> Routed:
        """A contact arrives: a reserved agent, or MODE_QUEUED. Retried; falls back."""
        return await self._decide(self.router.RouteContact, request, timeout)

    async def agent_ready(
        self, request: rpb.AgentReadyRequest, *, timeout: float | None = None
    ) -> Routed:
        """An agent is free: a reserved waiting contact, or MODE_QUEUED. Falls back."""
        return await self._decide(self.router.AgentReady, request, timeout)

    async def set_agent_state(
        self, request: rpb.SetAgentStateRequest, *, timeout: float | None = None
    ) -> rpb.AgentState:
        return await self._unary(self.router.SetAgentState, request, timeout,
                                 self._c.deadlines.call_s)

    async def get_agent_state(
        self, request: rpb.GetAgentStateRequest, *, timeout: float | None = None
    ) -> rpb.AgentState:
        return await self._unary(self.router.GetAgentState, request, timeout,
                                 self._c.deadlines.call_s)

    async def confirm_decision(
        self, request: rpb.ConfirmDecisionRequest, *, timeout: float | None = None
    ) -> rpb.ConfirmDecisionResponse:
        return await self._unary(self.router.ConfirmDecision, request, timeout,
                                 self._c.deadlines.call_s)

    async def release_decision(
        self, request: rpb.ReleaseDecisionRequest, *, timeout: float | None = None
    ) -> rpb.ReleaseDecisionResponse:
        return await self._unary(self.router.ReleaseDecision, request, timeout,
                                 self._c.deadlines.call_s)

    async def end_contact(
        self, request: rpb.EndContactRequest, *, timeout: float | None = None
    ) -> rpb.EndContactResponse:
        return await self._unary(self.router.EndContact, request, timeout,
                                 self._c.deadlines.call_s)

    async def report_outcome(
        self, request: rpb.ReportOutcomeRequest, *, timeout: float | None = None
    ) -> rpb.ReportOutcomeResponse:
        return await self._unary(self.router.ReportOutcome, request, timeout,
                                 self._c.deadlines.call_s)

    def connect(self, *, timeout: float | None = None) -> Any:
        """The ``Connect`` stream (``await call.write(event)``, ``await call.read()``).
        No deadline unless given: it lives as long as the switch's session."""
        return self.router.Connect(metadata=self._c.metadata, timeout=timeout)

    def connect_batch(self, *, timeout: float | None = None) -> Any:
        """The ``ConnectBatch`` stream: up to 1,000 events per message."""
        return self.router.ConnectBatch(metadata=self._c.metadata, timeout=timeout)

    # ------------------------------------------------------------- Profiles
    async def upsert_customer_profile(
        self, request: ppb.CustomerProfile, *, timeout: float | None = None
    ) -> ppb.UpsertResult:
        return await self._unary(self.profiles.UpsertCustomerProfile, request, timeout,
                                 self._c.deadlines.call_s)

    async def upsert_customer_profiles(
        self,
        batches: AsyncIterable[ppb.CustomerProfileBatch] | Iterable[ppb.CustomerProfileBatch],
        *,
        timeout: float | None = None,
    ) -> ppb.UpsertResult:
        return await self.profiles.UpsertCustomerProfiles(
            batches.__aiter__() if isinstance(batches, AsyncIterable) else iter(batches),
            metadata=self._c.metadata,
            timeout=self._c.deadlines.bulk_s if timeout is None else timeout,
        )

    async def upsert_agent_profiles(
        self, request: ppb.AgentProfileBatch, *, timeout: float | None = None
    ) -> ppb.UpsertResult:
        return await self._unary(self.profiles.UpsertAgentProfiles, request, timeout,
                                 self._c.deadlines.bulk_s)

    async def upload_model(
        self, request: ppb.UploadModelRequest, *, timeout: float | None = None
    ) -> ppb.ModelInfo:
        return await self._unary(self.profiles.UploadModel, request, timeout,
                                 self._c.deadlines.bulk_s)

    async def activate_model(
        self, request: ppb.ActivateModelRequest, *, timeout: float | None = None
    ) -> ppb.ModelInfo:
        return await self._unary(self.profiles.ActivateModel, request, timeout,
                                 self._c.deadlines.call_s)

    async def get_model_info(
        self, request: ppb.GetModelInfoRequest | None = None, *, timeout: float | None = None
    ) -> ppb.GetModelInfoResponse:
        return await self._unary(
            self.profiles.GetModelInfo, request or ppb.GetModelInfoRequest(), timeout,
            self._c.deadlines.call_s,
        )

    # -------------------------------------------------------------- Privacy
    async def opt_out(
        self, request: xpb.OptOutRequest, *, timeout: float | None = None
    ) -> xpb.OptOutResponse:
        return await self._unary(self.privacy.OptOut, request, timeout,
                                 self._c.deadlines.call_s)

    async def withdraw_opt_out(
        self, request: xpb.OptOutRequest, *, timeout: float | None = None
    ) -> xpb.OptOutResponse:
        return await self._unary(self.privacy.WithdrawOptOut, request, timeout,
                                 self._c.deadlines.call_s)

    async def bulk_opt_out(
        self,
        batches: AsyncIterable[xpb.BulkOptOutRequest] | Iterable[xpb.BulkOptOutRequest],
        *,
        timeout: float | None = None,
    ) -> xpb.BulkOptOutResponse:
        return await self.privacy.BulkOptOut(
            batches.__aiter__() if isinstance(batches, AsyncIterable) else iter(batches),
            metadata=self._c.metadata,
            timeout=self._c.deadlines.bulk_s if timeout is None else timeout,
        )

    async def request_deletion(
        self, request: xpb.RequestDeletionRequest, *, timeout: float | None = None
    ) -> xpb.DeletionTicket:
        return await self._unary(self.privacy.RequestDeletion, request, timeout,
                                 self._c.deadlines.call_s)

    async def read_audit(
        self, request: xpb.ReadAuditRequest, *, timeout: float | None = None
    ) -> xpb.ReadAuditResponse:
        return await self._unary(self.privacy.ReadAudit, request, timeout,
                                 self._c.deadlines.call_s)

    async def get_deletion(
        self, request: xpb.GetDeletionRequest, *, timeout: float | None = None
    ) -> xpb.DeletionTicket:
        return await self._unary(self.privacy.GetDeletion, request, timeout,
                                 self._c.deadlines.call_s)

    async def list_deletions(
        self, request: xpb.ListDeletionsRequest, *, timeout: float | None = None
    ) -> xpb.ListDeletionsResponse:
        return await self._unary(self.privacy.ListDeletions, request, timeout,
                                 self._c.deadlines.call_s)

    # ------------------------------------------------------------- Insights
    async def get_queue_stats(
        self, request: ipb.GetQueueStatsRequest | None = None, *, timeout: float | None = None
    ) -> ipb.GetQueueStatsResponse:
        return await self._unary(
            self.insights.GetQueueStats, request or ipb.GetQueueStatsRequest(), timeout,
            self._c.deadlines.call_s,
        )

    async def get_benchmark_report(
        self, request: ipb.GetBenchmarkReportRequest, *, timeout: float | None = None
    ) -> ipb.BenchmarkReport:
        return await self._unary(self.insights.GetBenchmarkReport, request, timeout,
                                 self._c.deadlines.bulk_s)

    async def export_history(
        self, request: ipb.ExportHistoryRequest, *, timeout: float | None = None
    ) -> AsyncIterator[ipb.HistoryRow]:
        call = self.insights.ExportHistory(
            request, metadata=self._c.metadata,
            timeout=self._c.deadlines.bulk_s if timeout is None else timeout,
        )
        async for row in call:
            yield row

    # --------------------------------------------------------------- Health
    async def health(self, service: str = "", *, timeout: float | None = None) -> int:
        """``grpc.health.v1`` status of ``service`` ("" = the server): a
        ``HealthCheckResponse.ServingStatus`` (1 = SERVING). No API key needed."""
        resp = await self._health.Check(
            health_pb2.HealthCheckRequest(service=service),
            timeout=self._c.deadlines.call_s if timeout is None else timeout,
        )
        return int(resp.status)


class Client:
    """pairline over blocking gRPC, for scripts and threaded switches.
    Same methods and behaviour as :class:`AsyncClient`; the fallback hook returns
    a Decision (not an awaitable)."""

    def __init__(
        self,
        target: str,
        api_key: str,
        *,
        tls: bool = False,
        root_certificates: bytes | None = None,
        private_key: bytes | None = None,
        certificate_chain: bytes | None = None,
        deadlines: Deadlines = Deadlines(),
        retry: RetryPolicy | None = RetryPolicy(),
        fallback: FallbackHook | None = None,
        fallback_codes: Iterable[grpc.StatusCode] = FALLBACK_CODES,
        options: Iterable[tuple[str, Any]] = (),
    ) -> None:
        self._c = _config(api_key, deadlines, fallback, fallback_codes)
        creds = _credentials(tls, root_certificates, private_key, certificate_chain)
        opts = channel_options(retry, options)
        self.channel = (
            grpc.secure_channel(target, creds, options=opts)
            if creds is not None
            else grpc.insecure_channel(target, options=opts)
        )
        self.router = rpb_grpc.RouterStub(self.channel)
        self.profiles = ppb_grpc.ProfilesStub(self.channel)
        self.privacy = xpb_grpc.PrivacyStub(self.channel)
        self.insights = ipb_grpc.InsightsStub(self.channel)
        self._health = health_pb2_grpc.HealthStub(self.channel)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.channel.close()

    def _unary(self, method: Any, request: Any, timeout: float | None, default: float) -> Any:
        return method(
            request, metadata=self._c.metadata, timeout=default if timeout is None else timeout
        )

    def _decide(self, method: Any, request: DecisionRequest, timeout: float | None) -> Routed:
        try:
            return Routed(self._unary(method, request, timeout, self._c.deadlines.decision_s))
        except grpc.RpcError as err:
            code = err.code()
            if self._c.fallback is None or code not in self._c.fallback_codes:
                raise
            decision = self._c.fallback(request, code)
            if inspect.isawaitable(decision):
                raise TypeError("Client needs a fallback hook that returns a Decision") from None
            return Routed(decision, fallback=True, code=code)

    # Router
    def route_contact(
        self, request: rpb.RouteContactRequest, *, timeout: float | None = None
    ) -> Routed:
        return self._decide(self.router.RouteContact, request, timeout)

    def agent_ready(
        self, request: rpb.AgentReadyRequest, *, timeout: float | None = None
    ) -> Routed:
        return self._decide(self.router.AgentReady, request, timeout)

    def set_agent_state(
        self, request: rpb.SetAgentStateRequest, *, timeout: float | None = None
    ) -> rpb.AgentState:
        return self._unary(self.router.SetAgentState, request, timeout,
                           self._c.deadlines.call_s)

    def get_agent_state(
        self, request: rpb.GetAgentStateRequest, *, timeout: float | None = None
    ) -> rpb.AgentState:
        return self._unary(self.router.GetAgentState, request, timeout,
                           self._c.deadlines.call_s)

    def confirm_decision(
        self, request: rpb.ConfirmDecisionRequest, *, timeout: float | None = None
    ) -> rpb.ConfirmDecisionResponse:
        return self._unary(self.router.ConfirmDecision, request, timeout,
                           self._c.deadlines.call_s)

    def release_decision(
        self, request: rpb.ReleaseDecisionRequest, *, timeout: float | None = None
    ) -> rpb.ReleaseDecisionResponse:
        return self._unary(self.router.ReleaseDecision, request, timeout,
                           self._c.deadlines.call_s)

    def end_contact(
        self, request: rpb.EndContactRequest, *, timeout: float | None = None
    ) -> rpb.EndContactResponse:
        return self._unary(self.router.EndContact, request, timeout,
                           self._c.deadlines.call_s)

    def report_outcome(
        self, request: rpb.ReportOutcomeRequest, *, timeout: float | None = None
    ) -> rpb.ReportOutcomeResponse:
        return self._unary(self.router.ReportOutcome, request, timeout,
                           self._c.deadlines.call_s)

    def connect(
        self, events: Iterable[rpb.SwitchEvent], *, timeout: float | None = None
    ) -> Iterator[rpb.SwitchReply]:
        return self.router.Connect(
            iter(events), metadata=self._c.metadata, timeout=timeout)

    def connect_batch(
        self, batches: Iterable[rpb.SwitchEventBatch], *, timeout: float | None = None
    ) -> Iterator[rpb.SwitchReplyBatch]:
        return self.router.ConnectBatch(
            iter(batches), metadata=self._c.metadata, timeout=timeout)

    # Profiles
    def upsert_customer_profile(
        self, request: ppb.CustomerProfile, *, timeout: float | None = None
    ) -> ppb.UpsertResult:
        return self._unary(self.profiles.UpsertCustomerProfile, request,
                           timeout, self._c.deadlines.call_s)

    def upsert_customer_profiles(
        self, batches: Iterable[ppb.CustomerProfileBatch], *, timeout: float | None = None
    ) -> ppb.UpsertResult:
        return self.profiles.UpsertCustomerProfiles(
            iter(batches), metadata=self._c.metadata,
            timeout=self._c.deadlines.bulk_s if timeout is None else timeout)

    def upsert_agent_profiles(
        self, request: ppb.AgentProfileBatch, *, timeout: float | None = None
    ) -> ppb.UpsertResult:
        return self._unary(self.profiles.UpsertAgentProfiles, request,
                           timeout, self._c.deadlines.bulk_s)

    def upload_model(
        self, request: ppb.UploadModelRequest, *, timeout: float | None = None
    ) -> ppb.ModelInfo:
        return self._unary(self.profiles.UploadModel, request, timeout,
                           self._c.deadlines.bulk_s)

    def activate_model(
        self, request: ppb.ActivateModelRequest, *, timeout: float | None = None
    ) -> ppb.ModelInfo:
        return self._unary(self.profiles.ActivateModel, request, timeout,
                           self._c.deadlines.call_s)

    def get_model_info(
        self, request: ppb.GetModelInfoRequest | None = None, *, timeout: float | None = None
    ) -> ppb.GetModelInfoResponse:
        return self._unary(
            self.profiles.GetModelInfo, request or ppb.GetModelInfoRequest(), timeout,
            self._c.deadlines.call_s)

    # Privacy
    def opt_out(self, request: xpb.OptOutRequest, *, timeout: float | None = None
                ) -> xpb.OptOutResponse:
        return self._unary(self.privacy.OptOut, request, timeout,
                           self._c.deadlines.call_s)

    def withdraw_opt_out(self, request: xpb.OptOutRequest, *, timeout: float | None = None
                         ) -> xpb.OptOutResponse:
        return self._unary(self.privacy.WithdrawOptOut, request, timeout,
                           self._c.deadlines.call_s)

    def bulk_opt_out(
        self, batches: Iterable[xpb.BulkOptOutRequest], *, timeout: float | None = None
    ) -> xpb.BulkOptOutResponse:
        return self.privacy.BulkOptOut(
            iter(batches), metadata=self._c.metadata,
            timeout=self._c.deadlines.bulk_s if timeout is None else timeout)

    def request_deletion(
        self, request: xpb.RequestDeletionRequest, *, timeout: float | None = None
    ) -> xpb.DeletionTicket:
        return self._unary(self.privacy.RequestDeletion, request, timeout,
                           self._c.deadlines.call_s)

    def read_audit(
        self, request: xpb.ReadAuditRequest, *, timeout: float | None = None
    ) -> xpb.ReadAuditResponse:
        return self._unary(self.privacy.ReadAudit, request, timeout, self._c.deadlines.call_s)

    def get_deletion(self, request: xpb.GetDeletionRequest, *, timeout: float | None = None
                     ) -> xpb.DeletionTicket:
        return self._unary(self.privacy.GetDeletion, request, timeout,
                           self._c.deadlines.call_s)

    def list_deletions(
        self, request: xpb.ListDeletionsRequest, *, timeout: float | None = None
    ) -> xpb.ListDeletionsResponse:
        return self._unary(self.privacy.ListDeletions, request, timeout,
                           self._c.deadlines.call_s)

    # Insights
    def get_queue_stats(
        self, request: ipb.GetQueueStatsRequest | None = None, *, timeout: float | None = None
    ) -> ipb.GetQueueStatsResponse:
        return self._unary(
            self.insights.GetQueueStats, request or ipb.GetQueueStatsRequest(), timeout,
            self._c.deadlines.call_s)

    def get_benchmark_report(
        self, request: ipb.GetBenchmarkReportRequest, *, timeout: float | None = None
    ) -> ipb.BenchmarkReport:
        return self._unary(self.insights.GetBenchmarkReport, request,
                           timeout, self._c.deadlines.bulk_s)

    def export_history(
        self, request: ipb.ExportHistoryRequest, *, timeout: float | None = None
    ) -> Iterator[ipb.HistoryRow]:
        return self.insights.ExportHistory(
            request, metadata=self._c.metadata,
            timeout=self._c.deadlines.bulk_s if timeout is None else timeout)

    # Health
    def health(self, service: str = "", *, timeout: float | None = None) -> int:
        resp = self._health.Check(
            health_pb2.HealthCheckRequest(service=service),
            timeout=self._c.deadlines.call_s if timeout is None else timeout)
        return int(resp.status)
