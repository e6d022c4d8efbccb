"""Overload through a real server: message size, concurrent calls, per-tenant rate.

Each limit answers RESOURCE_EXHAUSTED with a message that says which limit; a
refused call changes nothing; one tenant's flood leaves another tenant served.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import sys
from pathlib import Path
from typing import Any

import grpc
import pytest
from flood import isolation
from support import contact, login, running, settings

from pairline._proto.pairline.v1 import common_pb2 as cpb
from pairline._proto.pairline.v1 import insights_pb2 as ipb
from pairline._proto.pairline.v1 import profiles_pb2 as ppb
from pairline._proto.pairline.v1 import router_pb2 as rpb
from pairline.limits import Limits, TokenBucket
from pairline.server import PairlineServer
from pairline.testing import FakeClock

EXHAUSTED = grpc.StatusCode.RESOURCE_EXHAUSTED


async def exhausted(call: Any) -> str:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await call
    assert err.value.code() is EXHAUSTED, f"{err.value.code()}: {err.value.details()}"
    return err.value.details() or ""


async def released(srv: Any) -> None:
    """Every slot is given back (within a second: handlers unwind after their status)."""
    for _ in range(50):
        if srv.server.limits.in_flight == 0:
            return
        await asyncio.sleep(0.02)
    assert srv.server.limits.in_flight == 0


class TestTokenBucket:
    def test_burst_then_rate(self) -> None:
        """A bucket gives its burst at once, then ``rate`` per second, never above burst."""
        t = [0.0]
        b = TokenBucket(10, 3, lambda: t[0])
        assert [b.take() for _ in range(4)] == [True, True, True, False]
        t[0] += 0.1
        assert b.take() and not b.take()
        t[0] += 100
        assert sum(b.take() for _ in range(10)) == 3

    def test_limits_count_calls_per_tenant(self) -> None:
        """enter/leave keep the server and tenant counts; unknown tenants are only
        bound by the server limit."""
        lim = Limits(3, [("a", 0, 0, 1)])
        lim.enter("a")
        with pytest.raises(Exception, match="tenant is at its limit of 1"):
            lim.enter("a")
        lim.enter("b")
        lim.enter("b")
        with pytest.raises(Exception, match="server is at its limit of 3"):
            lim.enter("b")
        lim.leave("a")
        lim.leave("b")
        assert lim.in_flight == 1


class TestMessageSize:
    async def test_oversized_request_is_resource_exhausted(self) -> None:
        """A request above max_message_bytes is refused RESOURCE_EXHAUSTED naming the sizes,
        and nothing of it is applied; the server keeps serving."""
        cfg = dataclasses.replace(settings(), max_message_bytes=16 * 1024)
        async with running(cfg) as srv:
            big = ppb.AgentProfileBatch(profiles=[
                ppb.AgentProfile(agent_id=f"a{i}", vector=[1, 2, 3], source_time_ms=1)
                for i in range(2000)])
            assert big.ByteSize() > 16 * 1024
            details = await exhausted(srv.acme.profiles.UpsertAgentProfiles(big))
            assert "larger than max" in details
            small = ppb.AgentProfileBatch(profiles=big.profiles[:10])
            out = await srv.acme.profiles.UpsertAgentProfiles(small)
            assert out.accepted == 10  # none of the big batch was applied before
            long_id = "x" * (17 * 1024)
            await exhausted(srv.acme.router.RouteContact(contact(long_id)))
            stats = await srv.acme.insights.GetQueueStats(ipb.GetQueueStatsRequest())
            assert list(stats.queues) == []


class TestConcurrency:
    async def test_server_limit_counts_open_streams(self) -> None:
        """With max_concurrent_rpcs=2, two open streams fill the server: the next call is
        RESOURCE_EXHAUSTED (for any tenant) until one closes."""
        cfg = dataclasses.replace(settings(), max_concurrent_rpcs=2)
        async with running(cfg) as srv:
            streams = [srv.acme.router.Connect(), srv.globex.router.Connect()]
            for s in streams:
                await s.write(rpb.SwitchEvent(request_id="1", route_contact=contact("c1")))
                assert (await s.read()).decision.contact_id == "c1"
            details = await exhausted(srv.globex.router.RouteContact(contact("c2")))
            assert "server is at its limit of 2 concurrent calls" in details
            await streams[0].done_writing()
            assert await streams[0].code() is grpc.StatusCode.OK
            d = await srv.globex.router.RouteContact(contact("c2"))
            assert d.contact_id == "c2"
            await streams[1].done_writing()
            await streams[1].code()

    async def test_tenant_limit_leaves_others_served(self) -> None:
        """A tenant at its max_concurrent_rpcs is refused; the other tenant is not."""
        cfg = settings(max_concurrent_rpcs=1)
        async with running(cfg) as srv:
            s = srv.acme.router.Connect()
            await s.write(rpb.SwitchEvent(request_id="1", route_contact=contact("c1")))
            await s.read()
            details = await exhausted(srv.acme.router.RouteContact(contact("c2")))
            assert "tenant is at its limit of 1 concurrent calls" in details
            assert (await srv.globex.router.RouteContact(contact("c2"))).contact_id == "c2"
            await s.done_writing()
            await s.code()
            assert (await srv.acme.router.RouteContact(contact("c2"))).contact_id == "c2"

    async def test_refused_calls_release_their_slot(self) -> None:
        """Calls refused after admission (invalid, not found, rate) do not leak a slot."""
        cfg = dataclasses.replace(settings(rate_per_s=1000, rate_burst=1000),
                                  max_concurrent_rpcs=1)
        async with running(cfg) as srv:
            for _ in range(20):
                with pytest.raises(grpc.aio.AioRpcError):
                    await srv.acme.router.GetAgentState(rpb.GetAgentStateRequest(agent_id="x"))
                with pytest.raises(grpc.aio.AioRpcError):
                    await srv.acme.router.RouteContact(contact(""))
            # An abort sends its status before the handler unwinds: allow it a moment.
            await released(srv)
            assert (await srv.acme.router.RouteContact(contact("c1"))).contact_id == "c1"


    async def test_cancelled_calls_release_their_slot(self) -> None:
        """Streams and calls the client cancels, or that end by deadline, give their slot back."""
        cfg = dataclasses.replace(settings(), max_concurrent_rpcs=3)
        async with running(cfg) as srv:
            for _ in range(3):
                s = srv.acme.router.Connect()
                await s.write(rpb.SwitchEvent(request_id="1", route_contact=contact("c1")))
                await s.read()
                s.cancel()
                export = srv.acme.insights.ExportHistory(ipb.ExportHistoryRequest(
                    outcome="converted"))
                export.cancel()
            await released(srv)
            ok = [await srv.globex.router.RouteContact(contact(f"g{i}")) for i in range(3)]
            assert len(ok) == 3


class TestRate:
    async def test_unary_rate_limit_per_tenant(self) -> None:
        """Past its burst a tenant is RESOURCE_EXHAUSTED with its limit in the message;
        the other tenant's calls pass; tokens come back at rate_per_s."""
        async with running(settings(rate_per_s=4, rate_burst=5)) as srv:
            await srv.globex.router.SetAgentState(login("g1", "sales"))
            for i in range(5):
                await srv.acme.router.RouteContact(contact(f"c{i}"))
            details = await exhausted(srv.acme.router.RouteContact(contact("c-over")))
            assert "rate limit of 4 requests/s (burst 5)" in details
            assert (await srv.globex.router.RouteContact(contact("g-c"))).agent_id == "g1"
            stats = await srv.globex.insights.GetQueueStats(ipb.GetQueueStatsRequest())
            assert stats.queues[0].contacts_in_service == 1
            await asyncio.sleep(0.3)  # one token back
            assert (await srv.acme.router.RouteContact(contact("c-later"))).contact_id == \
                "c-later"
            # the refused contact was never created: ending it is NOT_FOUND
            await asyncio.sleep(0.3)
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await srv.acme.router.EndContact(rpb.EndContactRequest(
                    contact_id="c-over", reason=rpb.END_REASON_ABANDONED))
            assert err.value.code() is grpc.StatusCode.NOT_FOUND

    async def test_stream_events_are_rate_limited_per_event(self) -> None:
        """On Connect each event costs a token: over the limit an event gets a
        RESOURCE_EXHAUSTED error reply, is not acted on, and the stream stays open."""
        async with running(settings(rate_per_s=0.001, rate_burst=4)) as srv:
            s = srv.acme.router.Connect()  # opening costs one token
            replies = []
            for i in range(5):
                await s.write(rpb.SwitchEvent(request_id=str(i), route_contact=contact(f"c{i}")))
                replies.append(await s.read())
            kinds = [r.WhichOneof("reply") for r in replies]
            assert kinds == ["decision"] * 3 + ["error"] * 2
            assert replies[3].error.code == EXHAUSTED.value[0]
            assert "rate limit" in replies[3].error.message
            assert replies[4].request_id == "4"
            await s.done_writing()
            assert await s.code() is grpc.StatusCode.OK
            stats = await srv.globex.insights.GetQueueStats(ipb.GetQueueStatsRequest())
            assert list(stats.queues) == []


class TestFloodIsolation:
    # Stated bound (generous for a shared 2-core CI box): during a flood by another
    # tenant, a tenant's p50 stays under FLOOD_P50_MS and its calls all succeed.
    FLOOD_P50_MS = 50.0

    async def test_one_tenants_flood_does_not_starve_another(self, tmp_path: Path) -> None:
        """acme floods (another process, 16 calls in flight, rate-limited to 50/s):
        globex's calls all succeed and its latency stays within the stated bound."""
        cfg = dataclasses.replace(settings(rate_per_s=50, rate_burst=50),
                                  listen="127.0.0.1:0")
        cfg = dataclasses.replace(cfg, tenants=(
            cfg.tenants[0], dataclasses.replace(cfg.tenants[1], rate_per_s=0.0)))
        server = PairlineServer(cfg, clock=FakeClock())
        await server.start()
        try:
            from support import KEYS
            out = await isolation(server.address, KEYS["globex"], KEYS["acme"], 1.5, 16)
        finally:
            await server.stop(0.2)
        (tmp_path / "flood.json").write_text(json.dumps(out))
        print("flood isolation:", json.dumps(out), file=sys.stderr)
        flood = out["flood"]
        assert flood["codes"].get("RESOURCE_EXHAUSTED", 0) > flood["codes"].get("NOT_FOUND", 0)
        assert set(out["flooded_codes"]) == {"NOT_FOUND"}  # all served (victim has no agent)
        assert out["flooded"]["p50_ms"] < self.FLOOD_P50_MS, out


class TestQueuesInUse:
    """Stray queue names (a typo, random names from a misbehaving switch) cannot
    grow a tenant's state, metrics and GetQueueStats without bound."""

    @staticmethod
    async def queues(srv: Any) -> list[str]:
        stats = await srv.acme.insights.GetQueueStats(ipb.GetQueueStatsRequest())
        return sorted(q.queue for q in stats.queues)

    async def test_queues_left_empty_are_forgotten_and_a_cap_holds(self) -> None:
        async with running(settings(max_queues=3)) as srv:
            r = srv.acme.router
            await r.SetAgentState(login("a1", "sales"))
            for i in range(20):  # each queue gets a contact that then hangs up
                q = await r.RouteContact(contact(f"c{i}", queue=f"typo-{i}"))
                assert q.mode == cpb.MODE_QUEUED
                await r.EndContact(rpb.EndContactRequest(contact_id=f"c{i}",
                                                         reason=rpb.END_REASON_ABANDONED))
            names = await self.queues(srv)
            assert "sales" in names and len(names) <= 3, names
            # Queues still in use hold their place: two more contacts wait...
            await r.RouteContact(contact("w1", queue="billing"))
            await r.RouteContact(contact("w2", queue="returns"))
            # ... so a fourth queue in use is refused, and nothing is created.
            details = await exhausted(r.RouteContact(contact("w3", queue="typo-x")))
            assert "maximum of 3 queues in use" in details
            assert await self.queues(srv) == ["billing", "returns", "sales"]
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await r.EndContact(rpb.EndContactRequest(contact_id="w3",
                                                         reason=rpb.END_REASON_ABANDONED))
            assert err.value.code() is grpc.StatusCode.NOT_FOUND
            # An agent's new queue counts the same; the refused change is not made.
            details = await exhausted(r.SetAgentState(login("a2", "typo-y")))
            assert "maximum of 3 queues in use" in details
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await r.GetAgentState(rpb.GetAgentStateRequest(agent_id="a2"))
            assert err.value.code() is grpc.StatusCode.NOT_FOUND
            # An agent moving from a queue only it serves to a new one leaves the
            # count as it is: allowed at the cap.
            moved = await r.SetAgentState(login("a1", "typo-z"))
            assert [q.queue for q in moved.queues] == ["typo-z"]
            await r.SetAgentState(login("a1", "sales"))
            # Once one of them is no longer used, there is room again.
            await r.EndContact(rpb.EndContactRequest(contact_id="w2",
                                                     reason=rpb.END_REASON_ABANDONED))
            q = await r.RouteContact(contact("w4", queue="typo-x"))
            assert q.mode == cpb.MODE_QUEUED
            assert await self.queues(srv) == ["billing", "sales", "typo-x"]
