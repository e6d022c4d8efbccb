"""The privacy promises through a real server (issue #6): opt-out, deletion
tickets and the worker, tombstones, amendment, retention, audit, secret
rotation. Embedded store, file ledger, fake clock."""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import hmac
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from support import KEYS, Client, Running, contact, error_field, login, settings

from pairline._proto.pairline.v1 import common_pb2 as cpb
from pairline._proto.pairline.v1 import privacy_pb2 as xpb
from pairline._proto.pairline.v1 import profiles_pb2 as ppb
from pairline._proto.pairline.v1 import router_pb2 as rpb
from pairline.config import Settings
from pairline.model import dump_model
from pairline.privacy import deletion_due_ms
from pairline.server import PairlineServer
from pairline.stores import MemoryStore
from pairline.stores.privacy import STEP_TOMBSTONED, TicketStatus
from pairline.testing import FakeClock

SECRET = "acme-secret-0123456789"
PHONE = "+15550123456"
OTHER = "+15550999888"
T0 = 1_800_000_000.0  # FakeClock's start: 2027-01-15 08:00 UTC, a Friday
DAY_S = 86_400.0
INVALID = grpc.StatusCode.INVALID_ARGUMENT


def digest(key: str, secret: str = SECRET) -> str:
    return hmac.new(secret.encode(), key.encode(), hashlib.sha256).hexdigest()


def model_bytes() -> bytes:
    W = np.zeros((4, 3), np.float32)
    W[0, 0] = 1.0
    return dump_model(version="v1", W=W, wc=np.zeros(4), wa=np.zeros(3), b=0.0)


def cprof(key: str, source_time_ms: int = 5, version: int = 1) -> ppb.CustomerProfile:
    return ppb.CustomerProfile(customer_key=key, vector=[1, 0, 0, 0], version=version,
                               source_time_ms=source_time_ms)


def cfg(tmp: Path, worker_s: float = 0.02, **tenant_kw: Any) -> Settings:
    tenant_kw.setdefault("policy", "greedy")
    return replace(settings(**tenant_kw), data_dir=str(tmp / "data"),
                   deletion_interval_s=worker_s)


@asynccontextmanager
async def server(settings_: Settings, store: MemoryStore | None = None,
                 clock: FakeClock | None = None) -> AsyncIterator[Running]:
    """A real server; ``store`` may outlive it (standing in for a shared store)."""
    clock = clock or FakeClock()
    srv = PairlineServer(settings_, store=store or MemoryStore(), clock=clock)
    await srv.start()
    channel = grpc.aio.insecure_channel(srv.address)
    try:
        yield Running(srv, clock, channel, Client(channel, KEYS["acme"]),
                      Client(channel, KEYS["globex"]))
    finally:
        await channel.close()
        await srv.stop(0.5)


async def setup_pairing(c: Client) -> None:
    """A model that prefers agent 'strong'; 'weak' is the longest idle (baseline)."""
    await c.profiles.UploadModel(ppb.UploadModelRequest(model=model_bytes(), activate=True))
    await c.profiles.UpsertAgentProfiles(ppb.AgentProfileBatch(profiles=[
        ppb.AgentProfile(agent_id="strong", vector=[1, 0, 0], source_time_ms=1),
        ppb.AgentProfile(agent_id="weak", vector=[0, 0, 0], source_time_ms=1)]))
    await c.profiles.UpsertCustomerProfile(cprof(PHONE))


async def agents(r: Running, c: Client) -> None:
    for a in ("weak", "strong"):
        await c.router.SetAgentState(login(a, "sales"))
        r.clock.advance(1)


async def route(r: Running, c: Client, cid: str, key: str = PHONE) -> cpb.Decision:
    """Route one contact with both agents free, then free them again."""
    await agents(r, c)
    d = await c.router.RouteContact(contact(cid, customer_key=key))
    if d.decision_id:
        await c.router.ReleaseDecision(rpb.ReleaseDecisionRequest(decision_id=d.decision_id))
    await c.router.EndContact(rpb.EndContactRequest(contact_id=cid,
                                                    reason=rpb.END_REASON_ABANDONED))
    return d


async def audit(c: Client) -> list[xpb.AuditEntry]:
    return list((await c.privacy.ReadAudit(xpb.ReadAuditRequest(page_size=1000))).entries)


async def invalid(call: Any, field: str) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await call
    assert err.value.code() is INVALID, err.value.details()
    assert error_field(err.value) == field


async def completed(c: Client, ticket_id: str) -> xpb.DeletionTicket:
    for _ in range(200):
        t = await c.privacy.GetDeletion(xpb.GetDeletionRequest(ticket_id=ticket_id))
        if t.status == xpb.DELETION_STATUS_COMPLETED:
            return t
        await asyncio.sleep(0.02)
    raise AssertionError(f"ticket {ticket_id} not completed: {t}")


# ----------------------------------------------------------------------- opt-out
class TestOptOut:
    async def test_opted_out_customer_is_routed_by_baseline(self, tmp_path: Path) -> None:
        """After an acknowledged opt-out the customer gets the longest-idle agent with
        MODE_OPTED_OUT, without their profile; a withdrawal restores pairing."""
        async with server(cfg(tmp_path)) as r:
            c = r.acme
            await setup_pairing(c)
            before = await route(r, c, "c1")
            assert (before.mode, before.agent_id) == (cpb.MODE_PAIRED, "strong")

            ack = await c.privacy.OptOut(xpb.OptOutRequest(customer_key=PHONE))
            assert ack.customer_digest == digest(PHONE) and ack.changed
            assert ack.effective_at_ms == round(r.clock.now() * 1000)
            d = await route(r, c, "c2")
            assert (d.mode, d.agent_id, d.policy) == (cpb.MODE_OPTED_OUT, "weak", "baseline")
            assert d.predicted_outcome == 0.0
            again = await c.privacy.OptOut(xpb.OptOutRequest(customer_key=PHONE))
            assert not again.changed

            w = await c.privacy.WithdrawOptOut(xpb.OptOutRequest(customer_key=PHONE))
            assert w.changed and w.customer_digest == digest(PHONE)
            after = await route(r, c, "c3")
            assert (after.mode, after.agent_id) == (cpb.MODE_PAIRED, "strong")

    async def test_no_outcome_stored_against_an_opted_out_customer(
        self, tmp_path: Path
    ) -> None:
        """An opted-out decision keeps no digest or context; its outcome is only counted."""
        async with server(cfg(tmp_path)) as r:
            c = r.acme
            await setup_pairing(c)
            await c.privacy.OptOut(xpb.OptOutRequest(customer_key=PHONE))
            await agents(r, c)
            d = await c.router.RouteContact(contact("c1", customer_key=PHONE,
                                                    context={"tier": 2.0}))
            assert d.mode == cpb.MODE_OPTED_OUT
            out = await c.router.ReportOutcome(rpb.ReportOutcomeRequest(
                decision_id=d.decision_id, outcomes={"converted": 1.0}))
            assert not out.stored
            svc = r.server.service
            rec = await svc.store.get_decision("acme", d.decision_id, r.clock.now())
            assert rec is not None
            assert (rec.customer_digest, rec.outcomes, rec.context) == ("", {}, ())
            assert svc.privacy.tenants["acme"].counts.outcomes_withheld == 1
            # A decision for someone else still stores its outcome.
            d2 = await c.router.RouteContact(contact("c2", customer_key=OTHER))
            assert d2.mode != cpb.MODE_OPTED_OUT
            out2 = await c.router.ReportOutcome(rpb.ReportOutcomeRequest(
                decision_id=d2.decision_id, outcomes={"converted": 1.0}))
            assert out2.stored

    async def test_waiting_contact_loses_its_data(self, tmp_path: Path) -> None:
        """A contact already waiting when its customer opts out is then routed with
        MODE_OPTED_OUT, its profile and digest dropped from memory."""
        async with server(cfg(tmp_path)) as r:
            c = r.acme
            await setup_pairing(c)
            q = await c.router.RouteContact(contact("w1", customer_key=PHONE))
            assert q.mode == cpb.MODE_QUEUED
            live = r.server.service.tenants["acme"].routing.contacts["w1"]
            assert live.profile is not None and live.digest == digest(PHONE)
            await c.privacy.OptOut(xpb.OptOutRequest(customer_key=PHONE))
            assert live.profile is None and live.digest == "" and live.opted_out
            await c.router.SetAgentState(login("strong", "sales"))
            d = await c.router.AgentReady(rpb.AgentReadyRequest(agent_id="strong"))
            assert (d.contact_id, d.mode) == ("w1", cpb.MODE_OPTED_OUT)

    async def test_tenants_are_isolated(self, tmp_path: Path) -> None:
        """acme's opt-out does not touch globex routing the same key."""
        async with server(cfg(tmp_path)) as r:
            await setup_pairing(r.globex)
            await r.acme.privacy.OptOut(xpb.OptOutRequest(customer_key=PHONE))
            d = await route(r, r.globex, "g1")
            assert d.mode == cpb.MODE_PAIRED
            assert await audit(r.globex) == []

    @pytest.mark.parametrize(("key", "why"), [("", "required"), ("k" * 257, "longer"),
                                               ("+1555\n0123", "control")])
    async def test_bad_key_is_invalid_and_changes_nothing(
        self, tmp_path: Path, key: str, why: str
    ) -> None:
        """A missing, overlong or control-character key is INVALID_ARGUMENT naming
        customer_key, for each key-taking RPC; nothing is stored or audited."""
        async with server(cfg(tmp_path)) as r:
            p = r.acme.privacy
            await invalid(p.OptOut(xpb.OptOutRequest(customer_key=key)), "customer_key")
            await invalid(p.WithdrawOptOut(xpb.OptOutRequest(customer_key=key)), "customer_key")
            await invalid(p.RequestDeletion(xpb.RequestDeletionRequest(customer_key=key)),
                          "customer_key")
            assert await audit(r.acme) == []
            assert r.server.service.privacy.tenants["acme"].suppressed == set()
            listed = await p.ListDeletions(xpb.ListDeletionsRequest())
            assert list(listed.tickets) == []


class TestBulkOptOut:
    async def test_add_then_replace(self, tmp_path: Path) -> None:
        """Batches add to the list; with replace the list becomes exactly the call's keys."""
        async with server(cfg(tmp_path)) as r:
            p = r.acme.privacy
            out = await p.BulkOptOut(iter([
                xpb.BulkOptOutRequest(customer_keys=["k-1", "k-2"]),
                xpb.BulkOptOutRequest(customer_keys=["k-3", "k-2"])]))
            assert (out.received, out.opted_out, out.already_opted_out, out.withdrawn) == \
                (3, 3, 0, 0)
            out = await p.BulkOptOut(iter([
                xpb.BulkOptOutRequest(customer_keys=["k-3", "k-4"], replace=True)]))
            assert (out.received, out.opted_out, out.already_opted_out, out.withdrawn) == \
                (2, 1, 1, 2)
            suppressed = r.server.service.privacy.tenants["acme"].suppressed
            assert suppressed == {digest("k-3"), digest("k-4")}
            await agents(r, r.acme)
            assert (await r.acme.router.RouteContact(contact("c1", customer_key="k-4"))).mode \
                == cpb.MODE_OPTED_OUT
            assert (await r.acme.router.RouteContact(contact("c2", customer_key="k-1"))).mode \
                != cpb.MODE_OPTED_OUT
            ops = [(e.op, e.detail) for e in await audit(r.acme)]
            assert ops.count(("opt_out", "bulk")) == 4
            assert ops.count(("opt_out_withdrawn", "bulk_replace")) == 2

    @pytest.mark.parametrize(("messages", "field"), [
        ([xpb.BulkOptOutRequest()], "requests[0].customer_keys"),
        ([xpb.BulkOptOutRequest(customer_keys=["ok-1"]),
          xpb.BulkOptOutRequest(customer_keys=["ok-2", ""])], "requests[1].customer_keys[1]"),
        ([xpb.BulkOptOutRequest(customer_keys=["ok-1"]),
          xpb.BulkOptOutRequest(customer_keys=["ok-2"], replace=True)], "requests[1].replace"),
        ([xpb.BulkOptOutRequest(customer_keys=["x"] * 10_001)], "requests[0].customer_keys"),
        ([], "customer_keys"),
    ])
    async def test_bad_call_changes_nothing(
        self, tmp_path: Path, messages: list[xpb.BulkOptOutRequest], field: str
    ) -> None:
        """Any bad message fails the whole call with INVALID_ARGUMENT naming it; no key
        of the call is opted out."""
        async with server(cfg(tmp_path)) as r:
            await invalid(r.acme.privacy.BulkOptOut(iter(messages)), field)
            assert r.server.service.privacy.tenants["acme"].suppressed == set()
            assert await audit(r.acme) == []


# ---------------------------------------------------------------------- deletion
class TestDeletion:
    async def test_deletion_purges_everything_and_tombstones(self, tmp_path: Path) -> None:
        """Completion: profile gone from the store and from the waiting contact, decisions
        and outcomes purged, NO_PROFILE decisions after; an older re-upload is refused
        (stale, audited), a newer one accepted."""
        async with server(cfg(tmp_path)) as r:
            c, svc = r.acme, r.server.service
            await setup_pairing(c)
            d = await route(r, c, "c1")
            assert d.mode == cpb.MODE_PAIRED
            await c.router.ReportOutcome(rpb.ReportOutcomeRequest(
                decision_id=d.decision_id, outcomes={"converted": 1.0}))
            other = await route(r, c, "c2", OTHER)
            await c.router.SetAgentState(login("weak", "sales",
                                               status=rpb.AGENT_STATUS_LOGGED_OUT))
            await c.router.SetAgentState(login("strong", "sales",
                                               status=rpb.AGENT_STATUS_LOGGED_OUT))
            q = await c.router.RouteContact(contact("w1", customer_key=PHONE))
            assert q.mode == cpb.MODE_QUEUED
            waiting = svc.tenants["acme"].routing.contacts["w1"]
            assert waiting.profile is not None

            r.clock.advance(10)
            t = await c.privacy.RequestDeletion(xpb.RequestDeletionRequest(customer_key=PHONE))
            assert t.customer_digest == digest(PHONE) and t.ticket_id.startswith("del-")
            assert t.received_at_ms == round(r.clock.now() * 1000)
            done = await completed(c, t.ticket_id)
            assert done.completed_at_ms >= done.received_at_ms and done.step == "completed"
            assert not done.overdue

            now = r.clock.now()
            assert await svc.store.get_customer_profile("acme", digest(PHONE), now) is None
            assert await svc.store.get_decision("acme", d.decision_id, now) is None
            assert await svc.store.get_decision("acme", other.decision_id, now) is not None
            assert waiting.profile is None and waiting.digest == "" and waiting.x is None
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await c.router.ReportOutcome(rpb.ReportOutcomeRequest(
                    decision_id=d.decision_id, outcomes={"converted": 0.0}))
            assert err.value.code() is grpc.StatusCode.NOT_FOUND

            await c.router.EndContact(rpb.EndContactRequest(contact_id="w1",
                                                            reason=rpb.END_REASON_ABANDONED))
            again = await route(r, c, "c3")
            assert again.mode == cpb.MODE_NO_PROFILE

            deleted_ms = done.completed_at_ms
            stale = await c.profiles.UpsertCustomerProfile(cprof(PHONE, deleted_ms - 1, 9))
            assert (stale.accepted, stale.stale, list(stale.stale_indexes)) == (0, 1, [0])
            batch = await c.profiles.UpsertCustomerProfiles(iter([ppb.CustomerProfileBatch(
                profiles=[cprof(OTHER, 99, 2), cprof(PHONE, 6, 2)])]))
            assert (batch.accepted, list(batch.stale_indexes)) == (1, [1])
            assert await svc.store.get_customer_profile("acme", digest(PHONE),
                                                        r.clock.now()) is None
            fresh = await c.profiles.UpsertCustomerProfile(cprof(PHONE, deleted_ms + 1))
            assert fresh.accepted == 1

            entries = await audit(c)
            ops = [(e.op, e.customer_digest, e.ticket_id, e.detail) for e in entries]
            assert ("deletion_received", digest(PHONE), t.ticket_id, "") in ops
            assert ("deletion_completed", digest(PHONE), t.ticket_id, "") in ops
            assert ops.count(("stale_write_refused", digest(PHONE), "", "tombstone")) == 2

    async def test_second_request_gets_the_open_ticket(self, tmp_path: Path) -> None:
        """While a ticket is open, asking again for the same customer returns it."""
        async with server(cfg(tmp_path, worker_s=0)) as r:
            p = r.acme.privacy
            a = await p.RequestDeletion(xpb.RequestDeletionRequest(customer_key=PHONE))
            b = await p.RequestDeletion(xpb.RequestDeletionRequest(customer_key=PHONE))
            o = await p.RequestDeletion(xpb.RequestDeletionRequest(customer_key=OTHER))
            assert a == b and o.ticket_id != a.ticket_id
            assert a.status == xpb.DELETION_STATUS_RECEIVED and a.step == "received"

    async def test_due_date_on_the_tenant_calendar(self, tmp_path: Path) -> None:
        """Due at the end of the 30th business day in the tenant's zone, skipping
        weekends and the configured holiday."""
        holidays = ("2027-01-18",)  # the Monday after T0
        async with server(cfg(tmp_path, worker_s=0, timezone="Europe/Berlin",
                              holidays=holidays)) as r:
            t = await r.acme.privacy.RequestDeletion(
                xpb.RequestDeletionRequest(customer_key=PHONE))
            g = await r.globex.privacy.RequestDeletion(
                xpb.RequestDeletionRequest(customer_key=PHONE))
        berlin = dt.timezone(dt.timedelta(hours=1))  # CET in winter
        # Friday 15 Jan; business days from Tue 19 Jan (Mon 18 is a holiday):
        # 30 of them end on Mon 1 Mar 2027, so due at its last millisecond.
        end = dt.datetime(2027, 3, 2, tzinfo=berlin)
        assert t.due_at_ms == int(end.timestamp() * 1000) - 1
        assert t.due_at_ms == deletion_due_ms(t.received_at_ms, tz="Europe/Berlin",
                                              holidays=holidays)
        assert g.due_at_ms == t.due_at_ms  # the support tenants share the settings

    async def test_stricter_deadline(self, tmp_path: Path) -> None:
        """A tenant deadline of 20 calendar days comes before 30 business days."""
        async with server(cfg(tmp_path, worker_s=0, deletion_deadline_days=20.0)) as r:
            t = await r.acme.privacy.RequestDeletion(
                xpb.RequestDeletionRequest(customer_key=PHONE))
            assert t.due_at_ms == t.received_at_ms + 20 * 86_400_000

    async def test_list_overdue_and_due_soon(self, tmp_path: Path) -> None:
        """Open tickets past due are flagged and counted; due_within_days lists those
        near due; pages follow the token; other tenants' tickets never appear."""
        async with server(cfg(tmp_path, worker_s=0, deletion_deadline_days=10.0)) as r:
            p = r.acme.privacy
            first = await p.RequestDeletion(xpb.RequestDeletionRequest(customer_key="k-1"))
            r.clock.advance(5 * DAY_S)
            ids = [first.ticket_id]
            for k in ("k-2", "k-3"):
                ids.append((await p.RequestDeletion(
                    xpb.RequestDeletionRequest(customer_key=k))).ticket_id)
                r.clock.advance(1)
            await r.globex.privacy.RequestDeletion(xpb.RequestDeletionRequest(customer_key="g"))
            r.clock.advance(5 * DAY_S + 10)  # k-1 is past due; k-2, k-3 due in 5 days

            every = await p.ListDeletions(xpb.ListDeletionsRequest())
            assert [t.ticket_id for t in every.tickets] == ids
            assert (every.open, every.overdue, every.next_page_token) == (3, 1, "")
            overdue = await p.ListDeletions(xpb.ListDeletionsRequest(overdue_only=True))
            assert [t.ticket_id for t in overdue.tickets] == [first.ticket_id]
            assert overdue.tickets[0].overdue
            soon = await p.ListDeletions(xpb.ListDeletionsRequest(due_within_days=1))
            assert [t.ticket_id for t in soon.tickets] == [first.ticket_id]
            soon = await p.ListDeletions(xpb.ListDeletionsRequest(due_within_days=5))
            assert [t.ticket_id for t in soon.tickets] == ids
            p1 = await p.ListDeletions(xpb.ListDeletionsRequest(page_size=2))
            assert [t.ticket_id for t in p1.tickets] == ids[:2] and p1.next_page_token
            p2 = await p.ListDeletions(xpb.ListDeletionsRequest(
                page_size=2, page_token=p1.next_page_token))
            assert [t.ticket_id for t in p2.tickets] == ids[2:] and not p2.next_page_token
            got = await p.GetDeletion(xpb.GetDeletionRequest(ticket_id=first.ticket_id))
            assert got.overdue

    async def test_bad_requests(self, tmp_path: Path) -> None:
        """Unknown or foreign tickets are NOT_FOUND; bad fields INVALID_ARGUMENT naming them."""
        async with server(cfg(tmp_path, worker_s=0)) as r:
            p = r.acme.privacy
            t = await r.globex.privacy.RequestDeletion(
                xpb.RequestDeletionRequest(customer_key=PHONE))
            for tid in (t.ticket_id, "del-nope"):
                with pytest.raises(grpc.aio.AioRpcError) as err:
                    await p.GetDeletion(xpb.GetDeletionRequest(ticket_id=tid))
                assert err.value.code() is grpc.StatusCode.NOT_FOUND
            await invalid(p.GetDeletion(xpb.GetDeletionRequest()), "ticket_id")
            await invalid(p.ListDeletions(xpb.ListDeletionsRequest(page_size=1001)), "page_size")
            await invalid(p.ListDeletions(xpb.ListDeletionsRequest(page_size=-1)), "page_size")
            await invalid(p.ListDeletions(xpb.ListDeletionsRequest(page_token=t.ticket_id)),
                          "page_token")
            await invalid(p.ListDeletions(xpb.ListDeletionsRequest(due_within_days=-1)),
                          "due_within_days")
            await invalid(p.ReadAudit(xpb.ReadAuditRequest(after_seq=-1)), "after_seq")
            await invalid(p.ReadAudit(xpb.ReadAuditRequest(page_size=5000)), "page_size")


class TestWorkerResumes:
    async def test_worker_killed_mid_purge_resumes(self, tmp_path: Path) -> None:
        """A worker stopped after the tombstone step leaves the ticket IN_PROGRESS with
        the data still stored; the next run resumes and completes it (purging)."""
        async with server(cfg(tmp_path, worker_s=0)) as r:
            c, privacy = r.acme, r.server.service.privacy
            await setup_pairing(c)
            t = await c.privacy.RequestDeletion(xpb.RequestDeletionRequest(customer_key=PHONE))
            ticket = await privacy.get_deletion("acme", t.ticket_id)
            await privacy.carry_out("acme", ticket, stop_after=STEP_TOMBSTONED)
            mid = await c.privacy.GetDeletion(xpb.GetDeletionRequest(ticket_id=t.ticket_id))
            assert (mid.status, mid.step) == (xpb.DELETION_STATUS_IN_PROGRESS, "tombstoned")
            store = r.server.service.store
            assert await store.get_customer_profile("acme", digest(PHONE), r.clock.now())
            # The tombstone already refuses older uploads.
            assert (await c.profiles.UpsertCustomerProfile(cprof(PHONE, 7))).stale == 1

            assert await privacy.run_deletions() == 1
            done = await c.privacy.GetDeletion(xpb.GetDeletionRequest(ticket_id=t.ticket_id))
            assert done.status == xpb.DELETION_STATUS_COMPLETED
            assert await store.get_customer_profile("acme", digest(PHONE), r.clock.now()) is None
            assert await privacy.run_deletions() == 0

    async def test_restart_resumes_open_tickets(self, tmp_path: Path) -> None:
        """A process that stopped with a ticket half done (or not started) completes it
        after a restart on the same data directory and store."""
        store, clock = MemoryStore(), FakeClock()
        async with server(cfg(tmp_path, worker_s=0), store, clock) as r:
            await setup_pairing(r.acme)
            p = r.acme.privacy
            half = await p.RequestDeletion(xpb.RequestDeletionRequest(customer_key=PHONE))
            fresh = await p.RequestDeletion(xpb.RequestDeletionRequest(customer_key=OTHER))
            privacy = r.server.service.privacy
            await privacy.carry_out("acme", await privacy.get_deletion("acme", half.ticket_id),
                                    stop_after="purged")
        assert await store.get_customer_profile("acme", digest(PHONE), clock.now()) is None
        async with server(cfg(tmp_path), store, clock) as r:
            for tid in (half.ticket_id, fresh.ticket_id):
                done = await completed(r.acme, tid)
                assert done.status == xpb.DELETION_STATUS_COMPLETED
            # The tombstone came back with the ledger.
            out = await r.acme.profiles.UpsertCustomerProfile(cprof(PHONE, 5))
            assert out.stale == 1
            assert TicketStatus(done.status) is TicketStatus.COMPLETED


class TestNotDurableNotAcknowledged:
    async def test_ledger_failure_is_unavailable_and_changes_nothing(
        self, tmp_path: Path
    ) -> None:
        """When the record cannot be made durable the call is UNAVAILABLE (retry) and
        nothing takes effect: no opt-out in force, no ticket."""
        async with server(cfg(tmp_path)) as r:
            await setup_pairing(r.acme)
            await r.server.ledger.close()  # every later write fails
            p = r.acme.privacy
            calls = [
                p.OptOut(xpb.OptOutRequest(customer_key=PHONE)),
                p.BulkOptOut(iter([xpb.BulkOptOutRequest(customer_keys=[PHONE])])),
                p.RequestDeletion(xpb.RequestDeletionRequest(customer_key=PHONE)),
            ]
            for call in calls:
                with pytest.raises(grpc.aio.AioRpcError) as err:
                    await call
                assert err.value.code() is grpc.StatusCode.UNAVAILABLE
            assert r.server.service.privacy.tenants["acme"].suppressed == set()
            assert (await route(r, r.acme, "c1")).mode == cpb.MODE_PAIRED
            listed = await p.ListDeletions(xpb.ListDeletionsRequest())
            assert (list(listed.tickets), listed.open) == ([], 0)


class TestReplicaHooks:
    async def test_change_from_another_replica_applies_through_the_hooks(
        self, tmp_path: Path
    ) -> None:
        """Two servers on one store: an opt-out and a deletion done on A take effect on
        B once handed to B's apply_opt_outs / apply_deletion (what a change-feed
        follower calls): B routes OPTED_OUT, B's cached waiting contact loses its
        profile, B refuses the older re-upload."""
        store, clock = MemoryStore(), FakeClock()
        async with server(cfg(tmp_path / "a", worker_s=0), store, clock) as a, \
                server(cfg(tmp_path / "b", worker_s=0), store, clock) as b:
            await setup_pairing(a.acme)
            await b.acme.profiles.UploadModel(ppb.UploadModelRequest(model=model_bytes(),
                                                                     activate=True))
            await a.acme.profiles.UpsertCustomerProfile(cprof(OTHER))  # the shared store
            q = await b.acme.router.RouteContact(contact("w2", customer_key=OTHER))
            assert q.mode == cpb.MODE_QUEUED
            cached = b.server.service.tenants["acme"].routing.contacts["w2"]
            assert cached.profile is not None

            ack = await a.acme.privacy.OptOut(xpb.OptOutRequest(customer_key=PHONE))
            b.server.service.privacy.apply_opt_outs("acme", [ack.customer_digest], True)
            await agents(b, b.acme)
            d = await b.acme.router.RouteContact(contact("c1", customer_key=PHONE))
            assert d.mode == cpb.MODE_OPTED_OUT

            t = await a.acme.privacy.RequestDeletion(
                xpb.RequestDeletionRequest(customer_key=OTHER))
            ticket = await a.server.service.privacy.carry_out(
                "acme", await a.server.service.privacy.get_deletion("acme", t.ticket_id))
            assert ticket.status is TicketStatus.COMPLETED
            assert cached.profile is not None  # B has not heard of it yet
            b.server.service.privacy.apply_deletion("acme", [ticket.digest],
                                                    ticket.deleted_at_ms)
            assert cached.profile is None and cached.digest == ""
            out = await b.acme.profiles.UpsertCustomerProfile(cprof(OTHER, 6))
            assert out.stale == 1


# ------------------------------------------------------------------------ amendment
class TestAmendment:
    async def test_stale_write_never_applied_and_reported(self, tmp_path: Path) -> None:
        """An upsert older than (or as old as) the stored profile is refused, reported
        by index and audited; the stored profile keeps its values."""
        async with server(cfg(tmp_path)) as r:
            p, svc = r.acme.profiles, r.server.service
            assert (await p.UpsertCustomerProfile(cprof(PHONE, 100, 3))).accepted == 1
            older = ppb.CustomerProfile(customer_key=PHONE, vector=[9, 9, 9, 9], version=9,
                                        source_time_ms=99)
            out = await p.UpsertCustomerProfiles(iter([ppb.CustomerProfileBatch(
                profiles=[cprof(OTHER, 1), older])]))
            assert (out.accepted, out.stale, list(out.stale_indexes)) == (1, 1, [1])
            row = await svc.store.get_customer_profile("acme", digest(PHONE), r.clock.now())
            assert row is not None and row.source_time_ms == 100
            assert list(row.vector) == [1, 0, 0, 0]
            entries = await audit(r.acme)
            assert [(e.op, e.customer_digest, e.detail) for e in entries] == [
                ("stale_write_refused", digest(PHONE), "newer_profile_stored")]


# ------------------------------------------------------------------------ retention
class TestRetention:
    async def test_every_personal_record_expires(self, tmp_path: Path) -> None:
        """Profiles, decisions with their outcomes, and a waiting contact's customer data
        each go after their time to live."""
        async with server(cfg(tmp_path, profile_ttl_days=2.0, decision_ttl_days=1.0,
                              contact_data_ttl_s=3600.0)) as r:
            c, svc = r.acme, r.server.service
            await setup_pairing(c)
            d = await route(r, c, "c1")
            await c.router.SetAgentState(login("weak", "sales",
                                               status=rpb.AGENT_STATUS_LOGGED_OUT))
            await c.router.SetAgentState(login("strong", "sales",
                                               status=rpb.AGENT_STATUS_LOGGED_OUT))
            await c.router.RouteContact(contact("w1", customer_key=PHONE))
            waiting = svc.tenants["acme"].routing.contacts["w1"]
            assert waiting.digest and waiting.profile is not None

            r.clock.advance(3601)
            await svc.sweep_retention()
            assert waiting.digest == "" and waiting.profile is None
            r.clock.advance(DAY_S)
            assert await svc.store.get_decision("acme", d.decision_id, r.clock.now()) is None
            assert await svc.store.get_customer_profile("acme", digest(PHONE),
                                                        r.clock.now()) is not None
            r.clock.advance(DAY_S)
            assert await svc.store.get_customer_profile("acme", digest(PHONE),
                                                        r.clock.now()) is None
            assert await svc.sweep_retention() >= 2  # decision and profile dropped


# --------------------------------------------------------------- audit and rotation
class TestAuditAndRotation:
    async def test_audit_is_per_tenant_digests_only(self, tmp_path: Path) -> None:
        """Every privacy op is in the caller's audit log, in order, with digests and
        ticket ids only; another tenant sees none of it; pages follow next_after_seq."""
        async with server(cfg(tmp_path)) as r:
            p = r.acme.privacy
            await p.OptOut(xpb.OptOutRequest(customer_key=PHONE))
            await p.WithdrawOptOut(xpb.OptOutRequest(customer_key=PHONE))
            t = await p.RequestDeletion(xpb.RequestDeletionRequest(customer_key=OTHER))
            await completed(r.acme, t.ticket_id)
            entries = await audit(r.acme)
            assert [e.op for e in entries] == ["opt_out", "opt_out_withdrawn",
                                               "deletion_received", "deletion_completed"]
            assert [e.seq for e in entries] == [1, 2, 3, 4]
            assert all(PHONE not in str(e) and "15550" not in str(e) for e in entries)
            assert await audit(r.globex) == []
            page = await p.ReadAudit(xpb.ReadAuditRequest(page_size=3))
            assert [e.seq for e in page.entries] == [1, 2, 3] and page.next_after_seq == 3
            rest = await p.ReadAudit(xpb.ReadAuditRequest(after_seq=3))
            assert [e.seq for e in rest.entries] == [4] and rest.next_after_seq == 4

    async def test_secret_rotation_with_overlap(self, tmp_path: Path) -> None:
        """After a rotation, data keyed under the previous secret (opt-outs, profiles)
        is still found during the overlap and no longer after it; the rotation is
        audited; new data is keyed under the new secret."""
        store, clock = MemoryStore(), FakeClock()
        old = "acme-secret-0123456789"
        new = "acme-rotated-secret-9876543210"
        async with server(cfg(tmp_path), store, clock) as r:
            await setup_pairing(r.acme)
            await r.acme.privacy.OptOut(xpb.OptOutRequest(customer_key=OTHER))
        until = clock.now() + DAY_S
        rotated = cfg(tmp_path, secret=new, previous_secrets=((old, until),))
        async with server(rotated, store, clock) as r:
            entries = await audit(r.acme)
            assert entries[-1].op == "secret_rotated" and "->" in entries[-1].detail
            assert old not in entries[-1].detail and new not in entries[-1].detail
            assert (await route(r, r.acme, "c1")).mode == cpb.MODE_PAIRED  # old-key profile
            assert (await route(r, r.acme, "c2", OTHER)).mode == cpb.MODE_OPTED_OUT
            ack = await r.acme.privacy.OptOut(xpb.OptOutRequest(customer_key="k-new"))
            assert ack.customer_digest == digest("k-new", new)
            clock.advance(DAY_S + 1)  # the overlap is over
            assert (await route(r, r.acme, "c3")).mode == cpb.MODE_NO_PROFILE
            assert (await route(r, r.acme, "c4", "k-new")).mode == cpb.MODE_OPTED_OUT
        async with server(rotated, store, clock) as r:  # same secret: nothing new
            assert [e.op for e in await audit(r.acme)].count("secret_rotated") == 1
