"""Routing state shared by replicas: Redis is the authority, each replica a mirror.

Every replica keeps the whole routing state of each tenant in memory (a
:class:`~pairline.routing.TenantRouting`, the same code as the embedded store)
and decides on it locally, so scoring never waits on the network. A change is
made in three steps:

1. the operation runs on the mirror, recording which agents and contacts it
   changed (no awaits: it sees one consistent state);
2. one Lua script commits the new snapshots of exactly those agents and
   contacts **if each is still at the version the mirror saw** (compare and set),
   bumps their versions and appends the snapshots to the tenant's change feed,
   all atomically;
3. if any of them moved on meanwhile (another replica claimed the agent first),
   nothing is written: the script returns their current snapshots, the mirror
   applies them and the operation runs again on the fresh state.

So a decision is one round trip when nothing races, an agent or contact is never
given to two decisions (two commits from the same version cannot both succeed),
and an expired offer is returned exactly once (the second replica to try finds it
already returned). The other replicas apply the snapshots from the feed; any
snapshot older than what a mirror holds is ignored (versions), so the order in
which the feed and the commit replies arrive does not matter.

Keys of tenant ``T`` (one hash tag, one Cluster slot):
``pl:{T}:ag:<agent>`` and ``pl:{T}:ct:<contact>`` hashes {v: version, s: snapshot
JSON}; ``pl:{T}:agents`` and ``pl:{T}:contacts`` sets of ids (for a replica
starting up); ``pl:{T}:dc:<decision>`` the contact a decision is about; and the
feed ``pl:{T}:feed`` shared with :mod:`pairline.stores.redis`; ``pl:{T}:fb``,
``pl:{T}:fba`` and ``pl:{T}:fence`` the heartbeats and fence of the replica that
routes alone during an outage (see FALLBACK_BEAT_S and FENCE_WAIT_S). Contact records hold
the customer digest and context, so they carry a time to live; an ended contact
leaves a versioned empty record for a while, so a late snapshot of it cannot bring
it back.
"""

from __future__ import annotations

import asyncio
import json
import math
import random
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, TypeVar

import structlog
from redis.exceptions import RedisError

from pairline.errors import AlreadyExists, FailedPrecondition, NotFound, Unavailable
from pairline.routing import Contact, TenantRouting, snapshot_of
from pairline.stores.base import DecisionRecord
from pairline.stores.redis import FEED_MAXLEN, LuaScript, RedisStore, record_json

log = structlog.get_logger()
T = TypeVar("T")

CONTACT_TTL_S = 86_400.0  # a live contact record outlives any real call
GONE_TTL_S = 3_600.0  # an ended contact's version is remembered this long
_CONTACT_TTL_MS, _GONE_TTL_MS = int(CONTACT_TTL_S * 1000), int(GONE_TTL_S * 1000)
MAX_ATTEMPTS = 50
PROBE_S = 0.5  # while Redis is unreachable, try it at most this often
# Back in touch only when a PING answers within this: a slow Redis (every call
# waiting on it, under the tenant's lock) is worse than routing alone meanwhile.
PROBE_FAST_S = 0.05
SLOW_COMMIT_S = 0.2  # default slow_s: a commit that took longer puts it out of touch
# The replica that routes alone during an outage (outage_routing) says, this often,
# that it is in touch with nothing left to write back (pl:{T}:fb, its wall time),
# and that it is alive (pl:{T}:fba, even while out of touch, when Redis takes it).
# A replica that does not route alone resumes after an outage only once fb is
# newer than the outage's start, or after FALLBACK_WAIT_S with Redis back and no
# sign of life from it for FALLBACK_WAIT_S (it is gone).
FALLBACK_BEAT_S = 0.25
FALLBACK_WAIT_S = 3.0
FALLBACK_STALE_S = 0.75  # its "in touch" older than this (and alive): it routes alone
FALLBACK_TTL_MS = 60_000
# Before it routes alone, that replica fences the others off (pl:{T}:fence: their
# commits are refused from then on) and, in the same round trip, reads the feed up
# to the fence: its mirror then holds every change they made, and none can follow.
# Redis is slow then, so it waits up to FENCE_WAIT_S for that (the tenant's calls
# wait behind it); Redis refusing, or silent that long, is out of reach for the
# others too: it routes alone without the fence.
FENCE_WAIT_S = 1.0


class Fenced(RedisError):
    """A commit refused: the replica that routes alone is doing so (Redis trouble,
    as far as this replica is concerned: it stops until that one is back)."""


REDIS_ERRORS = (RedisError, OSError, asyncio.TimeoutError)
_REFUSED = ("Redis is out of reach and this replica does not route alone "
            "(outage_routing = false): retry on another replica")

# KEYS: the tenant's key prefix ``pl:{T}:`` (every key the script touches is the
# prefix and a suffix, so one hash tag, one Cluster slot; building them here keeps
# the call short). ARGV: n, contact ttl ms, gone ttl ms, expected av ('' = any),
# expected wv, bump av (0/1), bump wv, force (1: no version check: writing back
# after an outage), fenced (1: refused while pl:{T}:fence exists: a replica that
# does not route alone), then per entity: kind (a/c), id, expected version, snapshot
# ('' = gone), decision id ('' = none); then the number of decision records to
# write with the change, and per record: decision id, JSON, ttl ms, expiry,
# customer digest ('' = none).
# An entity's value is "<version>|<snapshot>", exactly what the feed carries.
# Returns {1, versions, av, wv} | {0} (an entity moved on) | {2} (a counter moved)
# | {3} (fenced off: the replica that routes alone is doing so).
_COMMIT = """
local P = KEYS[1]
local n = tonumber(ARGV[1])
local force = ARGV[8] == '1'
if ARGV[9] == '1' and redis.call('EXISTS', P .. 'fence') == 1 then return {3} end
local counters = redis.call('MGET', P .. 'av', P .. 'wv')
local av, wv = counters[1] or '0', counters[2] or '0'
if ARGV[4] ~= '' and av ~= ARGV[4] then return {2} end
if ARGV[5] ~= '' and wv ~= ARGV[5] then return {2} end
local keys, held, live = {}, {}, {}
for i = 1, n do
  local b = 9 + 5 * (i - 1)
  local key = P .. (ARGV[b + 1] == 'a' and 'ag:' or 'ct:') .. ARGV[b + 2]
  local old = redis.call('GET', key)
  local cur = 0
  if old then
    local bar = string.find(old, '|', 1, true)
    cur = tonumber(string.sub(old, 1, bar - 1))
    live[i] = bar < #old
  end
  if not force and cur ~= tonumber(ARGV[b + 3]) then return {0} end
  keys[i], held[i] = key, cur
end
if ARGV[6] == '1' then av = redis.call('INCR', P .. 'av') end
if ARGV[7] == '1' then wv = redis.call('INCR', P .. 'wv') end
local feed = {'k', 'snap', 'av', av, 'wv', wv}
local versions = {}
for i = 1, n do
  local b = 9 + 5 * (i - 1)
  local kind, id, s, did = ARGV[b + 1], ARGV[b + 2], ARGV[b + 4], ARGV[b + 5]
  local v = held[i] + 1
  local value = v .. '|' .. s
  if kind == 'a' then
    redis.call('SET', keys[i], value)
    if held[i] == 0 then redis.call('SADD', P .. 'agents', id) end
  elseif s == '' then
    redis.call('SET', keys[i], value, 'PX', ARGV[3])
    if live[i] then redis.call('SREM', P .. 'contacts', id) end
  else
    redis.call('SET', keys[i], value, 'PX', ARGV[2])
    if not live[i] then
      redis.call('SADD', P .. 'contacts', id)
      redis.call('EXPIRE', P .. 'contacts', %d)
    end
    if did ~= '' then redis.call('SET', P .. 'dc:' .. did, id, 'PX', ARGV[2]) end
  end
  versions[i] = v
  feed[#feed + 1] = kind .. ':' .. id
  feed[#feed + 1] = value
end
local o = 9 + 5 * n
for j = 1, tonumber(ARGV[o + 1] or '0') do
  local b = o + 1 + 5 * (j - 1)
  local did, ttl, digest = ARGV[b + 1], ARGV[b + 3], ARGV[b + 5]
  redis.call('SET', P .. 'dec:' .. did, ARGV[b + 2], 'PX', ttl)
  redis.call('ZADD', P .. 'decs', ARGV[b + 4], did)
  redis.call('PEXPIRE', P .. 'decs', ttl)
  if digest ~= '' then
    redis.call('SADD', P .. 'cd:' .. digest, did)
    redis.call('PEXPIRE', P .. 'cd:' .. digest, ttl)
  end
end
redis.call('XADD', P .. 'feed', 'MAXLEN', '~', %d, '*', unpack(feed))
return {1, versions, av, wv}
""" % (int(CONTACT_TTL_S), FEED_MAXLEN)


def _load(kind: str, raw: bytes | str) -> dict[str, Any] | None:
    return snapshot_of(kind, json.loads(raw)) if raw else None


class SharedRouting:
    """Commits mirror changes to Redis (see the module docstring)."""

    shared = True

    def __init__(self, store: RedisStore, *, outage_routing: bool = True,
                 slow_s: float = SLOW_COMMIT_S) -> None:
        self.store = store
        # A call on the routing path that took longer puts this replica out of touch.
        self.slow_s = slow_s
        # While Redis is out of reach: route alone on the mirror (True), or refuse
        # with UNAVAILABLE so the switch goes to the replica that does (False).
        self.outage_routing = outage_routing
        self.tenants = list(store.dims)
        self._resync: set[str] = set()
        self._probe_at = 0.0
        self._out_since = 0.0  # wall time the current outage began
        self._out_at = 0.0  # the same on the service's clock
        self._back_since: float | None = None  # monotonic time Redis answered again
        self._beat_at = 0.0
        # Per tenant: snapshots of what the mirror changed while out of touch, kept
        # until a write-back of them has reached Redis.
        self._pending: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {}
        # Set by the service: re-adopts a tenant's contacts after a rebuild; and
        # the service's clock (time of the write-back after an outage).
        self.on_recovered: Callable[[str], Awaitable[None]] | None = None
        self.now: Callable[[], float] | None = None
        # Set by the service once it follows the feed: reads the feed up to now.
        self.catch_up: Callable[[str], Awaitable[None]] | None = None
        # Set with it: skip feed events up to an id (see :meth:`rebuild`).
        self.skip_feed: Callable[[str, str], None] | None = None
        # Set with it: sets the fence (key, value, ttl ms) and reads the feed up to
        # it in one round trip (see FENCE_WAIT_S).
        self.fence_feed: Callable[[str, str, str, int, float], Awaitable[None]] | None = None
        # Tenants this replica routes alone on (fenced, or Redis out of reach): its
        # mirror holds changes Redis has not seen, until they are written back.
        self._alone_on: set[str] = set()
        # Tenants whose mirror a recovery under way has rebuilt from Redis (it
        # takes the feed's snapshots again: see _recover).
        self._rebuilt: set[str] = set()
        self._fenced: set[str] = set()  # (of _alone_on: with the fence up)
        self.r = store.r
        self._commit = LuaScript(store, _COMMIT)
        # Each tenant's KEYS of the commit script (its key prefix), built once.
        self._keys = {t: [self._k(t, "")] for t in self.tenants}
        self._locks: dict[str, asyncio.Lock] = {}
        self._undoing: set[asyncio.Future[None]] = set()
        self._checking: asyncio.Future[None] | None = None  # see slow_call
        self.conflicts = 0
        self.counter_conflicts = 0  # (of the conflicts: a counter moved on)
        self.commits = 0
        self.rebuilds = 0
        self.state_lost = 0  # recoveries that found Redis without the tenant's state

    def _k(self, tenant: str, *parts: str) -> str:
        return self.store.key(tenant, *parts)

    async def run(
        self,
        tenant: str,
        routing: TenantRouting,
        op: Callable[[], T],
        *,
        agents: Iterable[str] = (),
        contacts: Iterable[str] = (),
        decisions: Iterable[str] = (),
    ) -> T:
        """Run ``op`` on the mirror and commit what it changed; on a conflict, or
        when ``op`` refuses on a state the mirror may not have caught up with, fetch
        the named entities (``agents``, ``contacts``, ``decisions``) and run again.

        When Redis cannot be reached, ``op`` runs on the mirror alone (the caller
        sees :attr:`degraded` and routes by the baseline); what it changed is kept
        and written back when Redis returns (see :meth:`maintain`)."""
        lock = self._locks.get(tenant)
        if lock is None:
            lock = self._locks[tenant] = asyncio.Lock()
        # Probed before the lock: calls waiting for it never wait on a probe.
        answers = tenant in self._resync and await self._probe()
        async with lock:
            if tenant in self._resync and not (answers and await self._recover(tenant, routing)):
                return await self._go_alone(tenant, routing, op)
            try:
                return await self._run_locked(tenant, routing, op, agents=agents,
                                              contacts=contacts, decisions=decisions)
            except asyncio.CancelledError:
                # The caller went away (a deadline) while the commit or the undo
                # was on its way: whether Redis took the change or not, what the
                # operation changed here must end up as Redis has it (kept, a
                # refused change would stay on the mirror at versions Redis has:
                # a contact waiting here that Redis never had).
                undo = self._touched(routing)
                if undo:
                    self._undo_later(tenant, routing, undo)
                raise

    def _undo_later(self, tenant: str, routing: TenantRouting,
                    undo: list[tuple[str, str]]) -> None:
        async def fetch() -> None:
            async with self._locks[tenant]:
                try:
                    await self._fetch(tenant, routing, undo)
                except REDIS_ERRORS as exc:
                    self._degrade(exc)  # (the rebuild on recovery fixes the mirror)

        task = asyncio.ensure_future(fetch())
        self._undoing.add(task)
        task.add_done_callback(self._undoing.discard)

    async def _run_locked(
        self,
        tenant: str,
        routing: TenantRouting,
        op: Callable[[], T],
        *,
        agents: Iterable[str] = (),
        contacts: Iterable[str] = (),
        decisions: Iterable[str] = (),
        strict: bool = False,
    ) -> T:
        refreshed = False
        behind = False  # the last commit found a counter moved on
        for attempt in range(MAX_ATTEMPTS):
            if attempt >= 3:
                # Replicas racing on the same agents: back off a little, at
                # random, so one of them gets through (no livelock).
                await asyncio.sleep(random.uniform(0, 0.001 * attempt))
            if behind and self.catch_up is not None:
                # Read the feed up to now after the back-off, right before the
                # operation runs again: a counter check needs the mirror as fresh
                # as it can be (catching up before the back-off left it a back-off
                # behind, and the counters move on meanwhile).
                try:
                    await self.catch_up(tenant)
                except REDIS_ERRORS as exc:
                    self._degrade(exc)
                    return await self._go_alone(tenant, routing, op)
            routing.touched_agents.clear()
            routing.touched_contacts.clear()
            routing.needs_av = routing.needs_wv = False
            routing.bumps_av = routing.bumps_wv = False
            routing.outbox.clear()
            routing.staged.clear()
            routing.recording = True
            try:
                result = op()
            except LookupError:
                # The mirror was caught between two snapshots that do not agree
                # yet (an agent's before its contact's): rebuild it and run again.
                routing.recording = False
                self.rebuilds += 1
                log.info("mirror_rebuilt", tenant=tenant, exc_info=True)
                try:
                    await self.rebuild(tenant, routing)
                except REDIS_ERRORS as exc:
                    self._degrade(exc)
                    if strict:
                        raise
                    return await self._go_alone(tenant, routing, op)
                continue
            except (NotFound, FailedPrecondition, AlreadyExists):
                # Refused, maybe on a state the mirror had not caught up with:
                # fetch the named entities and run once more. An operation refuses
                # before it changes what it is about, but what it did first (offers
                # it found expired and returned) is undone too: fetched back, since
                # it is not committed (kept, a later commit of the same version
                # would write it without the rest: an agent without a reservation
                # its contact still holds).
                routing.recording = False
                undo = self._touched(routing)
                try:
                    if refreshed:
                        if undo:
                            await self._fetch(tenant, routing, undo)
                        raise
                    refreshed = True
                    await self.refresh(tenant, routing, agents, contacts, decisions, undo)
                except REDIS_ERRORS as exc:
                    self._degrade(exc)
                    if strict:
                        raise
                    return await self._go_alone(tenant, routing, op)
                continue
            except Exception:
                # Any other refusal (a deadline, a limit): undo as above.
                routing.recording = False
                undo = self._touched(routing)
                if undo:
                    try:
                        await self._fetch(tenant, routing, undo)
                    except REDIS_ERRORS as exc:
                        self._degrade(exc)  # (the rebuild on recovery undoes it)
                raise
            finally:
                routing.recording = False
            try:
                sent = time.monotonic()
                outcome = await self.commit(tenant, routing)
                if outcome == 1 and time.monotonic() - sent > self.slow_s:
                    # Done, but Redis may be slow: every call of the tenant waits on
                    # it under the lock. If so, go on without it until it is fast.
                    self.slow_call(f"a commit took {time.monotonic() - sent:.3f} s")
                if attempt >= 10:
                    log.warning("commit_contended", tenant=tenant, attempt=attempt,
                                outcome=outcome, av=routing.av, wv=routing.wv,
                                needs=(routing.needs_av, routing.needs_wv),
                                agents=sorted(routing.touched_agents)[:5],
                                contacts=sorted(routing.touched_contacts)[:5])
                behind = outcome == 2
            except REDIS_ERRORS as exc:
                self._degrade(exc)
                if strict:
                    raise
                if not self.outage_routing:
                    # Not written back: the mirror is rebuilt from Redis before this
                    # replica serves again (the commit may or may not have landed;
                    # the caller's retry elsewhere finds out which).
                    raise Unavailable(_REFUSED) from exc
                # The change stays on this mirror, to be written back later.
                routing.dirty_agents |= routing.touched_agents
                routing.dirty_contacts |= routing.touched_contacts
                return result
            if outcome == 1:
                return result
        raise Unavailable("routing state is too contended right now: retry")

    # ----------------------------------------------------------- Redis trouble
    @property
    def degraded(self) -> bool:
        """Some tenant's mirror is out of touch with Redis."""
        return bool(self._resync)

    def out_of_touch(self, exc: BaseException) -> None:
        """A call on the routing path found Redis out of reach or slow."""
        self._degrade(exc)

    def slow_call(self, what: str) -> None:
        """A call to Redis on the routing path answered, slowly. Redis is slow, or
        this process was (a busy machine: every await returns late). Going out of
        touch stops the others too (see FENCE_WAIT_S), so first a PING in the
        background says which: out of touch unless it answers within PROBE_FAST_S."""
        if self._resync or self._checking is not None:
            return

        async def check() -> None:
            start = time.monotonic()
            try:
                lane = self.store.lane
                if lane is not None:  # (behind what is in flight on it, if anything)
                    await lane.call("PING", timeout_s=self.slow_s)
                else:
                    async with asyncio.timeout(self.slow_s):
                        await self.r.ping()
                took = time.monotonic() - start
            except REDIS_ERRORS:
                took = math.inf
            finally:
                self._checking = None
            if took > PROBE_FAST_S:
                self._degrade(TimeoutError(f"{what}, then a PING {took:.3f} s"))
            else:
                log.info("redis_slow_call_passed", call=what, ping_s=round(took, 4))

        self._checking = asyncio.ensure_future(check())

    def _degrade(self, exc: BaseException) -> None:
        if not self._resync:
            log.warning("redis_unreachable", error=repr(exc))
            self._out_since = time.time()
            self._out_at = time.time() if self.now is None else self.now()
            self._back_since = None
        self._resync = set(self.tenants)
        self._probe_at = time.monotonic()

    async def _go_alone(self, tenant: str, routing: TenantRouting, op: Callable[[], T]) -> T:
        """``op`` with Redis out of reach or slow: refused on a replica that does not
        route alone; on the one that does, run on its mirror alone, once the others
        are fenced off (see FENCE_WAIT_S)."""
        if not self.outage_routing:
            raise Unavailable(_REFUSED)
        if tenant not in self._alone_on:
            await self._take_over(tenant)
        try:
            return self._local(routing, op)
        except NotFound as exc:
            if tenant in self._fenced:
                raise  # (the mirror holds every change the others made)
            # Not fenced (Redis went away): another replica's last changes may not
            # have reached this mirror (a contact it created just before). Not
            # known here is not "does not exist": the caller retries.
            raise Unavailable(f"{exc.message}, as far as this replica knows while Redis "
                              "is out of reach: retry (it may have been made through "
                              "another replica just before)") from exc

    async def _take_over(self, tenant: str) -> None:
        """Fence the other replicas off ``tenant`` and bring the mirror up to the
        fence (under the tenant's lock: the calls behind it wait for this, a round
        trip or a few). Without an answer from Redis, route alone all the same: it
        is out of reach for the others too."""
        start = time.monotonic()
        try:
            if self.fence_feed is not None:
                await self.fence_feed(tenant, self._k(tenant, "fence"), repr(time.time()),
                                      FALLBACK_TTL_MS, FENCE_WAIT_S)
            else:
                async with asyncio.timeout(FENCE_WAIT_S):
                    await self.r.set(self._k(tenant, "fence"), repr(time.time()),
                                     px=FALLBACK_TTL_MS)
            log.warning("routing_alone", tenant=tenant, fenced=True,
                        waited_s=round(time.monotonic() - start, 3))
            self._fenced.add(tenant)
        except REDIS_ERRORS as exc:
            log.warning("routing_alone", tenant=tenant, fenced=False, error=repr(exc),
                        waited_s=round(time.monotonic() - start, 3))
        self._alone_on.add(tenant)

    def holds_unseen(self, tenant: str) -> bool:
        """Whether ``tenant``'s mirror may hold changes Redis has not seen (a feed
        snapshot must not overwrite them): it is out of touch, and routing alone or
        a replica that does not (its mirror is rebuilt before it serves again)."""
        return (tenant in self._resync and tenant not in self._rebuilt
                and (tenant in self._alone_on or not self.outage_routing))

    def _local(self, routing: TenantRouting, op: Callable[[], T]) -> T:
        # Offers made before the outage stay until the mirror is rebuilt (see
        # TenantRouting.hold_before).
        routing.hold_before = max(routing.hold_before, self._out_at)
        routing.touched_agents.clear()
        routing.touched_contacts.clear()
        # (records staged now are not committed: the service writes them itself)
        routing.outbox.clear()
        routing.staged.clear()
        routing.recording = True
        try:
            return op()
        except LookupError as exc:
            # The mirror was caught between two snapshots that do not agree and
            # cannot be rebuilt now: refuse (the caller retries); it is rebuilt
            # from Redis once Redis answers.
            log.warning("mirror_inconsistent_while_degraded", exc_info=True)
            raise Unavailable("routing state is out of reach right now: retry") from exc
        finally:
            routing.recording = False
            routing.dirty_agents |= routing.touched_agents
            routing.dirty_contacts |= routing.touched_contacts

    async def beat(self) -> None:
        """Periodic. On the replica that routes alone during an outage: say that it
        is in touch with nothing left to write back (see FALLBACK_BEAT_S). On the
        others: watch it, and stop too while it is alive but out of touch (it is
        routing alone: two deciding at once could give one agent twice)."""
        now = time.monotonic()
        if now - self._beat_at < FALLBACK_BEAT_S:
            return
        self._beat_at = now
        if not self.outage_routing:
            await self._watch_fallback()
            return
        ready = [t for t in self.tenants if t not in self._resync and t not in self._pending]
        try:
            async with self.r.pipeline(transaction=False) as p:
                for t in self.tenants:  # alive, routing alone or not
                    p.set(self._k(t, "fba"), repr(time.time()), px=FALLBACK_TTL_MS)
                for t in self._alone_on:  # (only while it is there: see _recover)
                    p.pexpire(self._k(t, "fence"), FALLBACK_TTL_MS)
                for t in ready:
                    p.set(self._k(t, "fb"), repr(time.time()), px=FALLBACK_TTL_MS)
                await p.execute()
        except REDIS_ERRORS as exc:
            if ready:
                self._degrade(exc)

    async def _watch_fallback(self) -> None:
        watched = [t for t in self.tenants if t not in self._resync]
        if not watched:
            return
        try:
            async with self.r.pipeline(transaction=False) as p:
                for t in watched:
                    p.mget([self._k(t, "fb"), self._k(t, "fba")])
                rows = await p.execute()
        except REDIS_ERRORS as exc:
            self._degrade(exc)
            return
        wall = time.time()
        for t, (done, alive) in zip(watched, rows, strict=True):
            if (alive is not None and wall - float(alive) < FALLBACK_WAIT_S
                    and (done is None or wall - float(done) > FALLBACK_STALE_S)):
                log.warning("fallback_out_of_touch", tenant=t)
                self._degrade(TimeoutError("the replica routing alone is out of touch"))
                return

    async def _fallback_done(self, tenant: str) -> bool:
        """Not routing alone: whether the replica that does has written back what it
        decided during this outage (or has been silent too long to wait for)."""
        done, alive = await self.r.mget([self._k(tenant, "fb"), self._k(tenant, "fba")])
        if done is not None and float(done) > self._out_since:
            return True
        now = time.monotonic()
        if self._back_since is None:
            self._back_since = now
        if now - self._back_since < FALLBACK_WAIT_S or (
                alive is not None and time.time() - float(alive) < FALLBACK_WAIT_S):
            return False  # it is alive (routing alone, or writing back): wait for it
        log.warning("fallback_silent", tenant=tenant, waited_s=FALLBACK_WAIT_S)
        await self.r.delete(self._k(tenant, "fence"))  # (it may have left one)
        return True

    async def maintain(self, routings: dict[str, TenantRouting]) -> None:
        """Periodic: bring every out-of-touch tenant back once Redis answers."""
        if not self._resync or not await self._probe():
            return
        for tenant in list(self._resync):
            lock = self._locks.setdefault(tenant, asyncio.Lock())
            async with lock:
                if tenant in self._resync:
                    await self._recover(tenant, routings[tenant])

    def _keep_pending(self, tenant: str, routing: TenantRouting) -> None:
        """A recovery cut short by Redis trouble, maybe after the mirror was rebuilt
        from Redis: what this replica decided alone and has not written back goes
        on the mirror again (merged as the write-back would; it stays pending), so
        the calls it keeps answering alone meanwhile see it (a contact it created
        would be NOT_FOUND)."""
        pending = self._pending.get(tenant)
        if not pending or not (pending[0] or pending[1]):
            return
        now = time.time() if self.now is None else self.now()
        try:
            self._local(routing, lambda: routing.merge_back(pending[0], pending[1], now))
        except Exception:  # (the next recovery rebuilds and merges it all the same)
            log.warning("outage_pending_not_reapplied", tenant=tenant, exc_info=True)

    async def lift_fence(self, tenant: str) -> None:
        """The replica that routes alone, in touch with nothing to write back: say so
        and let the others commit again (also at its start: a fence its previous
        life left)."""
        async with self.r.pipeline(transaction=False) as p:
            p.delete(self._k(tenant, "fence"))  # (first: a replica that reads fb resumes)
            p.set(self._k(tenant, "fb"), repr(time.time()), px=FALLBACK_TTL_MS)
            await p.execute()

    async def _probe(self) -> bool:
        """At most every PROBE_S: whether Redis answers a PING, quickly."""
        start = time.monotonic()
        if start - self._probe_at < PROBE_S:
            return False
        self._probe_at = start
        try:
            # Idle connections from before the trouble may be dead (a restarted
            # Redis): drop them, so the first calls after the probe do not fail.
            pool = getattr(self.r, "connection_pool", None)
            if pool is not None:
                await pool.disconnect(inuse_connections=False)
            await self.r.ping()
        except REDIS_ERRORS:
            return False
        finally:
            self._probe_at = time.monotonic()
        return self._probe_at - start <= PROBE_FAST_S

    async def _recover(self, tenant: str, routing: TenantRouting) -> bool:
        """Redis answered a probe: write back what this mirror changed meanwhile
        (merged into Redis's state, never over an agent's capacity), after
        rebuilding the mirror from Redis. True when back in touch."""
        try:
            if not self.outage_routing and not await self._fallback_done(tenant):
                return False
            # What this mirror changed meanwhile stays pending until written back:
            # a rebuild or a write-back cut short by Redis trouble loses nothing.
            agents, contacts = self._pending.setdefault(tenant, ({}, {}))
            if not await self.r.exists(self._k(tenant, "epoch")):
                # Redis came back without the tenant's state (restarted without its
                # append-only file, or a failover to an empty node): rebuilt from it,
                # every agent and live contact would be gone. Written back whole
                # instead, from this mirror, as an outage's changes are.
                log.error("redis_state_lost", tenant=tenant, agents=len(routing.agents),
                          contacts=len(routing.contacts))
                self.state_lost += 1
                routing.dirty_agents.update(routing.agents)
                routing.dirty_contacts.update(routing.contacts)
            agents.update({a: routing.agent_snapshot(a) for a in routing.dirty_agents
                           if a in routing.agents})
            contacts.update({c: routing.contact_snapshot(c) for c in routing.dirty_contacts})
            routing.dirty_agents.clear()
            routing.dirty_contacts.clear()
            await self.rebuild(tenant, routing)
            # Rebuilt: the mirror is Redis's state, and takes the feed's snapshots
            # from here on (skipped, another replica's write-back landing now
            # would be missing here for good; the merge below is compare-and-set).
            self._alone_on.discard(tenant)
            self._fenced.discard(tenant)
            self._rebuilt.add(tenant)
            if agents or contacts:
                now = time.time() if self.now is None else self.now()
                # strict: Redis trouble raises (the merge stays pending, the mirror
                # is rebuilt next time) instead of running on the mirror alone.
                dropped = await self._run_locked(
                    tenant, routing, lambda: routing.merge_back(agents, contacts, now),
                    agents=agents, contacts=contacts, strict=True)
                if dropped:
                    log.warning("outage_decisions_dropped", tenant=tenant, n=len(dropped))
            self._pending.pop(tenant, None)
            if self.outage_routing:  # written back: the others may resume now
                await self.lift_fence(tenant)
        except REDIS_ERRORS:
            self._probe_at = time.monotonic()
            self._keep_pending(tenant, routing)
            return False
        finally:
            self._rebuilt.discard(tenant)
        self._resync.discard(tenant)
        if not self._resync:
            log.info("redis_reachable_again")
        if self.on_recovered is not None:
            await self.on_recovered(tenant)
        return True

    @staticmethod
    def stage_record(tenant: str, routing: TenantRouting, record: DecisionRecord) -> None:
        """Write ``record`` with the commit of the operation that made it."""
        d = record.decision
        ttl_ms = max(1, int((record.expires_at - d.decided_at) * 1000))
        routing.outbox.append((d.decision_id, record_json(record, routing.stage_decision(d)),
                               ttl_ms, record.expires_at, record.customer_digest))

    async def commit(self, tenant: str, routing: TenantRouting, *, force: bool = False) -> int:
        """Commit the recorded changes: 1 done; 0 an entity moved on (the mirror now
        has its current state); 2 an agent was freed or a contact queued elsewhere
        while this operation concluded nothing was (the caller catches up)."""
        touched_agents, touched_contacts = routing.touched_agents, routing.touched_contacts
        if not touched_agents and not touched_contacts:
            return 1
        # The entities written, in argv order: (versions, kind, id), so the reply's
        # versions land where they belong.
        entities: list[tuple[dict[str, int], str, str]] = []
        sent: dict[tuple[str, str], int] = {}  # the version each was based on
        argv: list[str | int | bytes] = [
            len(touched_agents) + len(touched_contacts), _CONTACT_TTL_MS, _GONE_TTL_MS,
            str(routing.av) if routing.needs_av else "",
            str(routing.wv) if routing.needs_wv else "",
            1 if routing.bumps_av else 0, 1 if routing.bumps_wv else 0, 1 if force else 0,
            0 if self.outage_routing else 1,
        ]
        av, wv = routing.av, routing.wv
        inflight = routing.inflight
        try:
            versions = routing.agent_v
            for eid in sorted(touched_agents):
                v = sent[("a", eid)] = versions.get(eid, 0)
                entities.append((versions, "a", eid))
                argv += ("a", eid, v, routing.agent_wire(eid), "")
                inflight[("a", eid)] = v + 1
            versions = routing.contact_v
            contacts = routing.contacts
            for eid in sorted(touched_contacts):
                v = sent[("c", eid)] = versions.get(eid, 0)
                entities.append((versions, "c", eid))
                c = contacts.get(eid)
                did = c.decision.decision_id if c is not None and c.decision is not None else ""
                argv += ("c", eid, v, routing.contact_wire(eid), did)
                inflight[("c", eid)] = v + 1
            outbox = routing.outbox
            argv.append(len(outbox))
            for did, raw, ttl_ms, expires_at, digest in outbox:
                argv += (did, raw, ttl_ms, repr(float(expires_at)), digest or "")
            keys = self._keys.get(tenant) or [self._k(tenant, "")]
            reply = await self._commit(keys, argv)
        finally:
            inflight.clear()
        if reply[0] == 1:
            self.commits += 1
            for (versions, kind, eid), v in zip(entities, reply[1], strict=True):
                # (the feed may have brought a later version already)
                if v > versions.get(eid, 0):
                    versions[eid] = v
                if kind == "c" and eid not in routing.contacts:
                    self.note_gone(routing, eid)
            # A counter this commit moved by one from the value the mirror held:
            # no other replica moved it, so the mirror is current with it (without
            # waiting for the feed, whose lag would fail this replica's next check).
            if routing.bumps_av and int(reply[2]) == av + 1:
                routing.av = max(routing.av, av + 1)
            if routing.bumps_wv and int(reply[3]) == wv + 1:
                routing.wv = max(routing.wv, wv + 1)
            return 1
        if reply[0] == 3:
            raise Fenced("the replica that routes alone during an outage has fenced "
                         "the others off")
        self.conflicts += 1
        if reply[0] == 2:
            self.counter_conflicts += 1
        # Undo this attempt's local changes: every entity back to Redis's state
        # (on a counter conflict, fetched; on a version conflict, returned), also
        # where Redis holds an older version than this commit was based on: its
        # record expired (an ended contact's after GONE_TTL_S, a live one's after
        # CONTACT_TTL_S) or was lost. Kept, the mirror's uncommitted change would
        # be taken for the state (an agent reserved here only, given away elsewhere).
        await self._fetch(tenant, routing, [(kind, eid) for _, kind, eid in entities],
                          based_on=sent)
        return 2 if reply[0] == 2 else 0

    @staticmethod
    def apply(
        routing: TenantRouting, kind: str, eid: str, version: int, raw: bytes | str,
        *, force: bool = False,
    ) -> bool:
        """Make the mirror's copy equal to a snapshot at ``version`` unless it holds
        a newer one (``force``: also when equal, to undo a local change)."""
        versions = routing.agent_v if kind == "a" else routing.contact_v
        held = versions.get(eid, 0)
        if version < held or (version == held and not force):
            return False
        SharedRouting._apply_snap(routing, kind, eid, version, _load(kind, raw))
        return True

    @staticmethod
    def _apply_snap(routing: TenantRouting, kind: str, eid: str, version: int,
                    snap: dict[str, Any] | None) -> None:
        if kind == "a":
            routing.apply_agent(eid, snap)
            routing.agent_v[eid] = version
        else:
            routing.apply_contact(eid, snap)
            routing.contact_v[eid] = version
            if snap is None:
                SharedRouting.note_gone(routing, eid)

    @staticmethod
    def note_gone(routing: TenantRouting, contact_id: str) -> None:
        """An ended contact's version is kept as long as Redis keeps its record
        (GONE_TTL_S), then forgotten with it: the mirror does not grow by one entry
        per contact ever routed. (Forgotten early, say the id ended twice, a reuse of
        the id costs one conflict: Redis's record then says the version.)"""
        now = time.monotonic()
        gone = routing.gone_v
        gone.append((now + GONE_TTL_S, contact_id))
        while gone and gone[0][0] <= now:
            _, eid = gone.popleft()
            if eid not in routing.contacts:
                routing.contact_v.pop(eid, None)

    @staticmethod
    def _touched(routing: TenantRouting) -> list[tuple[str, str]]:
        return ([("a", a) for a in routing.touched_agents]
                + [("c", c) for c in routing.touched_contacts])

    async def scrub(
        self, tenant: str, routing: TenantRouting, match: Callable[[dict[str, Any]], bool],
        scrub_contact: Callable[[Contact], None],
    ) -> int:
        """Commit, without their customer's data (``scrub_contact``), the live
        contacts whose record in Redis ``match``es (names a deleted or opted-out
        customer, or is past the data's retention): Redis's copy too, not only
        every replica's mirror. Returns how many. Raises on Redis trouble (the
        deletion worker retries)."""
        live = [c.decode() for c in await self.r.smembers(self._k(tenant, "contacts"))]
        rows = await self._read(tenant, routing, [("c", c) for c in live], depth=0)
        held = [eid for _, eid, _, snap in rows if snap is not None and match(snap)]
        if not held:
            return 0
        async with self._locks.setdefault(tenant, asyncio.Lock()):
            # (this mirror may not have them all yet: the feed is on its way)
            await self._fetch(tenant, routing, [("c", c) for c in held])

        def op() -> int:
            for cid in held:
                c = routing.contacts.get(cid)
                if c is not None:
                    scrub_contact(c)
                    routing.touched_contacts.add(cid)
            return len(held)

        return await self.run(tenant, routing, op, contacts=held)

    async def refresh(
        self,
        tenant: str,
        routing: TenantRouting,
        agents: Iterable[str] = (),
        contacts: Iterable[str] = (),
        decisions: Iterable[str] = (),
        more: Iterable[tuple[str, str]] = (),
    ) -> None:
        """Fetch named agents, contacts and decisions' contacts (and ``more``
        entities) from Redis."""
        contacts = list(contacts)
        for did in decisions:
            cid = await self.store.get(self._k(tenant, "dc", did))
            if cid:
                contacts.append(cid.decode())
        wanted = [("a", a) for a in agents] + [("c", c) for c in contacts] + list(more)
        await self._fetch(tenant, routing, wanted)

    async def _fetch(
        self, tenant: str, routing: TenantRouting, wanted: list[tuple[str, str]],
        depth: int = 2, based_on: dict[tuple[str, str], int] | None = None,
    ) -> None:
        """Make the mirror's copy of ``wanted`` equal to Redis's, together with what
        they refer to (an agent's reservations and calls, a contact's agent), so the
        mirror stays consistent across entities (``depth`` levels). Everything is
        read before anything is applied: Redis trouble half way changes nothing.
        ``based_on``: versions a change of the mirror was based on; Redis holding an
        older one means its record is gone, and its copy is taken all the same."""
        for kind, eid, version, snap in await self._read(tenant, routing, wanted, depth):
            # (unless the mirror already holds a newer one, from the feed)
            held = (routing.agent_v if kind == "a" else routing.contact_v).get(eid, 0)
            if version >= held or (based_on is not None
                                   and version < based_on.get((kind, eid), 0)):
                self._apply_snap(routing, kind, eid, version, snap)

    async def _read(
        self, tenant: str, routing: TenantRouting, wanted: list[tuple[str, str]],
        depth: int = 2,
    ) -> list[tuple[str, str, int, dict[str, Any] | None]]:
        """Snapshots (kind, id, version, snapshot) of ``wanted`` and of what they
        refer to, in Redis or on the mirror, ``depth`` levels, in the order to apply
        them; 1000 per round trip."""
        rows: list[tuple[str, str, int, dict[str, Any] | None]] = []
        seen: set[tuple[str, str]] = set()
        while wanted and depth >= 0:
            wanted = [w for w in dict.fromkeys(wanted) if w not in seen]
            if not wanted:
                break
            seen.update(wanted)
            refs: list[tuple[str, str]] = []
            for i in range(0, len(wanted), 1000):
                chunk = wanted[i:i + 1000]
                values = await self.store.mget(
                    [self._k(tenant, "ag" if kind == "a" else "ct", eid) for kind, eid in chunk])
                for (kind, eid), value in zip(chunk, values, strict=True):
                    v, _, raw = (value or b"0|").partition(b"|")
                    snap = _load(kind, raw)
                    rows.append((kind, eid, int(v), snap))
                    # What the mirror's copy referred to comes too: an agent fetched
                    # without a reservation must not leave its contact holding it.
                    if kind == "a":
                        held_agent = routing.agents.get(eid)
                        if held_agent is not None:
                            refs += [("c", c) for c in held_agent.reservations.values()]
                            refs += [("c", c) for c in held_agent.connected]
                    else:
                        held_contact = routing.contacts.get(eid)
                        if held_contact is not None and held_contact.decision is not None:
                            refs.append(("a", held_contact.decision.agent_id))
                    if snap is None:
                        continue
                    if kind == "a":
                        refs += [("c", c) for c in snap["res"].values()]
                        refs += [("c", c) for c in snap["con"]]
                    elif snap.get("d"):
                        refs.append(("a", snap["d"]["agent_id"]))
            wanted = refs
            depth -= 1
        return rows

    async def reconcile(self, tenant: str, routing: TenantRouting) -> int:
        """Anti-entropy, periodic: the contacts this mirror holds that Redis no
        longer lists as live, and the live ones it lacks, are fetched from Redis (a
        feed event missed or not applied leaves the mirror with a ghost that only
        a commit touching it would correct). Returns how many were fetched."""
        if tenant in self._resync:
            return 0  # out of touch: the mirror holds changes Redis has not seen
        live = {c.decode() for c in await self.r.smembers(self._k(tenant, "contacts"))}
        async with self._locks.setdefault(tenant, asyncio.Lock()):
            if tenant in self._resync:
                return 0
            odd = [c for c in routing.contacts if c not in live]
            odd += [c for c in live if c not in routing.contacts]
            if odd:
                await self._fetch(tenant, routing, [("c", c) for c in odd])
        return len(odd)

    async def resync(self, tenant: str, routing: TenantRouting) -> None:
        """Rebuild the mirror from Redis between two operations (the feed lost
        events this replica had not applied)."""
        async with self._locks.setdefault(tenant, asyncio.Lock()):
            await self.rebuild(tenant, routing)

    async def rebuild(self, tenant: str, routing: TenantRouting) -> None:
        if self.skip_feed is not None:
            # Every feed event up to now is in what the load reads; one the
            # follower still holds from before (a batch it is applying) would,
            # once the versions are cleared, bring back what has ended since.
            self.skip_feed(tenant, await self.store.feed_tail(tenant))
        await self.load(tenant, routing)
        if self.catch_up is not None:
            await self.catch_up(tenant)

    async def load(self, tenant: str, routing: TenantRouting) -> None:
        """Rebuild the mirror from Redis (a replica starting up, or back in touch):
        the counters, every agent, every live contact and what they refer to. All
        is read first: the mirror changes only once every read has succeeded (Redis
        trouble half way leaves it as it was, not half cleared)."""
        # The tenant's routing state exists in this Redis from now on (see _recover).
        await self.r.set(self._k(tenant, "epoch"), "1", nx=True)
        av, wv = await self.store.mget([self._k(tenant, "av"), self._k(tenant, "wv")])
        agents = [a.decode() for a in await self.r.smembers(self._k(tenant, "agents"))]
        contacts = [c.decode() for c in await self.r.smembers(self._k(tenant, "contacts"))]
        rows = await self._read(
            tenant, routing, [("a", a) for a in agents] + [("c", c) for c in contacts])
        routing.clear()
        routing.av, routing.wv = int(av or 0), int(wv or 0)
        for kind, eid, version, snap in rows:
            self._apply_snap(routing, kind, eid, version, snap)

    def apply_feed(self, routing: TenantRouting, fields: dict[bytes, bytes]) -> list[str]:
        """Apply one feed event of snapshots; returns ids of contacts that became
        (or stayed) waiting, whose profiles the caller may want to load."""
        waiting = []
        av, wv = int(fields.get(b"av", 0)), int(fields.get(b"wv", 0))
        if av > routing.av:
            routing.av = av
        if wv > routing.wv:
            routing.wv = wv
        inflight = routing.inflight
        for name, value in fields.items():
            # Entity fields are "a:<id>" / "c:<id>"; the others are k, av and wv.
            if name[1:2] != b":":
                continue
            kind, eid = name[:1].decode(), name[2:].decode()
            v, _, raw = value.partition(b"|")
            version = int(v)
            if inflight and inflight.get((kind, eid)) == version:
                # This replica's commit in flight wrote it (the mirror has it), or
                # it fails for it and fetches: either way nothing to apply.
                continue
            if self.apply(routing, kind, eid, version, raw) and kind == "c" and raw:
                c = routing.contacts.get(eid)
                if c is not None and c.profile is None and c.digest:
                    waiting.append(eid)
        return waiting
