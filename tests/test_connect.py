"""The Connect stream: the switch's events on one bidirectional stream, each answered
with its request_id; errors are replies, not the end of the stream."""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
import pytest
from support import Client, Running, bad_request_field, contact, error_field, login

from pairline._proto.pairline.v1 import common_pb2 as cpb
from pairline._proto.pairline.v1 import insights_pb2 as ipb
from pairline._proto.pairline.v1 import router_pb2 as rpb

M = cpb
CODE = {c.value[0]: c for c in grpc.StatusCode}


class Conn:
    """One Connect stream of a tenant, asked one event at a time (or pipelined)."""

    def __init__(self, client: Client) -> None:
        self.call = client.router.Connect(timeout=None)

    async def send(self, rid: str, **event: Any) -> None:
        await self.call.write(rpb.SwitchEvent(request_id=rid, **event))

    async def read(self) -> rpb.SwitchReply:
        reply = await asyncio.wait_for(self.call.read(), 10)
        assert reply is not grpc.aio.EOF, "the stream ended"
        return reply

    async def ask(self, rid: str, **event: Any) -> rpb.SwitchReply:
        await self.send(rid, **event)
        reply = await self.read()
        assert reply.request_id == rid
        return reply

    async def close(self) -> None:
        """Half-close; the server ends the stream OK with nothing left unanswered."""
        await self.call.done_writing()
        assert await asyncio.wait_for(self.call.read(), 10) is grpc.aio.EOF
        assert await self.call.code() is grpc.StatusCode.OK


def error_of(reply: rpb.SwitchReply) -> tuple[grpc.StatusCode, str | None]:
    assert reply.WhichOneof("reply") == "error", reply
    return CODE[reply.error.code], bad_request_field(reply.error)


async def unary_error(call: Any) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await call
    return err.value


class TestLifeCycle:
    async def test_full_contact_life_cycle_over_one_stream(self, srv: Running) -> None:
        """Login, route, confirm, end (handled, wrap-up) and report, each reply echoing its id."""
        conn = Conn(srv.acme)
        now_ms = round(srv.clock.now() * 1000)
        r = await conn.ask("login-1", set_agent_state=login("a1", "sales"))
        assert r.WhichOneof("reply") == "agent_state"
        assert (r.agent_state.agent_id, r.agent_state.status) == ("a1", rpb.AGENT_STATUS_AVAILABLE)

        r = await conn.ask("route-1", route_contact=contact("c1", customer_key="+15550100"))
        d = r.decision
        assert r.WhichOneof("reply") == "decision"
        assert (d.contact_id, d.agent_id, d.mode) == ("c1", "a1", M.MODE_BASELINE)
        assert d.decision_id and d.offer_expires_at_ms == now_ms + 10_000

        r = await conn.ask("confirm-1",
                           confirm_decision=rpb.ConfirmDecisionRequest(decision_id=d.decision_id))
        assert r.WhichOneof("reply") == "confirm_decision"
        assert (r.confirm_decision.contact_id, r.confirm_decision.agent_id) == ("c1", "a1")

        srv.clock.advance(30)  # a long call
        r = await conn.ask("end-1", end_contact=rpb.EndContactRequest(
            contact_id="c1", reason=rpb.END_REASON_HANDLED, wrap_up_ms=3_000))
        assert r.WhichOneof("reply") == "end_contact"
        assert (r.end_contact.contact_id, r.end_contact.agent_id) == ("c1", "a1")
        assert r.end_contact.wrap_up_until_ms == now_ms + 33_000

        r = await conn.ask("outcome-1", report_outcome=rpb.ReportOutcomeRequest(
            decision_id=d.decision_id, outcomes={"converted": 1.0, "revenue": 42.5}))
        assert r.WhichOneof("reply") == "report_outcome"
        assert (r.report_outcome.decision_id, r.report_outcome.stored) == (d.decision_id, True)

        state = await srv.acme.router.GetAgentState(rpb.GetAgentStateRequest(agent_id="a1"))
        assert state.status == rpb.AGENT_STATUS_WRAP_UP and not state.contact_ids
        assert state.wrap_up_until_ms == now_ms + 33_000
        await conn.close()

    async def test_queued_contact_is_handed_over_by_agent_ready(self, srv: Running) -> None:
        """A contact queued over the stream goes to the agent that then says it is ready."""
        conn = Conn(srv.acme)
        q = (await conn.ask("q", route_contact=contact("c1"))).decision
        assert (q.mode, q.queue_position, q.decision_id, q.agent_id) == (M.MODE_QUEUED, 1, "", "")
        away = login("a1", "sales", status=rpb.AGENT_STATUS_AWAY)
        assert (await conn.ask("s", set_agent_state=away)).agent_state.status == (
            rpb.AGENT_STATUS_AWAY)
        r = await conn.ask("ready-1", agent_ready=rpb.AgentReadyRequest(agent_id="a1"))
        d = r.decision
        assert (d.contact_id, d.agent_id, d.mode) == ("c1", "a1", M.MODE_BASELINE)
        assert d.decision_id
        r = await conn.ask("confirm",
                           confirm_decision=rpb.ConfirmDecisionRequest(decision_id=d.decision_id))
        assert r.confirm_decision.agent_id == "a1"
        again = (await conn.ask("ready-2", agent_ready=rpb.AgentReadyRequest(agent_id="a1")))
        assert again.decision.mode == M.MODE_QUEUED and again.decision.contact_id == ""
        stats = await srv.acme.insights.GetQueueStats(ipb.GetQueueStatsRequest(queue="sales"))
        assert stats.queues[0].waiting == 0 and stats.queues[0].contacts_in_service == 1
        await conn.close()

    async def test_release_over_stream_puts_contact_back(self, srv: Running) -> None:
        """An offer rejected over the stream sets the agent away and re-queues the contact."""
        conn = Conn(srv.acme)
        await conn.ask("s", set_agent_state=login("a1", "sales"))
        d = (await conn.ask("r", route_contact=contact("c1"))).decision
        r = await conn.ask("rel", release_decision=rpb.ReleaseDecisionRequest(
            decision_id=d.decision_id, reason=rpb.RELEASE_REASON_AGENT_REJECTED))
        assert r.WhichOneof("reply") == "release_decision"
        rel = r.release_decision
        assert (rel.contact_id, rel.agent_id, rel.agent_status) == (
            "c1", "a1", rpb.AGENT_STATUS_AWAY)
        retry = (await conn.ask("again", route_contact=contact("c1"))).decision
        assert retry.mode == M.MODE_QUEUED and retry.queue_position == 1
        await conn.close()


class TestErrors:
    async def test_invalid_event_gets_error_reply_and_stream_continues(self, srv: Running) -> None:
        """Each bad event gets google.rpc.Status with its code; later events are still served."""
        conn = Conn(srv.acme)
        await conn.ask("ok-0", set_agent_state=login("a1", "sales"))
        cases: list[tuple[dict[str, Any], grpc.StatusCode, str | None]] = [
            ({"route_contact": contact("x", channel=M.CHANNEL_UNSPECIFIED)},
             grpc.StatusCode.INVALID_ARGUMENT, "route_contact.channel"),
            ({"route_contact": contact("x", priority=1001)},
             grpc.StatusCode.INVALID_ARGUMENT, "route_contact.priority"),
            ({"set_agent_state": rpb.SetAgentStateRequest(
                agent_id="a1", status=rpb.AGENT_STATUS_RESERVED)},
             grpc.StatusCode.INVALID_ARGUMENT, "set_agent_state.status"),
            ({"end_contact": rpb.EndContactRequest(contact_id="x")},
             grpc.StatusCode.INVALID_ARGUMENT, "end_contact.reason"),
            ({"report_outcome": rpb.ReportOutcomeRequest(decision_id="d")},
             grpc.StatusCode.INVALID_ARGUMENT, "report_outcome.outcomes"),
            ({"confirm_decision": rpb.ConfirmDecisionRequest(decision_id="nope")},
             grpc.StatusCode.NOT_FOUND, None),
            ({"agent_ready": rpb.AgentReadyRequest(agent_id="ghost")},
             grpc.StatusCode.NOT_FOUND, None),
            ({"end_contact": rpb.EndContactRequest(contact_id="ghost",
                                                   reason=rpb.END_REASON_ABANDONED)},
             grpc.StatusCode.NOT_FOUND, None),
        ]
        for i, (event, code, field) in enumerate(cases):
            reply = await conn.ask(f"bad-{i}", **event)
            assert error_of(reply) == (code, field), (event, reply)
            assert reply.error.message  # something the operator can read
            # The stream is still open and serving.
            ok = await conn.ask(f"ok-{i}", route_contact=contact(f"c{i}"))
            assert ok.WhichOneof("reply") == "decision" and ok.decision.contact_id == f"c{i}"
        await conn.close()

    async def test_state_errors_on_stream(self, srv: Running) -> None:
        """Illegal transitions answer FAILED_PRECONDITION / ALREADY_EXISTS as error replies."""
        conn = Conn(srv.acme)
        await conn.ask("q", route_contact=contact("waiting"))
        r = await conn.ask("h", end_contact=rpb.EndContactRequest(
            contact_id="waiting", reason=rpb.END_REASON_HANDLED))
        assert error_of(r)[0] is grpc.StatusCode.FAILED_PRECONDITION
        r = await conn.ask("x", route_contact=contact("waiting", queue="support"))
        assert error_of(r)[0] is grpc.StatusCode.ALREADY_EXISTS
        r = await conn.ask("new", set_agent_state=rpb.SetAgentStateRequest(
            agent_id="fresh", status=rpb.AGENT_STATUS_AVAILABLE))
        assert error_of(r)[0] is grpc.StatusCode.FAILED_PRECONDITION
        await conn.ask("in", set_agent_state=login("a1", "sales"))
        d = (await conn.ask("ready", agent_ready=rpb.AgentReadyRequest(agent_id="a1"))).decision
        assert d.contact_id == "waiting"
        await conn.ask("c", confirm_decision=rpb.ConfirmDecisionRequest(decision_id=d.decision_id))
        r = await conn.ask("out", set_agent_state=rpb.SetAgentStateRequest(
            agent_id="a1", status=rpb.AGENT_STATUS_LOGGED_OUT))
        assert error_of(r)[0] is grpc.StatusCode.FAILED_PRECONDITION
        await conn.close()

    async def test_event_without_oneof_is_invalid_argument(self, srv: Running) -> None:
        """A SwitchEvent with no event set gets INVALID_ARGUMENT and the stream stays open."""
        conn = Conn(srv.acme)
        reply = await conn.ask("empty")
        code, field = error_of(reply)
        assert code is grpc.StatusCode.INVALID_ARGUMENT and field == "event"
        assert (await conn.ask("after", route_contact=contact("c1"))).decision.contact_id == "c1"
        await conn.close()

    async def test_stream_errors_match_unary_errors(self, srv: Running) -> None:
        """An event fails with the code of the same unary call, naming the field under the event."""
        r = srv.acme.router
        await r.SetAgentState(login("a1", "sales"))
        conn = Conn(srv.acme)
        cases = [
            ("route_contact", "RouteContact", contact("c1", context={"x": float("nan")})),
            ("route_contact", "RouteContact", contact("c1", min_proficiency=101)),
            ("set_agent_state", "SetAgentState", login("a1", ("sales", 101))),
            ("set_agent_state", "SetAgentState",
             rpb.SetAgentStateRequest(agent_id="a1", status=rpb.AGENT_STATUS_AWAY,
                                      wrap_up_ms=5)),
            ("agent_ready", "AgentReady", rpb.AgentReadyRequest()),
            ("confirm_decision", "ConfirmDecision", rpb.ConfirmDecisionRequest(decision_id="z")),
            ("release_decision", "ReleaseDecision",
             rpb.ReleaseDecisionRequest(decision_id="z", reason=7)),
            ("end_contact", "EndContact",
             rpb.EndContactRequest(contact_id="c1", reason=rpb.END_REASON_HANDLED,
                                   wrap_up_ms=-1)),
            ("report_outcome", "ReportOutcome",
             rpb.ReportOutcomeRequest(decision_id="z", outcomes={"x": 1.0})),
        ]
        for i, (event, method, req) in enumerate(cases):
            err = await unary_error(getattr(r, method)(req))
            reply = await conn.ask(f"e{i}", **{event: req})
            code, field = error_of(reply)
            assert code is err.code(), (method, req, reply)
            unary_field = error_field(err)
            assert field == (f"{event}.{unary_field}" if unary_field else None), (field, err)
        await conn.close()

    async def test_rejected_event_changes_nothing(self, srv: Running) -> None:
        """A rejected event leaves agents and pools as they were."""
        conn = Conn(srv.acme)
        before = (await conn.ask("in", set_agent_state=login("a1", "sales", chat=2))).agent_state
        bad_caps = login("a1", "support")
        bad_caps.capacities.append(rpb.ChannelCapacity(channel=M.CHANNEL_EMAIL, capacity=101))
        assert error_of(await conn.ask("caps", set_agent_state=bad_caps))[0] is (
            grpc.StatusCode.INVALID_ARGUMENT)
        bad = contact("c1", excluded_agent_ids=["a2", ""])
        assert error_of(await conn.ask("excl", route_contact=bad))[1] == (
            "route_contact.excluded_agent_ids[1]")
        long_id = "r" * 129
        await conn.send(long_id, route_contact=contact("c2"))
        reply = await conn.read()
        code, field = error_of(reply)
        assert (code, field) == (grpc.StatusCode.INVALID_ARGUMENT, "request_id")
        assert reply.request_id and long_id.startswith(reply.request_id)
        after = await srv.acme.router.GetAgentState(rpb.GetAgentStateRequest(agent_id="a1"))
        assert after == before
        stats = await srv.acme.insights.GetQueueStats(ipb.GetQueueStatsRequest())
        assert all(q.waiting == 0 and q.contacts_in_service == 0 for q in stats.queues)
        # Neither contact exists: routing them now is a first routing.
        for cid in ("c1", "c2"):
            d = (await conn.ask(cid, route_contact=contact(cid, channel=M.CHANNEL_CHAT))).decision
            assert d.agent_id == "a1" and d.mode == M.MODE_BASELINE
        await conn.close()

    async def test_stream_needs_a_key(self, srv: Running) -> None:
        """Connect without a known API key fails UNAUTHENTICATED; nothing is processed."""
        for key in ("", "not-a-key"):
            call = srv.client(key).router.Connect(timeout=5)
            with pytest.raises(grpc.aio.AioRpcError) as err:
                # The server may refuse the call before the write goes out: the
                # error then surfaces on the write instead of the read.
                await call.write(rpb.SwitchEvent(request_id="r", route_contact=contact("sneaky")))
                await call.read()
            assert err.value.code() is grpc.StatusCode.UNAUTHENTICATED
        stats = await srv.acme.insights.GetQueueStats(ipb.GetQueueStatsRequest())
        assert sum(q.waiting for q in stats.queues) == 0


class TestPipelining:
    async def test_500_pipelined_events_all_answered(self, srv: Running) -> None:
        """500 events written before any reply is read each get exactly one matching reply."""
        await srv.acme.router.SetAgentState(login("a1", "sales"))
        conn = Conn(srv.acme)
        sent = {f"req-{i:03d}": f"c{i:03d}" for i in range(500)}
        for rid, cid in sent.items():
            await conn.send(rid, route_contact=contact(cid))
        replies = [await conn.read() for _ in sent]
        got = {r.request_id: r for r in replies}
        assert len(got) == 500 and set(got) == set(sent)
        for rid, r in got.items():
            assert r.WhichOneof("reply") == "decision" and r.decision.contact_id == sent[rid]
        routed = [r.decision for r in replies if r.decision.decision_id]
        queued = [r.decision for r in replies if not r.decision.decision_id]
        assert len(routed) == 1 and routed[0].agent_id == "a1"
        assert all(d.mode == M.MODE_QUEUED for d in queued)
        assert sorted(d.queue_position for d in queued) == list(range(1, 500))
        stats = await srv.acme.insights.GetQueueStats(ipb.GetQueueStatsRequest(queue="sales"))
        assert stats.queues[0].waiting == 499
        await conn.close()

    async def test_pipelined_mixed_events_get_replies_of_their_kind(self, srv: Running) -> None:
        """A pipelined mix of every event kind (some failing) is answered kind for kind."""
        conn = Conn(srv.acme)
        expected: dict[str, str] = {}
        for i in range(20):
            expected[f"s{i}"] = "agent_state"
            await conn.send(f"s{i}", set_agent_state=login(f"a{i}", "sales"))
        for i in range(200):
            expected[f"r{i}"] = "decision"
            await conn.send(f"r{i}", route_contact=contact(f"c{i}"))
            if i % 10 == 0:
                expected[f"a{i}"] = "decision"
                await conn.send(f"a{i}", agent_ready=rpb.AgentReadyRequest(agent_id=f"a{i // 10}"))
                expected[f"x{i}"] = "error"  # an unknown decision: NOT_FOUND
                await conn.send(f"x{i}", confirm_decision=rpb.ConfirmDecisionRequest(
                    decision_id=f"bogus-{i}"))
        for i in range(150, 200):
            expected[f"e{i}"] = "end_contact"
            await conn.send(f"e{i}", end_contact=rpb.EndContactRequest(
                contact_id=f"c{i}", reason=rpb.END_REASON_ABANDONED))
        replies = {}
        for _ in expected:
            reply = await conn.read()
            assert reply.request_id not in replies, f"two replies for {reply.request_id}"
            replies[reply.request_id] = reply
        assert {rid: r.WhichOneof("reply") for rid, r in replies.items()} == expected
        assert all(error_of(replies[rid]) == (grpc.StatusCode.NOT_FOUND, None)
                   for rid in expected if rid.startswith("x"))
        routed = {r.decision.contact_id for r in replies.values()
                  if r.WhichOneof("reply") == "decision" and r.decision.decision_id}
        assert len(routed) == 20  # one per agent, each with capacity one voice contact
        stats = await srv.acme.insights.GetQueueStats(ipb.GetQueueStatsRequest(queue="sales"))
        ended_waiting = sum(
            1 for i in range(150, 200) if replies[f"e{i}"].end_contact.agent_id == "")
        assert stats.queues[0].waiting == 200 - 20 - ended_waiting
        await conn.close()

    async def test_concurrent_streams_do_not_cross(self, srv: Running) -> None:
        """Replies go to the stream that sent the event, even with the same request_ids."""
        conns = {"acme-1": Conn(srv.acme), "acme-2": Conn(srv.acme), "globex": Conn(srv.globex)}

        async def talk(name: str, conn: Conn) -> dict[str, str]:
            for i in range(150):
                await conn.send(f"r{i}", route_contact=contact(f"{name}-c{i}"))
            out = {}
            for _ in range(150):
                reply = await conn.read()
                out[reply.request_id] = reply.decision.contact_id
            return out

        results = await asyncio.gather(*(talk(n, c) for n, c in conns.items()))
        for (name, _), got in zip(conns.items(), results, strict=True):
            assert got == {f"r{i}": f"{name}-c{i}" for i in range(150)}
        acme = await srv.acme.insights.GetQueueStats(ipb.GetQueueStatsRequest())
        globex = await srv.globex.insights.GetQueueStats(ipb.GetQueueStatsRequest())
        assert (acme.queues[0].waiting, globex.queues[0].waiting) == (300, 150)
        for conn in conns.values():
            await conn.close()


class TestViewsAgree:
    async def test_stream_and_unary_see_the_same_state(self, srv: Running) -> None:
        """State changed over the stream is what unary calls see, and the other way round."""
        r = srv.acme.router
        conn = Conn(srv.acme)
        set_reply = (await conn.ask("s", set_agent_state=login("a1", "sales", chat=3)))
        unary = await r.GetAgentState(rpb.GetAgentStateRequest(agent_id="a1"))
        assert set_reply.agent_state == unary

        d_unary = await r.RouteContact(contact("c1", channel=M.CHANNEL_CHAT))
        # A retry over the stream is the same decision (idempotent across transports).
        d_stream = (await conn.ask("retry", route_contact=contact("c1", channel=M.CHANNEL_CHAT)))
        assert d_stream.decision == d_unary
        await conn.ask("c", confirm_decision=rpb.ConfirmDecisionRequest(
            decision_id=d_unary.decision_id))
        d2 = (await conn.ask("r2", route_contact=contact("c2", channel=M.CHANNEL_CHAT))).decision
        state = await r.GetAgentState(rpb.GetAgentStateRequest(agent_id="a1"))
        assert list(state.contact_ids) == ["c1", "c2"]
        assert state.status == rpb.AGENT_STATUS_RESERVED
        assert [(c.channel, c.capacity) for c in state.in_use] == [(M.CHANNEL_CHAT, 2)]

        # Confirmed over unary, so a stream confirm of the same decision finds nothing.
        await r.ConfirmDecision(rpb.ConfirmDecisionRequest(decision_id=d2.decision_id))
        again = await conn.ask("c2", confirm_decision=rpb.ConfirmDecisionRequest(
            decision_id=d2.decision_id))
        assert error_of(again)[0] is grpc.StatusCode.NOT_FOUND
        end = await conn.ask("e", end_contact=rpb.EndContactRequest(
            contact_id="c1", reason=rpb.END_REASON_HANDLED))
        state = await r.GetAgentState(rpb.GetAgentStateRequest(agent_id="a1"))
        assert list(state.contact_ids) == ["c2"]
        assert state.status == rpb.AGENT_STATUS_WRAP_UP
        assert state.wrap_up_until_ms == end.end_contact.wrap_up_until_ms
        away = await r.SetAgentState(rpb.SetAgentStateRequest(
            agent_id="a1", status=rpb.AGENT_STATUS_AWAY))
        ready = await conn.ask("ready", agent_ready=rpb.AgentReadyRequest(agent_id="a1"))
        assert away.status == rpb.AGENT_STATUS_AWAY
        assert ready.decision.mode == M.MODE_QUEUED and ready.decision.agent_id == "a1"
        assert (await r.GetAgentState(rpb.GetAgentStateRequest(agent_id="a1"))).status == (
            rpb.AGENT_STATUS_BUSY)  # free again, still handling c2
        await conn.close()

    async def test_tenants_are_separate_on_streams(self, srv: Running) -> None:
        """A globex stream cannot see or touch acme's agents, contacts or decisions."""
        await srv.acme.router.SetAgentState(login("a1", "sales"))
        d = await srv.acme.router.RouteContact(contact("c1"))
        conn = Conn(srv.globex)
        r = await conn.ask("1", confirm_decision=rpb.ConfirmDecisionRequest(
            decision_id=d.decision_id))
        assert error_of(r)[0] is grpc.StatusCode.NOT_FOUND
        r = await conn.ask("2", agent_ready=rpb.AgentReadyRequest(agent_id="a1"))
        assert error_of(r)[0] is grpc.StatusCode.NOT_FOUND
        r = await conn.ask("3", route_contact=contact("c1"))
        assert r.decision.mode == M.MODE_QUEUED  # globex's own c1, no agent there
        await conn.close()
        mine = await srv.acme.router.GetAgentState(rpb.GetAgentStateRequest(agent_id="a1"))
        assert mine.status == rpb.AGENT_STATUS_RESERVED and list(mine.contact_ids) == ["c1"]


class TestConnectBatch:
    async def test_batches_answered_in_order(self, srv: Running) -> None:
        """Each batch gets one reply per event, in order; errors stay per event."""
        call = srv.acme.router.ConnectBatch(timeout=10)
        events = [rpb.SwitchEvent(request_id="login", set_agent_state=login("a1", "sales"))]
        events += [rpb.SwitchEvent(request_id=f"r{i}", route_contact=contact(f"c{i}"))
                   for i in range(5)]
        events.append(rpb.SwitchEvent(request_id="bad", route_contact=contact("")))
        await call.write(rpb.SwitchEventBatch(events=events))
        reply = await call.read()
        assert [r.request_id for r in reply.replies] == [e.request_id for e in events]
        kinds = [r.WhichOneof("reply") for r in reply.replies]
        assert kinds == ["agent_state"] + ["decision"] * 5 + ["error"]
        assert reply.replies[1].decision.agent_id == "a1"
        assert [r.decision.queue_position for r in reply.replies[2:6]] == [1, 2, 3, 4]
        assert reply.replies[-1].error.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
        await call.write(rpb.SwitchEventBatch(events=[
            rpb.SwitchEvent(request_id="x", agent_ready=rpb.AgentReadyRequest(agent_id="a1"))]))
        again = await call.read()
        assert again.replies[0].decision.agent_id == "a1"
        await call.done_writing()

    async def test_oversized_batch_is_refused_whole(self, srv: Running) -> None:
        """A batch over 1,000 events changes nothing and gets one INVALID_ARGUMENT reply."""
        call = srv.acme.router.ConnectBatch(timeout=10)
        events = [rpb.SwitchEvent(request_id=f"r{i}", route_contact=contact(f"c{i}"))
                  for i in range(1001)]
        await call.write(rpb.SwitchEventBatch(events=events))
        reply = await call.read()
        assert len(reply.replies) == 1 and reply.replies[0].error.code == 3
        stats = await srv.acme.insights.GetQueueStats(ipb.GetQueueStatsRequest())
        assert sum(q.waiting for q in stats.queues) == 0
        await call.done_writing()

    async def test_batch_stream_needs_a_key(self, srv: Running) -> None:
        """ConnectBatch without a known API key fails UNAUTHENTICATED; nothing is processed."""
        for key in ("", "not-a-key"):
            call = srv.client(key).router.ConnectBatch(timeout=5)
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await call.write(rpb.SwitchEventBatch(events=[
                    rpb.SwitchEvent(request_id="r", route_contact=contact("sneaky"))]))
                await call.read()
            assert err.value.code() is grpc.StatusCode.UNAUTHENTICATED
        stats = await srv.acme.insights.GetQueueStats(ipb.GetQueueStatsRequest())
        assert sum(q.waiting for q in stats.queues) == 0
