"""The Redis store: profiles, models and decisions shared by every replica.

Every key of a tenant carries the hash tag ``{tenant}`` (``pl:{acme}:cp:<digest>``)
so that each script touches one Redis Cluster slot. Layout per tenant ``T``:

==========================  ======================================================  ==========
key                         value                                                   TTL
==========================  ======================================================  ==========
``pl:{T}:cp:<digest>``      customer profile: order key, expiry, float32 vector     profile TTL
``pl:{T}:ap:<agent>``       agent profile: same layout                              profile TTL
``pl:{T}:dec:<id>``         a decision with its outcomes (JSON, see record_json)    decision TTL
``pl:{T}:decs``             sorted set: decision id by expiry (for the report)      decision TTL,
                                                                                    refreshed
``pl:{T}:model:<version>``  a model file as uploaded                                none (configuration)
``pl:{T}:models``           set of uploaded versions                                none (configuration)
``pl:{T}:active``           the active model version                                none (configuration)
``pl:{T}:feed``             the change feed (stream, capped)                        none (capped, no
                                                                                    raw keys)
==========================  ======================================================  ==========

A profile value is ``order key (40 ASCII digits) + expires-at ms (20 digits) +
float32 bytes``. The order key is (source time ms, version), each offset by 2**63
and zero-padded, so the Lua upsert compares newness as plain strings (Lua numbers
are doubles and would lose int64 precision). Time to live is kept twice: as a
Redis expiry (so Redis drops the data on time by itself) and inside the value (so
a reader with a controlled clock, as in the tests, sees the same expiry as the
embedded store).

**Change feed**: every write that replicas cache (profiles, models) appends an
event to ``pl:{T}:feed`` in the same script, atomically. :class:`FeedFollower`
follows every tenant's stream from the last id it applied (fan-out, no consumer
group), so a replica that was cut off catches up rather than missing changes.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import redis.asyncio as aioredis
import structlog
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import NoScriptError, RedisError, ResponseError

from pairline.aio import stop_task
from pairline.domain import Decision
from pairline.model import Model, load_model
from pairline.routing import DECISION_FIELDS, decision_values, wire_json
from pairline.stores.base import DecisionRecord, ProfileRow
from pairline.stores.lane import Lane

log = structlog.get_logger()

_OFFSET = 1 << 63
_HEAD = 60  # order key (40) + expires-at ms (20)
FEED_MAXLEN = 100_000
# Feed events older than this are trimmed (they hold routing snapshots, digests
# among them); a replica further behind finds the gap and rebuilds instead.
FEED_RETENTION_S = 600.0
GAP_CHECK_S = 5.0  # how often a follower trims the feeds and looks for a gap
FEED_LINGER_S = 0.001  # see FeedFollower.linger_s
NO_EXPIRY_MS = 10**19 - 1  # "never" in the 20-digit expiry field


def connect(url: str, timeout_s: float = 0.5) -> Any:
    """A client for ``url``: ``redis://``, ``rediss://`` or ``unix://`` for one Redis;
    ``redis+cluster://host:port[,host:port...]`` (or ``rediss+cluster://``) for a
    Redis Cluster given by one or more seed nodes. Calls fail after ``timeout_s``
    instead of waiting on a Redis that does not answer, and are not retried here
    (the caller decides: routing degrades, writes are refused as UNAVAILABLE)."""
    common: dict[str, Any] = {
        "decode_responses": False,
        "socket_timeout": timeout_s,
        "socket_connect_timeout": timeout_s,
    }
    if "+cluster://" in url:
        scheme, _, rest = url.partition("+cluster://")
        seeds = rest.split("/", 1)[0].split(",")
        from redis.asyncio.cluster import ClusterNode

        nodes = []
        for seed in seeds:
            host, _, port = seed.rpartition(":")
            nodes.append(ClusterNode(host or "127.0.0.1", int(port or 6379)))
        return RedisCluster(startup_nodes=nodes, ssl=scheme == "rediss", **common)
    return aioredis.Redis.from_url(url, retry=Retry(NoBackoff(), 0), **common)


def _order_key(row: ProfileRow) -> str:
    return f"{row.source_time_ms + _OFFSET:020d}{row.version + _OFFSET:020d}"


def _ms(t: float) -> str:
    return f"{min(int(t * 1000), NO_EXPIRY_MS):020d}"


def pack_profile(row: ProfileRow, expires_at: float) -> bytes:
    return (_order_key(row) + _ms(expires_at)).encode() + np.asarray(
        row.vector, dtype=np.float32
    ).tobytes()


def pack_profiles(rows: Sequence[ProfileRow], expires_ms: str) -> list[bytes]:
    """:func:`pack_profile` of many rows (the same expiry): the vectors converted
    to float32 bytes in one NumPy call."""
    if not rows:
        return []
    data = np.asarray([r.vector for r in rows], dtype=np.float32).tobytes()
    width = len(data) // len(rows)
    tail = expires_ms.encode()
    return [b"%020d%020d%s%s" % (r.source_time_ms + _OFFSET, r.version + _OFFSET, tail,
                                 data[i * width:(i + 1) * width])
            for i, r in enumerate(rows)]


def unpack_profile(key: str, blob: bytes) -> tuple[ProfileRow, float]:
    head = blob[:_HEAD].decode()
    row = ProfileRow(
        key=key,
        vector=np.frombuffer(blob[_HEAD:], dtype=np.float32).copy(),
        version=int(head[20:40]) - _OFFSET,
        source_time_ms=int(head[:20]) - _OFFSET,
    )
    return row, int(head[40:60]) / 1000.0


# KEYS: profile keys..., feed, id index (agent profiles: a set of their ids; the
# feed again for customers, who get no index), tombstones (customers; the feed
# again for agents). ARGV: now (20 digits), feed kind, ids joined by \n, ttl ms
# (0 = none), source times (ms) joined by \n (customers; empty for agents), then
# per key its blob. Writes every row that is newer than the live stored one (and
# than an earlier row of the same key in the call) and, for a customer, than the
# tombstone of a deletion (the replica checks its own copy of the tombstones
# first, but that copy follows the feed: one that lags would let an old upload
# bring deleted data back); returns the 1-based positions of the stale rows,
# negative for those a tombstone refused. One feed event lists the ids written.
# (SET ... GET: one call per row; a stale row's key gets its stored value back,
# with the time to live its expiry leaves.)
_UPSERT = """
local n = #KEYS - 3
local now = ARGV[1]
local ttl = tonumber(ARGV[4])
local stale = {}
local ids = {}
for id in string.gmatch(ARGV[3], '[^\\n]+') do ids[#ids + 1] = id end
local sources = {}
for t in string.gmatch(ARGV[5], '[^\\n]+') do sources[#sources + 1] = tonumber(t) end
local tombs = {}
if #sources > 0 and redis.call('EXISTS', KEYS[n + 3]) == 1 then
  tombs = redis.call('HMGET', KEYS[n + 3], unpack(ids))
end
local changed = {}
local listed = {}
for i = 1, n do
  local key, blob = KEYS[i], ARGV[5 + i]
  local tomb = tombs[i]
  if tomb and sources[i] <= tonumber(tomb) then
    stale[#stale + 1] = -i  -- deleted after this row's source time: not written
  else
    -- Write, getting what was there in the same call (rows are mostly newer) ...
    local old
    if ttl > 0 then
      old = redis.call('SET', key, blob, 'PX', ttl, 'GET')
    else
      old = redis.call('SET', key, blob, 'GET')
    end
    local until_ms = old and string.sub(old, 41, 60)
    if old and until_ms > now and string.sub(blob, 1, 40) <= string.sub(old, 1, 40) then
      -- ... and put a live row that is as new or newer back as it was.
      if until_ms == '%020d' then
        redis.call('SET', key, old)
      else
        redis.call('SET', key, old, 'PX', math.max(1, tonumber(until_ms) - tonumber(now)))
      end
      stale[#stale + 1] = i
    elseif not listed[key] then
      listed[key] = true
      changed[#changed + 1] = ids[i]
    end
  end
end
if #changed > 0 and KEYS[n + 2] ~= KEYS[n + 1] then
  redis.call('SADD', KEYS[n + 2], unpack(changed))
end
if #changed > 0 then
  redis.call('XADD', KEYS[n + 1], 'MAXLEN', '~', %d, '*', 'k', ARGV[2],
             'ids', table.concat(changed, '\\n'))
end
return stale
""" % (NO_EXPIRY_MS, FEED_MAXLEN)
UPSERT_CHUNK = 1000  # rows per script call (Redis runs one call at a time)
UPSERT_WINDOW = 4  # chunks of one upsert in flight at once

# KEYS: decision. ARGV: outcomes JSON, now ms. Merges outcomes; 0 when unknown
# or past its (logical) expiry.
_OUTCOME = """
local raw = redis.call('GET', KEYS[1])
if not raw then return 0 end
local rec = cjson.decode(raw)
if tonumber(rec['x']) <= tonumber(ARGV[2]) then return 0 end
for k, v in pairs(cjson.decode(ARGV[1])) do rec['o'][k] = v end
redis.call('SET', KEYS[1], cjson.encode(rec), 'KEEPTTL')
return 1
"""

# KEYS: active, feed. ARGV: version. Activates and tells every replica.
_ACTIVATE = """
redis.call('SET', KEYS[1], ARGV[1])
redis.call('XADD', KEYS[2], 'MAXLEN', '~', %d, '*', 'k', 'model', 'ids', ARGV[1])
return 1
""" % FEED_MAXLEN


# KEYS: profile, the customer's decision index, the decision index, feed, the
# decision key prefix. ARGV: digest. Erases the profile and every decision of the
# customer; returns how many records went.
_PURGE = """
local n = redis.call('DEL', KEYS[1])
for _, id in ipairs(redis.call('SMEMBERS', KEYS[2])) do
  n = n + redis.call('DEL', KEYS[5] .. id)
  redis.call('ZREM', KEYS[3], id)
end
redis.call('DEL', KEYS[2])
redis.call('XADD', KEYS[4], 'MAXLEN', '~', %d, '*', 'k', 'cp', 'ids', ARGV[1])
return n
""" % FEED_MAXLEN


class LuaScript:
    """A Lua script run by EVALSHA on the store's :class:`~pairline.stores.lane.Lane`
    when it has one (loaded by EVAL the first time a Redis does not know it, as
    after a restart), else through redis-py (Cluster, TLS)."""

    def __init__(self, store: RedisStore, body: str) -> None:
        self.store = store
        self.body = body
        self.sha = hashlib.sha1(body.encode()).hexdigest()
        self.script = store.r.register_script(body)

    async def __call__(self, keys: Sequence[str], args: Sequence[Any]) -> Any:
        lane = self.store.lane
        if lane is None:
            return await self.script(keys=keys, args=args)
        try:
            return await lane.call("EVALSHA", self.sha, len(keys), *keys, *args)
        except NoScriptError:
            return await lane.call("EVAL", self.body, len(keys), *keys, *args)


def record_json(record: DecisionRecord, decision: str | None = None) -> bytes:
    """A decision record as stored: ``d`` the decision's fields as a JSON array in
    ``DECISION_FIELDS`` order (``decision``: that array already encoded), ``c`` the
    customer digest, ``x`` the expiry in ms, ``ctx`` the context pairs, ``o`` the
    outcomes, ``pm`` the source time of the customer profile used (ms, 0: none)."""
    if decision is None:
        decision = wire_json(decision_values(record.decision))
    # cjson turns an empty object into an empty array: "o" keeps one key.
    outcomes = wire_json({"": 0, **record.outcomes}) if record.outcomes else '{"":0}'
    digest = wire_json(record.customer_digest)
    context = wire_json(record.context)  # (key, value) pairs: JSON arrays
    return (f'{{"d":{decision},"c":{digest},"x":{int(record.expires_at * 1000)},'
            f'"ctx":{context},"o":{outcomes},"pm":{int(record.profile_ms)}}}').encode()


def _record_of(raw: bytes) -> DecisionRecord:
    rec = json.loads(raw)
    outcomes = rec["o"] if isinstance(rec["o"], dict) else {}
    outcomes.pop("", None)
    d = rec["d"]
    if not isinstance(d, dict):  # (an object in records written before the array)
        d = dict(zip(DECISION_FIELDS, d, strict=True))
    return DecisionRecord(
        decision=Decision.of(d),
        customer_digest=rec["c"],
        outcomes={k: float(v) for k, v in outcomes.items()},
        expires_at=rec["x"] / 1000.0,
        context=tuple((str(k), float(v)) for k, v in rec["ctx"]),
        profile_ms=int(rec.get("pm", 0)),
    )


Listener = Callable[[str, str, Mapping[bytes, bytes]], Awaitable[None] | None]


class RedisStore:
    """The Store protocol on Redis (or Redis Cluster). ``dims`` gives each tenant's
    (customer_dim, agent_dim), which model files are checked against."""

    def __init__(
        self,
        client: Any,
        dims: Mapping[str, tuple[int, int]],
        *,
        cache_size: int = 100_000,
        profile_ttl_s: Mapping[str, float] | None = None,
    ) -> None:
        self.r = client
        self.dims = dict(dims)
        # The clients' socket timeout: no Redis call waits longer. (Calls are never
        # cancelled from outside: redis-py's cluster client can reuse a connection
        # that a cancellation closed.)
        self.timeout_s = 0.5
        # The routing path's own connection (single Redis only; None: redis-py).
        self.lane = Lane.for_client(client, self.timeout_s)
        self.cache_size = cache_size
        # Agent profiles live as long as the tenant's profile retention.
        self.profile_ttl_s = dict(profile_ttl_s or {})
        self._upsert = LuaScript(self, _UPSERT)
        self._outcome = client.register_script(_OUTCOME)
        self._activate = client.register_script(_ACTIVATE)
        self._purge = client.register_script(_PURGE)
        # digest -> row or None (known absent); bounded, least recently used out.
        self._cache: dict[str, OrderedDict[str, tuple[ProfileRow, float] | None]] = {
            t: OrderedDict() for t in self.dims
        }
        # Cache misses in flight, per (tenant, digest), and those among them whose
        # profile changed (or was dropped) meanwhile: their reply may predate the
        # change, so it is not cached (see get_customer_profile).
        self._reading: dict[tuple[str, str], int] = {}
        self._changed: set[tuple[str, str]] = set()
        self.hits = 0
        self.misses = 0

    @classmethod
    def from_url(
        cls, url: str, dims: Mapping[str, tuple[int, int]], *, timeout_s: float = 0.5, **kw: Any
    ) -> RedisStore:
        store = cls(connect(url, timeout_s), dims, **kw)
        store.timeout_s = timeout_s
        if store.lane is not None:
            store.lane.timeout_s = timeout_s
        return store

    async def close(self) -> None:
        if self.lane is not None:
            self.lane.close()
        with contextlib.suppress(RedisError, RuntimeError):
            await self.r.aclose()

    async def get(self, key: str) -> bytes | None:
        """GET on the lane when there is one."""
        if self.lane is None:
            return await self.r.get(key)  # type: ignore[no-any-return]
        return await self.lane.call("GET", key)  # type: ignore[no-any-return]

    async def mget(self, keys: Sequence[str]) -> list[bytes | None]:
        """MGET (keys of one tenant: one slot) on the lane when there is one."""
        if not keys:
            return []
        if self.lane is None:
            return await self.r.mget(keys)  # type: ignore[no-any-return]
        return await self.lane.call("MGET", *keys)  # type: ignore[no-any-return]

    @staticmethod
    def key(tenant: str, *parts: str) -> str:
        return ":".join(("pl", "{" + tenant + "}", *parts))

    # --------------------------------------------------------------- profiles
    async def _write_profiles(
        self, tenant: str, kind: str, rows: Sequence[ProfileRow], ttl_s: float, now: float
    ) -> list[int]:
        """Upsert ``rows`` in calls of UPSERT_CHUNK rows; on the lane they are
        pipelined on one connection, so Redis runs them in order (a later row of a
        key is compared against what an earlier chunk wrote, as in one call)."""
        if not rows:
            return []
        expires = now + ttl_s if ttl_s > 0 else NO_EXPIRY_MS / 1000.0
        ttl_ms = str(max(1, int(ttl_s * 1000))) if ttl_s > 0 else "0"
        tail = _ms(now) + _ms(expires)  # (now is only for the script; see below)
        feed = self.key(tenant, "feed")
        index = self.key(tenant, "aps") if kind == "ap" else feed
        tomb = self.key(tenant, "tomb") if kind == "cp" else feed
        prefix = self.key(tenant, kind, "")

        def call(lo: int) -> Awaitable[Any]:
            chunk = rows[lo:lo + UPSERT_CHUNK]
            ids = [r.key for r in chunk]
            keys = [prefix + k for k in ids]
            keys += [feed, index, tomb]
            sources = "\n".join([str(r.source_time_ms) for r in chunk]) if kind == "cp" else ""
            argv: list[bytes | str] = [tail[:20], kind, "\n".join(ids), ttl_ms, sources]
            argv += pack_profiles(chunk, tail[20:])
            return self._upsert(keys, argv)  # type: ignore[no-any-return]

        starts = range(0, len(rows), UPSERT_CHUNK)
        if self.lane is not None:
            # A few chunks in flight at a time: Redis works on one while the next
            # is packed, and no call waits long behind the others (timeout).
            replies: list[Any] = []
            for i in range(0, len(starts), UPSERT_WINDOW):
                replies += await asyncio.gather(*(call(lo) for lo in
                                                  starts[i:i + UPSERT_WINDOW]))
        else:  # separate connections: one call after the other keeps the order
            replies = [await call(lo) for lo in starts]
        if kind == "cp":
            self.forget(tenant, (r.key for r in rows))
        # (a tombstone's refusals come negative: stale all the same)
        return sorted(abs(int(i)) - 1 + lo for lo, stale in zip(starts, replies, strict=True)
                      for i in stale)

    async def upsert_customer_profiles(
        self, tenant: str, rows: Sequence[ProfileRow], ttl_s: float, now: float
    ) -> list[int]:
        return await self._write_profiles(tenant, "cp", rows, ttl_s, now)

    async def get_customer_profile(self, tenant: str, digest: str, now: float) -> ProfileRow | None:
        cache = self._cache.setdefault(tenant, OrderedDict())
        if digest in cache:
            self.hits += 1
            cache.move_to_end(digest)
            entry = cache[digest]
        else:
            self.misses += 1
            entry = await self._read_profile(tenant, digest)
            if (tenant, digest) in self._changed:
                # The profile changed or was deleted while the read was out (the
                # feed said so, or this replica wrote it): the reply may be from
                # before. Read it again, and keep neither in the cache.
                entry = await self._read_profile(tenant, digest)
                if (tenant, digest) not in self._reading:
                    self._changed.discard((tenant, digest))
            else:
                cache[digest] = entry
                if len(cache) > self.cache_size:
                    cache.popitem(last=False)
        if entry is None or entry[1] <= now:
            return None
        return entry[0]

    async def _read_profile(self, tenant: str, digest: str) -> tuple[ProfileRow, float] | None:
        """A customer profile from Redis, counted as in flight while it is read."""
        key = (tenant, digest)
        self._reading[key] = self._reading.get(key, 0) + 1
        try:
            blob = await self.get(self.key(tenant, "cp", digest))
        finally:
            if self._reading[key] == 1:
                del self._reading[key]
            else:
                self._reading[key] -= 1
        return unpack_profile(digest, blob) if blob else None

    def forget_all(self, tenant: str) -> None:
        """Drop every cached customer profile of ``tenant``."""
        cache = self._cache.get(tenant)
        if cache is not None:
            cache.clear()
        self._changed.update(k for k in self._reading if k[0] == tenant)

    def forget(self, tenant: str, digests: Iterable[str]) -> None:
        """Drop cached profiles (a change-feed event said they changed)."""
        cache = self._cache.get(tenant)
        reading, changed = self._reading, self._changed
        for d in digests:
            if cache is not None:
                cache.pop(d, None)
            if reading and (tenant, d) in reading:
                changed.add((tenant, d))

    async def upsert_agent_profiles(
        self, tenant: str, rows: Sequence[ProfileRow], now: float
    ) -> list[int]:
        return await self._write_profiles(
            tenant, "ap", rows, self.profile_ttl_s.get(tenant, 0.0), now
        )

    async def get_agent_profile(self, tenant: str, agent_id: str) -> ProfileRow | None:
        blob = await self.r.get(self.key(tenant, "ap", agent_id))
        return unpack_profile(agent_id, blob)[0] if blob else None

    async def agent_profiles(self, tenant: str, agent_ids: Sequence[str]) -> dict[str, ProfileRow]:
        """Several agent profiles in one round trip (replica start, feed events)."""
        if not agent_ids:
            return {}
        blobs = await self.r.mget([self.key(tenant, "ap", a) for a in agent_ids])
        return {
            a: unpack_profile(a, b)[0] for a, b in zip(agent_ids, blobs, strict=True) if b
        }

    async def all_agent_profiles(self, tenant: str) -> dict[str, ProfileRow]:
        ids = sorted(a.decode() for a in await self.r.smembers(self.key(tenant, "aps")))
        out: dict[str, ProfileRow] = {}
        for i in range(0, len(ids), 1000):
            out.update(await self.agent_profiles(tenant, ids[i:i + 1000]))
        return out

    # ----------------------------------------------------------------- models
    def _model(self, tenant: str, raw: bytes) -> Model:
        cdim, adim = self.dims[tenant]
        return load_model(raw, customer_dim=cdim, agent_dim=adim)

    async def put_model(self, tenant: str, model: Model) -> None:
        await self.r.set(self.key(tenant, "model", model.version), model.raw)
        await self.r.sadd(self.key(tenant, "models"), model.version)

    async def get_model(self, tenant: str, version: str) -> Model | None:
        raw = await self.r.get(self.key(tenant, "model", version))
        return self._model(tenant, raw) if raw else None

    async def list_models(self, tenant: str) -> list[Model]:
        versions = sorted(v.decode() for v in await self.r.smembers(self.key(tenant, "models")))
        models = [await self.get_model(tenant, v) for v in versions]
        return [m for m in models if m is not None]

    async def set_active_model(self, tenant: str, version: str) -> None:
        await self._activate(
            keys=[self.key(tenant, "active"), self.key(tenant, "feed")], args=[version]
        )

    async def active_model_version(self, tenant: str) -> str:
        v = await self.r.get(self.key(tenant, "active"))
        return v.decode() if v else ""

    # -------------------------------------------------------------- decisions
    async def record_decision(self, tenant: str, record: DecisionRecord) -> None:
        now = record.decision.decided_at
        ttl_ms = max(1, int((record.expires_at - now) * 1000))
        did = record.decision.decision_id
        index = self.key(tenant, "decs")
        async with self.r.pipeline(transaction=False) as p:
            p.set(self.key(tenant, "dec", did), record_json(record), px=ttl_ms)
            p.zadd(index, {did: record.expires_at})
            p.pexpire(index, ttl_ms)
            if record.customer_digest:  # for erasure: the customer's decisions
                by_customer = self.key(tenant, "cd", record.customer_digest)
                p.sadd(by_customer, did)
                p.pexpire(by_customer, ttl_ms)
            await p.execute()

    async def get_decision(
        self, tenant: str, decision_id: str, now: float
    ) -> DecisionRecord | None:
        raw = await self.r.get(self.key(tenant, "dec", decision_id))
        if not raw:
            return None
        record = _record_of(raw)
        return record if record.expires_at > now else None

    async def record_outcome(
        self, tenant: str, decision_id: str, outcomes: Mapping[str, float], now: float
    ) -> bool:
        done = await self._outcome(
            keys=[self.key(tenant, "dec", decision_id)],
            args=[json.dumps(dict(outcomes)), int(now * 1000)],
        )
        return bool(done)

    async def decisions(self, tenant: str, now: float) -> list[DecisionRecord]:
        ids = await self.r.zrangebyscore(self.key(tenant, "decs"), f"({now}", "+inf")
        out: list[DecisionRecord] = []
        for i in range(0, len(ids), 1000):
            chunk = [self.key(tenant, "dec", x.decode()) for x in ids[i : i + 1000]]
            for raw in await self.r.mget(chunk):
                if raw:
                    record = _record_of(raw)
                    if record.expires_at > now:
                        out.append(record)
        out.sort(key=lambda r: r.decision.decided_at)
        return out

    async def purge_customer(self, tenant: str, digest: str) -> int:
        """Erase the customer's profile and decisions (one script; safe to repeat);
        replicas drop their cached copy (feed)."""
        return int(await self._purge(
            keys=[self.key(tenant, "cp", digest), self.key(tenant, "cd", digest),
                  self.key(tenant, "decs"), self.key(tenant, "feed"),
                  self.key(tenant, "dec", "")],
            args=[digest],
        ))

    async def sweep(self, now: float) -> int:
        """Redis expires the records by itself; this trims the decision indexes."""
        dropped = 0
        for tenant in self.dims:
            dropped += int(
                await self.r.zremrangebyscore(self.key(tenant, "decs"), "-inf", now)
            )
        return dropped

    # ------------------------------------------------------------ change feed
    async def feed_tail(self, tenant: str) -> str:
        """The id of the newest feed event (``0-0`` when there is none)."""
        info = await self.r.xrevrange(self.key(tenant, "feed"), count=1)
        return info[0][0].decode() if info else "0-0"


# KEYS: the fence, the feed. ARGV: the fence's value, its ttl ms, the feed id to
# read from (exclusive), how many events at most.
_FENCE = """
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return redis.call('XRANGE', KEYS[2], ARGV[3], '+', 'COUNT', ARGV[4])
"""


class FeedFollower:
    """Follows every tenant's change feed and hands each event to ``listener``
    (tenant, kind, fields; profile and model events list their ids in ``ids``,
    joined by newlines), in order, from the last id applied. Reconnects by itself;
    ``lag_s`` is the age of the newest event applied when it was applied."""

    def __init__(self, store: RedisStore, listener: Listener, *, block_ms: int = 200,
                 linger_s: float = FEED_LINGER_S) -> None:
        self.store = store
        self.listener = listener
        # After a read that found events, wait this long before the next one, so a
        # busy feed is read in batches (one round trip for many events) rather
        # than one read per event; it adds at most this to the propagation time.
        self.linger_s = linger_s
        # A blocked read must end well within the socket timeout (or it would
        # read as a dead Redis).
        self.block_ms = max(10, min(block_ms, int(store.timeout_s * 500)))
        self.last: dict[str, str] = {}
        self.floor: dict[str, str] = {}  # see skip_to
        self.lag_s = 0.0
        self.connected = True
        # Called for a tenant whose events this follower had not applied were
        # trimmed away (it was cut off longer than the feed keeps): the caller
        # rebuilds what the events would have told it.
        self.on_gap: Callable[[str], Awaitable[None]] | None = None
        self.gaps = 0
        self._checked_at = 0.0
        self._stopping = False
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Start from each feed's current end (the caller then loads the state)."""
        for tenant in self.store.dims:
            self.last[tenant] = await self.store.feed_tail(tenant)
        self._task = asyncio.create_task(self._run(), name="pairline-feed")

    async def stop(self) -> None:
        """Stop following (see :func:`pairline.aio.stop_task`)."""
        self._stopping = True
        task, self._task = self._task, None
        await stop_task(task)

    async def _read(self, lane: Lane) -> list[Any]:
        """One blocking XREAD of every tenant's feed on ``lane``, in redis-py's shape."""
        keys = [self.store.key(t, "feed") for t in self.last]
        got = await lane.call("XREAD", "COUNT", 500, "BLOCK", self.block_ms, "STREAMS",
                              *keys, *self.last.values())
        return [(stream, _fields(entries)) for stream, entries in got or ()]

    async def _run(self) -> None:
        r = self.store.r
        delay = 0.05
        lane = None
        if self.store.lane is not None:  # a connection of its own: the reads block
            lane = Lane(host=self.store.lane.host, port=self.store.lane.port,
                        path=self.store.lane.path, db=self.store.lane.db,
                        username=self.store.lane.username, password=self.store.lane.password,
                        timeout_s=self.store.timeout_s + self.block_ms / 1000.0)
        try:
            await self._loop(r, lane, delay)
        finally:
            if lane is not None:
                lane.close()

    async def _loop(self, r: Any, lane: Lane | None, delay: float) -> None:
        while not self._stopping:
            try:
                if lane is not None:
                    got = await self._read(lane)
                elif isinstance(r, RedisCluster):
                    # XREAD over several slots is not allowed: one tenant at a time.
                    got = []
                    per = max(1, self.block_ms // max(1, len(self.last)))
                    for tenant, last in self.last.items():
                        got += await r.xread({self.store.key(tenant, "feed"): last},
                                             count=500, block=per) or []
                else:
                    streams = {self.store.key(t, "feed"): last for t, last in self.last.items()}
                    got = await r.xread(streams, count=500, block=self.block_ms) or []
                reconnected = not self.connected
                self.connected = True
                delay = 0.05
                for stream, entries in got:
                    tenant = stream.decode().split("{", 1)[1].split("}", 1)[0]
                    for entry_id, fields in entries:
                        await self._apply(tenant, entry_id.decode(), fields)
                if reconnected or time.monotonic() - self._checked_at >= GAP_CHECK_S:
                    await self.check_gaps()  # (back from a disconnection, or periodic)
                if got and self.linger_s > 0:
                    await asyncio.sleep(self.linger_s)
            except asyncio.CancelledError:
                raise
            except (TimeoutError, RedisError, OSError) as exc:
                if self.connected:
                    log.warning("feed_disconnected", error=str(exc))
                self.connected = False
                await asyncio.sleep(delay)
                delay = min(delay * 2, 1.0)

    async def catch_up(self, tenant: str) -> None:
        """Apply every event of ``tenant`` up to now, without waiting for the loop
        (an operation needs the latest state before it can conclude)."""
        stream = self.store.key(tenant, "feed")
        lane = self.store.lane
        while True:
            if lane is not None:
                raw = await lane.call("XREAD", "COUNT", 1000, "STREAMS", stream, self.last[tenant])
                entries = _fields(raw[0][1]) if raw else []
            else:
                got = await self.store.r.xread({stream: self.last[tenant]}, count=1000)
                entries = got[0][1] if got else []
            for entry_id, fields in entries:
                await self._apply(tenant, entry_id.decode(), fields)
            if len(entries) < 1000:
                return

    async def fence(self, tenant: str, key: str, value: str, ttl_ms: int,
                    timeout_s: float) -> None:
        """Set ``key`` (the fence that stops the other replicas' commits) and apply
        every event of ``tenant`` up to it, read by the same script: nothing can
        come between the two (see :class:`pairline.stores.shared.SharedRouting`).
        Redis may take up to ``timeout_s`` to answer (it is slow: that is why)."""
        args = (2, key, self.store.key(tenant, "feed"), value, ttl_ms,
                f"({self.last[tenant]}", 1000)
        lane = self.store.lane
        if lane is not None:  # (connected already: no handshake through a slow Redis)
            raw = await lane.call("EVAL", _FENCE, *args, timeout_s=timeout_s)
        else:
            async with asyncio.timeout(timeout_s):
                raw = await self.store.r.eval(_FENCE, *args)
        entries = _fields(raw)
        for entry_id, fields in entries:
            await self._apply(tenant, entry_id.decode(), fields)
        if len(entries) >= 1000:
            await self.catch_up(tenant)

    async def check_gaps(self) -> None:
        """Trim every feed to its retention, then find the tenants whose events this
        follower may not have applied yet were trimmed, and hand them to ``on_gap``.
        Trimming takes the oldest entries, so that is when entries were ever trimmed
        and the oldest one left (or, with none left, the last one added) is later
        than the last one applied here. (Rarely, that was the very next event and
        nothing is lost: a rebuild then costs only time.)"""
        self._checked_at = time.monotonic()
        cutoff_ms = int((time.time() - FEED_RETENTION_S) * 1000)
        for tenant in list(self.last):
            key = self.store.key(tenant, "feed")
            try:
                await self.store.r.xtrim(key, minid=f"{cutoff_ms}-0", approximate=True)
                info = await self.store.r.xinfo_stream(key)
            except ResponseError:
                continue  # no feed yet
            if int(info.get("entries-added") or 0) <= int(info.get("length") or 0):
                continue  # nothing was ever trimmed
            first = info.get("first-entry")
            oldest = first[0] if first else info.get("last-generated-id") or b"0-0"
            oldest = oldest.decode() if isinstance(oldest, bytes) else str(oldest)
            last = self.last[tenant]
            if _later(oldest, last) == last:
                continue
            self.gaps += 1
            log.warning("feed_gap", tenant=tenant, last=last, oldest=oldest)
            if self.on_gap is not None:
                try:
                    await self.on_gap(tenant)
                except (TimeoutError, RedisError, OSError):
                    raise  # (the loop retries; the gap is found again)
                except Exception:  # a bad record must not stop the feed: next check
                    log.exception("feed_gap_reload_failed", tenant=tenant)
                    continue
            if not first:  # (with entries left, the rebuild moved past them)
                self.last[tenant] = _later(self.last[tenant], oldest)

    def skip_to(self, tenant: str, entry_id: str) -> None:
        """Apply no routing snapshot up to ``entry_id`` of ``tenant`` any more (the
        caller read the routing state they made), also one already read and not yet
        applied. The other events up to there (opt-outs, deletions, profiles,
        models) are still applied: the caller did not read what they changed."""
        self.floor[tenant] = entry_id

    async def _apply(self, tenant: str, entry_id: str, fields: Mapping[bytes, bytes]) -> None:
        k = fields.get(b"k", b"")
        if self.floor and k == b"snap":
            floor = self.floor.get(tenant)
            if floor is not None and _later(floor, entry_id) == floor:
                # (up to the floor: what it changed was read since)
                self.last[tenant] = _later(self.last[tenant], entry_id)
                return
        kind = "snap" if k == b"snap" else k.decode()
        try:
            result = self.listener(tenant, kind, fields)
            if result is not None:
                await result
        except (RedisError, OSError):
            raise  # retried from the same id
        except Exception:  # a bad event must not stop the feed
            log.exception("feed_event_failed", tenant=tenant, kind=kind)
        self.last[tenant] = _later(self.last[tenant], entry_id)
        self.lag_s = max(0.0, time.time() - int(entry_id.partition("-")[0]) / 1000.0)


def _fields(entries: list[Any]) -> list[tuple[bytes, dict[bytes, bytes]]]:
    """Stream entries as hiredis gives them (id, flat field list) -> (id, dict)."""
    return [(eid, dict(zip(f[::2], f[1::2], strict=True))) for eid, f in entries]


def _later(a: str, b: str) -> str:
    """The later of two stream ids."""
    ta, _, sa = a.partition("-")
    tb, _, sb = b.partition("-")
    return a if (int(ta), int(sa or 0)) >= (int(tb), int(sb or 0)) else b


__all__ = ["FeedFollower", "RedisStore", "ResponseError", "connect"]
