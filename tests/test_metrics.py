"""Prometheus metrics: scraped over HTTP from a real server after real traffic."""

from __future__ import annotations

import asyncio
import urllib.request
from dataclasses import replace

import numpy as np
import pytest
import redis
from prometheus_client.parser import text_string_to_metric_families
from support import RedisProcess, Running, contact, login, running, settings

from pairline._proto.pairline.v1 import common_pb2 as cpb
from pairline._proto.pairline.v1 import privacy_pb2 as xpb
from pairline._proto.pairline.v1 import profiles_pb2 as ppb
from pairline._proto.pairline.v1 import router_pb2 as rpb
from pairline.metrics import LIVE, PENDING, Metrics
from pairline.model import dump_model
from pairline.stores.privacy import TicketStatus
from pairline.testing import FakeClock

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


async def scrape(address: str) -> Samples:
    """GET /metrics from a thread (the endpoint hops onto the server's loop)."""

    def get() -> str:
        with urllib.request.urlopen(f"http://{address}/metrics", timeout=5) as resp:
            assert resp.status == 200
            return resp.read().decode()

    text = await asyncio.to_thread(get)
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float | None:
    return samples.get((name, frozenset(labels.items())))


@pytest.fixture
async def msrv() -> Running:
    cfg = replace(settings(), metrics_listen="127.0.0.1:0")
    async with running(cfg) as r:
        yield r


class TestEndpoint:
    async def test_decisions_latency_and_queues_after_traffic(self, msrv: Running) -> None:
        """Decisions by mode/policy, their latency histogram and the queue gauges
        reflect the calls made."""
        r = msrv.acme.router
        await r.SetAgentState(login("a1", "sales"))
        await r.SetAgentState(login("a2", "sales", status=rpb.AGENT_STATUS_AWAY))
        routed = await r.RouteContact(contact("c1"))
        assert routed.mode == cpb.MODE_BASELINE
        for cid in ("c2", "c3"):
            assert (await r.RouteContact(contact(cid))).mode == cpb.MODE_QUEUED
        msrv.clock.advance(7)
        await msrv.globex.router.RouteContact(contact("g1", queue="support"))

        assert msrv.server.metrics_endpoint is not None
        m = await scrape(msrv.server.metrics_endpoint.address)
        d = "pairline_decisions_total"
        assert value(m, d, tenant="acme", rpc="RouteContact", mode="baseline",
                     policy="baseline") == 1
        assert value(m, d, tenant="acme", rpc="RouteContact", mode="queued", policy="none") == 2
        assert value(m, d, tenant="globex", rpc="RouteContact", mode="queued",
                     policy="none") == 1
        h = "pairline_decision_seconds"
        assert value(m, f"{h}_count", rpc="RouteContact", mode="queued") == 3
        assert value(m, f"{h}_count", rpc="RouteContact", mode="baseline") == 1
        total = value(m, f"{h}_sum", rpc="RouteContact", mode="queued")
        assert total is not None and 0 < total < 1.0
        q = {"tenant": "acme", "queue": "sales"}
        assert value(m, "pairline_queue_waiting_contacts", **q) == 2
        assert value(m, "pairline_queue_oldest_wait_seconds", **q) == pytest.approx(7)
        assert value(m, "pairline_queue_agents", state="logged_in", **q) == 2
        assert value(m, "pairline_queue_agents", state="available", **q) == 0
        assert value(m, "pairline_queue_agents", state="reserved", **q) == 1
        assert value(m, "pairline_agent_occupancy_ratio", **q) == 1.0
        assert value(m, "pairline_queue_waiting_contacts", tenant="globex",
                     queue="support") == 1

    async def test_agent_ready_and_connect_are_counted(self, msrv: Running) -> None:
        """AgentReady decisions, and decisions made on a Connect stream, count too."""
        r = msrv.acme.router
        await r.SetAgentState(login("a1", "sales", status=rpb.AGENT_STATUS_AWAY))
        await r.RouteContact(contact("c1"))
        await r.SetAgentState(login("a1", "sales"))
        ready = await r.AgentReady(rpb.AgentReadyRequest(agent_id="a1"))
        assert (ready.contact_id, ready.mode) == ("c1", cpb.MODE_BASELINE)
        call = r.Connect()
        await call.write(rpb.SwitchEvent(request_id="x", route_contact=contact("c9")))
        reply = await call.read()
        await call.done_writing()
        assert reply.decision.mode == cpb.MODE_QUEUED
        assert msrv.server.metrics_endpoint is not None
        m = await scrape(msrv.server.metrics_endpoint.address)
        assert value(m, "pairline_decisions_total", tenant="acme", rpc="AgentReady",
                     mode="baseline", policy="baseline") == 1
        w = {"tenant": "acme", "queue": "sales"}
        assert value(m, "pairline_contact_wait_seconds_count", **w) == 1
        assert value(m, "pairline_decisions_total", tenant="acme", rpc="RouteContact",
                     mode="queued", policy="none") == 2

    async def test_expired_offers_are_counted(self, msrv: Running) -> None:
        """A reservation that times out increments pairline_offers_expired_total."""
        r = msrv.acme.router
        await r.SetAgentState(login("a1", "sales"))
        await r.RouteContact(contact("c1"))
        assert msrv.server.metrics_endpoint is not None
        before = await scrape(msrv.server.metrics_endpoint.address)
        assert value(before, "pairline_offers_expired_total", tenant="acme") == 0
        msrv.clock.advance(11)  # offer_timeout_s is 10 in the test tenant
        await asyncio.sleep(0.1)  # the sweep (or the scrape itself) releases it
        after = await scrape(msrv.server.metrics_endpoint.address)
        assert value(after, "pairline_queue_agents", tenant="acme", queue="sales",
                     state="available") == 1
        assert value(after, "pairline_offers_expired_total", tenant="acme") == 1

    async def test_every_documented_metric_is_exported(self, msrv: Running) -> None:
        """Live and pending metric families are all on the endpoint (pending at zero)."""
        assert msrv.server.metrics_endpoint is not None
        url = f"http://{msrv.server.metrics_endpoint.address}/metrics"
        text = await asyncio.to_thread(lambda: urllib.request.urlopen(url, timeout=5).read())
        names = {f.name for f in text_string_to_metric_families(text.decode())}
        for name in (*LIVE, *PENDING):
            assert name.removesuffix("_total") in names, name



class TestWaits:
    async def test_wait_from_arrival_to_reservation(self, msrv: Running) -> None:
        """A contact taken at once waits 0 s; one that waited 25 s lands in the 30 s
        bucket, not the 20 s one; a retried RouteContact is not counted twice."""
        r = msrv.acme.router
        await r.SetAgentState(login("a1", "sales"))
        await r.RouteContact(contact("now"))
        await r.RouteContact(contact("now"))  # retry: the same decision
        await r.RouteContact(contact("later"))  # a1 is reserved: it waits
        msrv.clock.advance(25)
        await r.EndContact(rpb.EndContactRequest(contact_id="now",
                                                 reason=rpb.END_REASON_ABANDONED))
        ready = await r.AgentReady(rpb.AgentReadyRequest(agent_id="a1"))
        assert ready.contact_id == "later"
        assert msrv.server.metrics_endpoint is not None
        m = await scrape(msrv.server.metrics_endpoint.address)
        w = {"tenant": "acme", "queue": "sales"}
        assert value(m, "pairline_contact_wait_seconds_count", **w) == 2
        assert value(m, "pairline_contact_wait_seconds_sum", **w) == pytest.approx(25)
        assert value(m, "pairline_contact_wait_seconds_bucket", le="0.0", **w) == 1
        assert value(m, "pairline_contact_wait_seconds_bucket", le="20.0", **w) == 1
        assert value(m, "pairline_contact_wait_seconds_bucket", le="30.0", **w) == 2


class TestRedis:
    async def test_store_counters_are_live_on_redis(self, redis_server: RedisProcess) -> None:
        """On the Redis store: routing commits, profile-cache lookups and the change-feed
        lag come from the store's counters; the embedded store has no such samples."""
        redis.Redis(port=redis_server.port).flushall()
        cfg = replace(settings(policy="greedy"), metrics_listen="127.0.0.1:0",
                      redis_url=redis_server.url)
        async with running(cfg) as r:
            gen = np.random.default_rng(1)
            model = dump_model(version="v1", W=gen.normal(size=(4, 3)), wc=gen.normal(size=4),
                               wa=gen.normal(size=3), b=0.0)
            p = r.acme.profiles
            await p.UploadModel(ppb.UploadModelRequest(model=model, activate=True))
            await p.UpsertCustomerProfile(ppb.CustomerProfile(
                customer_key="+1555", vector=[1, 0, 0, 0], version=1, source_time_ms=1))
            await r.acme.router.SetAgentState(login("a1", "sales"))
            d = await r.acme.router.RouteContact(contact("c1", customer_key="+1555"))
            assert d.mode == cpb.MODE_PAIRED
            await r.acme.router.RouteContact(contact("c2", customer_key="+1555"))
            assert r.server.metrics_endpoint is not None
            m = await scrape(r.server.metrics_endpoint.address)
        commits = value(m, "pairline_routing_commits_total")
        assert commits is not None and commits >= 3  # login and two routes
        assert value(m, "pairline_claim_conflicts_total") == 0  # one replica: no race
        hits = value(m, "pairline_cache_lookups_total", cache="customer_profiles", result="hit")
        misses = value(m, "pairline_cache_lookups_total", cache="customer_profiles",
                       result="miss")
        assert hits is not None and misses is not None and hits + misses >= 2
        lag = value(m, "pairline_change_feed_lag_seconds")
        assert lag is not None and lag >= 0
        assert value(m, "pairline_redis_degraded") == 0

    async def test_redis_outage_shows(self) -> None:
        """Redis killed: the next decision is DEGRADED, and the scrape says so
        (pairline_redis_degraded 1, decisions counted under mode degraded)."""
        own = RedisProcess()
        try:
            cfg = replace(settings(), metrics_listen="127.0.0.1:0", redis_url=own.url)
            async with running(cfg) as r:
                await r.acme.router.SetAgentState(login("a1", "sales"))
                await r.acme.router.SetAgentState(login("a2", "sales"))
                own.kill()
                d = await r.acme.router.RouteContact(contact("c1"), timeout=5)
                assert d.mode == cpb.MODE_DEGRADED
                assert r.server.metrics_endpoint is not None
                m = await scrape(r.server.metrics_endpoint.address)
        finally:
            own.stop()
        assert value(m, "pairline_redis_degraded") == 1
        assert value(m, "pairline_decisions_total", tenant="acme", rpc="RouteContact",
                     mode="degraded", policy="baseline") == 1

    async def test_embedded_store_has_no_redis_samples(self, msrv: Running) -> None:
        """The Redis families are there (for dashboards) but empty on the embedded store."""
        assert msrv.server.metrics_endpoint is not None
        m = await scrape(msrv.server.metrics_endpoint.address)
        assert value(m, "pairline_routing_commits_total") is None
        assert value(m, "pairline_change_feed_lag_seconds") is None
        assert value(m, "pairline_redis_degraded") is None


def tickets(m: Samples, tenant: str = "acme") -> tuple[float | None, ...]:
    """(open, due_soon, overdue) deletion tickets of ``tenant``."""
    return tuple(value(m, "pairline_deletion_tickets", tenant=tenant, state=s)
                 for s in ("open", "due_soon", "overdue"))


DAY_S = 86_400.0


class TestPrivacy:
    async def test_opt_outs_and_withdrawals_are_counted(self, msrv: Running) -> None:
        """An acknowledged opt-out moves pairline_opt_outs_total; a repeat does not;
        a withdrawal counts under action=withdraw; a bulk list counts its new ones."""
        assert msrv.server.metrics_endpoint is not None
        address = msrv.server.metrics_endpoint.address
        p = msrv.acme.privacy
        oo = {"tenant": "acme", "action": "opt_out"}
        wd = {"tenant": "acme", "action": "withdraw"}
        m = await scrape(address)
        assert value(m, "pairline_opt_outs_total", **oo) == 0
        await p.OptOut(xpb.OptOutRequest(customer_key="+15550100"))
        m = await scrape(address)
        assert value(m, "pairline_opt_outs_total", **oo) == 1
        await p.OptOut(xpb.OptOutRequest(customer_key="+15550100"))  # already: no change
        await p.WithdrawOptOut(xpb.OptOutRequest(customer_key="+15550100"))
        await p.BulkOptOut(iter([xpb.BulkOptOutRequest(
            customer_keys=["+15550101", "+15550102"])]))
        m = await scrape(address)
        assert value(m, "pairline_opt_outs_total", **oo) == 3
        assert value(m, "pairline_opt_outs_total", **wd) == 1
        assert value(m, "pairline_opt_outs_total", tenant="globex", action="opt_out") == 0

    async def test_ticket_due_soon_past_due_then_completed(self) -> None:
        """A deletion ticket is open, then due soon, then past due on the fake clock;
        completing it takes it out of every state and counts the completion; a stale
        re-upload is counted as refused by the tombstone."""
        cfg = replace(settings(), metrics_listen="127.0.0.1:0", deletion_interval_s=0)
        async with running(cfg) as r:
            assert r.server.metrics_endpoint is not None
            address = r.server.metrics_endpoint.address
            t = await r.acme.privacy.RequestDeletion(
                xpb.RequestDeletionRequest(customer_key="+15550100"))
            m = await scrape(address)
            assert tickets(m) == (1, 0, 0)
            assert tickets(m, "globex") == (0, 0, 0)
            assert value(m, "pairline_deletion_requests_total", tenant="acme") == 1
            now_s = r.clock.now()
            # 30 business days ahead: three days before the due time it is due soon.
            r.clock.advance(t.due_at_ms / 1000 - now_s - 3 * DAY_S)
            assert tickets(await scrape(address)) == (1, 1, 0)
            r.clock.advance(3 * DAY_S + 1)
            assert tickets(await scrape(address)) == (1, 0, 1)

            assert await r.server.service.privacy.run_deletions() == 1  # the worker's pass
            done = await r.acme.privacy.GetDeletion(
                xpb.GetDeletionRequest(ticket_id=t.ticket_id))
            assert done.status == xpb.DELETION_STATUS_COMPLETED
            stale = await r.acme.profiles.UpsertCustomerProfile(ppb.CustomerProfile(
                customer_key="+15550100", vector=[1, 0, 0, 0], version=1, source_time_ms=5))
            assert stale.stale == 1
            m = await scrape(address)
        assert tickets(m) == (0, 0, 0)
        assert value(m, "pairline_deletions_completed_total", tenant="acme") == 1
        assert value(m, "pairline_stale_writes_refused_total", tenant="acme",
                     reason="tombstone") == 1
        assert value(m, "pairline_stale_writes_refused_total", tenant="acme",
                     reason="newer_profile_stored") == 0

    async def test_redis_replicas_share_the_gauge_and_count_once(
        self, redis_server: RedisProcess
    ) -> None:
        """Two replicas on one Redis: both report the shared ledger's ticket counts;
        the request is counted by the replica that took it; when both workers carry
        out the same ticket, one completes it (counted and audited once)."""
        redis.Redis(port=redis_server.port).flushall()
        clock = FakeClock()
        cfg = replace(settings(), metrics_listen="127.0.0.1:0", redis_url=redis_server.url,
                      redis_timeout_s=2.0, deletion_interval_s=0)
        async with running(cfg, clock) as a, running(cfg, clock) as b:
            assert a.server.metrics_endpoint and b.server.metrics_endpoint
            t = await a.acme.privacy.RequestDeletion(
                xpb.RequestDeletionRequest(customer_key="+15550100"))
            clock.advance(t.due_at_ms / 1000 - clock.now() + 1)  # past due
            ma = await scrape(a.server.metrics_endpoint.address)
            mb = await scrape(b.server.metrics_endpoint.address)
            assert tickets(ma) == tickets(mb) == (1, 0, 1)
            assert value(ma, "pairline_deletion_requests_total", tenant="acme") == 1
            assert value(mb, "pairline_deletion_requests_total", tenant="acme") == 0

            pa, pb = a.server.service.privacy, b.server.service.privacy
            seen_by_b = await pb.get_deletion("acme", t.ticket_id)  # still RECEIVED
            assert await pa.run_deletions() == 1
            late = await pb.carry_out("acme", seen_by_b)  # B's worker, a step behind
            assert late.status == TicketStatus.COMPLETED
            assert late.completed_at_ms == (await pa.get_deletion("acme", t.ticket_id)
                                            ).completed_at_ms
            assert await pb.run_deletions() == 0
            ma = await scrape(a.server.metrics_endpoint.address)
            mb = await scrape(b.server.metrics_endpoint.address)
            entries = await pa.read_audit("acme", 0, 100)
        assert tickets(ma) == tickets(mb) == (0, 0, 0)
        done = [value(x, "pairline_deletions_completed_total", tenant="acme") for x in (ma, mb)]
        assert done == [1, 0]
        assert [e.op for e in entries].count("deletion_completed") == 1


class TestRegistry:
    async def test_servers_in_one_process_keep_separate_numbers(self) -> None:
        """Two servers in one process: each endpoint counts only its own decisions."""
        cfg = replace(settings(), metrics_listen="127.0.0.1:0")
        async with running(cfg) as one, running(cfg) as two:
            await one.acme.router.RouteContact(contact("c1"))
            assert one.server.metrics_endpoint and two.server.metrics_endpoint
            m1 = await scrape(one.server.metrics_endpoint.address)
            m2 = await scrape(two.server.metrics_endpoint.address)
        labels = {"tenant": "acme", "rpc": "RouteContact", "mode": "queued", "policy": "none"}
        assert value(m1, "pairline_decisions_total", **labels) == 1
        assert value(m2, "pairline_decisions_total", **labels) is None

    async def test_off_by_default(self, srv: Running) -> None:
        """Without metrics_listen no HTTP endpoint is opened, but the registry counts."""
        await srv.acme.router.RouteContact(contact("c1"))
        assert srv.server.metrics_endpoint is None
        got = srv.server.metrics.registry.get_sample_value(
            "pairline_decisions_total",
            {"tenant": "acme", "rpc": "RouteContact", "mode": "queued", "policy": "none"},
        )
        assert got == 1

    def test_observe_decision_labels(self) -> None:
        """Mode numbers become lower-case labels; an empty policy becomes 'none'."""
        m = Metrics()
        m.observe_decision("t", "AgentReady", cpb.MODE_QUEUED, "", 0.0002)
        m.observe_decision("t", "AgentReady", cpb.MODE_QUEUED, "", 0.0002)
        assert m.registry.get_sample_value(
            "pairline_decisions_total",
            {"tenant": "t", "rpc": "AgentReady", "mode": "queued", "policy": "none"},
        ) == 2
        assert m.registry.get_sample_value(
            "pairline_decision_seconds_bucket",
            {"rpc": "AgentReady", "mode": "queued", "le": "0.00025"},
        ) == 2


class TestEndpointAddress:
    def test_bad_metrics_listen_is_refused(self) -> None:
        """metrics_listen must be HOST:PORT."""
        from pairline.metrics import MetricsEndpoint

        with pytest.raises(ValueError, match="HOST:PORT"):
            MetricsEndpoint(Metrics().registry, "9100")
