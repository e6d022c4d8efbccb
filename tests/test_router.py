"""Routing semantics through a real server: baseline in both routing states,
reservations, wrap-up, abandonment, idempotency."""

from __future__ import annotations

import grpc
import pytest
from support import Running, contact, login

from pairline._proto.pairline.v1 import common_pb2 as cpb
from pairline._proto.pairline.v1 import insights_pb2 as ipb
from pairline._proto.pairline.v1 import router_pb2 as rpb

M = cpb


class TestAgentSurplus:
    async def test_longest_idle_agent_wins(self, srv: Running) -> None:
        """With several free agents, the one idle longest gets the contact."""
        r = srv.acme.router
        for i, agent in enumerate(["a1", "a2", "a3"]):
            await r.SetAgentState(login(agent, "sales"))
            srv.clock.advance(1)
        d = await r.RouteContact(contact("c1"))
        assert (d.mode, d.agent_id) == (M.MODE_BASELINE, "a1")
        assert d.decision_id and d.policy == "baseline"
        assert d.offer_expires_at_ms == d.decided_at_ms + 10_000
        d2 = await r.RouteContact(contact("c2"))
        assert d2.agent_id == "a2"

    async def test_ineligible_agents_are_skipped(self, srv: Running) -> None:
        """Queue, channel, proficiency and exclusions decide who may take the contact."""
        r = srv.acme.router
        await r.SetAgentState(login("other-queue", "support"))
        srv.clock.advance(1)
        await r.SetAgentState(login("no-chat", "sales"))
        srv.clock.advance(1)
        await r.SetAgentState(login("excluded", "sales", chat=2))
        srv.clock.advance(1)
        await r.SetAgentState(login("novice", ("sales", 10), chat=2))
        srv.clock.advance(1)
        await r.SetAgentState(login("expert", ("sales", 90), chat=2))
        d = await r.RouteContact(
            contact("c1", channel=M.CHANNEL_CHAT, min_proficiency=50, excluded_agent_ids=["excluded"])
        )
        assert d.agent_id == "expert"

    async def test_no_free_agent_queues_the_contact(self, srv: Running) -> None:
        """Without an eligible agent the contact waits, with its position."""
        r = srv.acme.router
        await r.SetAgentState(login("a1", "sales", status=rpb.AGENT_STATUS_AWAY))
        d1 = await r.RouteContact(contact("c1"))
        d2 = await r.RouteContact(contact("c2"))
        vip = await r.RouteContact(contact("vip", priority=5))
        assert [d.mode for d in (d1, d2, vip)] == [M.MODE_QUEUED] * 3
        assert (d1.queue_position, d2.queue_position, vip.queue_position) == (1, 2, 1)
        assert d1.decision_id == "" and d1.agent_id == ""

    async def test_route_is_idempotent_per_contact(self, srv: Running) -> None:
        """A retried RouteContact returns the same decision, not a second agent."""
        r = srv.acme.router
        await r.SetAgentState(login("a1", "sales"))
        await r.SetAgentState(login("a2", "sales"))
        d1 = await r.RouteContact(contact("c1"))
        d2 = await r.RouteContact(contact("c1"))
        assert d1 == d2
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await r.RouteContact(contact("c1", queue="support"))
        assert err.value.code() is grpc.StatusCode.ALREADY_EXISTS


class TestContactSurplus:
    async def test_priority_then_age_across_queues(self, srv: Running) -> None:
        """An agent in two queues takes the highest-priority, then oldest, contact of either."""
        r = srv.acme.router
        await r.RouteContact(contact("s-old", queue="sales"))
        srv.clock.advance(1)
        await r.RouteContact(contact("b-older-vip", queue="billing", priority=3))
        srv.clock.advance(1)
        await r.RouteContact(contact("b-vip", queue="billing", priority=3))
        srv.clock.advance(1)
        await r.RouteContact(contact("s-new", queue="sales"))
        await r.SetAgentState(login("a1", "sales", "billing"))
        order = []
        for _ in range(4):
            d = await r.AgentReady(rpb.AgentReadyRequest(agent_id="a1"))
            assert d.mode == M.MODE_BASELINE and d.agent_id == "a1"
            order.append(d.contact_id)
            await r.ConfirmDecision(rpb.ConfirmDecisionRequest(decision_id=d.decision_id))
            await r.EndContact(rpb.EndContactRequest(contact_id=d.contact_id,
                                                     reason=rpb.END_REASON_HANDLED))
        assert order == ["b-older-vip", "b-vip", "s-old", "s-new"]

    async def test_queued_then_agent_ready_hands_over(self, srv: Running) -> None:
        """A queued contact goes to the next agent that says it is ready."""
        r = srv.acme.router
        q = await r.RouteContact(contact("c1"))
        assert q.mode == M.MODE_QUEUED
        await r.SetAgentState(login("a1", "sales"))
        d = await r.AgentReady(rpb.AgentReadyRequest(agent_id="a1"))
        assert (d.contact_id, d.agent_id, d.mode) == ("c1", "a1", M.MODE_BASELINE)
        again = await r.AgentReady(rpb.AgentReadyRequest(agent_id="a1"))
        assert again.mode == M.MODE_QUEUED and again.contact_id == ""

    async def test_agent_without_work_joins_free_pool(self, srv: Running) -> None:
        """AgentReady with nobody waiting answers QUEUED; the next contact takes the agent."""
        r = srv.acme.router
        await r.SetAgentState(login("a1", "sales", status=rpb.AGENT_STATUS_AWAY))
        d = await r.AgentReady(rpb.AgentReadyRequest(agent_id="a1"))
        assert d.mode == M.MODE_QUEUED and d.agent_id == "a1"
        routed = await r.RouteContact(contact("c1"))
        assert routed.agent_id == "a1"

    async def test_abandoned_contact_leaves_pool(self, srv: Running) -> None:
        """A waiting contact that hangs up is never handed to an agent."""
        r = srv.acme.router
        await r.RouteContact(contact("gone"))
        await r.RouteContact(contact("stays"))
        end = await r.EndContact(rpb.EndContactRequest(contact_id="gone",
                                                       reason=rpb.END_REASON_ABANDONED))
        assert end.agent_id == ""
        await r.SetAgentState(login("a1", "sales"))
        d = await r.AgentReady(rpb.AgentReadyRequest(agent_id="a1"))
        assert d.contact_id == "stays"
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await r.EndContact(rpb.EndContactRequest(contact_id="gone",
                                                     reason=rpb.END_REASON_ABANDONED))
        assert err.value.code() is grpc.StatusCode.NOT_FOUND


class TestReservations:
    async def test_wrap_up_delays_availability(self, srv: Running) -> None:
        """After a handled contact the agent is in wrap-up until the wrap-up time ends."""
        r = srv.acme.router
        await r.SetAgentState(login("a1", "sales"))
        d = await r.RouteContact(contact("c1"))
        await r.ConfirmDecision(rpb.ConfirmDecisionRequest(decision_id=d.decision_id))
        state = await r.GetAgentState(rpb.GetAgentStateRequest(agent_id="a1"))
        assert state.status == rpb.AGENT_STATUS_BUSY
        end = await r.EndContact(rpb.EndContactRequest(contact_id="c1",
                                                       reason=rpb.END_REASON_HANDLED))
        assert end.agent_id == "a1" and end.wrap_up_until_ms > 0
        state = await r.GetAgentState(rpb.GetAgentStateRequest(agent_id="a1"))
        assert state.status == rpb.AGENT_STATUS_WRAP_UP
        assert (await r.RouteContact(contact("c2"))).mode == M.MODE_QUEUED
        srv.clock.advance(4.9)
        assert (await r.RouteContact(contact("c2"))).mode == M.MODE_QUEUED
        srv.clock.advance(0.2)
        d2 = await r.RouteContact(contact("c2"))  # the waiting contact, asked again
        assert d2.agent_id == "a1" and d2.mode == M.MODE_BASELINE

    async def test_expired_reservation_returns_both(self, srv: Running) -> None:
        """An offer not confirmed in time frees the agent and puts the contact back first."""
        r = srv.acme.router
        await r.SetAgentState(login("a1", "sales"))
        d = await r.RouteContact(contact("c1"))
        await r.RouteContact(contact("c2"))  # waits behind c1
        state = await r.GetAgentState(rpb.GetAgentStateRequest(agent_id="a1"))
        assert state.status == rpb.AGENT_STATUS_RESERVED
        srv.clock.advance(10.01)
        state = await r.GetAgentState(rpb.GetAgentStateRequest(agent_id="a1"))
        assert state.status == rpb.AGENT_STATUS_AVAILABLE and not state.contact_ids
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await r.ConfirmDecision(rpb.ConfirmDecisionRequest(decision_id=d.decision_id))
        assert err.value.code() is grpc.StatusCode.NOT_FOUND
        again = await r.AgentReady(rpb.AgentReadyRequest(agent_id="a1"))
        assert again.contact_id == "c1" and again.decision_id != d.decision_id

    async def test_release_by_rejection_sets_agent_away(self, srv: Running) -> None:
        """An agent who rejects an offer is set away; the contact goes to the next agent."""
        r = srv.acme.router
        await r.SetAgentState(login("a1", "sales"))
        srv.clock.advance(1)
        await r.SetAgentState(login("a2", "sales"))
        d = await r.RouteContact(contact("c1"))
        rel = await r.ReleaseDecision(rpb.ReleaseDecisionRequest(
            decision_id=d.decision_id, reason=rpb.RELEASE_REASON_AGENT_REJECTED))
        assert (rel.agent_id, rel.agent_status) == ("a1", rpb.AGENT_STATUS_AWAY)
        d2 = await r.RouteContact(contact("c1"))
        assert d2.agent_id == "a2"

    async def test_logout_releases_reservations_but_not_calls(self, srv: Running) -> None:
        """Logging out returns unconfirmed offers; with a live call it is refused."""
        r = srv.acme.router
        await r.SetAgentState(login("a1", "sales", chat=2))
        d = await r.RouteContact(contact("c1", channel=M.CHANNEL_CHAT))
        await r.SetAgentState(rpb.SetAgentStateRequest(agent_id="a1",
                                                       status=rpb.AGENT_STATUS_LOGGED_OUT))
        stats = await srv.acme.insights.GetQueueStats(ipb.GetQueueStatsRequest(queue="sales"))
        assert stats.queues[0].waiting == 1
        await r.SetAgentState(login("a1", "sales", chat=2))
        d = await r.AgentReady(rpb.AgentReadyRequest(agent_id="a1"))
        await r.ConfirmDecision(rpb.ConfirmDecisionRequest(decision_id=d.decision_id))
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await r.SetAgentState(rpb.SetAgentStateRequest(agent_id="a1",
                                                           status=rpb.AGENT_STATUS_LOGGED_OUT))
        assert err.value.code() is grpc.StatusCode.FAILED_PRECONDITION

    async def test_chat_capacity_allows_several(self, srv: Running) -> None:
        """A chat agent with capacity 2 takes two chats, not a third."""
        r = srv.acme.router
        await r.SetAgentState(login("a1", "sales", voice=0, chat=2))
        ds = [await r.RouteContact(contact(f"c{i}", channel=M.CHANNEL_CHAT)) for i in range(3)]
        assert [d.agent_id for d in ds] == ["a1", "a1", ""]
        assert ds[2].mode == M.MODE_QUEUED


class TestRetention:
    async def test_decisions_past_retention_or_cap_are_gone(self) -> None:
        """Outcomes can be reported while a decision is kept; not after its time to live,
        and the embedded store keeps at most memory_max_decisions per tenant."""
        import dataclasses

        from support import running, settings

        cfg = dataclasses.replace(settings(decision_ttl_days=1.0), memory_max_decisions=2)
        async with running(cfg) as srv:
            r = srv.acme.router
            for i in range(3):
                await r.SetAgentState(login(f"a{i}", "sales"))
            ds = [await r.RouteContact(contact(f"c{i}")) for i in range(3)]
            with pytest.raises(grpc.aio.AioRpcError) as err:  # the oldest was dropped (cap 2)
                await r.ReportOutcome(rpb.ReportOutcomeRequest(decision_id=ds[0].decision_id,
                                                               outcomes={"converted": 1}))
            assert err.value.code() is grpc.StatusCode.NOT_FOUND
            ok = await r.ReportOutcome(rpb.ReportOutcomeRequest(decision_id=ds[1].decision_id,
                                                                outcomes={"converted": 1}))
            assert ok.stored
            srv.clock.advance(86_400.0)
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await r.ReportOutcome(rpb.ReportOutcomeRequest(decision_id=ds[2].decision_id,
                                                               outcomes={"converted": 1}))
            assert err.value.code() is grpc.StatusCode.NOT_FOUND
