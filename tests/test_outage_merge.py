"""What a replica decided alone during a Redis outage, folded back into the shared
state (``TenantRouting.merge_back``), and a replica with ``outage_routing = false``
refusing while Redis is out of reach, so that one replica decides at a time.
Found by the fault runs under load (tests/test_faults.py)."""

from __future__ import annotations

import asyncio
import copy

import grpc
import pytest
import redis.asyncio as aioredis
from faults import ProxyProcess
from redis.exceptions import ConnectionError as RedisConnectionError
from support import Client, RedisProcess, contact, login, settings
from test_replicas import Replicas, replicas

from pairline._proto.pairline.v1 import common_pb2 as cpb
from pairline._proto.pairline.v1 import insights_pb2 as ipb
from pairline._proto.pairline.v1 import router_pb2 as rpb
from pairline.domain import AgentStatus, Channel, Decision, EndReason, Mode
from pairline.routing import ContactState, TenantRouting


def _routing() -> TenantRouting:
    r = TenantRouting(max_waiting=100, max_agents=100)
    for a in ("a1", "a2"):
        r.set_agent_state(a, AgentStatus.AVAILABLE, (("sales", 50),), (1, 0, 0, 0, 0), 0.0, 0.0)
    return r


def _reserve(r: TenantRouting, cid: str, agent: str, did: str, now: float = 0.0) -> None:
    c = r.contacts.get(cid) or r.new_contact(cid, "sales", Channel.VOICE, 0, "", (), 0,
                                             frozenset(), 0.0)
    d = Decision(did, Mode.BASELINE, cid, agent, "sales", int(Channel.VOICE), "baseline",
                 0.0, expires_at=100.0)
    r.reserve(c, r.agents[agent], d, now)


def test_an_end_made_alone_frees_the_agent_for_a_later_decision_made_alone() -> None:
    """Alone: c1 (on a1 in the shared state) ended, then c2 given to a1 and
    connected. Folded back in any order, c2 keeps a1 (it used to be dropped when
    c2 came before c1's end)."""
    shared = _routing()
    _reserve(shared, "c1", "a1", "d1")
    shared.confirm("d1")
    alone = copy.deepcopy(shared)
    alone.end_contact("c1", EndReason.HANDLED, 0.0, 1.0)
    _reserve(alone, "c2", "a1", "d2", now=2.0)
    alone.confirm("d2")
    contacts = {"c2": alone.contact_snapshot("c2"), "c1": None}  # c2 first
    agents = {"a1": alone.agent_snapshot("a1")}
    dropped = shared.merge_back(agents, contacts, 3.0)
    assert dropped == []
    assert "c1" not in shared.contacts
    assert shared.contacts["c2"].state is ContactState.CONNECTED
    assert list(shared.agents["a1"].connected) == ["c2"]


def test_connected_here_wins_over_an_offer_made_elsewhere() -> None:
    """c1 offered to a2 in the shared state (a commit whose caller timed out) but
    given to a1 and connected here: the switch connected ours, so ours stands and
    a2 is free again; never over capacity."""
    shared = _routing()
    alone = copy.deepcopy(shared)
    _reserve(shared, "c1", "a2", "d-elsewhere")
    _reserve(alone, "c1", "a1", "d-here")
    alone.confirm("d-here")
    dropped = shared.merge_back({}, {"c1": alone.contact_snapshot("c1")}, 2.0)
    assert dropped == []
    c = shared.contacts["c1"]
    assert c.state is ContactState.CONNECTED and c.decision.decision_id == "d-here"
    assert not shared.agents["a2"].reservations and shared.agents["a2"].in_use[0] == 0
    assert shared.agents["a1"].in_use[0] == 1 and "d-elsewhere" not in shared.reservations


def test_connected_here_takes_the_place_of_an_offer_of_another_contact() -> None:
    """a1's place taken in the shared state by an offer of c9 (a commit that landed
    as Redis died: its caller got an error, the switch went elsewhere) while c1 was
    given a1 and connected here: c1 keeps a1 (the switch connected it), c9 waits
    again; never over capacity. (It used to drop c1, which the switch then routed a
    second time: a double assignment.)"""
    shared = _routing()
    alone = copy.deepcopy(shared)
    _reserve(shared, "c9", "a1", "d-elsewhere")
    _reserve(alone, "c1", "a1", "d-here")
    alone.confirm("d-here")
    dropped = shared.merge_back({"a1": alone.agent_snapshot("a1")},
                                {"c1": alone.contact_snapshot("c1")}, 2.0)
    assert dropped == []
    assert shared.contacts["c1"].state is ContactState.CONNECTED
    assert shared.contacts["c9"].state is ContactState.WAITING
    assert list(shared.agents["a1"].connected) == ["c1"] and not shared.agents["a1"].reservations
    assert shared.agents["a1"].in_use[0] == 1 and "d-elsewhere" not in shared.reservations


async def _c1_routed_where_the_lone_one_does_not_see_it(
    rs: Replicas,
) -> tuple[Client, Client, cpb.Decision]:
    """Replica 0 routes alone in an outage, replica 1 does not. a1 logs in, replica
    0's feed loop stops, and c1 is given a1 through replica 1: Redis has it,
    replica 0's mirror does not. Returns both clients and c1's decision."""
    rs.servers[1].service.shared.outage_routing = False  # type: ignore[union-attr]
    lone, other = rs.client(0), rs.client(1)
    await lone.router.SetAgentState(login("a1", "sales"))
    await rs.settle()
    await rs.servers[0].service._feed.stop()  # type: ignore[union-attr]
    d = await other.router.RouteContact(contact("c1"), timeout=2)
    assert d.agent_id == "a1"
    return lone, other, d


async def _route_once_resumed(client: Client, contact_id: str) -> cpb.Decision:
    """Route ``contact_id`` through a replica that does not route alone, retrying
    while it refuses (UNAVAILABLE) until it has resumed."""
    for _ in range(100):
        try:
            return await client.router.RouteContact(contact(contact_id), timeout=2)
        except grpc.aio.AioRpcError as e:
            assert e.code() == grpc.StatusCode.UNAVAILABLE
            await asyncio.sleep(0.05)
    raise AssertionError("the other replica never resumed")


@pytest.mark.timeout(60)
async def test_a_replica_that_does_not_route_alone_refuses_until_the_other_wrote_back(
) -> None:
    own = RedisProcess()
    try:
        cfg = settings()
        async with replicas(own.url, n=2, cfg=cfg) as rs:
            rs.servers[1].service.shared.outage_routing = False  # type: ignore[union-attr]
            lone, other = rs.client(0), rs.client(1)
            await lone.router.SetAgentState(login("a1", "sales"))
            await lone.router.SetAgentState(login("a2", "sales"))
            await rs.settle()
            own.kill()
            d = await lone.router.RouteContact(contact("c1"), timeout=2)
            assert d.mode == cpb.MODE_DEGRADED and d.agent_id
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await other.router.RouteContact(contact("c2"), timeout=2)
            assert err.value.code() == grpc.StatusCode.UNAVAILABLE
            assert "outage_routing" in (err.value.details() or "")
            # A store read on a call path says UNAVAILABLE too (it used to be INTERNAL).
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await lone.router.ReportOutcome(rpb.ReportOutcomeRequest(
                    decision_id=d.decision_id, outcomes={"x": 1.0}), timeout=2)
            assert err.value.code() == grpc.StatusCode.UNAVAILABLE
            await lone.router.ConfirmDecision(rpb.ConfirmDecisionRequest(
                decision_id=d.decision_id))
            own.start()
            # The other resumes only once the lone one has written back: then it
            # sees c1 on its agent and gives c2 the other agent.
            d2 = await _route_once_resumed(other, "c2")
            assert d2.mode != cpb.MODE_DEGRADED and d2.agent_id and d2.agent_id != d.agent_id
            st = await other.router.GetAgentState(rpb.GetAgentStateRequest(agent_id=d.agent_id))
            assert list(st.contact_ids) == ["c1"]
    finally:
        own.stop()


@pytest.mark.timeout(60)
async def test_the_replica_that_routes_alone_fences_the_others_off_first() -> None:
    """Redis slow, not gone: the replica that routes alone first fences the others
    off and reads the feed up to the fence. A contact another replica connected
    just before (which its feed loop had not applied yet) is on its mirror, so it
    does not give that agent away again; the others' commits are refused from
    then on, until it has written back and lifted the fence."""
    own = RedisProcess()
    try:
        async with replicas(own.url, n=2, cfg=settings()) as rs:
            lone_shared = rs.servers[0].service.shared
            other_shared = rs.servers[1].service.shared
            assert lone_shared is not None and other_shared is not None
            keys = aioredis.Redis.from_url(own.url)
            # (only the fence's read brings the lone one what the other does now)
            lone, other, d1 = await _c1_routed_where_the_lone_one_does_not_see_it(rs)
            await other.router.ConfirmDecision(rpb.ConfirmDecisionRequest(
                decision_id=d1.decision_id))
            assert "c1" not in rs.servers[0].service.tenants["acme"].routing.contacts

            async def unreachable() -> bool:  # the failure injected: no probe answers
                return False

            probe = lone_shared._probe
            lone_shared._probe = unreachable  # type: ignore[method-assign]
            lone_shared.out_of_touch(TimeoutError("test: a slow commit"))
            d2 = await lone.router.RouteContact(contact("c2"), timeout=2)
            assert d2.agent_id == "", "a1 was given away twice"
            assert d2.mode == cpb.MODE_QUEUED and d2.queue_position == 1
            assert await keys.exists("pl:{acme}:fence") == 1
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await other.router.RouteContact(contact("c3"), timeout=2)
            assert err.value.code() == grpc.StatusCode.UNAVAILABLE
            # The lone replica knows c1 is on a1, and ends it.
            st = await lone.router.GetAgentState(rpb.GetAgentStateRequest(agent_id="a1"))
            assert list(st.contact_ids) == ["c1"]
            await lone.router.EndContact(rpb.EndContactRequest(
                contact_id="c1", reason=rpb.END_REASON_HANDLED))
            lone_shared._probe = probe  # type: ignore[method-assign]
            for _ in range(100):
                if not lone_shared.degraded and not await keys.exists(
                        "pl:{acme}:fence"):
                    break
                await asyncio.sleep(0.05)
            else:
                raise AssertionError("the lone replica never wrote back")
            await _route_once_resumed(other, "c3")
            # Written back: c1's end is in Redis, c2 still waits (c3 behind it).
            st = await other.router.GetAgentState(rpb.GetAgentStateRequest(agent_id="a1"))
            assert "c1" not in st.contact_ids
            stats = await other.insights.GetQueueStats(ipb.GetQueueStatsRequest())
            assert sum(q.waiting for q in stats.queues) + len(st.contact_ids) == 2
    finally:
        own.stop()


@pytest.mark.timeout(60)
async def test_a_slow_call_puts_a_replica_out_of_touch_only_when_redis_is_slow() -> None:
    """A slow answer from Redis may be this process's own stall (a busy machine).
    Out of touch fences the other replicas off, so a PING decides first: fast, the
    replica stays in touch; slow (the latency proxy between it and Redis), out."""
    own = RedisProcess()
    proxy = ProxyProcess(own.port, lo_ms=120, hi_ms=150)
    try:
        async with replicas(proxy.url, n=1, cfg=settings()) as rs:
            shared = rs.servers[0].service.shared
            assert shared is not None

            async def slow_call() -> None:
                shared.slow_call("test: a call took long")
                assert shared._checking is not None
                await shared._checking

            await slow_call()
            assert not shared.degraded
            proxy.slow(True)
            await slow_call()
            assert shared.degraded
            proxy.slow(False)
            for _ in range(100):  # and back once a probe answers fast
                await rs.servers[0].service.expire_all()
                if not shared.degraded:
                    break
                await asyncio.sleep(0.05)
            assert not shared.degraded
    finally:
        proxy.stop()
        own.stop()


@pytest.mark.timeout(60)
async def test_a_write_back_cut_short_keeps_what_was_decided_alone_on_the_mirror() -> None:
    """Redis back, the mirror rebuilt from it, then Redis trouble again before the
    write-back: the contact routed alone during the outage is still known
    here (it used to be gone from the mirror until the next recovery: its end
    answered NOT_FOUND), and is written back once Redis takes it."""
    own = RedisProcess()
    try:
        async with replicas(own.url, n=1, cfg=settings()) as rs:
            shared = rs.servers[0].service.shared
            routings = {n: rt.routing for n, rt in rs.servers[0].service.tenants.items()}
            routing = routings["acme"]
            assert shared is not None
            lone = rs.client(0)
            await lone.router.SetAgentState(login("a1", "sales"))
            own.kill()
            d = await lone.router.RouteContact(contact("c1"), timeout=2)
            assert d.mode == cpb.MODE_DEGRADED and d.agent_id == "a1"
            own.start()
            catch_up = shared.catch_up

            async def refused(tenant: str) -> None:  # the failure injected
                raise RedisConnectionError("test: Redis gone again")

            # Cut short right after the mirror was loaded from Redis.
            shared.catch_up = refused
            shared._probe_at = 0.0
            await shared.maintain(routings)
            assert shared.degraded and "c1" in routing.contacts
            assert routing.contacts["c1"].decision.decision_id == d.decision_id
            shared.catch_up = catch_up
            await lone.router.ConfirmDecision(rpb.ConfirmDecisionRequest(
                decision_id=d.decision_id))
            for _ in range(100):
                shared._probe_at = 0.0
                await shared.maintain(routings)
                if not shared.degraded:
                    break
                await asyncio.sleep(0.05)
            assert not shared.degraded
            keys = aioredis.Redis.from_url(own.url)
            raw = await keys.get("pl:{acme}:ct:c1")
            await keys.aclose()
            assert raw is not None and d.decision_id.encode() in raw
            await lone.router.EndContact(rpb.EndContactRequest(
                contact_id="c1", reason=rpb.END_REASON_HANDLED))
    finally:
        own.stop()


@pytest.mark.timeout(60)
async def test_alone_without_a_fence_an_unknown_contact_is_unavailable_not_not_found(
) -> None:
    """Redis gone (no fence could be set): a contact another replica created just
    before may not have reached this mirror, so ending it here answers UNAVAILABLE
    (retry), not NOT_FOUND (the switch would forget a contact Redis still holds);
    once Redis is back, the same call ends it."""
    own = RedisProcess()
    try:
        async with replicas(own.url, n=2, cfg=settings()) as rs:
            lone, _, _ = await _c1_routed_where_the_lone_one_does_not_see_it(rs)
            own.kill()
            end = rpb.EndContactRequest(contact_id="c1", reason=rpb.END_REASON_ABANDONED)
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await lone.router.EndContact(end, timeout=2)
            assert err.value.code() == grpc.StatusCode.UNAVAILABLE, err.value.details()
            assert "retry" in (err.value.details() or "")
            own.start()
            for _ in range(100):
                try:
                    await lone.router.EndContact(end, timeout=2)
                    break
                except grpc.aio.AioRpcError as e:
                    assert e.code() == grpc.StatusCode.UNAVAILABLE, e.details()
                    await asyncio.sleep(0.05)
            else:
                raise AssertionError("c1 never ended")
    finally:
        own.stop()
