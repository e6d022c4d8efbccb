"""The privacy side of the service (issue #6): opt-outs, deletions, tombstones,
audit, secret rotation. Imports no gRPC.

State that the hot path reads is held in memory per tenant (the suppression
set, the tombstones) and changed only through :meth:`Privacy.apply_opt_outs`
and :meth:`Privacy.apply_deletion`, after the ledger made the change durable.
A change-feed follower (Redis, issue #5) calls the same two methods for changes
made on other replicas, so every replica applies an opt-out or a deletion the
same way.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, replace
from typing import TypeVar

import structlog

from pairline.clock import Clock
from pairline.config import Settings, TenantConfig
from pairline.domain import Mode
from pairline.errors import InvalidArgument, NotFound, Unavailable
from pairline.privacy import KeyRing, deletion_due_ms
from pairline.routing import Contact, TenantRouting
from pairline.stores.base import DecisionRecord, ProfileRow, Store
from pairline.stores.privacy import (
    AUDIT_DELETION_COMPLETED,
    AUDIT_DELETION_RECEIVED,
    AUDIT_OPT_OUT,
    AUDIT_SECRET_ROTATED,
    AUDIT_STALE_REFUSED,
    AUDIT_WITHDRAWN,
    STEP_COMPLETED,
    STEP_PURGED,
    STEP_RECEIVED,
    STEP_TOMBSTONED,
    AuditEntry,
    PrivacyLedger,
    Ticket,
    TicketStatus,
)

log = structlog.get_logger()
T = TypeVar("T")

MAX_BULK_KEYS = 1_000_000
MAX_PAGE = 1000
DEFAULT_PAGE = 100
DAY_MS = 86_400_000


def _ms(t: float) -> int:
    return round(t * 1000)


@dataclass(frozen=True, slots=True)
class OptOutResult:
    digest: str
    effective_at_ms: int
    changed: bool


@dataclass(frozen=True, slots=True)
class BulkResult:
    received: int
    opted_out: int
    already: int
    withdrawn: int
    effective_at_ms: int


def scrub_contact(c: Contact, *, opted_out: bool) -> None:
    """A live contact without its customer's data (a deletion or an opt-out)."""
    c.digest = ""
    c.profile = c.x = c.u = None
    c.profile_ms = 0
    c.x_version = ""
    c.c0 = 0.0
    c.context = ()
    if opted_out:
        c.opted_out = True


@dataclass(slots=True)
class PrivacyCounts:
    """What this process did for one tenant since it started (plain counters,
    exported as Prometheus counters at scrape time). Per process: with several
    replicas each counts the operations it acknowledged or carried out, so the
    sum over replicas counts each once."""

    opt_outs: int = 0  # customers newly opted out (single or bulk)
    withdrawals: int = 0  # opt-outs lifted (WithdrawOptOut, or left off a replacing list)
    deletion_requests: int = 0  # tickets issued (a retry that gets the open ticket: not)
    deletions_completed: int = 0  # tickets this process's worker completed
    stale_tombstone: int = 0  # profile writes refused by a tombstone
    stale_newer: int = 0  # profile writes refused: a newer profile is stored
    outcomes_withheld: int = 0  # outcomes of opted-out customers (then or since), not stored


# States of pairline_deletion_tickets: every open ticket; those of them due
# within the tenant's window (not yet past due); those past due.
TICKET_STATES = ("open", "due_soon", "overdue")


@dataclass(frozen=True, slots=True)
class TicketPage:
    tickets: list[Ticket]
    next_token: str
    open: int
    overdue: int


class TenantPrivacy:
    """One tenant's privacy state in memory."""

    __slots__ = ("config", "counts", "keys", "lock", "suppressed", "tombstones")

    def __init__(self, config: TenantConfig) -> None:
        self.config = config
        self.keys = KeyRing(config.secret, config.previous_secrets)
        self.suppressed: set[str] = set()
        self.tombstones: dict[str, int] = {}  # digest -> deletion time, unix ms
        self.counts = PrivacyCounts()
        # Serialises privacy writes of the tenant, so the order in memory is
        # the order in the ledger.
        self.lock = asyncio.Lock()


class Privacy:
    """Privacy operations of every tenant, over a :class:`PrivacyLedger`."""

    def __init__(
        self,
        settings: Settings,
        ledger: PrivacyLedger,
        store: Store,
        clock: Clock,
        routing_of: Callable[[str], TenantRouting],
    ) -> None:
        self.ledger = ledger
        self.store = store
        self.clock = clock
        self._routing_of = routing_of
        self.tenants = {t.name: TenantPrivacy(t) for t in settings.tenants}
        # Shared state (Redis): rewrites the live contacts of these customers in
        # Redis without their data (every mirror drops it itself; Redis's record
        # would keep it until the contact changes). Returns how many. Set by the
        # service in Redis mode.
        self.scrub_shared: Callable[[str, set[str], bool], Awaitable[int]] | None = None
        # Set when a deletion is requested: the worker wakes at once.
        self.wake = asyncio.Event()
        # The last deletion-ticket counts read from the ledger (see ticket_counts).
        self.last_ticket_counts: list[tuple[str, str, int]] = []

    def _t(self, tenant: str) -> TenantPrivacy:
        return self.tenants[tenant]

    async def _durably(self, write: Awaitable[T]) -> T:
        """A ledger write; a failure to make it durable is UNAVAILABLE (retry)."""
        try:
            return await write
        except OSError as exc:
            log.error("privacy_write_failed", error=type(exc).__name__)
            raise Unavailable("the privacy record could not be stored durably; retry") from None

    async def start(self) -> None:
        """Load the suppression sets and tombstones; audit secret rotations."""
        now_ms = _ms(self.clock.now())
        for name, tp in self.tenants.items():
            tp.suppressed = await self.ledger.opt_outs(name)
            tp.tombstones = await self.ledger.tombstones(name)
            old, new = await self.ledger.secret_id(name), tp.keys.current_id
            if old != new:
                audit = [AuditEntry(now_ms, AUDIT_SECRET_ROTATED, detail=f"{old}->{new}")] if old \
                    else []
                await self.ledger.set_secret_id(name, new, audit)
                if old:
                    log.info("secret_rotated", tenant=name, secret_id=new, previous=old)

    async def reload(self, tenant: str) -> None:
        """Reload one tenant's suppression set and tombstones from the ledger (the
        change feed lost events this process had not applied), and drop the data
        of any live contact they cover."""
        tp = self._t(tenant)
        tp.suppressed = await self.ledger.opt_outs(tenant)
        tp.tombstones = await self.ledger.tombstones(tenant)
        self._forget(tenant, set(tp.suppressed), opted_out=True)
        self._forget(tenant, set(tp.tombstones), opted_out=False)

    # ------------------------------------------------------------ hot path
    def screen(self, tenant: str, customer_key: str) -> tuple[list[str], bool]:
        """The customer's digests (current secret first, then previous secrets
        in their overlap) and whether they opted out. An opted-out customer's
        digests are withheld (empty list): nothing is read or kept under them."""
        tp = self.tenants[tenant]
        if not customer_key:
            return [], False
        keys = tp.keys
        if not keys.rotating:  # the common case: one HMAC, one set lookup
            digest = keys.digest(customer_key)
            if digest in tp.suppressed:
                return [], True
            return [digest], False
        digests = keys.digests(customer_key, self.clock.now())
        if any(d in tp.suppressed for d in digests):
            return [], True
        return digests, False

    async def customer_profile(
        self, tenant: str, digests: Sequence[str], now: float
    ) -> ProfileRow | None:
        """The stored profile under the first digest that has one."""
        for d in digests:
            row = await self.store.get_customer_profile(tenant, d, now)
            if row is not None:
                return row
        return None

    def opted_out(self, tenant: str, digest: str) -> bool:
        """Whether the customer under ``digest`` is opted out now. An opt-out is
        stored under every digest of the customer at the time (the current
        secret's and each previous secret's in its overlap), so a record keyed
        under a previous secret is covered too."""
        return bool(digest) and digest in self._t(tenant).suppressed

    def withhold_outcome(self, tenant: str, record: DecisionRecord | None) -> bool:
        """True (and counted) when an outcome must not be stored: the decision
        was made for an opted-out customer, or its customer has opted out since
        (say during the call): nothing is stored against their digest."""
        if record is None:
            return False
        if record.decision.mode is Mode.OPTED_OUT or self.opted_out(tenant, record.customer_digest):
            self._t(tenant).counts.outcomes_withheld += 1
            return True
        return False

    def exportable(self, tenant: str, record: DecisionRecord) -> bool:
        """Whether a kept decision may be exported (ExportHistory): not while its
        customer is opted out (stored before the opt-out, it stays until its
        retention ends or a deletion, but is not handed out for training)."""
        return not self.opted_out(tenant, record.customer_digest)

    # ------------------------------------------------------------- apply
    def apply_opt_outs(self, tenant: str, digests: Sequence[str], opted_out: bool) -> None:
        """Make a durable opt-out change effective in this process: the
        suppression set, and live contacts of these customers lose their data."""
        tp = self._t(tenant)
        if opted_out:
            tp.suppressed.update(digests)
            self._forget(tenant, set(digests), opted_out=True)
        else:
            tp.suppressed.difference_update(digests)

    def apply_deletion(self, tenant: str, digests: Sequence[str], deleted_at_ms: int) -> None:
        """Make a durable deletion effective in this process: tombstones, and
        no live contact keeps the customer's data."""
        tp = self._t(tenant)
        for d in digests:
            tp.tombstones[d] = max(tp.tombstones.get(d, 0), deleted_at_ms)
        self._forget(tenant, set(digests), opted_out=False)

    async def _scrub_opted_out(self, tenant: str, digests: Sequence[str]) -> None:
        """Opted-out customers' live contacts, rewritten in Redis without their data.
        Best effort: routing already ignores their data (the suppression set), and
        the record goes when the contact changes or ends."""
        if self.scrub_shared is None or not digests:
            return
        try:
            await self.scrub_shared(tenant, set(digests), True)
        except Exception:
            log.warning("opt_out_scrub_failed", tenant=tenant, exc_info=True)

    def _forget(self, tenant: str, digests: set[str], *, opted_out: bool) -> int:
        n = 0
        for c in self._routing_of(tenant).contacts.values():
            if c.digest in digests:
                scrub_contact(c, opted_out=opted_out)
                n += 1
        return n

    def sweep_contacts(self, now: float) -> int:
        """Retention of live contacts: drop the customer data of contacts older
        than the tenant's ``contact_data_ttl_s`` (should the switch never end
        them). Returns how many were scrubbed."""
        n = 0
        for name, tp in self.tenants.items():
            limit = now - tp.config.contact_data_ttl_s
            for c in self._routing_of(name).contacts.values():
                if c.arrival <= limit and (c.digest or c.profile is not None or c.context):
                    scrub_contact(c, opted_out=False)
                    n += 1
        return n

    # ------------------------------------------------------------ opt-out
    async def opt_out(self, tenant: str, customer_key: str, opted_out: bool) -> OptOutResult:
        tp = self._t(tenant)
        async with tp.lock:
            now_ms = _ms(self.clock.now())
            digests = tp.keys.digests(customer_key, self.clock.now())
            if opted_out:
                changed = not any(d in tp.suppressed for d in digests)
            else:
                changed = any(d in tp.suppressed for d in digests)
            op = AUDIT_OPT_OUT if opted_out else AUDIT_WITHDRAWN
            audit = [AuditEntry(now_ms, op, digest=digests[0],
                                detail="" if changed else "no_change")]
            await self._durably(self.ledger.set_opt_outs(tenant, digests, opted_out, audit))
            self.apply_opt_outs(tenant, digests, opted_out)
            if opted_out:
                await self._scrub_opted_out(tenant, digests)
            if changed:
                if opted_out:
                    tp.counts.opt_outs += 1
                else:
                    tp.counts.withdrawals += 1
        log.info("opt_out_set" if opted_out else "opt_out_withdrawn", tenant=tenant,
                 digest=digests[0], changed=changed)
        return OptOutResult(digests[0], now_ms, changed)

    async def bulk_opt_out(
        self, tenant: str, keys: Sequence[str], replace_list: bool
    ) -> BulkResult:
        tp = self._t(tenant)
        async with tp.lock:
            now = self.clock.now()
            now_ms = _ms(now)
            current: dict[str, list[str]] = {}
            for k in keys:
                ds = tp.keys.digests(k, now)
                current[ds[0]] = ds
            listed = {d for ds in current.values() for d in ds}
            new = [d0 for d0, ds in current.items() if not any(d in tp.suppressed for d in ds)]
            gone = sorted(tp.suppressed - listed) if replace_list else []
            audit = [AuditEntry(now_ms, AUDIT_OPT_OUT, digest=d, detail="bulk") for d in new]
            withdraw = [AuditEntry(now_ms, AUDIT_WITHDRAWN, digest=d, detail="bulk_replace")
                        for d in gone]
            add = sorted(listed - tp.suppressed)
            await self._durably(self.ledger.set_opt_outs(tenant, add, True, audit))
            self.apply_opt_outs(tenant, add, True)
            await self._scrub_opted_out(tenant, add)
            tp.counts.opt_outs += len(new)
            if gone:
                await self._durably(self.ledger.set_opt_outs(tenant, gone, False, withdraw))
                self.apply_opt_outs(tenant, gone, False)
                tp.counts.withdrawals += len(gone)
        log.info("opt_outs_bulk", tenant=tenant, received=len(current), opted_out=len(new),
                 withdrawn=len(gone), replace=replace_list)
        return BulkResult(len(current), len(new), len(current) - len(new), len(gone), now_ms)

    # ------------------------------------------------------------- deletion
    def due_ms(self, tenant: str, received_ms: int) -> int:
        c = self._t(tenant).config
        return deletion_due_ms(received_ms, tz=c.timezone, holidays=c.holidays,
                               deadline_days=c.deletion_deadline_days)

    async def request_deletion(self, tenant: str, customer_key: str) -> Ticket:
        tp = self._t(tenant)
        async with tp.lock:
            now = self.clock.now()
            digests = tp.keys.digests(customer_key, now)
            for t in await self.ledger.open_tickets(tenant):
                if t.digest == digests[0]:
                    return t  # one open ticket per customer: a retry gets the same
            now_ms = _ms(now)
            ticket = Ticket(
                ticket_id=f"del-{secrets.token_hex(12)}",
                digest=digests[0],
                received_at_ms=now_ms,
                due_at_ms=self.due_ms(tenant, now_ms),
                aliases=tuple(digests[1:]),
            )
            audit = [AuditEntry(now_ms, AUDIT_DELETION_RECEIVED, digest=ticket.digest,
                                ticket_id=ticket.ticket_id)]
            await self._durably(self.ledger.put_ticket(tenant, ticket, audit))
            tp.counts.deletion_requests += 1
        log.info("deletion_received", tenant=tenant, ticket_id=ticket.ticket_id,
                 due_at_ms=ticket.due_at_ms)
        self.wake.set()
        return ticket

    async def get_deletion(self, tenant: str, ticket_id: str) -> Ticket:
        ticket = await self.ledger.get_ticket(tenant, ticket_id)
        if ticket is None:
            raise NotFound(f"deletion ticket {ticket_id!r} is not known")
        return ticket

    async def list_deletions(
        self, tenant: str, overdue_only: bool, due_within_days: int, page_size: int, token: str
    ) -> TicketPage:
        now_ms = _ms(self.clock.now())
        tickets = await self.ledger.tickets(tenant)
        start = 0
        if token:
            ids = [t.ticket_id for t in tickets]
            if token not in ids:
                raise InvalidArgument("page_token", "is not a token this call returned")
            start = ids.index(token) + 1
        size = page_size or DEFAULT_PAGE
        horizon = now_ms + due_within_days * DAY_MS

        def wanted(t: Ticket) -> bool:
            if overdue_only and not t.overdue(now_ms):
                return False
            return not due_within_days or (t.open and t.due_at_ms <= horizon)

        matching = [t for t in tickets[start:] if wanted(t)]
        page = matching[:size]
        more = len(matching) > size
        return TicketPage(
            page,
            page[-1].ticket_id if more else "",
            sum(t.open for t in tickets),
            sum(t.overdue(now_ms) for t in tickets),
        )

    def due_soon_ms(self, tenant: str, now_ms: int) -> int:
        """Tickets due by this time (and not yet past due) are "due soon": the end
        of the ``deletion_due_soon_business_days``-th business day after today on
        the tenant's calendar (0: the end of today)."""
        c = self._t(tenant).config
        return deletion_due_ms(now_ms, tz=c.timezone, holidays=c.holidays,
                               business_days=c.deletion_due_soon_business_days)

    async def ticket_counts(self) -> list[tuple[str, str, int]]:
        """(tenant, state, count) of the open deletion tickets of every tenant,
        read from the ledger now (on Redis: the shared ledger, so every replica
        reports the same numbers). States: ``open`` (every ticket not completed),
        ``due_soon`` (open, due within the tenant's window, not past due),
        ``overdue`` (open and past due). Kept in :attr:`last_ticket_counts`."""
        now_ms = _ms(self.clock.now())
        rows: list[tuple[str, str, int]] = []
        for name in self.tenants:
            tickets = await self.ledger.open_tickets(name)
            horizon = self.due_soon_ms(name, now_ms)
            overdue = sum(t.overdue(now_ms) for t in tickets)
            soon = sum(not t.overdue(now_ms) and t.due_at_ms <= horizon for t in tickets)
            rows += [(name, "open", len(tickets)), (name, "due_soon", soon),
                     (name, "overdue", overdue)]
        self.last_ticket_counts = rows
        return rows

    async def read_audit(self, tenant: str, after_seq: int, page_size: int) -> list[AuditEntry]:
        return await self.ledger.audit(tenant, after_seq, page_size or DEFAULT_PAGE)

    # ------------------------------------------------------------ upserts
    async def upsert_profiles(
        self,
        tenant: str,
        rows: Sequence[ProfileRow],
        write: Callable[[Sequence[ProfileRow]], Awaitable[list[int]]],
    ) -> list[int]:
        """Write ``rows`` through ``write`` (the store's upsert), except those a
        tombstone refuses (source time not after the deletion). Every refused
        write, tombstone or stale, is audited. Returns the refused indexes."""
        tp = self._t(tenant)
        tomb = tp.tombstones
        refused = [i for i, r in enumerate(rows)
                   if r.key in tomb and r.source_time_ms <= tomb[r.key]]
        if refused:
            skip = set(refused)
            kept_at = [i for i in range(len(rows)) if i not in skip]
            stale_kept = await write([rows[i] for i in kept_at])
            stale = sorted([*refused, *(kept_at[j] for j in stale_kept)])
        else:
            stale = await write(rows)
        if stale:
            reason = set(refused)
            if len(stale) > len(refused):
                # A store that checks the tombstones itself (Redis) may have refused
                # rows for a deletion this process has not heard of yet (its change
                # feed lags): ask the ledger, and keep what it says.
                unsure = [rows[i].key for i in stale if i not in reason]
                for d, ms in (await self._durably(self.ledger.tombstones_of(tenant,
                                                                            unsure))).items():
                    tomb[d] = max(tomb.get(d, 0), ms)
                reason.update(i for i in stale if i not in reason and rows[i].key in tomb
                              and rows[i].source_time_ms <= tomb[rows[i].key])
            counts = tp.counts
            counts.stale_tombstone += len(reason)
            counts.stale_newer += len(stale) - len(reason)
            now_ms = _ms(self.clock.now())
            audit = [AuditEntry(now_ms, AUDIT_STALE_REFUSED, digest=rows[i].key,
                                detail="tombstone" if i in reason else "newer_profile_stored")
                     for i in stale]
            await self._durably(self.ledger.append_audit(tenant, audit))
        return stale

    # --------------------------------------------------------------- worker
    async def carry_out(self, tenant: str, ticket: Ticket, stop_after: str = "") -> Ticket:
        """Carry out one deletion from its last durable step. Each step is
        idempotent and recorded durably once done, so a crash anywhere resumes
        without skipping: tombstone (refuses older uploads from now on), purge
        (store and this process's memory), complete. ``stop_after`` (a step
        name) stops early: a crash midway, for tests. Returns the ticket as
        stored afterwards."""
        return (await self._carry_out(tenant, ticket, stop_after))[0]

    async def _carry_out(
        self, tenant: str, ticket: Ticket, stop_after: str = ""
    ) -> tuple[Ticket, bool]:
        """:meth:`carry_out`, and whether this call completed the ticket. The
        ledger refuses to replace a completed ticket: when another worker (a
        replica sharing the ledger) completed it meanwhile, this one stops there
        and the stored ticket is returned (counted and audited once)."""
        digests = [ticket.digest, *ticket.aliases]

        async def record(t: Ticket, audit: Sequence[AuditEntry] = ()) -> Ticket | None:
            if await self._durably(self.ledger.put_ticket(tenant, t, audit)):
                return t
            log.info("deletion_completed_elsewhere", tenant=tenant, ticket_id=t.ticket_id)
            return await self.ledger.get_ticket(tenant, t.ticket_id) or t

        if ticket.step == STEP_RECEIVED:
            now_ms = _ms(self.clock.now())
            nxt = replace(ticket, status=TicketStatus.IN_PROGRESS, step=STEP_TOMBSTONED,
                          deleted_at_ms=max(now_ms, ticket.received_at_ms))
            if (stored := await record(nxt)) is not nxt:
                return stored or ticket, False
            ticket = nxt
        # The tombstone first: from here no older upload can bring data back.
        self.apply_deletion(tenant, digests, ticket.deleted_at_ms)
        if stop_after == STEP_TOMBSTONED:
            return ticket, False
        if ticket.step == STEP_TOMBSTONED:
            purged = 0
            for d in digests:
                purged += await self.store.purge_customer(tenant, d)
            self.apply_deletion(tenant, digests, ticket.deleted_at_ms)
            if self.scrub_shared is not None:
                purged += await self.scrub_shared(tenant, set(digests), False)
            nxt = replace(ticket, step=STEP_PURGED)
            if (stored := await record(nxt)) is not nxt:
                return stored or ticket, False
            ticket = nxt
            log.info("deletion_purged", tenant=tenant, ticket_id=ticket.ticket_id,
                     records=purged)
        if stop_after == STEP_PURGED:
            return ticket, False
        now_ms = _ms(self.clock.now())
        nxt = replace(ticket, status=TicketStatus.COMPLETED, step=STEP_COMPLETED,
                      completed_at_ms=now_ms)
        audit = [AuditEntry(now_ms, AUDIT_DELETION_COMPLETED, digest=ticket.digest,
                            ticket_id=ticket.ticket_id)]
        if (stored := await record(nxt, audit)) is not nxt:
            return stored or ticket, False
        self._t(tenant).counts.deletions_completed += 1
        log.info("deletion_completed", tenant=tenant, ticket_id=nxt.ticket_id,
                 late=nxt.completed_at_ms > nxt.due_at_ms)
        return nxt, True

    async def run_deletions(self) -> int:
        """Carry out every open ticket of every tenant; returns how many this
        call completed."""
        done = 0
        now_ms = _ms(self.clock.now())
        for name in self.tenants:
            for t in await self.ledger.open_tickets(name):
                if t.overdue(now_ms):
                    log.warning("deletion_overdue", tenant=name, ticket_id=t.ticket_id,
                                due_at_ms=t.due_at_ms)
                try:
                    _, completed = await self._carry_out(name, t)
                except Exception:  # one ticket's trouble does not hold up the others
                    log.exception("deletion_failed", tenant=name, ticket_id=t.ticket_id)
                    continue
                done += completed
        return done

    async def worker(self, interval_s: float) -> None:
        """The deletion worker: runs at start (resuming tickets a crash left
        open), on every new request, and every ``interval_s``."""
        while True:
            self.wake.clear()
            try:
                await self.run_deletions()
            except Exception:
                log.exception("deletion_worker_failed")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.wake.wait(), interval_s)
