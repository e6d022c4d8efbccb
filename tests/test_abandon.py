"""What a call whose caller is gone leaves behind, through a real server.

A caller is gone when it cancelled or its deadline passed before the answer
reached it. Then exactly what that call made is undone, and only if the
answer is not sent: an answer that is sent keeps its reservation (the switch
rings the agent), an earlier call's decision that a retry answers with stays
(its caller holds it), and a contact the call created does not stay waiting
(its caller routes it by its own rule).

Two ways of being late are made deterministic: a clock whose next reading in a
call blocks the loop past the deadline (gRPC then drops the answer), and a store
whose decision record makes the guard's reading of the deadline pass while
gRPC's has not (the microsecond race a real server shows with sub-millisecond
deadlines: gRPC still sends the answer).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import grpc
import pytest
from support import Running, contact, login, running
from test_deadlines import SleepyClock, SlowStore, expect_deadline, free

from pairline._proto.pairline.v1 import common_pb2 as cpb
from pairline._proto.pairline.v1 import insights_pb2 as ipb
from pairline._proto.pairline.v1 import router_pb2 as rpb
from pairline.interceptors import current_tenant
from pairline.limits import bind_deadline
from pairline.stores import MemoryStore

DEADLINE = grpc.StatusCode.DEADLINE_EXCEEDED


class InCallSleepyClock(SleepyClock):
    """:class:`SleepyClock` whose blocking reading is one inside a call (not the
    server's sweeper)."""

    __slots__ = ()

    def now(self) -> float:
        if self.block_s:
            try:
                current_tenant()
            except LookupError:  # the sweeper: not a call
                return self.t
        return super().now()


class LateStore(MemoryStore):
    """The embedded store; once armed, recording a decision makes the call's deadline,
    as the guard reads it, pass (gRPC's is seconds away)."""

    def __init__(self) -> None:
        super().__init__()
        self.armed = False

    async def record_decision(self, *args: Any, **kw: Any) -> Any:
        if self.armed:
            bind_deadline(0.0)
        return await super().record_decision(*args, **kw)


class UnawareStore(MemoryStore):
    """The embedded store; once armed, recording a decision blocks the loop for
    ``block_s`` while the guard's reading of the deadline is a minute away: gRPC
    ends the call meanwhile, and only the failed send of the reply tells."""

    def __init__(self, block_s: float) -> None:
        super().__init__()
        self.block_s = block_s
        self.armed = False

    async def record_decision(self, *args: Any, **kw: Any) -> Any:
        if self.armed:
            bind_deadline(60.0)
            time.sleep(self.block_s)
        return await super().record_decision(*args, **kw)


async def waiting(srv: Running) -> int:
    stats = await srv.acme.insights.GetQueueStats(ipb.GetQueueStatsRequest())
    return sum(q.waiting for q in stats.queues)


async def reserved(srv: Running) -> int:
    stats = await srv.acme.insights.GetQueueStats(ipb.GetQueueStatsRequest())
    return sum(q.agents_reserved for q in stats.queues)


async def confirm(srv: Running, decision_id: str) -> grpc.StatusCode:
    try:
        await srv.acme.router.ConfirmDecision(rpb.ConfirmDecisionRequest(decision_id=decision_id))
    except grpc.aio.AioRpcError as err:
        return err.code()
    return grpc.StatusCode.OK


async def not_found(srv: Running, contact_id: str) -> bool:
    try:
        await srv.acme.router.EndContact(
            rpb.EndContactRequest(contact_id=contact_id, reason=rpb.END_REASON_ABANDONED)
        )
    except grpc.aio.AioRpcError as err:
        return err.code() is grpc.StatusCode.NOT_FOUND
    return False


class TestAnUndoneDecisionIsNotSent:
    async def test_route_contact(self) -> None:
        """RouteContact whose deadline the guard finds passed when the decision is
        ready: the caller gets DEADLINE_EXCEEDED, not a decision whose agent is free."""
        store = LateStore()
        async with running(store=store) as srv:
            await srv.acme.router.SetAgentState(login("a1", "sales"))
            store.armed = True
            await expect_deadline(srv.acme.router.RouteContact(contact("c1"), timeout=5))
            store.armed = False
            assert await free(srv)
            assert await waiting(srv) == 0  # the contact it created is withdrawn
            d = await srv.acme.router.RouteContact(contact("c2"))
            assert d.agent_id == "a1"

    async def test_agent_ready(self) -> None:
        """AgentReady likewise: DEADLINE_EXCEEDED, the contact waits, the agent is free."""
        store = LateStore()
        async with running(store=store) as srv:
            await srv.acme.router.SetAgentState(login("a1", "sales", status=rpb.AGENT_STATUS_AWAY))
            q = await srv.acme.router.RouteContact(contact("w1"))
            assert q.mode == cpb.MODE_QUEUED
            store.armed = True
            await expect_deadline(
                srv.acme.router.AgentReady(rpb.AgentReadyRequest(agent_id="a1"), timeout=5)
            )
            store.armed = False
            assert (await waiting(srv), await reserved(srv)) == (1, 0)

    async def test_connect_event(self) -> None:
        """On Connect, a fresh decision found late is undone and not sent: the stream
        ends DEADLINE_EXCEEDED; the decision delivered before it keeps its agent."""
        store = LateStore()
        async with running(store=store) as srv:
            for a in ("a0", "a1"):
                await srv.acme.router.SetAgentState(login(a, "sales"))
            s = srv.acme.router.Connect(timeout=5)
            await s.write(rpb.SwitchEvent(request_id="0", route_contact=contact("c0")))
            first = (await s.read()).decision
            store.armed = True
            await s.write(rpb.SwitchEvent(request_id="1", route_contact=contact("c1")))
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await s.read()
            assert err.value.code() is DEADLINE
            store.armed = False
            other = "a1" if first.agent_id == "a0" else "a0"
            assert await free(srv, other)
            assert await confirm(srv, first.decision_id) is grpc.StatusCode.OK

    async def test_connect_batch(self) -> None:
        """ConnectBatch likewise: no batch reply, both decisions of the batch undone."""
        store = LateStore()
        async with running(store=store) as srv:
            for a in ("a1", "a2"):
                await srv.acme.router.SetAgentState(login(a, "sales"))
            s = srv.acme.router.ConnectBatch(timeout=5)
            store.armed = True
            events = [rpb.SwitchEvent(request_id=c, route_contact=contact(c)) for c in ("c1", "c2")]
            await s.write(rpb.SwitchEventBatch(events=events))
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await s.read()
            assert err.value.code() is DEADLINE
            store.armed = False
            assert await free(srv, "a1") and await free(srv, "a2")
            assert await waiting(srv) == 0


class TestARetryLeavesTheEarlierDecision:
    async def test_route_contact_retry_past_its_deadline(self) -> None:
        """A retried RouteContact answered after its deadline does not undo the
        decision the first call delivered: the switch can still confirm it."""
        clock = InCallSleepyClock()
        async with running(clock=clock) as srv:
            await srv.acme.router.SetAgentState(login("a1", "sales"))
            d = await srv.acme.router.RouteContact(contact("c1"))
            clock.block_s = 0.4
            await expect_deadline(srv.acme.router.RouteContact(contact("c1"), timeout=0.15))
            await asyncio.sleep(0.3)
            assert not await free(srv)
            assert await confirm(srv, d.decision_id) is grpc.StatusCode.OK

    @pytest.mark.parametrize("batched", [False, True], ids=["Connect", "ConnectBatch"])
    async def test_duplicate_event_past_the_stream_deadline(self, batched: bool) -> None:
        """A duplicate route event whose reply is lost (the stream's deadline passed)
        does not undo the decision an earlier event delivered."""
        clock = InCallSleepyClock()
        async with running(clock=clock) as srv:
            await srv.acme.router.SetAgentState(login("a1", "sales"))
            route = rpb.SwitchEvent(request_id="r", route_contact=contact("c1"))
            if batched:
                s = srv.acme.router.ConnectBatch(timeout=0.5)
                await s.write(rpb.SwitchEventBatch(events=[route]))
                d = (await s.read()).replies[0].decision
            else:
                s = srv.acme.router.Connect(timeout=0.5)
                await s.write(route)
                d = (await s.read()).decision
            assert d.agent_id == "a1"
            clock.block_s = 0.8
            await s.write(rpb.SwitchEventBatch(events=[route]) if batched else route)
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await s.read()
            assert err.value.code() is DEADLINE
            await asyncio.sleep(0.3)
            assert not await free(srv)
            assert await confirm(srv, d.decision_id) is grpc.StatusCode.OK


class TestAGoneCallersContactDoesNotWait:
    async def test_queued_contact(self) -> None:
        """RouteContact answered QUEUED after its deadline: the contact it created is
        withdrawn, so no later AgentReady reserves an agent for a caller that gave up."""
        clock = InCallSleepyClock()
        async with running(clock=clock) as srv:
            clock.block_s = 0.4
            await expect_deadline(srv.acme.router.RouteContact(contact("c1"), timeout=0.15))
            await asyncio.sleep(0.3)
            assert await waiting(srv) == 0
            await srv.acme.router.SetAgentState(login("a1", "sales"))
            d = await srv.acme.router.AgentReady(rpb.AgentReadyRequest(agent_id="a1"))
            assert d.mode == cpb.MODE_QUEUED
            assert await not_found(srv, "c1")

    async def test_queued_contact_on_connect(self) -> None:
        """The same for a route event on Connect whose reply comes after the deadline."""
        clock = InCallSleepyClock()
        async with running(clock=clock) as srv:
            s = srv.acme.router.Connect(timeout=0.3)
            clock.block_s = 0.5
            await s.write(rpb.SwitchEvent(request_id="1", route_contact=contact("c1")))
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await s.read()
            assert err.value.code() is DEADLINE
            await asyncio.sleep(0.3)
            assert await waiting(srv) == 0
            assert await not_found(srv, "c1")

    @pytest.mark.parametrize("batched", [False, True], ids=["Connect", "ConnectBatch"])
    async def test_stream_reply_that_cannot_be_sent(self, batched: bool) -> None:
        """A stream reply whose sending fails (gRPC ended the stream while it was
        made) has its fresh decision undone and its new contact withdrawn."""
        store = UnawareStore(block_s=0.5)
        async with running(store=store) as srv:
            await srv.acme.router.SetAgentState(login("a1", "sales"))
            route = rpb.SwitchEvent(request_id="r", route_contact=contact("c1"))
            store.armed = True
            if batched:
                s = srv.acme.router.ConnectBatch(timeout=0.3)
                await s.write(rpb.SwitchEventBatch(events=[route]))
            else:
                s = srv.acme.router.Connect(timeout=0.3)
                await s.write(route)
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await s.read()
            assert err.value.code() is DEADLINE
            await asyncio.sleep(0.3)
            store.armed = False
            assert await free(srv)
            assert await waiting(srv) == 0
            assert await not_found(srv, "c1")

    @pytest.mark.parametrize(("slow", "after_s"), [
        # The decision is recorded past the deadline (the loop held up): undone, and
        # its new contact withdrawn, not left waiting in its place.
        ({"block_s": 0.4}, 0.3),
        # The call is cancelled by its deadline while its decision is recorded
        # (awaited): neither the reservation nor its new contact is left.
        ({"wait_s": 1.0}, 0.1),
    ], ids=["finished_late", "cancelled_while_recorded"])
    async def test_reserved_contact(self, slow: dict[str, float], after_s: float) -> None:
        store = SlowStore({"record_decision"}, **slow)
        async with running(store=store) as srv:
            await srv.acme.router.SetAgentState(login("a1", "sales"))
            store.armed = True
            await expect_deadline(srv.acme.router.RouteContact(contact("c1"), timeout=0.15))
            await asyncio.sleep(after_s)
            store.armed = False
            assert await free(srv)
            assert await waiting(srv) == 0
            assert await not_found(srv, "c1")

    async def test_retry_of_a_waiting_contact_keeps_it_waiting(self) -> None:
        """Control: a retry for a contact an earlier call left waiting undoes only its
        own reservation; the contact keeps its place (its caller still waits on it)."""
        store = SlowStore({"record_decision"}, block_s=0.4)
        async with running(store=store) as srv:
            q = await srv.acme.router.RouteContact(contact("c1"))
            assert q.mode == cpb.MODE_QUEUED
            await srv.acme.router.SetAgentState(login("a1", "sales"))
            store.armed = True
            await expect_deadline(srv.acme.router.RouteContact(contact("c1"), timeout=0.15))
            await asyncio.sleep(0.3)
            store.armed = False
            assert await free(srv)
            assert await waiting(srv) == 1
            d = await srv.acme.router.AgentReady(rpb.AgentReadyRequest(agent_id="a1"))
            assert (d.contact_id, d.agent_id) == ("c1", "a1")
