"""Deadlines and cancellation through a real server.

Every RPC ends by the caller's deadline; no agent is claimed once the deadline
has passed; a caller that is gone (deadline passed or cancelled) before its
decision reached it leaves nothing reserved.

Slowness is injected where it happens in production: a store whose calls take
time (awaiting, as a network store does, or blocking the loop) and a clock
whose reading blocks once, right before the routing step.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import grpc
import pytest
from support import Running, contact, login, running
from test_auth import RPCS, Call

from pairline._proto.pairline.v1 import common_pb2 as cpb
from pairline._proto.pairline.v1 import insights_pb2 as ipb
from pairline._proto.pairline.v1 import router_pb2 as rpb
from pairline.stores import MemoryStore
from pairline.testing import FakeClock

DEADLINE = grpc.StatusCode.DEADLINE_EXCEEDED


class SlowStore(MemoryStore):
    """The embedded store with delays: ``wait_s`` awaited (a slow network store) or
    ``block_s`` blocking the loop, in the methods named in ``slow``."""

    def __init__(self, slow: set[str], wait_s: float = 0.0, block_s: float = 0.0) -> None:
        super().__init__()
        self.slow, self.wait_s, self.block_s = slow, wait_s, block_s
        self.armed = False

    def __getattribute__(self, name: str) -> Any:
        attr = super().__getattribute__(name)
        if name.startswith("_") or not super().__getattribute__("armed") or \
                name not in super().__getattribute__("slow"):
            return attr

        async def slow(*args: Any, **kw: Any) -> Any:
            if self.block_s:
                time.sleep(self.block_s)
            if self.wait_s:
                await asyncio.sleep(self.wait_s)
            return await attr(*args, **kw)

        return slow


class SleepyClock(FakeClock):
    """A fake clock whose next reading blocks the loop for ``block_s`` once armed."""

    __slots__ = ("block_s",)

    def __init__(self) -> None:
        super().__init__()
        self.block_s = 0.0

    def now(self) -> float:
        if self.block_s:
            time.sleep(self.block_s)
            self.block_s = 0.0
        return self.t


async def state(srv: Running) -> tuple[Any, ...]:
    stats = await srv.acme.insights.GetQueueStats(ipb.GetQueueStatsRequest())
    a1 = await srv.acme.router.GetAgentState(rpb.GetAgentStateRequest(agent_id="a1"))
    return tuple(stats.queues), a1


async def expect_deadline(call: Any) -> float:
    t = time.monotonic()
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await call
    assert err.value.code() is DEADLINE, err.value.details()
    return time.monotonic() - t


async def free(srv: Running, agent_id: str = "a1") -> bool:
    s = await srv.acme.router.GetAgentState(rpb.GetAgentStateRequest(agent_id=agent_id))
    return s.status == rpb.AGENT_STATUS_AVAILABLE and not s.contact_ids


class TestEveryRpcHonoursTheDeadline:
    @pytest.mark.parametrize("rpc", [pytest.param(f, id=n) for n, f in RPCS])
    async def test_slow_store_call_ends_by_the_deadline(self, rpc: Call) -> None:
        """With every store call taking 2 s, each RPC answers by its 0.2 s deadline
        (DEADLINE_EXCEEDED, or sooner with its own answer) and the server goes on."""
        store = SlowStore({"upsert_customer_profiles", "get_customer_profile",
                           "upsert_agent_profiles", "get_agent_profile", "put_model",
                           "get_model", "list_models", "set_active_model",
                           "active_model_version", "record_decision", "get_decision",
                           "record_outcome", "decisions"}, wait_s=2.0)
        async with running(store=store) as srv:
            await srv.acme.router.SetAgentState(login("a1", "sales"))
            store.armed = True
            t = time.monotonic()
            try:
                await rpc(srv.acme, srv.acme.metadata)
            except grpc.aio.AioRpcError as err:
                assert err.code() not in (grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN)
            assert time.monotonic() - t < 1.0
            store.armed = False
            assert await free(srv)  # whatever ran, a1 is not left claimed

    @pytest.fixture(autouse=True)
    def _short_timeouts(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """The shared RPC table's calls take their timeout from the client: 0.2 s here."""
        import support

        real = support.Client._wrap

        def wrap(self: Any, stub: Any) -> Any:
            bound = real(self, stub)

            class Short:
                def __getattr__(self, name: str) -> Any:
                    method = getattr(bound, name)

                    def call(*args: Any, **kw: Any) -> Any:
                        kw["timeout"] = 0.2
                        return method(*args, **kw)

                    return call

            return Short()

        monkeypatch.setattr(support.Client, "_wrap", wrap)


class TestNothingClaimedAfterTheDeadline:
    async def test_route_contact_claims_nothing_past_the_deadline(self) -> None:
        """The server is held up past the caller's deadline before it routes: no agent
        is claimed, the contact is not created, the caller sees DEADLINE_EXCEEDED."""
        clock = SleepyClock()
        async with running(clock=clock) as srv:
            await srv.acme.router.SetAgentState(login("a1", "sales"))
            clock.block_s = 0.4
            await expect_deadline(srv.acme.router.RouteContact(contact("c1"), timeout=0.15))
            await asyncio.sleep(0.3)  # let the held-up handler finish
            assert await free(srv)
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await srv.acme.router.EndContact(rpb.EndContactRequest(
                    contact_id="c1", reason=rpb.END_REASON_ABANDONED))
            assert err.value.code() is grpc.StatusCode.NOT_FOUND
            d = await srv.acme.router.RouteContact(contact("c2"))
            assert d.agent_id == "a1"

    async def test_agent_ready_claims_no_contact_past_the_deadline(self) -> None:
        """AgentReady held up past its deadline leaves the waiting contact waiting."""
        clock = SleepyClock()
        async with running(clock=clock) as srv:
            await srv.acme.router.SetAgentState(login("a1", "sales",
                                                      status=rpb.AGENT_STATUS_AWAY))
            q = await srv.acme.router.RouteContact(contact("w1"))
            assert q.mode == cpb.MODE_QUEUED
            clock.block_s = 0.4
            await expect_deadline(srv.acme.router.AgentReady(
                rpb.AgentReadyRequest(agent_id="a1"), timeout=0.15))
            await asyncio.sleep(0.3)
            stats = await srv.acme.insights.GetQueueStats(ipb.GetQueueStatsRequest())
            assert (stats.queues[0].waiting, stats.queues[0].agents_reserved) == (1, 0)
            # ... and the agent as it was: a refused call changes nothing.
            state = await srv.acme.router.GetAgentState(rpb.GetAgentStateRequest(agent_id="a1"))
            assert state.status == rpb.AGENT_STATUS_AWAY

    async def test_deadline_checked_on_connect_events(self) -> None:
        """On a Connect stream whose deadline passes while held up, the route event
        claims nothing."""
        clock = SleepyClock()
        async with running(clock=clock) as srv:
            await srv.acme.router.SetAgentState(login("a1", "sales"))
            s = srv.acme.router.Connect(timeout=0.3)
            await s.write(rpb.SwitchEvent(request_id="0", set_agent_state=login("a2", "x")))
            await s.read()
            clock.block_s = 0.5
            await s.write(rpb.SwitchEvent(request_id="1", route_contact=contact("c1")))
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await s.read()
            assert err.value.code() is DEADLINE
            await asyncio.sleep(0.3)
            assert await free(srv)


class TestAbandonedCallsLeaveNothingReserved:
    async def test_deadline_during_an_awaiting_store_write(self) -> None:
        """The decision's record takes 1 s (awaited); the caller's 0.15 s deadline passes
        meanwhile: the handler is cancelled and the reservation undone."""
        store = SlowStore({"record_decision"}, wait_s=1.0)
        async with running(store=store) as srv:
            await srv.acme.router.SetAgentState(login("a1", "sales"))
            store.armed = True
            await expect_deadline(srv.acme.router.RouteContact(contact("c1"), timeout=0.15))
            await asyncio.sleep(0.1)
            store.armed = False
            assert await free(srv)
            stats = await srv.acme.insights.GetQueueStats(ipb.GetQueueStatsRequest())
            assert stats.queues[0].agents_reserved == 0

    async def test_cancelled_caller(self) -> None:
        """A caller that cancels while its decision is being recorded leaves a1 free."""
        store = SlowStore({"record_decision"}, wait_s=1.0)
        async with running(store=store) as srv:
            await srv.acme.router.SetAgentState(login("a1", "sales"))
            store.armed = True
            call = srv.acme.router.RouteContact(contact("c1"))
            await asyncio.sleep(0.15)
            call.cancel()
            with pytest.raises(asyncio.CancelledError):
                await call
            await asyncio.sleep(0.1)
            store.armed = False
            assert await free(srv)

    async def test_cancelled_connect_stream(self) -> None:
        """A Connect stream cancelled while a route event's decision is being recorded
        leaves nothing reserved; earlier, delivered decisions keep theirs."""
        store = SlowStore({"record_decision"}, wait_s=1.0)
        async with running(store=store) as srv:
            await srv.acme.router.SetAgentState(login("a1", "sales"))
            await srv.acme.router.SetAgentState(login("a0", "sales"))
            s = srv.acme.router.Connect()
            await s.write(rpb.SwitchEvent(request_id="0", route_contact=contact("c0")))
            first = (await s.read()).decision
            store.armed = True
            await s.write(rpb.SwitchEvent(request_id="1", route_contact=contact("c1")))
            await asyncio.sleep(0.15)
            s.cancel()
            await asyncio.sleep(0.1)
            store.armed = False
            other = "a1" if first.agent_id == "a0" else "a0"
            assert await free(srv, other)
            assert not await free(srv, first.agent_id)

    async def test_handler_finishing_after_the_deadline(self) -> None:
        """The decision's record blocks the server past the deadline: the decision
        cannot reach the caller in time, so its reservation is undone."""
        store = SlowStore({"record_decision"}, block_s=0.4)
        async with running(store=store) as srv:
            await srv.acme.router.SetAgentState(login("a1", "sales"))
            store.armed = True
            await expect_deadline(srv.acme.router.RouteContact(contact("c1"), timeout=0.15))
            await asyncio.sleep(0.3)
            store.armed = False
            assert await free(srv)
            stats = await srv.acme.insights.GetQueueStats(ipb.GetQueueStatsRequest())
            assert stats.queues[0].agents_reserved == 0

    async def test_caller_in_time_keeps_its_decision(self) -> None:
        """Control: with the same slow store a caller with enough time gets a1 reserved."""
        store = SlowStore({"record_decision"}, wait_s=0.1)
        async with running(store=store) as srv:
            await srv.acme.router.SetAgentState(login("a1", "sales"))
            store.armed = True
            d = await srv.acme.router.RouteContact(contact("c1"), timeout=5)
            store.armed = False
            assert d.agent_id == "a1"
            assert not await free(srv)

