"""Several replicas on one Redis (and on a 3-master Redis Cluster): real servers in
this process sharing a fake clock, each with its own Redis connections, mirror and
change-feed follower. Calls go to any replica; every replica sees one state."""

from __future__ import annotations

import asyncio
import dataclasses
import random
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import grpc
import numpy as np
import pytest
import redis
from support import KEYS, Client, RedisClusterProcess, RedisProcess, contact, login, settings
from test_concurrency import Tenant, _assert_exercised, drive, run_unary

from pairline._proto.pairline.v1 import common_pb2 as cpb
from pairline._proto.pairline.v1 import insights_pb2 as ipb
from pairline._proto.pairline.v1 import profiles_pb2 as ppb
from pairline._proto.pairline.v1 import router_pb2 as rpb
from pairline.config import Settings
from pairline.model import dump_model
from pairline.server import PairlineServer
from pairline.testing import FakeClock

pytestmark = pytest.mark.slow


def _flush(server: RedisProcess | RedisClusterProcess) -> None:
    nodes = server.nodes if isinstance(server, RedisClusterProcess) else [server]
    for n in nodes:
        redis.Redis(port=n.port).flushall()


@pytest.fixture(params=["redis", "cluster"])
def redis_url(request: pytest.FixtureRequest) -> str:
    server = request.getfixturevalue(
        "redis_server" if request.param == "redis" else "redis_cluster")
    _flush(server)
    return server.url


@dataclasses.dataclass
class Replicas:
    servers: list[PairlineServer]
    clock: FakeClock
    channels: list[grpc.aio.Channel]

    def client(self, i: int, tenant: str = "acme") -> Client:
        return Client(self.channels[i], KEYS[tenant])

    async def settle(self) -> None:
        """Every replica has applied every change made so far."""
        for s in self.servers:
            for name in s.settings.tenants:
                await s.service._feed.catch_up(name.name)  # type: ignore[union-attr]


@asynccontextmanager
async def replicas(url: str, n: int = 2, cfg: Settings | None = None,
                   clock: FakeClock | None = None) -> AsyncIterator[Replicas]:
    clock = clock or FakeClock()
    # A generous Redis timeout: one event loop runs every replica and the test
    # here, so a call can wait a while behind the others without Redis being slow.
    cfg = dataclasses.replace(cfg or settings(), redis_url=url, redis_timeout_s=2.0)
    servers: list[PairlineServer] = []
    channels: list[grpc.aio.Channel] = []
    try:
        for _ in range(n):
            s = PairlineServer(cfg, clock=clock)
            await s.start()
            servers.append(s)
            channels.append(grpc.aio.insecure_channel(s.address))
        yield Replicas(servers, clock, channels)
    finally:
        for c in channels:
            await c.close()
        for s in servers:
            await s.stop(0.5)


async def activate_model(client: Client, seed: int, version: str = "v1") -> None:
    """Upload and activate a random model of the test tenants' dimensions."""
    gen = np.random.default_rng(seed)
    model = dump_model(version=version, W=gen.normal(size=(4, 3)), wc=gen.normal(size=4),
                       wa=gen.normal(size=3), b=0.0)
    await client.profiles.UploadModel(ppb.UploadModelRequest(model=model, activate=True))


class TestOneStateAcrossReplicas:
    async def test_agent_logged_in_on_one_is_routed_by_another(self, redis_url: str) -> None:
        async with replicas(redis_url) as rs:
            a, b = rs.client(0), rs.client(1)
            await a.router.SetAgentState(login("a1", "sales"))
            # No waiting for the feed: B concludes nobody is free only if no agent
            # was freed anywhere since its view; here one was, so it catches up.
            d = (await b.router.RouteContact(contact("c1")))
            assert d.mode == cpb.MODE_BASELINE and d.agent_id == "a1"
            # The decision lives in Redis: confirmed through A, ended through B.
            await a.router.ConfirmDecision(rpb.ConfirmDecisionRequest(decision_id=d.decision_id))
            st = await a.router.GetAgentState(rpb.GetAgentStateRequest(agent_id="a1"))
            assert st.status == rpb.AGENT_STATUS_BUSY and list(st.contact_ids) == ["c1"]
            end = await b.router.EndContact(rpb.EndContactRequest(
                contact_id="c1", reason=rpb.END_REASON_HANDLED))
            assert end.agent_id == "a1"

    async def test_contact_queued_on_one_is_handed_to_an_agent_on_another(
        self, redis_url: str
    ) -> None:
        async with replicas(redis_url) as rs:
            a, b = rs.client(0), rs.client(1)
            await a.router.SetAgentState(login("a1", "sales", status=rpb.AGENT_STATUS_AWAY))
            q = (await a.router.RouteContact(contact("c1")))
            assert q.mode == cpb.MODE_QUEUED
            d = (await b.router.AgentReady(rpb.AgentReadyRequest(agent_id="a1")))
            assert d.contact_id == "c1" and d.agent_id == "a1"
            # The same contact routed again (a retry through the other replica): same decision.
            again = (await a.router.RouteContact(contact("c1")))
            assert again.decision_id == d.decision_id

    async def test_one_agent_two_replicas_racing(self, redis_url: str) -> None:
        """Contacts routed at once through both replicas to one free agent: exactly
        one gets it, the others wait, every time."""
        async with replicas(redis_url) as rs:
            a, b = rs.client(0), rs.client(1)
            for rnd in range(10):
                await a.router.SetAgentState(login("a1", "sales"))
                await rs.settle()
                calls = [(a if i % 2 else b).router.RouteContact(contact(f"r{rnd}-{i}"))
                         for i in range(6)]
                ds = list(await asyncio.gather(*calls))
                got = [d for d in ds if d.mode != cpb.MODE_QUEUED]
                assert len(got) == 1 and got[0].agent_id == "a1", ds
                for d in ds:
                    await a.router.EndContact(rpb.EndContactRequest(
                        contact_id=d.contact_id, reason=rpb.END_REASON_ABANDONED))
                await a.router.SetAgentState(
                    login("a1", "sales", status=rpb.AGENT_STATUS_LOGGED_OUT))

    async def test_a_contact_id_used_again_after_its_record_expired(
        self, redis_url: str
    ) -> None:
        """An ended contact's record expires in Redis (after GONE_TTL_S; here at
        once) while a replica still holds its version: routing the id again there
        conflicts, and the replica takes Redis's state instead of keeping its own
        uncommitted reservation, so the agent is not also given away elsewhere."""
        async with replicas(redis_url, n=2) as rs:
            a, b = rs.client(0), rs.client(1)
            await a.router.SetAgentState(login("a1", "sales"))
            assert (await a.router.RouteContact(contact("c1"))).agent_id == "a1"
            await a.router.EndContact(rpb.EndContactRequest(
                contact_id="c1", reason=rpb.END_REASON_ABANDONED))
            await rs.settle()
            mirror = rs.servers[0].service.tenants["acme"].routing
            assert mirror.contact_v["c1"] > 0
            store = rs.servers[0].service.shared.store  # type: ignore[union-attr]
            assert await store.r.delete("pl:{acme}:ct:c1") == 1  # = GONE_TTL_S passing
            again = await a.router.RouteContact(contact("c1"))
            assert again.agent_id == "a1"
            await rs.settle()
            other = await b.router.RouteContact(contact("c2"))
            assert other.mode == cpb.MODE_QUEUED, other  # a1 is taken, in Redis too
            await a.router.ConfirmDecision(rpb.ConfirmDecisionRequest(
                decision_id=again.decision_id))

    async def test_ended_contacts_versions_are_forgotten_with_their_records(
        self, redis_url: str, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """A replica keeps an ended contact's version as long as Redis keeps its
        record (GONE_TTL_S, made short here), not forever: the mirror does not grow
        by one entry per contact ever routed."""
        from pairline.stores import shared

        monkeypatch.setattr(shared, "GONE_TTL_S", 0.05)
        async with replicas(redis_url, n=2) as rs:
            a = rs.client(0)
            await a.router.SetAgentState(login("a1", "sales"))
            for cid in ("c1", "c2"):
                await a.router.RouteContact(contact(cid))
                await a.router.EndContact(rpb.EndContactRequest(
                    contact_id=cid, reason=rpb.END_REASON_ABANDONED))
            await rs.settle()
            mirrors = [s.service.tenants["acme"].routing for s in rs.servers]
            assert all({"c1", "c2"} <= set(m.contact_v) for m in mirrors)
            await asyncio.sleep(0.1)
            await a.router.RouteContact(contact("c3"))
            await a.router.EndContact(rpb.EndContactRequest(
                contact_id="c3", reason=rpb.END_REASON_ABANDONED))
            await rs.settle()
            for m in mirrors:  # both: the one that ended them, and the other (feed)
                assert "c1" not in m.contact_v and "c2" not in m.contact_v, m.contact_v
                assert "c3" in m.contact_v  # (ended just now)

    async def test_an_expired_offer_returns_once(self, redis_url: str) -> None:
        """Both replicas sweep: the lapsed offer returns agent and contact exactly once."""
        async with replicas(redis_url) as rs:
            a, b = rs.client(0), rs.client(1)
            await a.router.SetAgentState(login("a1", "sales"))
            d = (await a.router.RouteContact(contact("c1")))
            assert d.agent_id == "a1"
            await rs.settle()
            rs.clock.advance(11)  # offer timeout is 10 s
            for _ in range(50):
                await asyncio.sleep(0.05)
                st = await b.router.GetAgentState(rpb.GetAgentStateRequest(agent_id="a1"))
                if st.status == rpb.AGENT_STATUS_AVAILABLE:
                    break
            await rs.settle()
            for c in (a, b):
                st = await c.router.GetAgentState(rpb.GetAgentStateRequest(agent_id="a1"))
                assert st.status == rpb.AGENT_STATUS_AVAILABLE and not st.contact_ids
                stats = await c.insights.GetQueueStats(ipb.GetQueueStatsRequest(queue="sales"))
                assert stats.queues[0].waiting == 1  # once, not twice
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await b.router.ConfirmDecision(
                    rpb.ConfirmDecisionRequest(decision_id=d.decision_id))
            assert err.value.code() == grpc.StatusCode.NOT_FOUND
            # Given again, to the same agent through the other replica.
            d2 = (await b.router.AgentReady(rpb.AgentReadyRequest(agent_id="a1")))
            assert d2.contact_id == "c1" and d2.decision_id != d.decision_id

    async def test_a_new_replica_starts_from_the_shared_state(self, redis_url: str) -> None:
        clock = FakeClock()
        async with replicas(redis_url, n=1, clock=clock) as first:
            a = first.client(0)
            for i in range(5):
                await a.router.SetAgentState(login(f"a{i}", "sales", "support"))
            for i in range(8):
                await a.router.RouteContact(contact(f"c{i}", queue="sales"))
            before = await a.insights.GetQueueStats(ipb.GetQueueStatsRequest())
            async with replicas(redis_url, n=1, clock=clock) as second:
                b = second.client(0)
                after = await b.insights.GetQueueStats(ipb.GetQueueStatsRequest())
                assert after == before
                assert after.queues[0].waiting == 3
                for i in range(5):
                    sa, sb = await asyncio.gather(
                        a.router.GetAgentState(rpb.GetAgentStateRequest(agent_id=f"a{i}")),
                        b.router.GetAgentState(rpb.GetAgentStateRequest(agent_id=f"a{i}")))
                    assert sa == sb


class TestSharedProfilesAndModels:
    async def test_model_and_profiles_given_to_one_are_used_by_the_others(
        self, redis_url: str
    ) -> None:
        async with replicas(redis_url, n=3, cfg=settings(policy="greedy")) as rs:
            a, b, c = rs.client(0), rs.client(1), rs.client(2)
            gen = np.random.default_rng(3)
            await activate_model(a, 3, "v7")
            await a.profiles.UpsertAgentProfiles(ppb.AgentProfileBatch(profiles=[
                ppb.AgentProfile(agent_id="a1", vector=[1, 0, 0], source_time_ms=1),
                ppb.AgentProfile(agent_id="a2", vector=[0, 1, 0], source_time_ms=1)]))
            await a.profiles.UpsertCustomerProfile(ppb.CustomerProfile(
                customer_key="+15550100", vector=[0.1, 0.2, 0.3, 0.4], source_time_ms=1))
            await b.router.SetAgentState(login("a1", "sales"))
            await b.router.SetAgentState(login("a2", "sales"))
            await rs.settle()
            d = (await c.router.RouteContact(contact("c1", customer_key="+15550100")))
            assert (d.mode, d.policy, d.model_version) == (cpb.MODE_PAIRED, "greedy", "v7")
            info = await b.profiles.GetModelInfo(ppb.GetModelInfoRequest())
            assert info.active.version == "v7"
            # A newer profile written through B replaces the one C had cached.
            await b.profiles.UpsertCustomerProfile(ppb.CustomerProfile(
                customer_key="+15550100", vector=[9, 9, 9, 9], source_time_ms=2))
            await rs.settle()
            svc = rs.servers[2].service
            digest = svc.privacy.screen("acme", "+15550100")[0][0]
            row = await svc.store.get_customer_profile("acme", digest, rs.clock.now())
            assert row is not None and row.vector[0] == 9


class SpreadClient(Client):
    """One tenant's stubs over several replicas: each call goes to a random one."""

    def __init__(self, channels: list[grpc.aio.Channel], key: str, rng: random.Random) -> None:
        super().__init__(channels[0], key)
        self.channels = channels
        self.rng = rng
        self.contended = 0

    def _wrap(self, stub: Any) -> Any:
        kind = type(stub)
        stubs = [kind(ch) for ch in self.channels]
        client = self

        class Bound:
            def __getattr__(self, name: str) -> Any:
                async def call(*args: Any, **kw: Any) -> Any:
                    kw.setdefault("metadata", client.metadata)
                    kw.setdefault("timeout", 10)
                    for attempt in range(5):
                        try:
                            return await getattr(client.rng.choice(stubs), name)(*args, **kw)
                        except grpc.aio.AioRpcError as err:
                            # "Too contended: retry" means nothing was written: a
                            # switch (and pairline.client) retries it.
                            if (err.code() != grpc.StatusCode.UNAVAILABLE
                                    or "contended" not in (err.details() or "")
                                    or attempt == 4):
                                raise
                            client.contended += 1

                return call

        return Bound()


class SettlingTenant(Tenant):
    """Reconciles only once every replica has applied every change (replies came
    from whichever replica answered; the others follow within milliseconds)."""

    replicas: Replicas

    async def reconcile(self, t: int, wrap_hint: dict[str, int] | None = None) -> None:
        await self.replicas.settle()
        await super().reconcile(t, wrap_hint)


class TestConcurrentAcrossReplicas:
    @pytest.mark.parametrize("policy", ["baseline", "diagonal"])
    async def test_invariants_hold_with_calls_spread_over_replicas(
        self, redis_url: str, policy: str
    ) -> None:
        """The concurrency model test with every call sent to a random replica of
        three: no agent over capacity, no contact given twice, none lost."""
        rng = random.Random(77)
        async with replicas(redis_url, n=3, cfg=settings(policy=policy)) as rs:
            tenants = []
            for name in ("acme", "globex"):
                client = SpreadClient(rs.channels, KEYS[name], random.Random(rng.random()))
                t = SettlingTenant(name, client, random.Random(rng.random()), policy, False)
                t.replicas = rs
                tenants.append(t)
            if policy != "baseline":
                for i, t in enumerate(tenants):
                    await t.setup_pairing(model_seed=i)

            class Clocked:
                clock = rs.clock

            kinds = await drive(Clocked, run_unary, tenants, rng)  # type: ignore[arg-type]
            _assert_exercised(tenants, kinds)
            conflicts = sum(s.service.shared.conflicts for s in rs.servers)  # type: ignore[union-attr]
            assert conflicts > 0  # the replicas really raced


class TestRedisOutage:
    async def test_redis_back_without_its_data_gets_the_routing_state_back(self) -> None:
        """Redis restarted empty (no append-only file): the replicas notice that the
        tenant's state is gone and write their mirror back, instead of rebuilding
        from nothing (every agent and offer lost, new contacts queued forever)."""
        import os
        import shutil

        from pairline._proto.pairline.v1 import privacy_pb2 as xpb

        own = RedisProcess()
        try:
            async with replicas(own.url, n=2, cfg=settings(policy="greedy")) as rs:
                a, b = rs.client(0), rs.client(1)
                for i in range(3):
                    await a.router.SetAgentState(login(f"a{i}", "sales"))
                held = await a.router.RouteContact(contact("c0"))
                await a.privacy.OptOut(xpb.OptOutRequest(customer_key="+15550199"))
                await rs.settle()
                own.kill()
                shutil.rmtree(own.dir)
                os.makedirs(own.dir)
                own.start()
                loop = asyncio.get_running_loop()
                t0 = loop.time()
                while any(s.service.shared.state_lost == 0 or s.service.shared.degraded
                          for s in rs.servers[:1]) and loop.time() - t0 < 10:
                    await b.router.GetAgentState(rpb.GetAgentStateRequest(agent_id="a0"))
                    await asyncio.sleep(0.05)
                assert rs.servers[0].service.shared.state_lost >= 1
                for s in rs.servers:
                    t0 = loop.time()
                    while s.service.shared.degraded and loop.time() - t0 < 10:
                        await asyncio.sleep(0.05)
                await rs.settle()
                for c in (a, b):
                    st = await c.router.GetAgentState(rpb.GetAgentStateRequest(agent_id="a0"))
                    assert list(st.contact_ids) == ["c0"], st
                    await c.router.GetAgentState(rpb.GetAgentStateRequest(agent_id="a2"))
                await a.router.ConfirmDecision(rpb.ConfirmDecisionRequest(
                    decision_id=held.decision_id))
                d1 = await b.router.RouteContact(contact("x1"))
                d2 = await a.router.RouteContact(contact("x2", customer_key="+15550199"))
                assert {d1.agent_id, d2.agent_id} == {"a1", "a2"}, (d1, d2)
                assert d2.mode == cpb.MODE_OPTED_OUT  # (held in memory meanwhile)
                d3 = await b.router.RouteContact(contact("x3"))
                assert d3.mode == cpb.MODE_QUEUED  # every agent taken: none twice
        finally:
            own.stop()

    async def test_a_degraded_decision_on_agent_ready_is_counted_in_its_slot(self) -> None:
        """Contact surplus during an outage: DEGRADED, and labelled with its queue's
        ON/OFF slot as agent surplus labels it (the report compares slots as
        assigned)."""
        from pairline.benchmark import SlotSchedule

        cfg = settings(policy="greedy", benchmark=True, slot_s=60.0, on_share=0.5,
                       stabilise_s=5.0)
        sched = SlotSchedule.for_tenant(cfg.tenants[0])
        clock = FakeClock()
        while sched.state("sales", clock.now() + 10) != (True, True):
            clock.advance(60.0)
        own = RedisProcess()
        try:
            async with replicas(own.url, n=1, cfg=cfg, clock=clock) as rs:
                a = rs.client(0)
                await a.router.SetAgentState(login("a1", "sales", status=rpb.AGENT_STATUS_AWAY))
                q = await a.router.RouteContact(contact("w1"))
                assert q.mode == cpb.MODE_QUEUED
                clock.advance(10)
                own.kill()
                # A call finds Redis gone: the replica is out of touch from here on.
                probe = await a.router.RouteContact(contact("w2"))
                assert probe.mode in (cpb.MODE_QUEUED, cpb.MODE_DEGRADED)
                assert rs.servers[0].service.shared.degraded  # type: ignore[union-attr]
                d = await a.router.AgentReady(rpb.AgentReadyRequest(agent_id="a1"))
                assert (d.contact_id, d.mode) == ("w1", cpb.MODE_DEGRADED), d
                held = rs.servers[0].service.tenants["acme"].routing.contacts["w1"].decision
                assert held is not None and (held.slot_on, held.compared) == (True, True)
        finally:
            own.stop()

    async def test_an_opted_out_customer_stays_opted_out_during_an_outage(self) -> None:
        """Decided while Redis is out of reach, an opted-out customer's decision is
        OPTED_OUT (not DEGRADED): the switch sees why, and the outcome is withheld."""
        from pairline._proto.pairline.v1 import privacy_pb2 as xpb

        own = RedisProcess()
        try:
            async with replicas(own.url, n=1, cfg=settings(policy="greedy")) as rs:
                a = rs.client(0)
                for i in range(3):
                    await a.router.SetAgentState(login(f"a{i}", "sales"))
                await a.privacy.OptOut(xpb.OptOutRequest(customer_key="+15550199"))
                own.kill()
                d = await a.router.RouteContact(contact("c1", customer_key="+15550199"))
                assert d.mode == cpb.MODE_OPTED_OUT and d.agent_id, d
                other = await a.router.RouteContact(contact("c2", customer_key="+15550100"))
                assert other.mode == cpb.MODE_DEGRADED, other
        finally:
            own.stop()

    async def test_routing_degrades_and_recovers_by_itself(self) -> None:
        """Redis killed: every call still answers, DEGRADED, within its deadline;
        Redis back: PAIRED again, and what was decided meanwhile is known to all."""
        from grpc_health.v1 import health_pb2

        own = RedisProcess()
        try:
            async with replicas(own.url, n=2, cfg=settings(policy="greedy")) as rs:
                a, b = rs.client(0), rs.client(1)
                gen = np.random.default_rng(5)
                await activate_model(a, 5, "v1")
                await a.profiles.UpsertAgentProfiles(ppb.AgentProfileBatch(profiles=[
                    ppb.AgentProfile(agent_id=f"a{i}", vector=gen.normal(size=3).tolist(),
                                     source_time_ms=1) for i in range(6)]))
                await a.profiles.UpsertCustomerProfile(ppb.CustomerProfile(
                    customer_key="cust", vector=[0.1, 0.2, 0.3, 0.4], source_time_ms=1))
                for i in range(6):
                    await a.router.SetAgentState(login(f"a{i}", "sales"))
                await rs.settle()
                d = await b.router.RouteContact(contact("before", customer_key="cust"))
                assert d.mode == cpb.MODE_PAIRED

                own.kill()
                loop = asyncio.get_running_loop()
                degraded = []
                for i, c in enumerate((a, b, a, b)):
                    t0 = loop.time()
                    d = await c.router.RouteContact(
                        contact(f"out{i}", customer_key="cust"), timeout=2)
                    assert loop.time() - t0 < 1.0
                    assert d.mode == cpb.MODE_DEGRADED and d.agent_id, d
                    degraded.append(d)
                await c.router.ConfirmDecision(
                    rpb.ConfirmDecisionRequest(decision_id=degraded[-1].decision_id))
                hs = await a.health.Check(health_pb2.HealthCheckRequest(
                    service="pairline.v1.Profiles"))
                for _ in range(40):
                    if hs.status == health_pb2.HealthCheckResponse.NOT_SERVING:
                        break
                    await asyncio.sleep(0.05)
                    hs = await a.health.Check(health_pb2.HealthCheckRequest(
                        service="pairline.v1.Profiles"))
                assert hs.status == health_pb2.HealthCheckResponse.NOT_SERVING
                hr = await a.health.Check(health_pb2.HealthCheckRequest(
                    service="pairline.v1.Router"))
                assert hr.status == health_pb2.HealthCheckResponse.SERVING

                own.start()  # same port, same append-only file
                for _ in range(100):
                    await asyncio.sleep(0.05)
                    if not any(s.service.shared.degraded for s in rs.servers):  # type: ignore[union-attr]
                        break
                d = await a.router.RouteContact(contact("after", customer_key="cust"))
                assert d.mode == cpb.MODE_PAIRED, d
                await rs.settle()
                # What was decided during the outage was written back. Both replicas
                # gave away agents they each saw free; where they chose the same one,
                # the first write-back keeps it and the other contact waits again.
                # No agent is over capacity and no contact is lost.
                kept, waiting = [], []
                for dd in degraded:
                    st = await b.router.GetAgentState(
                        rpb.GetAgentStateRequest(agent_id=dd.agent_id))
                    assert len(st.contact_ids) <= 1, st
                    (kept if dd.contact_id in st.contact_ids else waiting).append(dd)
                stats = await a.insights.GetQueueStats(ipb.GetQueueStatsRequest(queue="sales"))
                assert stats.queues[0].waiting == len(waiting)
                assert len(kept) >= 2 and len({d.agent_id for d in kept}) == len(kept)
                assert len(kept) + len(waiting) == len(degraded)
                for dd in kept:
                    end = await b.router.EndContact(rpb.EndContactRequest(
                        contact_id=dd.contact_id, reason=rpb.END_REASON_HANDLED))
                    assert end.agent_id == dd.agent_id
                for dd in waiting:
                    with pytest.raises(grpc.aio.AioRpcError) as err:
                        await a.router.ConfirmDecision(
                            rpb.ConfirmDecisionRequest(decision_id=dd.decision_id))
                    assert err.value.code() == grpc.StatusCode.NOT_FOUND
                    again = await a.router.RouteContact(contact(dd.contact_id))
                    assert again.mode != cpb.MODE_QUEUED and again.agent_id  # a2..a5 free
                hs = await b.health.Check(health_pb2.HealthCheckRequest(
                    service="pairline.v1.Profiles"))
                assert hs.status == health_pb2.HealthCheckResponse.SERVING
        finally:
            own.stop()


class TestPrivacyAcrossReplicas:
    async def test_opt_out_on_one_is_honoured_by_another_within_a_second(
        self, redis_url: str
    ) -> None:
        from pairline._proto.pairline.v1 import privacy_pb2 as xpb

        async with replicas(redis_url, n=2, cfg=settings(policy="greedy")) as rs:
            a, b = rs.client(0), rs.client(1)
            gen = np.random.default_rng(9)
            await activate_model(a, 9, "v1")
            await a.profiles.UpsertAgentProfiles(ppb.AgentProfileBatch(profiles=[
                ppb.AgentProfile(agent_id=f"a{i}", vector=[1, i, 0], source_time_ms=1)
                for i in range(3)]))
            await a.profiles.UpsertCustomerProfile(ppb.CustomerProfile(
                customer_key="+15550199", vector=[0.1, 0.2, 0.3, 0.4], source_time_ms=1))
            for i in range(3):
                await a.router.SetAgentState(login(f"a{i}", "sales"))
            await rs.settle()
            d = await b.router.RouteContact(contact("c0", customer_key="+15550199"))
            assert d.mode == cpb.MODE_PAIRED  # B has read (and cached) the profile
            await b.router.EndContact(rpb.EndContactRequest(
                contact_id="c0", reason=rpb.END_REASON_ABANDONED))
            await a.privacy.OptOut(xpb.OptOutRequest(customer_key="+15550199"))
            loop = asyncio.get_running_loop()
            t0 = loop.time()
            while True:  # real time: the feed carries it, nobody settles it here
                d = await b.router.RouteContact(contact("c1", customer_key="+15550199"))
                if d.mode == cpb.MODE_OPTED_OUT or loop.time() - t0 > 1.0:
                    break
                await b.router.EndContact(rpb.EndContactRequest(
                    contact_id="c1", reason=rpb.END_REASON_ABANDONED))
                await asyncio.sleep(0.01)
            assert d.mode == cpb.MODE_OPTED_OUT, d
            assert loop.time() - t0 < 1.0

    async def test_a_replica_cut_off_longer_than_the_feed_keeps_catches_up(
        self, redis_url: str
    ) -> None:
        """B misses feed events that are trimmed before it reads them (cut off longer
        than the feed keeps): it finds the gap and reloads routing state, opt-outs
        and the model, instead of routing on a stale view."""
        from pairline._proto.pairline.v1 import privacy_pb2 as xpb

        async with replicas(redis_url, n=2, cfg=settings(policy="greedy")) as rs:
            a, b = rs.client(0), rs.client(1)
            await rs.settle()
            sb = rs.servers[1].service
            feed = sb._feed
            assert feed is not None
            await feed.stop()  # B hears nothing from here on
            await a.router.SetAgentState(login("a1", "sales"))
            await activate_model(a, 9, "v3")
            await a.privacy.OptOut(xpb.OptOutRequest(customer_key="+15550199"))
            store = rs.servers[0].service.shared.store  # type: ignore[union-attr]
            await store.r.xtrim("pl:{acme}:feed", maxlen=0, approximate=False)
            rb = sb.tenants["acme"]
            assert "a1" not in rb.routing.agents and not sb.privacy.tenants["acme"].suppressed
            await feed.check_gaps()
            assert feed.gaps == 1
            assert rb.routing.agents["a1"].presence == rs.servers[0].service.tenants[
                "acme"].routing.agents["a1"].presence
            assert rb.scorer is not None and rb.scorer.version == "v3"
            assert len(sb.privacy.tenants["acme"].suppressed) == 1
            d = await b.router.RouteContact(contact("c1", customer_key="+15550199"))
            assert d.mode == cpb.MODE_OPTED_OUT and d.agent_id == "a1"

    async def test_retention_of_a_live_contacts_data_reaches_redis(
        self, redis_url: str
    ) -> None:
        """A contact left live past ``contact_data_ttl_s`` loses its customer's data
        in Redis's record and on every replica, not only where the sweep ran."""
        cfg = settings(policy="greedy", contact_data_ttl_s=60)
        async with replicas(redis_url, n=2, cfg=cfg) as rs:
            a = rs.client(0)
            q = await a.router.RouteContact(contact("w1", queue="nobody",
                                                    customer_key="+15550123"))
            assert q.mode == cpb.MODE_QUEUED
            store = rs.servers[0].service.shared.store  # type: ignore[union-attr]
            (before,) = await store.mget(["pl:{acme}:ct:w1"])
            digest = rs.servers[0].service.tenants["acme"].routing.contacts["w1"].digest
            assert digest and digest.encode() in before
            rs.clock.advance(30)
            await rs.servers[0].service.sweep_retention()
            (kept,) = await store.mget(["pl:{acme}:ct:w1"])
            assert digest.encode() in kept  # not yet past its retention
            rs.clock.advance(31)
            await rs.servers[0].service.sweep_retention()
            (after,) = await store.mget(["pl:{acme}:ct:w1"])
            assert after and digest.encode() not in after, after
            await rs.settle()
            for s in rs.servers:
                assert s.service.tenants["acme"].routing.contacts["w1"].digest == ""

    async def test_deletion_purges_every_replica_and_refuses_stale_uploads(
        self, redis_url: str
    ) -> None:
        from pairline._proto.pairline.v1 import privacy_pb2 as xpb

        cfg = dataclasses.replace(settings(policy="greedy"), deletion_interval_s=0.05)
        async with replicas(redis_url, n=2, cfg=cfg) as rs:
            a, b = rs.client(0), rs.client(1)
            gen = np.random.default_rng(9)
            await activate_model(a, 9, "v1")
            await a.profiles.UpsertAgentProfiles(ppb.AgentProfileBatch(profiles=[
                ppb.AgentProfile(agent_id="a0", vector=[1, 0, 0], source_time_ms=1)]))
            await a.profiles.UpsertCustomerProfile(ppb.CustomerProfile(
                customer_key="+15550111", vector=[0.1, 0.2, 0.3, 0.4], source_time_ms=1000))
            await a.router.SetAgentState(login("a0", "sales"))
            await rs.settle()
            for i, c in enumerate((a, b)):  # cached on both replicas
                d = await c.router.RouteContact(contact(f"k{i}", customer_key="+15550111"))
                assert d.mode == cpb.MODE_PAIRED
                await c.router.ReportOutcome(rpb.ReportOutcomeRequest(
                    decision_id=d.decision_id, outcomes={"converted": 1.0}))
                await c.router.EndContact(rpb.EndContactRequest(
                    contact_id=f"k{i}", reason=rpb.END_REASON_HANDLED))
                await c.router.AgentReady(rpb.AgentReadyRequest(agent_id="a0"))
            # A contact of the customer waiting (no agent on its queue): its record
            # in Redis names the customer until the deletion rewrites it.
            q = await b.router.RouteContact(contact("w1", queue="nobody",
                                                    customer_key="+15550111"))
            assert q.mode == cpb.MODE_QUEUED
            store = rs.servers[0].service.shared.store  # type: ignore[union-attr]
            (held,) = await store.mget(["pl:{acme}:ct:w1"])
            ticket = await a.privacy.RequestDeletion(
                xpb.RequestDeletionRequest(customer_key="+15550111"))
            for _ in range(200):
                t = await b.privacy.GetDeletion(xpb.GetDeletionRequest(ticket_id=ticket.ticket_id))
                if t.status == xpb.DELETION_STATUS_COMPLETED:
                    break
                await asyncio.sleep(0.05)
            assert t.status == xpb.DELETION_STATUS_COMPLETED and t.completed_at_ms > 0
            await rs.settle()
            for s in rs.servers:  # gone from Redis and from every replica's memory
                svc = s.service
                digest = t.customer_digest
                assert await svc.store.get_customer_profile("acme", digest, rs.clock.now()) is None
                assert not [r for r in await svc.store.decisions("acme", rs.clock.now())
                            if r.customer_digest == digest]
            # The waiting contact's record in Redis no longer names the customer,
            # nor does any replica's copy.
            assert t.customer_digest.encode() in held
            (after,) = await store.mget(["pl:{acme}:ct:w1"])
            assert after and t.customer_digest.encode() not in after, after
            for s in rs.servers:
                assert s.service.tenants["acme"].routing.contacts["w1"].digest == ""
            d = await b.router.RouteContact(contact("k9", customer_key="+15550111"))
            assert d.mode == cpb.MODE_NO_PROFILE
            stale = await b.profiles.UpsertCustomerProfile(ppb.CustomerProfile(
                customer_key="+15550111", vector=[1, 1, 1, 1], source_time_ms=1000))
            assert stale.stale == 1 and stale.accepted == 0

    async def test_no_personal_key_without_a_time_to_live(self, redis_url: str) -> None:
        """Every Redis key the replicas wrote either expires or is one the design
        keeps (configuration, routing state, privacy proof, the capped feed)."""
        import re

        from pairline._proto.pairline.v1 import privacy_pb2 as xpb

        async with replicas(redis_url, n=2, cfg=settings(policy="greedy")) as rs:
            a, b = rs.client(0), rs.client(1)
            gen = np.random.default_rng(1)
            await activate_model(a, 1, "v1")
            await a.profiles.UpsertAgentProfiles(ppb.AgentProfileBatch(profiles=[
                ppb.AgentProfile(agent_id="a0", vector=[1, 0, 0], source_time_ms=1)]))
            for i in range(5):
                await a.profiles.UpsertCustomerProfile(ppb.CustomerProfile(
                    customer_key=f"+1555010{i}", vector=[0.1, 0.2, 0.3, 0.4], source_time_ms=1))
            await a.router.SetAgentState(login("a0", "sales"))
            d = await b.router.RouteContact(contact("k0", customer_key="+15550100"))
            await a.router.ReportOutcome(rpb.ReportOutcomeRequest(
                decision_id=d.decision_id, outcomes={"converted": 1.0}))
            await b.router.RouteContact(contact("k1", customer_key="+15550101"))  # waits
            await a.privacy.OptOut(xpb.OptOutRequest(customer_key="+15550103"))
            await a.privacy.RequestDeletion(xpb.RequestDeletionRequest(customer_key="+15550104"))
            await rs.settle()
        kept = re.compile(
            r"pl:\{(acme|globex)\}:(model:.+|models|active|feed|agents|ag:.+|aps|av|wv|epoch|"
            r"optouts|tickets|open|tomb|audit|auditseq|secret)$|pl:ledger-tenants$")
        import redis.asyncio as aioredis

        if "+cluster://" in redis_url:  # every master of the cluster
            seeds = redis_url.split("://", 1)[1].split(",")
            clients = [aioredis.Redis(host=h, port=int(p))
                       for h, p in (x.rsplit(":", 1) for x in seeds)]
        else:
            clients = [aioredis.Redis.from_url(redis_url)]
        seen = 0
        for client in clients:
            async for key in client.scan_iter(count=1000):
                seen += 1
                ttl = await client.pttl(key)
                name = key.decode()
                assert ttl > 0 or kept.match(name), f"{name} has no time to live"
                assert "+1555" not in name
                raw = await client.dump(key)
                assert b"+1555" not in (raw or b""), name
            await client.aclose()
        assert seen > 20


class Held:
    """A store's GET of a customer profile held back once (a failure injected on
    purpose: a slow Redis reply): ``entered`` is set when the reply has been read
    from Redis, and it is handed to the caller once ``release`` is set."""

    def __init__(self, store: Any) -> None:
        self.entered, self.release = asyncio.Event(), asyncio.Event()
        self._get = store.get
        store.get = self.get

    async def get(self, key: str) -> bytes | None:
        value = await self._get(key)
        if ":cp:" in key and not self.release.is_set():
            self.entered.set()
            await self.release.wait()
        return value  # type: ignore[no-any-return]


async def _deleted(client: Client, customer_key: str) -> Any:
    """Request a deletion and wait until it is COMPLETED."""
    from pairline._proto.pairline.v1 import privacy_pb2 as xpb

    t = await client.privacy.RequestDeletion(xpb.RequestDeletionRequest(customer_key=customer_key))
    for _ in range(400):
        t = await client.privacy.GetDeletion(xpb.GetDeletionRequest(ticket_id=t.ticket_id))
        if t.status == xpb.DELETION_STATUS_COMPLETED:
            return t
        await asyncio.sleep(0.02)
    raise AssertionError(f"deletion not completed: {t}")


class TestPrivacyRacesAcrossReplicas:
    """An opt-out or a deletion that lands while another replica is in the middle
    of a call for the same customer, or while its change feed lags."""

    CUSTOMER = "+15550199"

    async def _setup(self, rs: Replicas, agents: int, status: int) -> None:
        a = rs.client(0)
        await activate_model(a, 9, "v1")
        await a.profiles.UpsertAgentProfiles(ppb.AgentProfileBatch(profiles=[
            ppb.AgentProfile(agent_id=f"a{i}", vector=[1, i, 0], source_time_ms=1)
            for i in range(agents)]))
        await a.profiles.UpsertCustomerProfile(ppb.CustomerProfile(
            customer_key=self.CUSTOMER, vector=[0.1, 0.2, 0.3, 0.4], source_time_ms=1))
        for i in range(agents):
            await a.router.SetAgentState(login(f"a{i}", "sales", status=status))
        await rs.settle()

    async def test_opt_out_during_a_route_on_another_replica_holds_for_its_contact(
        self, redis_url: str
    ) -> None:
        """B reads the customer's profile; the opt-out is acknowledged through A and
        applied on B before B's route goes on: the contact waits without the
        customer's data, on every replica, and is later paired as opted out."""
        from pairline._proto.pairline.v1 import privacy_pb2 as xpb

        async with replicas(redis_url, n=2, cfg=settings(policy="greedy")) as rs:
            a, b = rs.client(0), rs.client(1)
            await self._setup(rs, 1, rpb.AGENT_STATUS_AWAY)  # nobody free: it will wait
            sb = rs.servers[1].service
            held = Held(sb.shared.store)  # type: ignore[union-attr]
            route = asyncio.ensure_future(
                b.router.RouteContact(contact("w1", customer_key=self.CUSTOMER)))
            await held.entered.wait()
            assert (await a.privacy.OptOut(xpb.OptOutRequest(customer_key=self.CUSTOMER))).changed
            await rs.settle()
            (digest,) = sb.privacy.tenants["acme"].suppressed
            held.release.set()
            assert (await route).mode == cpb.MODE_QUEUED
            await rs.settle()
            for s in rs.servers:
                c = s.service.tenants["acme"].routing.contacts["w1"]
                assert (c.digest, c.profile, c.opted_out) == ("", None, True)
            (raw,) = await sb.shared.store.mget(["pl:{acme}:ct:w1"])  # type: ignore[union-attr]
            assert raw and digest.encode() not in raw
            d = await a.router.AgentReady(rpb.AgentReadyRequest(agent_id="a0"))
            assert (d.contact_id, d.mode) == ("w1", cpb.MODE_OPTED_OUT)
            out = await a.router.ReportOutcome(rpb.ReportOutcomeRequest(
                decision_id=d.decision_id, outcomes={"converted": 1.0}))
            assert not out.stored

    async def test_a_profile_read_while_its_deletion_completes_is_not_kept(
        self, redis_url: str
    ) -> None:
        """B's cache miss reads the profile just before the deletion purges it and
        gets the reply after B has applied the deletion: that reply is neither used
        for the contact nor cached, so B never routes on the deleted profile."""
        cfg = dataclasses.replace(settings(policy="greedy"), deletion_interval_s=0.05)
        async with replicas(redis_url, n=2, cfg=cfg) as rs:
            a, b = rs.client(0), rs.client(1)
            await self._setup(rs, 3, rpb.AGENT_STATUS_AVAILABLE)
            sb = rs.servers[1].service
            store = sb.shared.store  # type: ignore[union-attr]
            held = Held(store)
            route = asyncio.ensure_future(
                b.router.RouteContact(contact("c1", customer_key=self.CUSTOMER)))
            await held.entered.wait()
            ticket = await _deleted(a, self.CUSTOMER)
            await rs.settle()
            held.release.set()
            assert (await route).mode == cpb.MODE_NO_PROFILE
            assert sb.tenants["acme"].routing.contacts["c1"].profile is None
            assert ticket.customer_digest not in store._cache["acme"]
            await b.router.EndContact(rpb.EndContactRequest(
                contact_id="c1", reason=rpb.END_REASON_ABANDONED))
            d = await b.router.RouteContact(contact("c2", customer_key=self.CUSTOMER))
            assert d.mode == cpb.MODE_NO_PROFILE

    async def test_a_replica_whose_feed_lags_cannot_bring_deleted_data_back(
        self, redis_url: str
    ) -> None:
        """The deletion completes through A while B's feed is cut off (B has not
        heard of the tombstone): an old upload through B is refused by Redis, and
        audited as refused by the tombstone."""
        from pairline._proto.pairline.v1 import privacy_pb2 as xpb

        async with replicas(redis_url, n=2, cfg=settings(policy="greedy")) as rs:
            a, b = rs.client(0), rs.client(1)
            await self._setup(rs, 1, rpb.AGENT_STATUS_AVAILABLE)
            sb = rs.servers[1].service
            await sb._feed.stop()  # type: ignore[union-attr]
            ticket = await _deleted(a, self.CUSTOMER)
            assert ticket.customer_digest not in sb.privacy.tenants["acme"].tombstones
            old = ppb.CustomerProfile(customer_key=self.CUSTOMER, vector=[0.1, 0.2, 0.3, 0.4],
                                      source_time_ms=1)
            res = await b.profiles.UpsertCustomerProfile(old)
            assert (res.accepted, list(res.stale_indexes)) == (0, [0])
            store = sb.shared.store  # type: ignore[union-attr]
            assert await store.get(f"pl:{{acme}}:cp:{ticket.customer_digest}") is None
            d = await a.router.RouteContact(contact("c9", customer_key=self.CUSTOMER))
            assert d.mode == cpb.MODE_NO_PROFILE
            audit = await b.privacy.ReadAudit(xpb.ReadAuditRequest())
            refused = [e for e in audit.entries if e.customer_digest == ticket.customer_digest
                       and e.detail == "tombstone"]
            assert refused, audit
            # A newer profile (collected after the deletion) is taken.
            new = ppb.CustomerProfile(customer_key=self.CUSTOMER, vector=[1, 1, 1, 1],
                                      source_time_ms=ticket.completed_at_ms + 1)
            assert (await b.profiles.UpsertCustomerProfile(new)).accepted == 1

    async def test_a_rebuild_does_not_skip_an_opt_out_the_feed_had_not_applied(
        self, redis_url: str
    ) -> None:
        """B's feed follower is still applying an earlier event (a slow read, injected)
        when an opt-out is acknowledged through A; B then falls out of touch and
        rebuilds its routing state from Redis. The rebuild covers routing snapshots
        only: the opt-out after them is still applied when the follower gets there."""
        from pairline._proto.pairline.v1 import privacy_pb2 as xpb

        async with replicas(redis_url, n=2) as rs:
            a = rs.client(0)
            sb = rs.servers[1].service
            await rs.settle()
            feed = sb._feed
            assert feed is not None
            listener = feed.listener

            async def slow(tenant: str, kind: str, fields: Any) -> None:
                if kind == "snap" and b"c:stall" in fields:
                    await asyncio.sleep(0.5)
                result = listener(tenant, kind, fields)
                if result is not None:
                    await result

            feed.listener = slow
            await a.router.RouteContact(contact("stall"))  # waits: a snapshot event
            await asyncio.sleep(0.1)  # B's follower is on it
            await a.privacy.OptOut(xpb.OptOutRequest(customer_key=self.CUSTOMER))
            sb.shared.out_of_touch(TimeoutError("a Redis call timed out"))  # type: ignore[union-attr]
            for _ in range(300):
                await asyncio.sleep(0.01)
                if not sb.shared.degraded:  # type: ignore[union-attr]
                    break
            assert not sb.shared.degraded  # type: ignore[union-attr]
            await asyncio.sleep(0.6)  # the slow event is done
            await rs.settle()
            assert sb.privacy.screen("acme", self.CUSTOMER)[1]
            assert "stall" in sb.tenants["acme"].routing.contacts


class TestCallerGoneDuringACommit:
    """With shared state the commit is the await a deadline lands on: a call cancelled
    while its commit is on its way (here it lands, and its reply is slow: injected)
    leaves neither a reservation nor a contact of its own behind."""

    @staticmethod
    def slow_first_commit(rs: Replicas) -> None:
        shared = rs.servers[0].service.shared
        assert shared is not None
        commit = shared.commit
        armed = [True]

        async def slow(tenant: str, routing: Any, **kw: Any) -> int:
            out = await commit(tenant, routing, **kw)
            if armed[0]:
                armed[0] = False
                await asyncio.sleep(0.5)
            return out

        shared.commit = slow  # type: ignore[method-assign]

    async def test_route_contact(self, redis_url: str) -> None:
        async with replicas(redis_url, n=1) as rs:
            c = rs.client(0)
            await c.router.SetAgentState(login("a1", "sales"))
            self.slow_first_commit(rs)
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await c.router.RouteContact(contact("c1"), timeout=0.15)
            assert err.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED
            await asyncio.sleep(0.8)
            a1 = await c.router.GetAgentState(rpb.GetAgentStateRequest(agent_id="a1"))
            assert a1.status == rpb.AGENT_STATUS_AVAILABLE and not a1.contact_ids, a1
            assert "c1" not in rs.servers[0].service.tenants["acme"].routing.contacts
            d = await c.router.RouteContact(contact("c2"))
            assert d.agent_id == "a1"

    async def test_agent_ready(self, redis_url: str) -> None:
        async with replicas(redis_url, n=1) as rs:
            c = rs.client(0)
            await c.router.SetAgentState(login("a1", "sales", status=rpb.AGENT_STATUS_AWAY))
            assert (await c.router.RouteContact(contact("w1"))).mode == cpb.MODE_QUEUED
            self.slow_first_commit(rs)
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await c.router.AgentReady(rpb.AgentReadyRequest(agent_id="a1"), timeout=0.15)
            assert err.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED
            await asyncio.sleep(0.8)
            a1 = await c.router.GetAgentState(rpb.GetAgentStateRequest(agent_id="a1"))
            assert not a1.contact_ids, a1  # w1 not reserved for a caller that is gone
            stats = await c.insights.GetQueueStats(ipb.GetQueueStatsRequest())
            assert stats.queues[0].waiting == 1  # w1 waits again (its own caller waits)


class TestStartWhileRedisIsBusy:
    async def test_a_replica_starting_while_redis_does_not_answer_waits_for_it(self) -> None:
        """Redis stopped (SIGSTOP: a busy or still loading Redis, injected) while a
        replica starts: its start-up reads time out, it retries instead of exiting,
        and it serves once Redis answers again."""
        import os
        import signal

        own = RedisProcess()
        try:
            async with replicas(own.url, n=1) as rs:
                await rs.client(0).router.SetAgentState(login("a1", "sales"))
            cfg = dataclasses.replace(settings(), redis_url=own.url, redis_timeout_s=0.2)
            os.kill(own.proc.pid, signal.SIGSTOP)
            server = PairlineServer(cfg, clock=FakeClock())
            starting = asyncio.ensure_future(server.start())
            try:
                await asyncio.sleep(1.0)
                assert not starting.done()  # waiting, not exited
            finally:
                os.kill(own.proc.pid, signal.SIGCONT)
            await asyncio.wait_for(starting, 30)
            try:
                async with grpc.aio.insecure_channel(server.address) as ch:
                    state = await Client(ch, KEYS["acme"]).router.GetAgentState(
                        rpb.GetAgentStateRequest(agent_id="a1"))
                    assert state.status == rpb.AGENT_STATUS_AVAILABLE
            finally:
                await server.stop(0.5)
        finally:
            own.stop()
