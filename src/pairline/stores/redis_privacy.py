"""The privacy ledger on Redis: shared by every replica, told to all of them.

Keys of tenant ``T`` (one hash tag, one script per write):

=========================  ==============================================  ===========
key                        value                                           TTL
=========================  ==============================================  ===========
``pl:{T}:optouts``         set of opted-out customer digests               none: the
                                                                           promise lasts
``pl:{T}:tickets``         hash: ticket id -> ticket JSON                  none: proof of
                                                                           erasure
``pl:{T}:open``            set of ticket ids not yet completed             none
``pl:{T}:tomb``            hash: digest -> deletion time (ms)              none: refuses
                                                                           stale uploads
``pl:{T}:audit``           sorted set: audit entry JSON by sequence        none: audit
``pl:{T}:auditseq``        the last audit sequence number                  none
``pl:{T}:secret``          id of the tenant's secret last recorded         none
``pl:ledger-tenants``      tenants with records (for the worker at start)  none
=========================  ==============================================  ===========

These hold digests, ticket ids and times only, never a raw key; they are the
records the design keeps without a time limit (see the README).

Each write is one Lua script that changes the record (a completed ticket is
final: the script refuses to replace it, so of two replicas' workers carrying
out one ticket exactly one completes it), appends its audit entries
with the tenant's next sequence numbers, and puts an event on the tenant's change
feed (``oo``: opt-outs changed; ``del``: a tombstone set), so every replica applies
it within the feed's latency. Durable when acknowledged as far as Redis is: with
``appendonly yes`` and ``appendfsync always`` (the suite's Redis runs so), an
acknowledged write survives SIGKILL of Redis. A Redis error is raised as OSError:
the privacy service answers UNAVAILABLE and the caller retries.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict
from typing import Any

from redis.exceptions import RedisError

from pairline.stores.privacy import AuditEntry, Ticket
from pairline.stores.redis import FEED_MAXLEN, RedisStore

# KEYS: optouts, tickets, open, tomb, audit, auditseq, secret, feed.
# ARGV: kind, payload JSON, audit entries JSON (a list).
_WRITE = """
local kind = ARGV[1]
local p = cjson.decode(ARGV[2])
if kind == 'opt_outs' then
  for _, d in ipairs(p['digests']) do
    if p['on'] then redis.call('SADD', KEYS[1], d) else redis.call('SREM', KEYS[1], d) end
  end
  if #p['digests'] > 0 then
    redis.call('XADD', KEYS[8], 'MAXLEN', '~', %(maxlen)d, '*', 'k', 'oo',
               'on', p['on'] and '1' or '0', 'ids', table.concat(p['digests'], '\\n'))
  end
elseif kind == 'ticket' then
  local t = p['ticket']
  local old = redis.call('HGET', KEYS[2], t['ticket_id'])
  if old and cjson.decode(old)['ticket']['status'] == 3 then
    return 0  -- a completed ticket is final
  end
  redis.call('HSET', KEYS[2], t['ticket_id'], ARGV[2])
  if t['status'] == 3 then
    redis.call('SREM', KEYS[3], t['ticket_id'])
  else
    redis.call('SADD', KEYS[3], t['ticket_id'])
  end
  if t['deleted_at_ms'] > 0 then
    local ds = {t['digest']}
    for _, a in ipairs(t['aliases']) do ds[#ds + 1] = a end
    for _, d in ipairs(ds) do
      local old = tonumber(redis.call('HGET', KEYS[4], d) or '0')
      if t['deleted_at_ms'] > old then redis.call('HSET', KEYS[4], d, t['deleted_at_ms']) end
    end
    redis.call('XADD', KEYS[8], 'MAXLEN', '~', %(maxlen)d, '*', 'k', 'del',
               'ms', t['deleted_at_ms'], 'ids', table.concat(ds, '\\n'))
  end
elseif kind == 'secret' then
  redis.call('SET', KEYS[7], p['secret_id'])
end
for _, a in ipairs(cjson.decode(ARGV[3])) do
  local seq = redis.call('INCR', KEYS[6])
  a['seq'] = seq
  redis.call('ZADD', KEYS[5], seq, cjson.encode(a))
end
return 1
""" % {"maxlen": FEED_MAXLEN}


class RedisLedger:
    """:class:`~pairline.stores.privacy.PrivacyLedger` on the Redis store's client."""

    def __init__(self, store: RedisStore) -> None:
        self.store = store
        self.r = store.r
        self._write_script = self.r.register_script(_WRITE)

    def _keys(self, tenant: str) -> list[str]:
        k = self.store.key
        return [k(tenant, "optouts"), k(tenant, "tickets"), k(tenant, "open"),
                k(tenant, "tomb"), k(tenant, "audit"), k(tenant, "auditseq"),
                k(tenant, "secret"), k(tenant, "feed")]

    async def _write(self, tenant: str, kind: str, payload: dict[str, Any],
                     audit: Sequence[AuditEntry]) -> bool:
        entries = [{k: v for k, v in asdict(a).items() if k != "seq"} for a in audit]
        try:
            await self.r.sadd("pl:ledger-tenants", tenant)
            done = await self._write_script(keys=self._keys(tenant), args=[
                kind, json.dumps(payload), json.dumps(entries) if entries else "[]"])
        except RedisError as exc:
            raise OSError(f"privacy ledger: {exc}") from exc
        return bool(done)

    async def _read(self, call: Any) -> Any:
        try:
            return await call
        except RedisError as exc:
            raise OSError(f"privacy ledger: {exc}") from exc

    async def set_opt_outs(
        self, tenant: str, digests: Sequence[str], opted_out: bool, audit: Sequence[AuditEntry]
    ) -> None:
        await self._write(tenant, "opt_outs", {"on": opted_out, "digests": list(digests)}, audit)

    async def opt_outs(self, tenant: str) -> set[str]:
        return {d.decode() for d in await self._read(
            self.r.smembers(self.store.key(tenant, "optouts")))}

    async def put_ticket(self, tenant: str, ticket: Ticket, audit: Sequence[AuditEntry]) -> bool:
        return await self._write(tenant, "ticket", {"ticket": ticket.to_json()}, audit)

    async def get_ticket(self, tenant: str, ticket_id: str) -> Ticket | None:
        raw = await self._read(self.r.hget(self.store.key(tenant, "tickets"), ticket_id))
        return Ticket.from_json(json.loads(raw)["ticket"]) if raw else None

    async def tickets(self, tenant: str) -> list[Ticket]:
        raws = await self._read(self.r.hvals(self.store.key(tenant, "tickets")))
        out = [Ticket.from_json(json.loads(r)["ticket"]) for r in raws]
        return sorted(out, key=lambda t: (t.received_at_ms, t.ticket_id))

    async def open_tickets(self, tenant: str) -> list[Ticket]:
        ids = sorted(i.decode() for i in await self._read(
            self.r.smembers(self.store.key(tenant, "open"))))
        if not ids:
            return []
        raws = await self._read(self.r.hmget(self.store.key(tenant, "tickets"), ids))
        out = [Ticket.from_json(json.loads(r)["ticket"]) for r in raws if r]
        return sorted((t for t in out if t.open), key=lambda t: (t.received_at_ms, t.ticket_id))

    async def tombstones(self, tenant: str) -> dict[str, int]:
        raw = await self._read(self.r.hgetall(self.store.key(tenant, "tomb")))
        return {k.decode(): int(v) for k, v in raw.items()}

    async def tombstones_of(self, tenant: str, digests: Sequence[str]) -> dict[str, int]:
        if not digests:
            return {}
        raw = await self._read(self.r.hmget(self.store.key(tenant, "tomb"), list(digests)))
        return {d: int(v) for d, v in zip(digests, raw, strict=True) if v is not None}

    async def append_audit(self, tenant: str, audit: Sequence[AuditEntry]) -> None:
        if audit:
            await self._write(tenant, "audit", {}, audit)

    async def audit(self, tenant: str, after_seq: int, limit: int) -> list[AuditEntry]:
        if limit <= 0:
            return []
        raws = await self._read(self.r.zrangebyscore(
            self.store.key(tenant, "audit"), f"({max(after_seq, 0)}", "+inf",
            start=0, num=limit))
        return [AuditEntry(**json.loads(r)) for r in raws]

    async def secret_id(self, tenant: str) -> str:
        v = await self._read(self.r.get(self.store.key(tenant, "secret")))
        return v.decode() if v else ""

    async def set_secret_id(self, tenant: str, secret_id: str, audit: Sequence[AuditEntry]) -> None:
        await self._write(tenant, "secret", {"secret_id": secret_id}, audit)

    async def tenants(self) -> list[str]:
        return sorted(t.decode() for t in await self._read(self.r.smembers("pl:ledger-tenants")))

    async def close(self) -> None:
        return None  # the store owns the connection
