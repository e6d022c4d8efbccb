"""Thin grpc.aio servicers: decode, call the service, encode.

The tenant comes from :func:`pairline.interceptors.current_tenant`, set by the
guard (:mod:`pairline.interceptors`) from the caller's API key. Domain errors
propagate to the guard, which maps them to status codes; on the ``Connect`` stream they
become error replies and the stream stays open.

Each Router call (a unary call; on a stream, each event or batch) notes what it
made: the decisions it reserved and the contacts it created. When its caller is
gone before the answer reaches it, the guard asks :meth:`RouterServicer.abandon`
to undo exactly that, never what an earlier call made (a retry answers with the
decision an earlier call made and delivered).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Container, Iterable
from typing import Any

import grpc
import structlog

from pairline import convert
from pairline._proto.pairline.v1 import common_pb2 as cpb
from pairline._proto.pairline.v1 import insights_pb2 as ipb
from pairline._proto.pairline.v1 import insights_pb2_grpc as ipb_grpc
from pairline._proto.pairline.v1 import profiles_pb2 as ppb
from pairline._proto.pairline.v1 import profiles_pb2_grpc as ppb_grpc
from pairline._proto.pairline.v1 import router_pb2 as rpb
from pairline._proto.pairline.v1 import router_pb2_grpc as rpb_grpc
from pairline.domain import EndReason
from pairline.errors import InvalidArgument, PairlineError
from pairline.interceptors import MalformedMessage, current_tenant, internal_status, to_rpc_status
from pairline.limits import begin_call, made_now
from pairline.logs import bind_request_id, request_id_or_new
from pairline.privacy_servicer import PrivacyServicer
from pairline.routing import Contact, ContactState
from pairline.service import Service

log = structlog.get_logger()

__all__ = ["InsightsServicer", "PrivacyServicer", "ProfilesServicer", "RouterServicer"]

Ctx = grpc.aio.ServicerContext[Any, Any]
MAX_EVENTS_PER_BATCH = 1000


def _no_limit(tenant: str) -> None:
    return None


def _decisions(response: Any) -> list[cpb.Decision]:
    if isinstance(response, cpb.Decision):
        return [response]
    if isinstance(response, rpb.SwitchReply):
        return [response.decision] if response.HasField("decision") else []
    if isinstance(response, rpb.SwitchReplyBatch):
        return [r.decision for r in response.replies if r.HasField("decision")]
    return []


class RouterServicer(rpb_grpc.RouterServicer):
    def __init__(self, service: Service, admit: Callable[[str], None] = _no_limit) -> None:
        """``admit(tenant)`` is called per stream event (the tenant's rate limit);
        it raises to refuse the event."""
        self._s = service
        self._admit = admit
        # Connect: event field -> (operation, reply field, field prefix of its errors)
        self._ops: dict[str, tuple[Callable[[Any, str, str], Awaitable[Any]], str, str]] = {
            "route_contact": (self._route, "decision", "route_contact."),
            "agent_ready": (self._ready, "decision", "agent_ready."),
            "set_agent_state": (self._state, "agent_state", "set_agent_state."),
            "confirm_decision": (self._confirm, "confirm_decision", "confirm_decision."),
            "release_decision": (self._release, "release_decision", "release_decision."),
            "end_contact": (self._end, "end_contact", "end_contact."),
            "report_outcome": (self._outcome, "report_outcome", "report_outcome."),
        }

    # Each operation once, with a field prefix for error paths on the stream.
    async def _route(self, req: rpb.RouteContactRequest, tenant: str, at: str = "") -> cpb.Decision:
        try:
            d = await self._s.route_contact(tenant, convert.route_contact(req, at))
        except asyncio.CancelledError:
            await self._undo_cancelled(tenant)
            raise
        return convert.decision(d)

    async def _ready(self, req: rpb.AgentReadyRequest, tenant: str, at: str = "") -> cpb.Decision:
        agent_id = convert.agent_id(req.agent_id, at)
        try:
            d = await self._s.agent_ready(tenant, agent_id)
        except asyncio.CancelledError:
            await self._undo_cancelled(tenant)
            raise
        return convert.decision(d)

    async def _undo_cancelled(self, tenant: str) -> None:
        """The caller went away (cancelled, or its deadline) while the call was still
        at work, say while its decision was being committed or recorded: undo what
        the call made, as :meth:`abandon` does for an answer that cannot be sent.
        (With shared state the commit may have landed or not: each undo runs on
        Redis's state, under the tenant's turn, after the mirror is fetched back.)"""
        made = made_now()
        if made is None:
            return
        for decision_id in made.decisions:
            self._s.abandon(tenant, decision_id)
        if made.contacts:
            await self._withdraw(tenant, list(made.contacts), made.decisions)

    async def _state(
        self, req: rpb.SetAgentStateRequest, tenant: str, at: str = ""
    ) -> rpb.AgentState:
        view = await self._s.set_agent_state(tenant, convert.set_agent_state(req, at))
        return convert.agent_state(view)

    async def _confirm(
        self, req: rpb.ConfirmDecisionRequest, tenant: str, at: str = ""
    ) -> rpb.ConfirmDecisionResponse:
        d = await self._s.confirm(tenant, convert.decision_id(req.decision_id, at))
        return convert.confirmed(d)

    async def _release(
        self, req: rpb.ReleaseDecisionRequest, tenant: str, at: str = ""
    ) -> rpb.ReleaseDecisionResponse:
        did = convert.decision_id(req.decision_id, at)
        d, status = await self._s.release(tenant, did, convert.release_reason(req.reason, at))
        return convert.released(d, status)

    async def _end(
        self, req: rpb.EndContactRequest, tenant: str, at: str = ""
    ) -> rpb.EndContactResponse:
        contact_id, reason, wrap_s = convert.end_contact(req, at)
        return convert.ended(await self._s.end_contact(tenant, contact_id, reason, wrap_s))

    async def _outcome(
        self, req: rpb.ReportOutcomeRequest, tenant: str, at: str = ""
    ) -> rpb.ReportOutcomeResponse:
        did, outcomes = convert.report_outcome(req, at)
        stored = await self._s.report_outcome(tenant, did, outcomes)
        return rpb.ReportOutcomeResponse(decision_id=did, stored=stored)

    def abandon(self, tenant: str, response: Any) -> Awaitable[None] | None:
        """Undo what the current call made for ``response``, whose caller is gone (see
        the guard): the reservations of the decisions it made, and the contacts it
        created (ended as abandoned: nobody else knows of them). None when it made
        nothing there (a retry's answer holds an earlier call's decision: that one
        stays); otherwise the rest of the undo, to be awaited."""
        made = made_now()
        if made is None:
            return None
        decisions = _decisions(response)
        mine = [d.decision_id for d in decisions if d.decision_id in made.decisions]
        created = [d.contact_id for d in decisions if d.contact_id in made.contacts]
        if not mine and not created:
            return None
        for decision_id in mine:
            self._s.abandon(tenant, decision_id)
        return self._withdraw(tenant, created, made.decisions)

    async def _withdraw(
        self, tenant: str, contact_ids: Iterable[str], ours: Container[str] = ()
    ) -> None:
        """End, as abandoned, contacts created by a call whose caller is gone: each
        one still waiting, or still reserved by a decision in ``ours``; one that
        another call has reserved meanwhile is left to it."""
        for contact_id in contact_ids:
            contact = self._contact(tenant, contact_id)
            if contact is None:
                continue
            held = contact.decision
            if contact.state is not ContactState.WAITING and (
                held is None or held.decision_id not in ours
            ):
                continue
            try:
                await self._s.end_contact(tenant, contact_id, EndReason.ABANDONED, 0.0)
            except PairlineError:
                continue  # ended meanwhile
            log.info("contact_withdrawn", tenant=tenant, contact=contact_id)

    def _contact(self, tenant: str, contact_id: str) -> Contact | None:
        """The live contact in the tenant's routing state (None when there is none)."""
        contacts = self._contacts(tenant)
        return contacts.get(contact_id) if contacts is not None else None

    def _contacts(self, tenant: str) -> dict[str, Contact] | None:
        """The live contacts of the tenant's routing state (None without one)."""
        routing = getattr(self._s.tenants.get(tenant), "routing", None)
        return routing.contacts if routing is not None else None

    # Unary RPCs.
    async def RouteContact(self, request: rpb.RouteContactRequest, context: Ctx) -> cpb.Decision:
        begin_call()
        return await self._route(request, current_tenant())

    async def AgentReady(self, request: rpb.AgentReadyRequest, context: Ctx) -> cpb.Decision:
        begin_call()
        return await self._ready(request, current_tenant())

    async def SetAgentState(
        self, request: rpb.SetAgentStateRequest, context: Ctx
    ) -> rpb.AgentState:
        return await self._state(request, current_tenant())

    async def GetAgentState(
        self, request: rpb.GetAgentStateRequest, context: Ctx
    ) -> rpb.AgentState:
        agent_id = convert.agent_id(request.agent_id)
        return convert.agent_state(await self._s.get_agent_state(current_tenant(), agent_id))

    async def ConfirmDecision(
        self, request: rpb.ConfirmDecisionRequest, context: Ctx
    ) -> rpb.ConfirmDecisionResponse:
        return await self._confirm(request, current_tenant())

    async def ReleaseDecision(
        self, request: rpb.ReleaseDecisionRequest, context: Ctx
    ) -> rpb.ReleaseDecisionResponse:
        return await self._release(request, current_tenant())

    async def EndContact(
        self, request: rpb.EndContactRequest, context: Ctx
    ) -> rpb.EndContactResponse:
        return await self._end(request, current_tenant())

    async def ReportOutcome(
        self, request: rpb.ReportOutcomeRequest, context: Ctx
    ) -> rpb.ReportOutcomeResponse:
        return await self._outcome(request, current_tenant())

    # The Connect stream: the same operations, replies tagged with request_id.
    async def _one(self, event: rpb.SwitchEvent, tenant: str) -> rpb.SwitchReply:
        rid = event.request_id
        bind_request_id(request_id_or_new(rid))  # this event's log lines
        try:
            if rid:
                convert.text(rid, "request_id", required=False)
            kind = event.WhichOneof("event")
            self._admit(tenant)
            if kind is None:
                raise InvalidArgument("event", "one event is required")
            op, field, at = self._ops[kind]
            result = await op(getattr(event, kind), tenant, at)
            reply = rpb.SwitchReply(request_id=rid)
            getattr(reply, field).CopyFrom(result)
            return reply
        except PairlineError as exc:
            return rpb.SwitchReply(request_id=rid[:128], error=to_rpc_status(exc))
        except Exception:
            log.exception("connect_event_failed")
            return rpb.SwitchReply(request_id=rid[:128], error=internal_status())

    async def Connect(
        self, request_iterator: AsyncIterator[rpb.SwitchEvent], context: Ctx
    ) -> AsyncIterator[rpb.SwitchReply]:
        tenant = current_tenant()
        async for event in request_iterator:
            begin_call()  # what this event made (see abandon)
            yield await self._one(event, tenant)

    async def ConnectBatch(
        self, request_iterator: AsyncIterator[rpb.SwitchEventBatch], context: Ctx
    ) -> AsyncIterator[rpb.SwitchReplyBatch]:
        tenant = current_tenant()
        async for batch in request_iterator:
            if len(batch.events) > MAX_EVENTS_PER_BATCH:
                exc = InvalidArgument("events", f"at most {MAX_EVENTS_PER_BATCH} per batch")
                yield rpb.SwitchReplyBatch(replies=[rpb.SwitchReply(error=to_rpc_status(exc))])
                continue
            begin_call()  # what this batch made (see abandon)
            yield rpb.SwitchReplyBatch(replies=[await self._one(ev, tenant) for ev in batch.events])


class ProfilesServicer(ppb_grpc.ProfilesServicer):
    def __init__(self, service: Service) -> None:
        self._s = service

    async def UpsertCustomerProfile(
        self, request: ppb.CustomerProfile, context: Ctx
    ) -> ppb.UpsertResult:
        profiles = convert.customer_profiles([request], at=None)
        out = await self._s.upsert_customer_profiles(current_tenant(), profiles, None)
        return convert.upsert_result(out.accepted, out.stale)

    async def UpsertCustomerProfiles(
        self, request_iterator: AsyncIterator[ppb.CustomerProfileBatch], context: Ctx
    ) -> ppb.UpsertResult:
        tenant = current_tenant()
        accepted, offset, batch_no = 0, 0, 0
        stale: list[int] = []
        batches = aiter(request_iterator)
        while True:
            at = f"batches[{batch_no}]"
            try:
                batch = await anext(batches, None)
                if batch is None:
                    break
                out = await self._s.upsert_customer_profiles(
                    tenant,
                    convert.customer_profiles(batch.profiles, f"{at}.profiles"),
                    f"{at}.profiles",
                )
            except PairlineError as exc:
                applied = f" ({batch_no} earlier batch(es), {accepted} profile(s) applied)"
                if isinstance(exc, MalformedMessage):  # this batch did not parse
                    raise InvalidArgument(at, exc.reason + applied) from None
                exc.message += applied
                raise
            accepted += out.accepted
            stale.extend(offset + i for i in out.stale)
            offset += len(batch.profiles)
            batch_no += 1
        return convert.upsert_result(accepted, stale)

    async def UpsertAgentProfiles(
        self, request: ppb.AgentProfileBatch, context: Ctx
    ) -> ppb.UpsertResult:
        out = await self._s.upsert_agent_profiles(
            current_tenant(), convert.agent_profiles(request.profiles)
        )
        return convert.upsert_result(out.accepted, out.stale)

    async def UploadModel(self, request: ppb.UploadModelRequest, context: Ctx) -> ppb.ModelInfo:
        model = await self._s.upload_model(current_tenant(), request.model, request.activate)
        active, _ = await self._s.model_info(current_tenant())
        return convert.model_info(model, model.version == active)

    async def ActivateModel(self, request: ppb.ActivateModelRequest, context: Ctx) -> ppb.ModelInfo:
        version = convert.text(request.version, "version", max_len=64)
        return convert.model_info(await self._s.activate_model(current_tenant(), version), True)

    async def GetModelInfo(
        self, request: ppb.GetModelInfoRequest, context: Ctx
    ) -> ppb.GetModelInfoResponse:
        active, models = await self._s.model_info(current_tenant())
        out = ppb.GetModelInfoResponse(
            models=[convert.model_info(m, m.version == active) for m in models]
        )
        for m in models:
            if m.version == active:
                out.active.CopyFrom(convert.model_info(m, True))
        return out


class InsightsServicer(ipb_grpc.InsightsServicer):
    def __init__(self, service: Service) -> None:
        self._s = service

    async def GetQueueStats(
        self, request: ipb.GetQueueStatsRequest, context: Ctx
    ) -> ipb.GetQueueStatsResponse:
        queue = convert.text(request.queue, "queue", required=False)
        stats = self._s.queue_stats(current_tenant(), queue)
        return convert.queue_stats(stats, self._s.clock.now())

    async def ExportHistory(
        self, request: ipb.ExportHistoryRequest, context: Ctx
    ) -> AsyncIterator[ipb.HistoryRow]:
        outcome = convert.text(request.outcome, "outcome")
        if request.since_ms < 0:
            raise InvalidArgument("since_ms", "must be >= 0")
        rows = await self._s.export_history(current_tenant(), outcome, request.since_ms / 1000)
        for record, customer, agent in rows:
            yield convert.history_row(record, outcome, customer, agent)

    async def GetBenchmarkReport(
        self, request: ipb.GetBenchmarkReportRequest, context: Ctx
    ) -> ipb.BenchmarkReport:
        outcome = convert.text(request.outcome, "outcome")
        queue = convert.text(request.queue, "queue", required=False)
        report = await self._s.benchmark_report(current_tenant(), outcome, queue)
        return convert.benchmark_report(outcome, report)
