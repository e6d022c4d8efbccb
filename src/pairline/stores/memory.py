"""The embedded store: everything in this process's memory.

Every method completes without suspending, so each is atomic on the event loop.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from pairline.model import Model
from pairline.stores.base import DecisionRecord, ProfileRow


class _Tenant:
    __slots__ = ("active", "agents", "customers", "decisions", "models", "next_expiry")

    def __init__(self) -> None:
        self.customers: dict[str, tuple[ProfileRow, float]] = {}  # digest -> (row, expires_at)
        self.agents: dict[str, ProfileRow] = {}
        self.models: dict[str, Model] = {}
        self.active = ""
        # Insertion order is decision time order, so expiry pops from the front.
        self.decisions: dict[str, DecisionRecord] = {}
        # No customer profile expires before this: the sweep skips the O(n) scan.
        self.next_expiry = float("inf")


class MemoryStore:
    def __init__(self, max_decisions: int = 1_000_000) -> None:
        """``max_decisions`` bounds the decisions kept per tenant (oldest dropped
        first), so a busy embedded server cannot grow without limit before the
        retention time runs out."""
        self._tenants: dict[str, _Tenant] = {}
        self.max_decisions = max_decisions

    def _t(self, tenant: str) -> _Tenant:
        t = self._tenants.get(tenant)
        if t is None:
            t = self._tenants[tenant] = _Tenant()
        return t

    @staticmethod
    def _upsert(
        table: dict[str, ProfileRow], rows: Sequence[ProfileRow]
    ) -> tuple[list[int], dict[str, ProfileRow]]:
        stale: list[int] = []
        winners: dict[str, ProfileRow] = {}
        for i, row in enumerate(rows):
            current = winners.get(row.key) or table.get(row.key)
            if current is not None and not row.newer_than(current):
                stale.append(i)
            else:
                winners[row.key] = row
        return stale, winners

    async def upsert_customer_profiles(
        self, tenant: str, rows: Sequence[ProfileRow], ttl_s: float, now: float
    ) -> list[int]:
        t = self._t(tenant)
        table = {r.key: t.customers[r.key][0] for r in rows if self._live(t, r.key, now)}
        stale, winners = self._upsert(table, rows)
        for key, row in winners.items():
            t.customers[key] = (row, now + ttl_s)
        if winners:
            t.next_expiry = min(t.next_expiry, now + ttl_s)
        return stale

    @staticmethod
    def _live(t: _Tenant, digest: str, now: float) -> bool:
        entry = t.customers.get(digest)
        return entry is not None and entry[1] > now

    async def get_customer_profile(self, tenant: str, digest: str, now: float) -> ProfileRow | None:
        entry = self._t(tenant).customers.get(digest)
        if entry is None or entry[1] <= now:
            return None
        return entry[0]

    async def upsert_agent_profiles(
        self, tenant: str, rows: Sequence[ProfileRow], now: float
    ) -> list[int]:
        t = self._t(tenant)
        stale, winners = self._upsert(t.agents, rows)
        t.agents.update(winners)
        return stale

    async def get_agent_profile(self, tenant: str, agent_id: str) -> ProfileRow | None:
        return self._t(tenant).agents.get(agent_id)

    async def put_model(self, tenant: str, model: Model) -> None:
        self._t(tenant).models[model.version] = model

    async def get_model(self, tenant: str, version: str) -> Model | None:
        return self._t(tenant).models.get(version)

    async def list_models(self, tenant: str) -> list[Model]:
        return list(self._t(tenant).models.values())

    async def set_active_model(self, tenant: str, version: str) -> None:
        self._t(tenant).active = version

    async def active_model_version(self, tenant: str) -> str:
        return self._t(tenant).active

    async def record_decision(self, tenant: str, record: DecisionRecord) -> None:
        decisions = self._t(tenant).decisions
        decisions[record.decision.decision_id] = record
        if len(decisions) > self.max_decisions:
            del decisions[next(iter(decisions))]

    async def get_decision(
        self, tenant: str, decision_id: str, now: float
    ) -> DecisionRecord | None:
        record = self._t(tenant).decisions.get(decision_id)
        if record is None or record.expires_at <= now:
            return None
        return record

    async def record_outcome(
        self, tenant: str, decision_id: str, outcomes: Mapping[str, float], now: float
    ) -> bool:
        record = await self.get_decision(tenant, decision_id, now)
        if record is None:
            return False
        record.outcomes.update(outcomes)
        return True

    async def decisions(self, tenant: str, now: float) -> list[DecisionRecord]:
        return [r for r in self._t(tenant).decisions.values() if r.expires_at > now]

    async def sweep(self, now: float) -> int:
        dropped = 0
        for t in self._tenants.values():
            while t.decisions:
                first = next(iter(t.decisions.values()))
                if first.expires_at > now:
                    break
                del t.decisions[first.decision.decision_id]
                dropped += 1
            if t.next_expiry > now:
                continue
            gone = [k for k, (_, exp) in t.customers.items() if exp <= now]
            for k in gone:
                del t.customers[k]
            dropped += len(gone)
            t.next_expiry = min((exp for _, exp in t.customers.values()), default=float("inf"))
        return dropped

    async def purge_customer(self, tenant: str, digest: str) -> int:
        t = self._t(tenant)
        gone = [k for k, r in t.decisions.items() if r.customer_digest == digest]
        for k in gone:
            del t.decisions[k]
        return len(gone) + (t.customers.pop(digest, None) is not None)
