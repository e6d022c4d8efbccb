"""The PrivacyLedger contract: the same suite for every ledger (memory, file;
the Redis one joins LEDGERS when it lands), plus the file ledger's durability:
replay at open, a torn tail dropped, nothing acknowledged lost."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest

from pairline.stores.privacy import (
    AUDIT_DELETION_RECEIVED,
    AUDIT_OPT_OUT,
    AUDIT_STALE_REFUSED,
    STEP_TOMBSTONED,
    AuditEntry,
    FileLedger,
    MemoryLedger,
    PrivacyLedger,
    Ticket,
    TicketStatus,
)

D1, D2, D3 = "a" * 64, "b" * 64, "c" * 64

Factory = Callable[[Path], Awaitable[PrivacyLedger]]


async def memory(tmp: Path) -> PrivacyLedger:
    return MemoryLedger()


async def file(tmp: Path) -> PrivacyLedger:
    return FileLedger(tmp / "ledger" / "privacy.jsonl")


_redis: list[object] = []  # the session's Redis server, set by the fixture below


async def redis_ledger(tmp: Path) -> PrivacyLedger:
    from pairline.stores.redis import RedisStore, connect
    from pairline.stores.redis_privacy import RedisLedger

    server = _redis[0]
    store = RedisStore(connect(server.url), {})  # type: ignore[attr-defined]
    await store.r.flushall()
    ledger = RedisLedger(store)
    close = ledger.close

    async def closing() -> None:
        await close()
        await store.close()

    ledger.close = closing  # type: ignore[method-assign]
    return ledger


LEDGERS = [pytest.param(memory, id="memory"), pytest.param(file, id="file"),
           pytest.param(redis_ledger, id="redis")]


@pytest.fixture(params=LEDGERS)
async def ledger(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[PrivacyLedger]:
    if request.param is redis_ledger:
        _redis[:] = [request.getfixturevalue("redis_server")]
    led = await request.param(tmp_path)
    try:
        yield led
    finally:
        await led.close()


def ticket(tid: str = "del-1", digest: str = D1, received: int = 1000, **kw: object) -> Ticket:
    return Ticket(ticket_id=tid, digest=digest, received_at_ms=received, due_at_ms=received + 10,
                  **kw)  # type: ignore[arg-type]


class TestOptOuts:
    async def test_set_and_withdraw(self, ledger: PrivacyLedger) -> None:
        """Opt-outs are added and removed per tenant; reads return copies."""
        await ledger.set_opt_outs("acme", [D1, D2], True, [])
        await ledger.set_opt_outs("acme", [D2], False, [])
        got = await ledger.opt_outs("acme")
        assert got == {D1}
        got.add(D3)
        assert await ledger.opt_outs("acme") == {D1}

    async def test_tenants_are_separate(self, ledger: PrivacyLedger) -> None:
        """One tenant's opt-outs and audit are invisible to another."""
        await ledger.set_opt_outs("acme", [D1], True, [AuditEntry(5, AUDIT_OPT_OUT, digest=D1)])
        assert await ledger.opt_outs("globex") == set()
        assert await ledger.audit("globex", 0, 10) == []
        assert "acme" in await ledger.tenants()

    async def test_idempotent(self, ledger: PrivacyLedger) -> None:
        """Opting out twice or withdrawing an absent digest is harmless."""
        await ledger.set_opt_outs("acme", [D1], True, [])
        await ledger.set_opt_outs("acme", [D1], True, [])
        await ledger.set_opt_outs("acme", [D3], False, [])
        assert await ledger.opt_outs("acme") == {D1}


class TestTickets:
    async def test_put_get_replace(self, ledger: PrivacyLedger) -> None:
        """A ticket is stored whole and replaced by its id."""
        t = ticket(aliases=(D3,))
        await ledger.put_ticket("acme", t, [])
        assert await ledger.get_ticket("acme", "del-1") == t
        t2 = Ticket(**{**t.to_json(), "status": TicketStatus.IN_PROGRESS,  # type: ignore[arg-type]
                       "aliases": (D3,), "step": STEP_TOMBSTONED})
        await ledger.put_ticket("acme", t2, [])
        assert await ledger.get_ticket("acme", "del-1") == t2
        assert await ledger.get_ticket("globex", "del-1") is None
        assert await ledger.get_ticket("acme", "del-2") is None

    async def test_listed_in_received_order(self, ledger: PrivacyLedger) -> None:
        """tickets() is ordered by received time, then id."""
        await ledger.put_ticket("acme", ticket("del-c", received=30), [])
        await ledger.put_ticket("acme", ticket("del-b", received=10), [])
        await ledger.put_ticket("acme", ticket("del-a", received=30), [])
        assert [t.ticket_id for t in await ledger.tickets("acme")] == ["del-b", "del-a", "del-c"]

    async def test_open_tickets(self, ledger: PrivacyLedger) -> None:
        """open_tickets() lists the tickets not completed, in received order."""
        await ledger.put_ticket("acme", ticket("del-2", received=20), [])
        await ledger.put_ticket("acme", ticket("del-1", received=10), [])
        await ledger.put_ticket("acme", ticket("del-3", received=30,
                                               status=TicketStatus.IN_PROGRESS), [])
        assert [t.ticket_id for t in await ledger.open_tickets("acme")] == \
            ["del-1", "del-2", "del-3"]
        await ledger.put_ticket("acme", ticket("del-2", received=20,
                                               status=TicketStatus.COMPLETED), [])
        assert [t.ticket_id for t in await ledger.open_tickets("acme")] == ["del-1", "del-3"]
        assert await ledger.open_tickets("globex") == []

    async def test_completed_ticket_is_final(self, ledger: PrivacyLedger) -> None:
        """A write over a completed ticket is refused (False): nothing changes, its
        audit entries are not appended, the ticket stays out of the open ones."""
        assert await ledger.put_ticket("acme", ticket(), []) is True
        done = ticket(status=TicketStatus.COMPLETED, completed_at_ms=2000, deleted_at_ms=1500)
        assert await ledger.put_ticket("acme", done, [AuditEntry(2, "deletion_completed")])
        late = ticket(status=TicketStatus.IN_PROGRESS, step=STEP_TOMBSTONED, deleted_at_ms=3000)
        assert await ledger.put_ticket("acme", late, [AuditEntry(3, "deletion_completed")]) \
            is False
        assert await ledger.get_ticket("acme", "del-1") == done
        assert await ledger.open_tickets("acme") == []
        assert await ledger.tombstones("acme") == {D1: 1500}
        assert [e.at_ms for e in await ledger.audit("acme", 0, 10)] == [2]

    async def test_deleted_at_sets_tombstones(self, ledger: PrivacyLedger) -> None:
        """A ticket with deleted_at_ms tombstones its digest and aliases, never backwards."""
        assert await ledger.tombstones("acme") == {}
        await ledger.put_ticket("acme", ticket(deleted_at_ms=500, aliases=(D2,)), [])
        await ledger.put_ticket("acme", ticket("del-2", deleted_at_ms=400), [])
        assert await ledger.tombstones("acme") == {D1: 500, D2: 500}
        await ledger.put_ticket("acme", ticket("del-3", deleted_at_ms=900), [])
        assert (await ledger.tombstones("acme"))[D1] == 900


class TestAudit:
    async def test_sequence_and_paging(self, ledger: PrivacyLedger) -> None:
        """Entries get seq 1, 2, ... per tenant in write order; paged by after_seq."""
        await ledger.set_opt_outs("acme", [D1], True, [AuditEntry(1, AUDIT_OPT_OUT, digest=D1)])
        await ledger.put_ticket("acme", ticket(), [
            AuditEntry(2, AUDIT_DELETION_RECEIVED, digest=D1, ticket_id="del-1")])
        await ledger.append_audit("acme", [AuditEntry(3, AUDIT_STALE_REFUSED, digest=D2),
                                           AuditEntry(3, AUDIT_STALE_REFUSED, digest=D3)])
        await ledger.append_audit("globex", [AuditEntry(4, AUDIT_OPT_OUT, digest=D3)])
        entries = await ledger.audit("acme", 0, 100)
        assert [(e.seq, e.op, e.digest) for e in entries] == [
            (1, AUDIT_OPT_OUT, D1), (2, AUDIT_DELETION_RECEIVED, D1),
            (3, AUDIT_STALE_REFUSED, D2), (4, AUDIT_STALE_REFUSED, D3)]
        assert entries[1].ticket_id == "del-1"
        assert [e.seq for e in await ledger.audit("acme", 1, 2)] == [2, 3]
        assert await ledger.audit("acme", 4, 10) == []
        assert [e.seq for e in await ledger.audit("globex", 0, 10)] == [1]

    async def test_secret_id(self, ledger: PrivacyLedger) -> None:
        """The recorded secret id starts empty and is replaced."""
        assert await ledger.secret_id("acme") == ""
        await ledger.set_secret_id("acme", "s1", [])
        await ledger.set_secret_id("acme", "s2", [AuditEntry(1, "secret_rotated")])
        assert await ledger.secret_id("acme") == "s2"
        assert [e.op for e in await ledger.audit("acme", 0, 10)] == ["secret_rotated"]


async def fill(led: PrivacyLedger) -> None:
    await led.set_opt_outs("acme", [D1, D2], True, [AuditEntry(1, AUDIT_OPT_OUT, digest=D1)])
    await led.set_opt_outs("acme", [D2], False, [])
    await led.put_ticket("acme", ticket(deleted_at_ms=77), [
        AuditEntry(2, AUDIT_DELETION_RECEIVED, ticket_id="del-1")])
    await led.set_secret_id("globex", "sid", [])


async def snapshot(led: PrivacyLedger) -> tuple[object, ...]:
    return (await led.opt_outs("acme"), await led.tickets("acme"), await led.tombstones("acme"),
            await led.audit("acme", 0, 100), await led.secret_id("globex"))


class TestFileLedger:
    async def test_reopen_replays_everything(self, tmp_path: Path) -> None:
        """A new FileLedger on the same file has every acknowledged record; the file
        is readable by its owner only."""
        path = tmp_path / "p.jsonl"
        led = FileLedger(path)
        await fill(led)
        assert path.stat().st_mode & 0o777 == 0o600
        before = await snapshot(led)
        await led.close()
        again = FileLedger(path)
        assert await snapshot(again) == before
        assert before[0] == {D1} and before[2] == {D1: 77}
        await again.close()

    async def test_torn_tail_is_dropped_and_cut(self, tmp_path: Path) -> None:
        """A half-written last line (a crash mid-append) is ignored and cut off, so
        later appends stay readable."""
        path = tmp_path / "p.jsonl"
        led = FileLedger(path)
        await fill(led)
        before = await snapshot(led)
        await led.close()
        whole = path.read_bytes()
        path.write_bytes(whole + b'{"tenant":"acme","kind":"opt_outs","on":true,"dig')
        again = FileLedger(path)
        assert await snapshot(again) == before
        assert path.read_bytes() == whole
        await again.set_opt_outs("acme", [D3], True, [])
        await again.close()
        third = FileLedger(path)
        assert await third.opt_outs("acme") == {D1, D3}
        await third.close()

    async def test_no_write_after_close(self, tmp_path: Path) -> None:
        """A closed ledger refuses writes (OSError) and keeps nothing of them."""
        path = tmp_path / "p.jsonl"
        led = FileLedger(path)
        await led.close()
        with pytest.raises(OSError):
            await led.set_opt_outs("acme", [D1], True, [])
        assert await led.opt_outs("acme") == set()
        assert path.read_bytes() == b""

    async def test_one_process_per_file(self, tmp_path: Path) -> None:
        """A second ledger on a file in use is refused; once closed it opens."""
        path = tmp_path / "p.jsonl"
        led = FileLedger(path)
        await led.set_opt_outs("acme", [D1], True, [])
        with pytest.raises(OSError, match="in use"):
            FileLedger(path)
        await led.close()
        again = FileLedger(path)
        assert await again.opt_outs("acme") == {D1}
        await again.close()

    async def test_compaction_keeps_state_and_audit_sequence(self, tmp_path: Path) -> None:
        """A file of many superseded records is rewritten at open as a snapshot: the
        same opt-outs, tickets, tombstones, secret id and audit (same seq), fewer
        lines; later writes continue the sequence and survive another reopen."""
        path = tmp_path / "p.jsonl"
        led = FileLedger(path)
        await fill(led)
        for i in range(30):  # a ticket rewritten many times, opt-outs flapping
            await led.put_ticket("acme", ticket("del-9", D3, received=2000 + i), [])
            await led.set_opt_outs("acme", [D3], i % 2 == 0, [])
        before = await snapshot(led)
        await led.close()
        lines = len(path.read_text().splitlines())
        again = FileLedger(path, compact_min=10)
        assert await snapshot(again) == before
        assert len(path.read_text().splitlines()) < lines // 4
        await again.append_audit("acme", [AuditEntry(9, AUDIT_STALE_REFUSED, digest=D2)])
        await again.close()
        third = FileLedger(path, compact_min=10_000)
        entries = await third.audit("acme", 0, 100)
        assert [e.seq for e in entries] == [1, 2, 3] and entries[-1].digest == D2
        assert (await third.get_ticket("acme", "del-9")) == ticket("del-9", D3, received=2029)
        await third.close()

    async def test_file_holds_digests_only(self, tmp_path: Path) -> None:
        """Every line is one JSON record naming its tenant and kind."""
        path = tmp_path / "p.jsonl"
        led = FileLedger(path)
        await fill(led)
        await led.close()
        recs = [json.loads(line) for line in path.read_text().splitlines()]
        assert [r["kind"] for r in recs] == ["opt_outs", "opt_outs", "ticket", "secret"]
        assert recs[0]["digests"] == [D1, D2]
