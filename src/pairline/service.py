"""The service: orchestrates the store and the domain per RPC. Imports no gRPC.

Callers pass a tenant name (from the credential) and validated domain requests;
results are domain objects. Every routing method first expires timed-out
reservations, then reads and changes the tenant's routing state without
awaiting in between, so a decision is atomic on the event loop.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import structlog

from pairline.clock import Clock
from pairline.config import Settings, TenantConfig
from pairline.domain import (
    AgentStateRequest,
    AgentStatus,
    AgentView,
    ContactRequest,
    Decision,
    EndReason,
    EndResult,
    Mode,
    QueueStats,
    ReleaseReason,
)
from pairline.errors import AlreadyExists, InvalidArgument, NotFound
from pairline.model import Model, load_model
from pairline.privacy import Pseudonymiser
from pairline.routing import Agent, Contact, ContactState, TenantRouting
from pairline.stores.base import DecisionRecord, ProfileRow, Store

log = structlog.get_logger()

DAY_S = 86_400.0
MAX_BATCH = 10_000


@dataclass(frozen=True, slots=True)
class ProfileIn:
    """One profile as received: a customer key (raw) or an agent id, not yet checked
    against the tenant's dimensions."""

    key: str
    vector: Sequence[float]
    version: int
    source_time_ms: int


@dataclass(frozen=True, slots=True)
class UpsertOutcome:
    accepted: int
    stale: list[int]


class TenantRuntime:
    """Everything the service holds for one tenant."""

    __slots__ = ("config", "pseudo", "routing")

    def __init__(self, config: TenantConfig) -> None:
        self.config = config
        self.pseudo = Pseudonymiser(config.secret)
        self.routing = TenantRouting(max_waiting=config.max_waiting, max_agents=config.max_agents)


def _new_decision_id() -> str:
    return uuid.uuid4().hex


class Service:
    def __init__(self, settings: Settings, store: Store, clock: Clock) -> None:
        self.settings = settings
        self.store = store
        self.clock = clock
        self.tenants = {t.name: TenantRuntime(t) for t in settings.tenants}

    def _rt(self, tenant: str) -> TenantRuntime:
        return self.tenants[tenant]

    # ---------------------------------------------------------------- routing
    def _decide(
        self, rt: TenantRuntime, contact: Contact, agent: Agent, now: float
    ) -> Decision:
        """Reserve ``agent`` for ``contact`` and build the decision (no awaits)."""
        cfg = rt.config
        decision = Decision(
            decision_id=_new_decision_id(),
            mode=Mode.BASELINE,
            contact_id=contact.contact_id,
            agent_id=agent.agent_id,
            queue=contact.queue,
            channel=contact.channel,
            policy=cfg.policy,
            decided_at=now,
            expires_at=now + cfg.offer_timeout_s,
        )
        rt.routing.reserve(contact, agent, decision, now)
        return decision

    async def _record(self, tenant: str, rt: TenantRuntime, contact: Contact, d: Decision) -> None:
        ttl_s = rt.config.decision_ttl_days * DAY_S
        await self.store.record_decision(
            tenant, DecisionRecord(d, contact.digest, expires_at=d.decided_at + ttl_s)
        )
        log.debug(
            "contact_routed",
            tenant=tenant,
            decision_id=d.decision_id,
            mode=d.mode.name,
            agent=d.agent_id,
            queue=d.queue,
        )

    def _queued(self, contact: Contact, position: int, now: float) -> Decision:
        return Decision(
            decision_id="",
            mode=Mode.QUEUED,
            contact_id=contact.contact_id,
            agent_id="",
            queue=contact.queue,
            channel=contact.channel,
            policy="",
            decided_at=now,
            queue_position=position,
        )

    def _route(self, rt: TenantRuntime, contact: Contact, now: float) -> Decision | None:
        """Agent surplus: reserve the best eligible agent for ``contact``, if any."""
        index, rows = rt.routing.candidate_agents(contact, now)
        if rows.size == 0:
            return None
        best = index.baseline_order(rows)[0]
        agent_id = index.ids[int(best)]
        assert agent_id is not None
        return self._decide(rt, contact, rt.routing.agents[agent_id], now)

    async def route_contact(self, tenant: str, req: ContactRequest) -> Decision:
        rt = self._rt(tenant)
        now = self.clock.now()
        routing = rt.routing
        routing.expire(now)
        contact = routing.contacts.get(req.contact_id)
        if contact is not None:
            if contact.queue != req.queue or contact.channel != req.channel:
                raise AlreadyExists(
                    f"contact {req.contact_id!r} is live in queue {contact.queue!r} "
                    f"({contact.channel.name.lower()}); end it before routing it elsewhere"
                )
            if contact.state is not ContactState.WAITING:
                assert contact.decision is not None
                return contact.decision  # a retried call gets the same decision
            decision = self._route(rt, contact, now)  # a waiting contact: try again
            if decision is None:
                return self._queued(contact, routing.position(contact), now)
            await self._record(tenant, rt, contact, decision)
            return decision
        contact = routing.new_contact(
            req.contact_id,
            req.queue,
            req.channel,
            req.priority,
            rt.pseudo.digest(req.customer_key),
            req.context,
            req.min_proficiency,
            req.excluded_agent_ids,
            now,
        )
        decision = self._route(rt, contact, now)
        if decision is None:
            return self._queued(contact, routing.enqueue(contact), now)
        await self._record(tenant, rt, contact, decision)
        return decision

    async def agent_ready(self, tenant: str, agent_id: str) -> Decision:
        rt = self._rt(tenant)
        now = self.clock.now()
        routing = rt.routing
        routing.expire(now)
        agent = routing.agent_ready(agent_id, now)
        candidates = routing.candidate_contacts(agent, now, limit=1)
        if not candidates:
            return Decision(
                decision_id="",
                mode=Mode.QUEUED,
                contact_id="",
                agent_id=agent_id,
                queue="",
                channel=0,  # the agent waits for any channel it has capacity on
                policy="",
                decided_at=now,
            )
        contact = candidates[0]
        decision = self._decide(rt, contact, agent, now)
        await self._record(tenant, rt, contact, decision)
        return decision

    async def set_agent_state(self, tenant: str, req: AgentStateRequest) -> AgentView:
        rt = self._rt(tenant)
        now = self.clock.now()
        rt.routing.expire(now)
        wrap_s = req.wrap_up_s or rt.config.wrap_up_s
        rt.routing.set_agent_state(
            req.agent_id, req.status, req.queues, req.capacities, wrap_s, now
        )
        log.info("agent_state_set", tenant=tenant, agent=req.agent_id, status=req.status.name)
        return rt.routing.view(req.agent_id, now)

    async def get_agent_state(self, tenant: str, agent_id: str) -> AgentView:
        rt = self._rt(tenant)
        now = self.clock.now()
        rt.routing.expire(now)
        return rt.routing.view(agent_id, now)

    async def confirm(self, tenant: str, decision_id: str) -> Decision:
        rt = self._rt(tenant)
        rt.routing.expire(self.clock.now())
        return rt.routing.confirm(decision_id)

    async def release(
        self, tenant: str, decision_id: str, reason: ReleaseReason
    ) -> tuple[Decision, AgentStatus]:
        rt = self._rt(tenant)
        now = self.clock.now()
        rt.routing.expire(now)
        decision = rt.routing.release(decision_id, reason, now)
        return decision, rt.routing.agents[decision.agent_id].status(now)

    async def end_contact(
        self, tenant: str, contact_id: str, reason: EndReason, wrap_up_s: float
    ) -> EndResult:
        rt = self._rt(tenant)
        now = self.clock.now()
        rt.routing.expire(now)
        return rt.routing.end_contact(contact_id, reason, wrap_up_s or rt.config.wrap_up_s, now)

    async def report_outcome(
        self, tenant: str, decision_id: str, outcomes: dict[str, float]
    ) -> bool:
        if not await self.store.record_outcome(tenant, decision_id, outcomes, self.clock.now()):
            raise NotFound(f"decision {decision_id!r} is not known (or past retention)")
        return True

    def queue_stats(self, tenant: str, queue: str) -> list[QueueStats]:
        rt = self._rt(tenant)
        now = self.clock.now()
        rt.routing.expire(now)
        return rt.routing.queue_stats(queue or None, now)

    def expire_all(self) -> int:
        """Release timed-out reservations of every tenant (the periodic sweep)."""
        now = self.clock.now()
        return sum(len(rt.routing.expire(now)) for rt in self.tenants.values())

    async def sweep_retention(self) -> int:
        return await self.store.sweep(self.clock.now())

    # --------------------------------------------------------------- profiles
    @staticmethod
    def _rows(
        profiles: Sequence[ProfileIn], dim: int, field: str, key_of: object = None
    ) -> list[ProfileRow]:
        """Check every profile against ``dim`` before any is written."""
        if not profiles:
            raise InvalidArgument(field, "at least one profile is needed")
        if len(profiles) > MAX_BATCH:
            raise InvalidArgument(field, f"at most {MAX_BATCH} profiles per batch")
        rows = []
        for i, p in enumerate(profiles):
            if len(p.vector) != dim:
                raise InvalidArgument(
                    f"{field}[{i}].vector", f"has {len(p.vector)} values, expected {dim}"
                )
            vec = np.asarray(p.vector, dtype=np.float32)
            if not np.all(np.isfinite(vec)):
                raise InvalidArgument(f"{field}[{i}].vector", "has NaN or infinite values")
            key = key_of(p.key) if callable(key_of) else p.key
            rows.append(ProfileRow(key, vec, p.version, p.source_time_ms))
        return rows

    async def upsert_customer_profiles(
        self, tenant: str, profiles: Sequence[ProfileIn], field: str = "profiles"
    ) -> UpsertOutcome:
        rt = self._rt(tenant)
        rows = self._rows(profiles, rt.config.customer_dim, field, rt.pseudo.digest)
        ttl_s = rt.config.profile_ttl_days * DAY_S
        stale = await self.store.upsert_customer_profiles(tenant, rows, ttl_s, self.clock.now())
        return UpsertOutcome(len(rows) - len(stale), stale)

    async def upsert_agent_profiles(
        self, tenant: str, profiles: Sequence[ProfileIn]
    ) -> UpsertOutcome:
        rt = self._rt(tenant)
        rows = self._rows(profiles, rt.config.agent_dim, "profiles")
        stale = await self.store.upsert_agent_profiles(tenant, rows, self.clock.now())
        return UpsertOutcome(len(rows) - len(stale), stale)

    # ----------------------------------------------------------------- models
    async def upload_model(self, tenant: str, data: bytes, activate: bool) -> Model:
        cfg = self._rt(tenant).config
        model = load_model(data, customer_dim=cfg.customer_dim, agent_dim=cfg.agent_dim)
        existing = await self.store.get_model(tenant, model.version)
        if existing is not None and existing.raw != model.raw:
            raise AlreadyExists(
                f"model version {model.version!r} exists with other content; "
                "give the new model a new version"
            )
        if existing is None:
            await self.store.put_model(tenant, model)
        if activate:
            await self.store.set_active_model(tenant, model.version)
        log.info("model_uploaded", tenant=tenant, version=model.version, active=activate)
        return model

    async def activate_model(self, tenant: str, version: str) -> Model:
        model = await self.store.get_model(tenant, version)
        if model is None:
            raise NotFound(f"model version {version!r} was not uploaded")
        await self.store.set_active_model(tenant, version)
        log.info("model_activated", tenant=tenant, version=version)
        return model

    async def model_info(self, tenant: str) -> tuple[str, list[Model]]:
        active = await self.store.active_model_version(tenant)
        return active, await self.store.list_models(tenant)
