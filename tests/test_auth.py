"""Authentication and tenant isolation through a real server.

Every pairline RPC needs ``authorization: Bearer <api key>``; health and
reflection need none. The tenant comes from the key only: one tenant's agents,
contacts and decisions do not exist for another, and another tenant's attempts
on them change nothing.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, ClassVar

import grpc
import pytest
from grpc_health.v1 import health_pb2
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from support import KEYS, Client, Running, contact, login

from pairline._proto.pairline.v1 import common_pb2 as cpb
from pairline._proto.pairline.v1 import insights_pb2 as ipb
from pairline._proto.pairline.v1 import privacy_pb2 as xpb
from pairline._proto.pairline.v1 import profiles_pb2 as ppb
from pairline._proto.pairline.v1 import router_pb2 as rpb

UNAUTHENTICATED = grpc.StatusCode.UNAUTHENTICATED
NOT_FOUND = grpc.StatusCode.NOT_FOUND
SERVICES = ("pairline.v1.Router", "pairline.v1.Profiles", "pairline.v1.Privacy",
            "pairline.v1.Insights")


async def rejected(call: Awaitable[Any], code: grpc.StatusCode) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await call
    assert err.value.code() is code, f"{err.value.code()}: {err.value.details()}"
    return err.value


async def assert_serving(srv: Running) -> None:
    resp = await srv.client("").health.Check(health_pb2.HealthCheckRequest())
    assert resp.status == health_pb2.HealthCheckResponse.SERVING


def cprof(key: str) -> ppb.CustomerProfile:
    return ppb.CustomerProfile(customer_key=key, vector=[0.1, 0.2, 0.3, 0.4], version=1,
                               source_time_ms=1_700_000_000_000)


# Every unary and client-streaming RPC, with a request that is valid for acme.
Call = Callable[[Client, tuple[tuple[str, str], ...]], Awaitable[Any]]
RPCS: list[tuple[str, Call]] = [
    ("Router.RouteContact", lambda c, md: c.router.RouteContact(contact("c1"), metadata=md)),
    ("Router.AgentReady",
     lambda c, md: c.router.AgentReady(rpb.AgentReadyRequest(agent_id="a1"), metadata=md)),
    ("Router.SetAgentState", lambda c, md: c.router.SetAgentState(login("a1", "sales"),
                                                                  metadata=md)),
    ("Router.GetAgentState",
     lambda c, md: c.router.GetAgentState(rpb.GetAgentStateRequest(agent_id="a1"), metadata=md)),
    ("Router.ConfirmDecision",
     lambda c, md: c.router.ConfirmDecision(rpb.ConfirmDecisionRequest(decision_id="d1"),
                                            metadata=md)),
    ("Router.ReleaseDecision",
     lambda c, md: c.router.ReleaseDecision(rpb.ReleaseDecisionRequest(decision_id="d1"),
                                            metadata=md)),
    ("Router.EndContact",
     lambda c, md: c.router.EndContact(rpb.EndContactRequest(
         contact_id="c1", reason=rpb.END_REASON_ABANDONED), metadata=md)),
    ("Router.ReportOutcome",
     lambda c, md: c.router.ReportOutcome(rpb.ReportOutcomeRequest(
         decision_id="d1", outcomes={"converted": 1.0}), metadata=md)),
    ("Profiles.UpsertCustomerProfile",
     lambda c, md: c.profiles.UpsertCustomerProfile(cprof("k1"), metadata=md)),
    ("Profiles.UpsertCustomerProfiles",
     lambda c, md: c.profiles.UpsertCustomerProfiles(
         iter([ppb.CustomerProfileBatch(profiles=[cprof("k1")])]), metadata=md)),
    ("Profiles.UpsertAgentProfiles",
     lambda c, md: c.profiles.UpsertAgentProfiles(ppb.AgentProfileBatch(profiles=[
         ppb.AgentProfile(agent_id="a1", vector=[1, 2, 3], source_time_ms=1)]), metadata=md)),
    ("Profiles.UploadModel",
     lambda c, md: c.profiles.UploadModel(ppb.UploadModelRequest(model=b"x"), metadata=md)),
    ("Profiles.ActivateModel",
     lambda c, md: c.profiles.ActivateModel(ppb.ActivateModelRequest(version="m1"), metadata=md)),
    ("Profiles.GetModelInfo",
     lambda c, md: c.profiles.GetModelInfo(ppb.GetModelInfoRequest(), metadata=md)),
    ("Privacy.OptOut",
     lambda c, md: c.privacy.OptOut(xpb.OptOutRequest(customer_key="k1"), metadata=md)),
    ("Privacy.WithdrawOptOut",
     lambda c, md: c.privacy.WithdrawOptOut(xpb.OptOutRequest(customer_key="k1"), metadata=md)),
    ("Privacy.RequestDeletion",
     lambda c, md: c.privacy.RequestDeletion(xpb.RequestDeletionRequest(customer_key="k1"),
                                             metadata=md)),
    ("Privacy.GetDeletion",
     lambda c, md: c.privacy.GetDeletion(xpb.GetDeletionRequest(ticket_id="t1"), metadata=md)),
    ("Privacy.ListDeletions",
     lambda c, md: c.privacy.ListDeletions(xpb.ListDeletionsRequest(), metadata=md)),
    ("Privacy.BulkOptOut",
     lambda c, md: c.privacy.BulkOptOut(
         iter([xpb.BulkOptOutRequest(customer_keys=["k1", "k2"])]), metadata=md)),
    ("Privacy.ReadAudit",
     lambda c, md: c.privacy.ReadAudit(xpb.ReadAuditRequest(), metadata=md)),
    ("Insights.GetBenchmarkReport",
     lambda c, md: c.insights.GetBenchmarkReport(ipb.GetBenchmarkReportRequest(
         outcome="converted"), metadata=md)),
    ("Insights.GetQueueStats",
     lambda c, md: c.insights.GetQueueStats(ipb.GetQueueStatsRequest(), metadata=md)),
]

BAD_CREDENTIALS: list[tuple[str, tuple[tuple[str, str], ...]]] = [
    ("no-metadata", ()),
    ("wrong-key", (("authorization", "Bearer not-a-key-0123456789"),)),
    ("other-tenants-key-truncated", (("authorization", f"Bearer {KEYS['acme'][:-1]}"),)),
    ("basic-scheme", (("authorization", "Basic x"),)),
    ("basic-with-real-key", (("authorization", f"Basic {KEYS['acme']}"),)),
    ("bearer-without-token", (("authorization", "Bearer"),)),
    ("key-without-scheme", (("authorization", KEYS["acme"]),)),
    ("empty-header", (("authorization", ""),)),
    ("key-in-other-header", (("x-api-key", KEYS["acme"]),)),
]


class TestUnauthenticated:
    @pytest.mark.parametrize("creds", [pytest.param(m, id=i) for i, m in BAD_CREDENTIALS])
    @pytest.mark.parametrize("rpc", [pytest.param(f, id=n) for n, f in RPCS])
    async def test_every_rpc_needs_a_valid_bearer_key(
        self, srv: Running, rpc: Call, creds: tuple[tuple[str, str], ...]
    ) -> None:
        """Without a valid `authorization: Bearer <key>`, every RPC is UNAUTHENTICATED."""
        err = await rejected(rpc(srv.client(""), creds), UNAUTHENTICATED)
        assert KEYS["acme"] not in (err.details() or "")
        await assert_serving(srv)

    @pytest.mark.parametrize("creds", [pytest.param(m, id=i) for i, m in BAD_CREDENTIALS])
    async def test_connect_needs_a_valid_bearer_key(
        self, srv: Running, creds: tuple[tuple[str, str], ...]
    ) -> None:
        """The Connect stream without a valid key ends UNAUTHENTICATED and acts on nothing."""
        await srv.acme.router.SetAgentState(login("a1", "sales"))
        call = srv.client("").router.Connect(metadata=creds)
        try:
            await call.write(rpb.SwitchEvent(request_id="r1", route_contact=contact("c1")))
            await call.done_writing()
        except grpc.aio.AioRpcError:
            pass  # the server may end the call before the client finishes writing
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await call.read()
        assert err.value.code() is UNAUTHENTICATED
        assert await call.code() is UNAUTHENTICATED
        state = await srv.acme.router.GetAgentState(rpb.GetAgentStateRequest(agent_id="a1"))
        assert state.status == rpb.AGENT_STATUS_AVAILABLE and not state.contact_ids

    async def test_unauthenticated_mutations_change_nothing(self, srv: Running) -> None:
        """Rejected unauthenticated calls create no agent, contact, profile or model."""
        anon = srv.client("")
        bad = srv.client("not-a-key-0123456789")
        for client in (anon, bad):
            await rejected(client.router.SetAgentState(login("a1", "sales")), UNAUTHENTICATED)
            await rejected(client.router.RouteContact(contact("c1")), UNAUTHENTICATED)
            await rejected(client.profiles.UpsertCustomerProfile(cprof("k1")), UNAUTHENTICATED)
        await rejected(srv.acme.router.GetAgentState(rpb.GetAgentStateRequest(agent_id="a1")),
                       NOT_FOUND)
        stats = await srv.acme.insights.GetQueueStats(ipb.GetQueueStatsRequest())
        assert list(stats.queues) == []
        out = await srv.acme.profiles.UpsertCustomerProfile(cprof("k1"))
        assert (out.accepted, out.stale) == (1, 0)

    @pytest.mark.parametrize("rpc", [pytest.param(f, id=n) for n, f in RPCS])
    async def test_valid_key_passes_authentication(self, srv: Running, rpc: Call) -> None:
        """With a valid key every RPC gets past authentication (whatever it answers next)."""
        for client in (srv.acme, srv.globex):
            try:
                await rpc(client, client.metadata)
            except grpc.aio.AioRpcError as err:
                assert err.code() not in (UNAUTHENTICATED, grpc.StatusCode.INTERNAL,
                                          grpc.StatusCode.UNKNOWN), err.details()

    async def test_scheme_is_case_insensitive(self, srv: Running) -> None:
        """`bearer` and `BEARER` are accepted like `Bearer` (auth schemes ignore case)."""
        for scheme in ("bearer", "BEARER"):
            md = (("authorization", f"{scheme} {KEYS['acme']}"),)
            stats = await srv.acme.insights.GetQueueStats(ipb.GetQueueStatsRequest(), metadata=md)
            assert stats.at_ms > 0


class TestOpenServices:
    @pytest.mark.parametrize("key", ["", "not-a-key-0123456789"], ids=["no-key", "bad-key"])
    async def test_health_needs_no_key(self, srv: Running, key: str) -> None:
        """Health Check answers SERVING for the server and every service, without a key."""
        health = srv.client(key).health
        for service in ("", *SERVICES):
            md = (("authorization", f"Bearer {key}"),) if key else ()
            resp = await health.Check(health_pb2.HealthCheckRequest(service=service),
                                      metadata=md, timeout=10)
            assert resp.status == health_pb2.HealthCheckResponse.SERVING, service

    async def test_reflection_needs_no_key(self, srv: Running) -> None:
        """Reflection lists every pairline service, health and reflection, without a key."""
        stub = reflection_pb2_grpc.ServerReflectionStub(srv.channel)
        call = stub.ServerReflectionInfo(
            iter([reflection_pb2.ServerReflectionRequest(list_services=""),
                  reflection_pb2.ServerReflectionRequest(
                      file_containing_symbol="pairline.v1.Router")]),
            timeout=10,
        )
        replies = [r async for r in call]
        names = {s.name for s in replies[0].list_services_response.service}
        assert {*SERVICES, "grpc.health.v1.Health",
                "grpc.reflection.v1alpha.ServerReflection"} <= names
        files = replies[1].file_descriptor_response.file_descriptor_proto
        assert files, replies[1]
        assert await call.code() is grpc.StatusCode.OK


class TestPrivacyNeedsAKey:
    PRIVACY: ClassVar[list[tuple[str, Call]]] = [
        (n, f) for n, f in RPCS if n.startswith("Privacy.")]

    @pytest.mark.parametrize("rpc", [pytest.param(f, id=n) for n, f in PRIVACY])
    async def test_privacy_rpcs_unauthenticated_without_key(
        self, srv: Running, rpc: Call
    ) -> None:
        """Without a key each Privacy RPC is UNAUTHENTICATED, and nothing is audited."""
        await rejected(rpc(srv.client(""), ()), UNAUTHENTICATED)
        for c in (srv.acme, srv.globex):
            assert not (await c.privacy.ReadAudit(xpb.ReadAuditRequest())).entries


# ------------------------------------------------------------ tenant isolation
class Acme:
    """acme: a1 reserved for c1 (decision d), a2 free, w1 waiting in billing."""

    def __init__(self, srv: Running) -> None:
        self.srv = srv
        self.r = srv.acme.router
        self.decision: cpb.Decision = cpb.Decision()

    async def setup(self) -> None:
        await self.r.SetAgentState(login("a1", "sales"))
        self.srv.clock.advance(1)
        await self.r.SetAgentState(login("a2", "sales"))
        self.srv.clock.advance(1)
        self.decision = await self.r.RouteContact(contact("c1"))
        assert self.decision.agent_id == "a1"
        assert (await self.r.RouteContact(contact("w1", queue="billing"))).mode == \
            cpb.MODE_QUEUED
        self.srv.clock.advance(1)

    async def snapshot(self) -> tuple[Any, ...]:
        stats = await self.srv.acme.insights.GetQueueStats(ipb.GetQueueStatsRequest())
        agents = [await self.r.GetAgentState(rpb.GetAgentStateRequest(agent_id=a))
                  for a in ("a1", "a2")]
        return (stats, *agents)


@pytest.fixture
async def acme(srv: Running) -> Acme:
    a = Acme(srv)
    await a.setup()
    return a


class TestTenantIsolation:
    async def test_agents_are_invisible(self, srv: Running, acme: Acme) -> None:
        """acme's agents are NOT_FOUND for globex (GetAgentState, AgentReady)."""
        before = await acme.snapshot()
        g = srv.globex.router
        for agent_id in ("a1", "a2"):
            await rejected(g.GetAgentState(rpb.GetAgentStateRequest(agent_id=agent_id)),
                           NOT_FOUND)
            await rejected(g.AgentReady(rpb.AgentReadyRequest(agent_id=agent_id)), NOT_FOUND)
        assert await acme.snapshot() == before

    async def test_decisions_are_invisible(self, srv: Running, acme: Acme) -> None:
        """acme's decision id is NOT_FOUND for globex's Confirm, Release and ReportOutcome."""
        before = await acme.snapshot()
        g = srv.globex.router
        did = acme.decision.decision_id
        await rejected(g.ConfirmDecision(rpb.ConfirmDecisionRequest(decision_id=did)), NOT_FOUND)
        for reason in (rpb.RELEASE_REASON_NOT_CONNECTED, rpb.RELEASE_REASON_AGENT_REJECTED):
            await rejected(g.ReleaseDecision(
                rpb.ReleaseDecisionRequest(decision_id=did, reason=reason)), NOT_FOUND)
        await rejected(g.ReportOutcome(rpb.ReportOutcomeRequest(
            decision_id=did, outcomes={"converted": 1.0})), NOT_FOUND)
        assert await acme.snapshot() == before
        assert before[1].status == rpb.AGENT_STATUS_RESERVED
        ok = await acme.r.ConfirmDecision(rpb.ConfirmDecisionRequest(decision_id=did))
        assert (ok.contact_id, ok.agent_id) == ("c1", "a1")
        out = await acme.r.ReportOutcome(rpb.ReportOutcomeRequest(
            decision_id=did, outcomes={"converted": 1.0}))
        assert out.stored

    async def test_contacts_are_invisible(self, srv: Running, acme: Acme) -> None:
        """EndContact of acme's contacts (waiting or reserved) is NOT_FOUND for globex."""
        before = await acme.snapshot()
        g = srv.globex.router
        for contact_id in ("c1", "w1"):
            for reason in (rpb.END_REASON_ABANDONED, rpb.END_REASON_TRANSFERRED,
                           rpb.END_REASON_HANDLED):
                await rejected(g.EndContact(rpb.EndContactRequest(
                    contact_id=contact_id, reason=reason)), NOT_FOUND)
        assert await acme.snapshot() == before

    async def test_contact_ids_are_per_tenant(self, srv: Running, acme: Acme) -> None:
        """globex may route its own contact with acme's contact ids, in any queue."""
        before = await acme.snapshot()
        g = srv.globex.router
        for contact_id in ("c1", "w1"):
            d = await g.RouteContact(contact(contact_id, queue="support"))
            assert (d.mode, d.contact_id, d.agent_id) == (cpb.MODE_QUEUED, contact_id, "")
        assert await acme.snapshot() == before

    async def test_globex_never_gets_acme_agents(self, srv: Running, acme: Acme) -> None:
        """globex's contact in the same queue name queues rather than taking acme's free a2."""
        before = await acme.snapshot()
        g = srv.globex.router
        d = await g.RouteContact(contact("g1", queue="sales"))
        assert (d.mode, d.agent_id, d.queue_position) == (cpb.MODE_QUEUED, "", 1)
        assert await acme.snapshot() == before
        mine = await acme.r.RouteContact(contact("c2"))
        assert mine.agent_id == "a2"

    async def test_acme_agents_never_get_globex_contacts(
        self, srv: Running, acme: Acme
    ) -> None:
        """A globex contact waiting in 'billing' is not offered to acme's agents, and vice versa."""
        g = srv.globex.router
        await g.RouteContact(contact("g-bill", queue="billing"))
        await acme.r.SetAgentState(login("a3", "billing", status=rpb.AGENT_STATUS_AWAY))
        d = await acme.r.AgentReady(rpb.AgentReadyRequest(agent_id="a3"))
        assert d.contact_id == "w1"  # acme's own, not globex's g-bill
        await g.SetAgentState(login("gb", "billing", status=rpb.AGENT_STATUS_AWAY))
        gd = await g.AgentReady(rpb.AgentReadyRequest(agent_id="gb"))
        assert gd.contact_id == "g-bill"

    async def test_same_agent_id_is_a_different_agent(self, srv: Running, acme: Acme) -> None:
        """globex setting up its own 'a1' creates a globex agent; acme's a1 is untouched."""
        before = await acme.snapshot()
        g = srv.globex.router
        s = await g.SetAgentState(login("a1", "support", status=rpb.AGENT_STATUS_AWAY))
        assert s.status == rpb.AGENT_STATUS_AWAY and [q.queue for q in s.queues] == ["support"]
        await g.SetAgentState(rpb.SetAgentStateRequest(agent_id="a1",
                                                       status=rpb.AGENT_STATUS_LOGGED_OUT))
        assert await acme.snapshot() == before
        assert before[1].status == rpb.AGENT_STATUS_RESERVED

    async def test_queue_stats_are_per_tenant(self, srv: Running, acme: Acme) -> None:
        """Each tenant's queue stats show only its own agents and contacts."""
        g = srv.globex.router
        await g.SetAgentState(login("g1", "sales", status=rpb.AGENT_STATUS_AWAY))
        for i in range(3):
            await g.RouteContact(contact(f"gc{i}", queue="sales"))
        a_stats = {q.queue: q for q in (await srv.acme.insights.GetQueueStats(
            ipb.GetQueueStatsRequest())).queues}
        g_stats = {q.queue: q for q in (await srv.globex.insights.GetQueueStats(
            ipb.GetQueueStatsRequest())).queues}
        assert set(a_stats) == {"sales", "billing"}
        assert set(g_stats) == {"sales"}
        a, gs = a_stats["sales"], g_stats["sales"]
        assert (a.waiting, a.agents_logged_in, a.agents_reserved, a.contacts_in_service) == \
            (0, 2, 1, 1)
        assert (gs.waiting, gs.agents_logged_in, gs.agents_reserved, gs.contacts_in_service) == \
            (3, 1, 0, 0)
        empty = await srv.globex.insights.GetQueueStats(ipb.GetQueueStatsRequest(queue="billing"))
        assert list(empty.queues) == []

    async def test_profiles_and_models_are_per_tenant(self, srv: Running) -> None:
        """A customer profile stored by acme is not stale for globex (separate stores)."""
        out = await srv.acme.profiles.UpsertCustomerProfile(cprof("k1"))
        assert (out.accepted, out.stale) == (1, 0)
        out = await srv.globex.profiles.UpsertCustomerProfile(cprof("k1"))
        assert (out.accepted, out.stale) == (1, 0)
        out = await srv.acme.profiles.UpsertCustomerProfile(cprof("k1"))
        assert (out.accepted, out.stale) == (0, 1)

    async def test_connect_stream_is_bound_to_its_tenant(
        self, srv: Running, acme: Acme
    ) -> None:
        """On globex's Connect stream acme's ids are NOT_FOUND; acme's own stream sees them."""
        before = await acme.snapshot()
        did = acme.decision.decision_id
        events = [
            rpb.SwitchEvent(request_id="1", confirm_decision=rpb.ConfirmDecisionRequest(
                decision_id=did)),
            rpb.SwitchEvent(request_id="2", agent_ready=rpb.AgentReadyRequest(agent_id="a2")),
            rpb.SwitchEvent(request_id="3", end_contact=rpb.EndContactRequest(
                contact_id="w1", reason=rpb.END_REASON_ABANDONED)),
        ]
        call = srv.globex.router.Connect()
        for ev in events:
            await call.write(ev)
            reply = await call.read()
            assert reply.request_id == ev.request_id and reply.WhichOneof("reply") == "error"
            assert reply.error.code == NOT_FOUND.value[0]
        await call.done_writing()
        assert await call.code() is grpc.StatusCode.OK
        assert await acme.snapshot() == before
        mine = srv.acme.router.Connect()
        await mine.write(events[0])
        reply = await mine.read()
        assert reply.WhichOneof("reply") == "confirm_decision"
        assert reply.confirm_decision.agent_id == "a1"
        await mine.done_writing()
        assert await mine.code() is grpc.StatusCode.OK
