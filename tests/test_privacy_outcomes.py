"""Opt-out and outcomes through a real server: no outcome is stored against an
opted-out customer's digest, whenever the opt-out came (before the decision, or
during the call it paired), and nothing of theirs is exported for training."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import redis
from support import Client, RedisProcess, contact, login, settings
from test_privacy import (
    DAY_S,
    OTHER,
    PHONE,
    SECRET,
    agents,
    cfg,
    cprof,
    digest,
    model_bytes,
    server,
    setup_pairing,
)
from test_replicas import replicas

from pairline._proto.pairline.v1 import common_pb2 as cpb
from pairline._proto.pairline.v1 import insights_pb2 as ipb
from pairline._proto.pairline.v1 import privacy_pb2 as xpb
from pairline._proto.pairline.v1 import profiles_pb2 as ppb
from pairline._proto.pairline.v1 import router_pb2 as rpb
from pairline.server import PairlineServer
from pairline.stores import MemoryStore
from pairline.testing import FakeClock


async def paired_call(c: Client, cid: str, key: str = PHONE) -> cpb.Decision:
    """A contact paired on its customer's profile and connected (the call is on)."""
    d: cpb.Decision = await c.router.RouteContact(contact(cid, customer_key=key))
    assert d.mode == cpb.MODE_PAIRED, d
    await c.router.ConfirmDecision(rpb.ConfirmDecisionRequest(decision_id=d.decision_id))
    return d


async def report(c: Client, decision_id: str) -> bool:
    out = await c.router.ReportOutcome(
        rpb.ReportOutcomeRequest(decision_id=decision_id, outcomes={"converted": 1.0})
    )
    stored: bool = out.stored
    return stored


async def exported(c: Client) -> list[ipb.HistoryRow]:
    return [
        row async for row in c.insights.ExportHistory(ipb.ExportHistoryRequest(outcome="converted"))
    ]


def withheld(srv: PairlineServer) -> int:
    return srv.service.privacy.tenants["acme"].counts.outcomes_withheld


class TestOptOutDuringTheCall:
    async def test_outcome_is_withheld_and_not_exported(self, tmp_path: Path) -> None:
        """PAIRED, then the customer opts out, then the switch reports the outcome:
        not stored (stored: false), counted as withheld, and not exported."""
        async with server(cfg(tmp_path)) as r:
            c = r.acme
            await setup_pairing(c)
            await agents(r, c)
            d = await paired_call(c, "c1")
            assert (await c.privacy.OptOut(xpb.OptOutRequest(customer_key=PHONE))).changed

            assert not await report(c, d.decision_id)
            assert withheld(r.server) == 1
            rec = await r.server.service.store.get_decision("acme", d.decision_id, r.clock.now())
            assert rec is not None and rec.customer_digest == digest(PHONE)
            assert rec.outcomes == {}
            assert await exported(c) == []
            # A retry of the report is withheld (and counted) again.
            assert not await report(c, d.decision_id)
            assert withheld(r.server) == 2

    async def test_another_customers_outcome_is_stored(self, tmp_path: Path) -> None:
        """Control: someone else's opt-out changes nothing for this customer; their
        outcome is stored and exported with their profile."""
        async with server(cfg(tmp_path)) as r:
            c = r.acme
            await setup_pairing(c)
            await agents(r, c)
            d = await paired_call(c, "c1")
            assert (await c.privacy.OptOut(xpb.OptOutRequest(customer_key=OTHER))).changed

            assert await report(c, d.decision_id)
            assert withheld(r.server) == 0
            rows = await exported(c)
            assert [(row.decision_id, row.outcome) for row in rows] == [(d.decision_id, 1.0)]
            assert list(rows[0].customer) == [1, 0, 0, 0]

    async def test_withdrawn_opt_out_stores_again(self, tmp_path: Path) -> None:
        """Once the opt-out is withdrawn, the decision's outcome is stored."""
        async with server(cfg(tmp_path)) as r:
            c = r.acme
            await setup_pairing(c)
            await agents(r, c)
            d = await paired_call(c, "c1")
            await c.privacy.OptOut(xpb.OptOutRequest(customer_key=PHONE))
            assert not await report(c, d.decision_id)
            await c.privacy.WithdrawOptOut(xpb.OptOutRequest(customer_key=PHONE))
            assert await report(c, d.decision_id)
            assert withheld(r.server) == 1

    async def test_decision_under_the_previous_secret(self, tmp_path: Path) -> None:
        """A decision recorded under the old secret, an opt-out after the rotation
        (in the overlap): the outcome is withheld, since the opt-out covers the
        customer's digest under the previous secret too."""
        store, clock = MemoryStore(), FakeClock()
        async with server(cfg(tmp_path), store, clock) as r:
            await setup_pairing(r.acme)
            await agents(r, r.acme)
            d = await paired_call(r.acme, "c1")
        new = "acme-rotated-secret-9876543210"
        rotated = cfg(tmp_path, secret=new, previous_secrets=((SECRET, clock.now() + DAY_S),))
        async with server(rotated, store, clock) as r:
            ack = await r.acme.privacy.OptOut(xpb.OptOutRequest(customer_key=PHONE))
            assert ack.customer_digest == digest(PHONE, new)
            rec = await store.get_decision("acme", d.decision_id, clock.now())
            assert rec is not None and rec.customer_digest == digest(PHONE, SECRET)

            assert not await report(r.acme, d.decision_id)
            assert withheld(r.server) == 1
            assert await exported(r.acme) == []


class TestExportAfterOptOut:
    async def test_exportable_follows_the_opt_out(self, tmp_path: Path) -> None:
        """Privacy.exportable: a decision whose customer is opted out is not to be
        exported; withdrawn, it is again; a decision without a digest always is."""
        async with server(cfg(tmp_path)) as r:
            c, svc = r.acme, r.server.service
            await setup_pairing(c)
            await agents(r, c)
            d = await paired_call(c, "c1")
            assert await report(c, d.decision_id)
            rec = await svc.store.get_decision("acme", d.decision_id, r.clock.now())
            assert rec is not None and svc.privacy.exportable("acme", rec)
            await c.privacy.OptOut(xpb.OptOutRequest(customer_key=PHONE))
            assert not svc.privacy.exportable("acme", rec)
            assert svc.privacy.exportable("acme", dataclasses.replace(rec, customer_digest=""))
            await c.privacy.WithdrawOptOut(xpb.OptOutRequest(customer_key=PHONE))
            assert svc.privacy.exportable("acme", rec)

    async def test_outcome_stored_before_the_opt_out_is_not_exported(self, tmp_path: Path) -> None:
        """An outcome stored before the customer opted out stays until retention or
        a deletion, but ExportHistory does not hand it out while they are opted out."""
        async with server(cfg(tmp_path)) as r:
            c = r.acme
            await setup_pairing(c)
            await agents(r, c)
            d = await paired_call(c, "c1")
            assert await report(c, d.decision_id)
            assert len(await exported(c)) == 1
            await c.privacy.OptOut(xpb.OptOutRequest(customer_key=PHONE))
            assert await exported(c) == []


# ----------------------------------------------------------------------- on Redis
@pytest.fixture
def redis_url(redis_server: RedisProcess) -> str:
    redis.Redis(port=redis_server.port).flushall()
    return redis_server.url


class TestAcrossReplicas:
    async def test_opt_out_on_one_replica_withholds_on_another(self, redis_url: str) -> None:
        """Shared state: PAIRED through A, the opt-out acknowledged by B, the outcome
        reported through A: withheld, the Redis record keeps no outcome, not exported;
        the control customer's outcome is stored."""
        async with replicas(redis_url, n=2, cfg=settings(policy="greedy")) as rs:
            a, b = rs.client(0), rs.client(1)
            await a.profiles.UploadModel(ppb.UploadModelRequest(model=model_bytes(), activate=True))
            await a.profiles.UpsertAgentProfiles(
                ppb.AgentProfileBatch(
                    profiles=[
                        ppb.AgentProfile(agent_id=f"a{i}", vector=[1, 0, 0], source_time_ms=1)
                        for i in range(2)
                    ]
                )
            )
            for key in (PHONE, OTHER):
                await a.profiles.UpsertCustomerProfile(cprof(key))
            for i in range(2):
                await a.router.SetAgentState(login(f"a{i}", "sales"))
            await rs.settle()
            d1 = await paired_call(a, "c1", PHONE)
            d2 = await paired_call(a, "c2", OTHER)
            assert (await b.privacy.OptOut(xpb.OptOutRequest(customer_key=PHONE))).changed
            await rs.settle()

            assert not await report(a, d1.decision_id)
            assert await report(a, d2.decision_id)
            assert withheld(rs.servers[0]) == 1
            rec = await rs.servers[0].service.store.get_decision(
                "acme", d1.decision_id, rs.clock.now()
            )
            assert rec is not None and rec.outcomes == {}
            assert [row.decision_id for row in await exported(a)] == [d2.decision_id]
