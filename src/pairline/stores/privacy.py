"""The privacy ledger: the durable records behind the privacy promises.

Opt-outs (per tenant, by digest), deletion tickets, tombstones (digest ->
deletion time) and the audit log. Every write returns only once the record is
durable, and carries the audit entries of the operation so both land together
(one file append with fsync here; one MULTI/EXEC or script on Redis).

Implementations:

- :class:`MemoryLedger`: in process memory only (simulations, tests, and a
  server started without ``data_dir``: not durable).
- :class:`FileLedger`: the embedded store's ledger: a local append-only file of
  JSON lines, fsynced before a write returns, replayed at open.

The Redis ledger (issue #5) implements the same :class:`PrivacyLedger`
protocol; ``tests/test_privacy_ledger.py`` is the contract suite to pass.
Nothing here holds a raw customer key: digests and ticket ids only.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import os
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from enum import IntEnum
from pathlib import Path
from typing import Any, BinaryIO, Protocol

import structlog

log = structlog.get_logger()


class TicketStatus(IntEnum):
    """Same numbers as ``pairline.v1.DeletionStatus``."""

    RECEIVED = 1
    IN_PROGRESS = 2
    COMPLETED = 3


# The file ledger is compacted at open from this many records on.
COMPACT_MIN_RECORDS = 10_000
AUDIT_PER_RECORD = 10_000

# Purge steps, in order; a ticket records the last one durably done.
STEP_RECEIVED = "received"
STEP_TOMBSTONED = "tombstoned"
STEP_PURGED = "purged"
STEP_COMPLETED = "completed"


@dataclass(frozen=True, slots=True)
class Ticket:
    """One deletion request. Times are unix ms."""

    ticket_id: str
    digest: str
    received_at_ms: int
    due_at_ms: int
    status: TicketStatus = TicketStatus.RECEIVED
    step: str = STEP_RECEIVED
    completed_at_ms: int = 0
    # When the tombstone was set (the deletion time older uploads lose to).
    deleted_at_ms: int = 0
    # Digests of the same customer under previous secrets still in their
    # rotation overlap when the request came: purged and tombstoned too.
    aliases: tuple[str, ...] = ()

    @property
    def open(self) -> bool:
        return self.status is not TicketStatus.COMPLETED

    def overdue(self, now_ms: int) -> bool:
        return self.open and now_ms > self.due_at_ms

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["status"] = int(self.status)
        d["aliases"] = list(self.aliases)
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Ticket:
        return cls(**{**d, "status": TicketStatus(d["status"]),
                      "aliases": tuple(d.get("aliases", ()))})


@dataclass(frozen=True, slots=True)
class AuditEntry:
    """One privacy operation. ``seq`` is assigned by the ledger (0 until then)."""

    at_ms: int
    op: str
    digest: str = ""
    ticket_id: str = ""
    detail: str = ""
    seq: int = 0


# Audit operations.
AUDIT_OPT_OUT = "opt_out"
AUDIT_WITHDRAWN = "opt_out_withdrawn"
AUDIT_DELETION_RECEIVED = "deletion_received"
AUDIT_DELETION_COMPLETED = "deletion_completed"
AUDIT_STALE_REFUSED = "stale_write_refused"
AUDIT_SECRET_ROTATED = "secret_rotated"


class PrivacyLedger(Protocol):
    """Durable privacy records, namespaced by tenant. Every write is durable
    when it returns (or raises, and then nothing of it is kept); the audit
    entries passed with a write are appended with it, in order, and given the
    tenant's next sequence numbers. Reads reflect every returned write."""

    async def set_opt_outs(
        self, tenant: str, digests: Sequence[str], opted_out: bool, audit: Sequence[AuditEntry]
    ) -> None:
        """Add (``opted_out``) or remove ``digests`` from the tenant's opt-outs."""

    async def opt_outs(self, tenant: str) -> set[str]:
        """Every opted-out digest of the tenant (a copy)."""

    async def put_ticket(self, tenant: str, ticket: Ticket, audit: Sequence[AuditEntry]) -> bool:
        """Create or replace the ticket ``ticket.ticket_id``. A ticket with a
        ``deleted_at_ms`` also sets the tombstone of its digest to at least
        that time (in the same write). A completed ticket is final: a write
        over it changes nothing (nor appends its audit) and returns False, so
        of two workers (replicas) carrying out the same ticket, exactly one
        completes it. True when written."""

    async def get_ticket(self, tenant: str, ticket_id: str) -> Ticket | None:
        ...

    async def tickets(self, tenant: str) -> list[Ticket]:
        """Every ticket of the tenant, in (received_at_ms, ticket_id) order."""

    async def open_tickets(self, tenant: str) -> list[Ticket]:
        """The tenant's tickets not yet completed, in the same order (the
        worker's and RequestDeletion's lookup: keep it cheap, e.g. a set of
        open ids on Redis)."""

    async def tombstones(self, tenant: str) -> dict[str, int]:
        """digest -> deletion time (unix ms) of every deleted customer (a copy)."""

    async def tombstones_of(self, tenant: str, digests: Sequence[str]) -> dict[str, int]:
        """:meth:`tombstones` of ``digests`` only (those deleted)."""

    async def append_audit(self, tenant: str, audit: Sequence[AuditEntry]) -> None:
        """Append entries that go with no other write (e.g. stale writes refused)."""

    async def audit(self, tenant: str, after_seq: int, limit: int) -> list[AuditEntry]:
        """Up to ``limit`` entries with seq > ``after_seq``, in seq order."""

    async def secret_id(self, tenant: str) -> str:
        """Id of the tenant's secret last recorded ('' if none): a rotation is
        noticed (and audited) when the configured secret's id differs."""

    async def set_secret_id(self, tenant: str, secret_id: str, audit: Sequence[AuditEntry]) -> None:
        ...

    async def tenants(self) -> list[str]:
        """Tenants with any record (for the worker's scan at start)."""

    async def close(self) -> None:
        ...


class _TenantRecords:
    __slots__ = ("audit", "open", "opt_outs", "secret_id", "tickets", "tombstones")

    def __init__(self) -> None:
        self.opt_outs: set[str] = set()
        self.tickets: dict[str, Ticket] = {}
        self.open: set[str] = set()  # ids of tickets not completed (completed ones pile up)
        self.tombstones: dict[str, int] = {}
        self.audit: list[AuditEntry] = []
        self.secret_id = ""


class MemoryLedger:
    """The records in memory; every method completes without suspending.

    :class:`FileLedger` builds on it: it makes a change durable first, then
    applies it here with the same ``_apply``.
    """

    def __init__(self) -> None:
        self._tenants: dict[str, _TenantRecords] = {}

    def _t(self, tenant: str) -> _TenantRecords:
        t = self._tenants.get(tenant)
        if t is None:
            t = self._tenants[tenant] = _TenantRecords()
        return t

    # One change = one record: {"tenant", "kind", ..., "audit": [...]}.
    def _apply(self, rec: dict[str, Any]) -> None:
        t = self._t(rec["tenant"])
        kind = rec["kind"]
        if kind == "opt_outs":
            if rec["on"]:
                t.opt_outs.update(rec["digests"])
            else:
                t.opt_outs.difference_update(rec["digests"])
        elif kind == "ticket":
            ticket = Ticket.from_json(rec["ticket"])
            t.tickets[ticket.ticket_id] = ticket
            if ticket.open:
                t.open.add(ticket.ticket_id)
            else:
                t.open.discard(ticket.ticket_id)
            if ticket.deleted_at_ms:
                for digest in (ticket.digest, *ticket.aliases):
                    old = t.tombstones.get(digest, 0)
                    t.tombstones[digest] = max(old, ticket.deleted_at_ms)
        elif kind == "secret":
            t.secret_id = rec["secret_id"]
        elif kind != "audit":
            raise ValueError(f"unknown ledger record kind {kind!r}")
        for a in rec.get("audit", ()):
            t.audit.append(AuditEntry(**{**a, "seq": len(t.audit) + 1}))

    def _final(self, rec: dict[str, Any]) -> bool:
        """True when ``rec`` would replace a completed ticket (it is refused)."""
        if rec["kind"] != "ticket":
            return False
        old = self._t(rec["tenant"]).tickets.get(rec["ticket"]["ticket_id"])
        return old is not None and not old.open

    async def _write(self, rec: dict[str, Any]) -> bool:
        if self._final(rec):
            return False
        self._apply(rec)
        return True

    @staticmethod
    def _audit(audit: Iterable[AuditEntry]) -> list[dict[str, Any]]:
        return [{k: v for k, v in asdict(a).items() if k != "seq"} for a in audit]

    async def set_opt_outs(
        self, tenant: str, digests: Sequence[str], opted_out: bool, audit: Sequence[AuditEntry]
    ) -> None:
        await self._write({"tenant": tenant, "kind": "opt_outs", "on": opted_out,
                           "digests": list(digests), "audit": self._audit(audit)})

    async def opt_outs(self, tenant: str) -> set[str]:
        return set(self._t(tenant).opt_outs)

    async def put_ticket(self, tenant: str, ticket: Ticket, audit: Sequence[AuditEntry]) -> bool:
        return await self._write({"tenant": tenant, "kind": "ticket",
                                  "ticket": ticket.to_json(), "audit": self._audit(audit)})

    async def get_ticket(self, tenant: str, ticket_id: str) -> Ticket | None:
        return self._t(tenant).tickets.get(ticket_id)

    async def tickets(self, tenant: str) -> list[Ticket]:
        return sorted(self._t(tenant).tickets.values(),
                      key=lambda k: (k.received_at_ms, k.ticket_id))

    async def open_tickets(self, tenant: str) -> list[Ticket]:
        t = self._t(tenant)
        return sorted((t.tickets[i] for i in t.open), key=lambda k: (k.received_at_ms, k.ticket_id))

    async def tombstones(self, tenant: str) -> dict[str, int]:
        return dict(self._t(tenant).tombstones)

    async def tombstones_of(self, tenant: str, digests: Sequence[str]) -> dict[str, int]:
        held = self._t(tenant).tombstones
        return {d: held[d] for d in digests if d in held}

    async def append_audit(self, tenant: str, audit: Sequence[AuditEntry]) -> None:
        if audit:
            await self._write({"tenant": tenant, "kind": "audit", "audit": self._audit(audit)})

    async def audit(self, tenant: str, after_seq: int, limit: int) -> list[AuditEntry]:
        entries = self._t(tenant).audit
        start = max(after_seq, 0)
        return entries[start:start + max(limit, 0)]

    async def secret_id(self, tenant: str) -> str:
        return self._t(tenant).secret_id

    async def set_secret_id(self, tenant: str, secret_id: str, audit: Sequence[AuditEntry]) -> None:
        await self._write({"tenant": tenant, "kind": "secret", "secret_id": secret_id,
                           "audit": self._audit(audit)})

    async def tenants(self) -> list[str]:
        return sorted(self._tenants)

    async def close(self) -> None:
        return None


class FileLedger(MemoryLedger):
    """An append-only file of JSON lines, one per change, fsynced before the
    change is applied and acknowledged; replayed at open.

    A crash can leave a torn last line (never acknowledged): it is dropped at
    open and the file is cut back to its last whole line. Writes are serialised
    by a lock and written from a worker thread, so the event loop does not
    block on fsync.
    """

    def __init__(self, path: str | Path, *, compact_min: int = COMPACT_MIN_RECORDS) -> None:
        """Open (creating) and replay ``path``. When it holds at least
        ``compact_min`` records and more than twice the records of a snapshot,
        it is rewritten as that snapshot first (same state, same audit
        sequence), so the file and the start time do not grow without bound."""
        super().__init__()
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = asyncio.Lock()
        # One process per file: a second writer would diverge from the first.
        # The lock is on a file of its own, which compaction never replaces.
        self._lock_fh = _private(self.path.with_name(self.path.name + ".lock"))
        try:
            fcntl.flock(self._lock_fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._lock_fh.close()
            raise OSError(f"{self.path} is in use by another pairline process") from None
        self._fh = _private(self.path)  # kept open for the process's life
        good, records = self._replay()
        if self._fh.tell() != good:
            self._fh.truncate(good)
            os.fsync(self._fh.fileno())
        if records >= compact_min and records > 2 * len(self._snapshot()):
            self._fh.close()
            self._compact()
            self._fh = _private(self.path)
        self._fsync_dir()

    def _replay(self) -> tuple[int, int]:
        """Apply every whole record; returns the byte length of the good prefix
        and the number of records."""
        good = records = 0
        with open(self.path, "rb") as fh:
            for line in fh:
                if not line.endswith(b"\n"):
                    log.warning("privacy_ledger_torn_tail", path=str(self.path), bytes=len(line))
                    break
                try:
                    rec = json.loads(line)
                except ValueError:
                    log.warning("privacy_ledger_bad_tail", path=str(self.path), offset=good)
                    break
                self._apply(rec)
                good += len(line)
                records += 1
        return good, records

    def _snapshot(self) -> list[dict[str, Any]]:
        """Records that rebuild the current state exactly (tombstones come from
        the tickets' deletion times; audit entries keep their order, so their
        sequence numbers)."""
        out: list[dict[str, Any]] = []
        for name, t in self._tenants.items():
            if t.opt_outs:
                out.append({"tenant": name, "kind": "opt_outs", "on": True,
                            "digests": sorted(t.opt_outs)})
            out.extend({"tenant": name, "kind": "ticket", "ticket": k.to_json()}
                       for k in t.tickets.values())
            if t.secret_id:
                out.append({"tenant": name, "kind": "secret", "secret_id": t.secret_id})
            for i in range(0, len(t.audit), AUDIT_PER_RECORD):
                chunk = t.audit[i:i + AUDIT_PER_RECORD]
                out.append({"tenant": name, "kind": "audit", "audit": self._audit(chunk)})
        return out

    def _compact(self) -> None:
        tmp = self.path.with_name(self.path.name + ".compact")
        tmp.unlink(missing_ok=True)
        with _private(tmp) as fh:
            for rec in self._snapshot():
                fh.write(json.dumps(rec, separators=(",", ":")).encode() + b"\n")
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, self.path)
        self._fsync_dir()
        log.info("privacy_ledger_compacted", path=str(self.path))

    def _fsync_dir(self) -> None:
        fd = os.open(self.path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def _append(self, data: bytes) -> None:
        start = self._fh.tell()
        try:
            self._fh.write(data)
            self._fh.flush()
            os.fsync(self._fh.fileno())
        except BaseException:
            # Nothing half-written may stay in front of later records.
            with contextlib.suppress(OSError):
                self._fh.truncate(start)
            raise

    async def _write(self, rec: dict[str, Any]) -> bool:
        # Shielded: a caller cancelled mid-fsync must not leave a record that is
        # on disk (and so back after a restart) but not applied in memory.
        return await asyncio.shield(self._durable(rec))

    async def _durable(self, rec: dict[str, Any]) -> bool:
        data = json.dumps(rec, separators=(",", ":")).encode() + b"\n"
        async with self._lock:
            if self._fh.closed:
                raise OSError("the privacy ledger is closed")
            if self._final(rec):
                return False
            await asyncio.to_thread(self._append, data)
            self._apply(rec)
            return True

    async def close(self) -> None:
        async with self._lock:
            if not self._fh.closed:
                self._fh.close()
                self._lock_fh.close()


def _private(path: Path) -> BinaryIO:
    """``path`` opened for appending, created readable by this user only."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    return os.fdopen(fd, "ab")
