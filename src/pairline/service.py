"""The service: orchestrates the store and the domain per RPC. Imports no gRPC.

Callers pass a tenant name (from the credential) and validated domain requests;
results are domain objects. Every routing method first expires timed-out
reservations, then reads and changes the tenant's routing state without
awaiting in between, so a decision is atomic on the event loop.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import math
import secrets
import time
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np
import structlog

from pairline import kernels, logs
from pairline.benchmark import Observation, Report, SlotSchedule, estimate
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
from pairline.errors import AlreadyExists, InvalidArgument, NotFound, Unavailable
from pairline.limits import check_deadline, note_contact, note_decision
from pairline.model import Model, load_model
from pairline.pairing import (
    NO_PAIR,
    WAIT_UNIT_S,
    PolicyConfig,
    QueuePairing,
    Scorer,
    assign_batch,
    charge,
    choose_agent,
    contact_keys,
    contact_price_value,
    contact_value,
    finite_scores,
    link,
    neutral_score,
    refresh_bands,
    scores64,
)
from pairline.privacy_service import Privacy, scrub_contact
from pairline.routing import Agent, Contact, ContactState, QueueIndex, TenantRouting
from pairline.stores.base import DecisionRecord, ProfileRow, Store
from pairline.stores.privacy import MemoryLedger, PrivacyLedger
from pairline.stores.redis import FeedFollower
from pairline.stores.shared import REDIS_ERRORS, SharedRouting

log = structlog.get_logger()

# How long a starting replica waits for Redis to answer its start-up reads (each
# step retried with back-off on a timeout or a refused connection) before giving up.
START_PATIENCE_S = 60.0


async def _patiently(step: str, call: Callable[[], Awaitable[None]]) -> None:
    """``call()`` (an idempotent start-up step), again after a Redis timeout or
    connection error, for up to START_PATIENCE_S: a replica restarted while Redis is
    busy, or still starting, waits for it instead of exiting."""
    deadline = time.monotonic() + START_PATIENCE_S
    delay = 0.1
    while True:
        try:
            await call()
            return
        except REDIS_ERRORS as exc:
            if time.monotonic() + delay > deadline:
                raise
            log.warning("start_waiting_for_redis", step=step, error=str(exc))
            await asyncio.sleep(delay)
            delay = min(delay * 2, 2.0)
RECONCILE_S = 1.0  # how often a replica checks its mirror's live contacts against Redis

T = TypeVar("T")


def run_now(coro: Coroutine[Any, Any, T]) -> T:
    """Drive a service call that never suspends (every call on the embedded store)
    to its result without an event loop: for in-process simulation and benchmarks."""
    try:
        coro.send(None)
    except StopIteration as done:
        return done.value  # type: ignore[no-any-return]
    coro.close()
    raise RuntimeError("the coroutine suspended: it is not on the embedded-store path")

DAY_S = 86_400.0
MAX_BATCH = 10_000
# Diagonal bands are recomputed after agent changes at most this often, and
# at least this often as the mean contact drifts.
BANDS_MIN_S = 0.5
BANDS_MAX_S = 5.0


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

    __slots__ = ("_default", "_pairings", "_policies", "config", "rng", "routing",
                 "schedule", "scorer")

    def __init__(self, config: TenantConfig, rng: np.random.Generator | None = None) -> None:
        self.config = config
        self.routing = TenantRouting(
            max_waiting=config.max_waiting,
            max_agents=config.max_agents,
            max_queues=config.max_queues,
            preferred_hold_s=config.preferred_hold_s,
            agent_dim=config.agent_dim,
            relax_steps=config.relax_steps,
        )
        # The active model; replaced whole on activation (a decision reads it once).
        self.scorer: Scorer | None = None
        def policy(name: str) -> PolicyConfig:
            return PolicyConfig(name, config.skew, config.wait_weight, config.window, config.batch)

        self._default = policy(config.policy)
        self._policies = {q: policy(p) for q, p in config.queue_policies}
        self._pairings: dict[str, QueuePairing] = {}
        # Draws within ties of contact percentiles (diagonal).
        self.rng = rng if rng is not None else np.random.default_rng()
        self.schedule = (
            SlotSchedule.for_tenant(config)
            if config.benchmark
            else None
        )

    def policy(self, queue: str) -> PolicyConfig:
        return self._policies.get(queue, self._default)

    def wants_profiles(self, queue: str) -> bool:
        return self.config.monitor or self.policy(queue).name != "baseline"

    def slot(self, queue: str, now: float) -> tuple[bool | None, bool]:
        """(slot ON?, compared?) when the queue is benchmarked; (None, False) if not."""
        if self.schedule is None or self.config.monitor or self.policy(queue).name == "baseline":
            return None, False
        return self.schedule.state(queue, now)

    def admit_queues(self, names: Iterable[str], agent_id: str = "") -> None:
        """See :meth:`TenantRouting.admit_queues`; what pairing learnt of the
        queues it forgets goes too."""
        for name in self.routing.admit_queues(names, agent_id):
            self._pairings.pop(name, None)

    def reset_pairings(self, keep_xbar: bool) -> None:
        """A new model is active (see :meth:`QueuePairing.reset_model`)."""
        for p in self._pairings.values():
            p.reset_model(keep_xbar)

    def pairing(self, queue: str) -> QueuePairing:
        p = self._pairings.get(queue)
        if p is None:
            p = self._pairings[queue] = QueuePairing(self.rng)
        return p


@dataclass(slots=True)
class Choice:
    """How a decision was made (the parts of a Decision a policy decides)."""

    mode: Mode
    policy: str
    model_version: str = ""
    predicted: float = 0.0
    shadow_agent: str = ""
    shadow_contact: str = ""
    shadow_predicted: float = 0.0
    slot_on: bool | None = None
    compared: bool = False


def _predict(scorer: Scorer, index: QueueIndex, rows: np.ndarray, row: int, u: np.ndarray,
             c0: float) -> float:
    """Predicted outcome of the contact (folded as ``u``, ``c0``) with one agent row
    of the eligible ``rows``; an agent without a profile counts as the average of
    those with one (the score greedy's key gives it; a zero vector's score is not
    meaningful)."""
    if not index.has_vec[row]:
        return scorer.predict(neutral_score(index, rows, u, c0))
    # np.dot: the same BLAS dot product as ``@`` here, without matmul's ~2 us of set-up.
    raw = c0 + float(np.dot(index.vec[row], u))
    if not math.isfinite(raw):  # float32 overflowed: again in float64
        raw = float(scores64(index.vec[row : row + 1], u, c0)[0])
    return scorer.predict(raw)


def _baseline_pick(index: QueueIndex, rows: np.ndarray) -> int:
    return int(kernels.pick_min(np.zeros(rows.size), rows, index.load, index.idle_since))


def _nothing() -> None:
    return None




class _Local:
    """The embedded store's commit: the operation's changes are the state."""

    shared = False

    async def run(self, tenant: str, routing: TenantRouting, op: Callable[[], T],
                  **_: object) -> T:
        return op()


class Service:
    def __init__(
        self,
        settings: Settings,
        store: Store,
        clock: Clock,
        *,
        seed: int | None = None,
        shared: SharedRouting | None = None,
        ledger: PrivacyLedger | None = None,
    ) -> None:
        """``seed`` makes the service's random draws repeatable (simulations);
        ``shared`` makes Redis the authority on routing state (replicas);
        ``ledger`` keeps the privacy records (in memory only if not given)."""
        self.settings = settings
        self.store = store
        self.clock = clock
        self.shared = shared
        self.coord: SharedRouting | _Local = shared or _Local()
        self._feed: FeedFollower | None = None
        self._reconciled_at = 0.0
        self._background: set[asyncio.Future[Any]] = set()
        seeds = np.random.SeedSequence(seed).spawn(len(settings.tenants))
        self.tenants = {
            t.name: TenantRuntime(t, np.random.default_rng(s))
            for t, s in zip(settings.tenants, seeds, strict=True)
        }
        # Decision ids: a random prefix per process, then a counter (unique across
        # replicas and restarts, and cheaper than a random id per decision).
        self._id_prefix = f"d{secrets.token_hex(6)}-"
        self._ids = itertools.count(1)
        # Opt-outs, deletions, tombstones, audit (pairline.privacy_service).
        self.privacy = Privacy(settings, ledger or MemoryLedger(), store, clock,
                               lambda t: self.tenants[t].routing)

    def _rt(self, tenant: str) -> TenantRuntime:
        return self.tenants[tenant]

    def degraded(self, tenant: str) -> bool:
        """Shared state out of reach for ``tenant``: routing goes on, by the baseline."""
        return self.shared is not None and tenant in self.shared._resync

    # ---------------------------------------------------------------- routing
    def _x(self, scorer: Scorer, contact: Contact) -> np.ndarray | None:
        """The contact's model input for ``scorer`` (None without a profile)."""
        if contact.profile is None:
            return None
        if contact.x is None or contact.x_version != scorer.version:
            contact.x = x = scorer.x_of(contact.profile, contact.context)
            contact.x_version = scorer.version
            contact.u, c0 = scorer.fold_contact(x)
            contact.c0 = float(c0)
        return contact.x

    def _ranked(self, rt: TenantRuntime, scorer: Scorer, contact: Contact,
                now: float) -> np.ndarray | None:
        """:meth:`_x`, for a contact about to be paired; one that arrived under
        another model (or none) is first given its percentile (diagonal) or value
        (priced) under ``scorer``, as :meth:`_arrive` would now: a decision never
        ranks it by another model's values."""
        was = contact.x_version
        x = self._x(scorer, contact)
        if x is None or was == scorer.version:
            return x
        pol = rt.policy(contact.queue)
        assert contact.u is not None
        if pol.name == "priced":
            contact.value = contact_price_value(rt.routing.queue(contact.queue), contact.u,
                                                contact.c0, scorer.logistic)
        elif pol.name == "diagonal":
            pairing = self._bands(rt, rt.routing.queue(contact.queue), scorer, pol, now)
            value = contact_value(pairing, contact.u, contact.c0)
            contact.pct = pairing.percentile(value)
            pairing.observe(value, None)  # (its input is in the mean since it arrived)
        return x

    def _bands(
        self, rt: TenantRuntime, index: QueueIndex, scorer: Scorer, pol: PolicyConfig, now: float
    ) -> QueuePairing:
        pairing = rt.pairing(index.name)
        if pol.name == "diagonal" and (
            (index.bands_dirty and now - index.bands_at >= BANDS_MIN_S)
            or now - index.bands_at >= BANDS_MAX_S
            or index.bands_at < 0
        ):
            refresh_bands(index, pairing, scorer, pol.skew, now)
        return pairing

    def _arrive(self, rt: TenantRuntime, contact: Contact, now: float) -> Callable[[], None]:
        """Give a new contact its percentile among its queue's recent contacts
        (diagonal). Returns the step that adds it to them, taken once the contact
        is accepted (so a refused request leaves the statistics as they were)."""
        scorer = rt.scorer
        pol = rt.policy(contact.queue)
        if scorer is None or pol.name not in ("diagonal", "priced"):
            return _nothing
        x = self._x(scorer, contact)
        if x is None:
            return _nothing
        if pol.name == "priced":
            assert contact.u is not None
            contact.value = contact_price_value(rt.routing.queue(contact.queue), contact.u,
                                                contact.c0, scorer.logistic)
            return _nothing
        pairing = self._bands(rt, rt.routing.queue(contact.queue), scorer, pol, now)
        assert contact.u is not None
        value = contact_value(pairing, contact.u, contact.c0)
        contact.pct = pairing.percentile(value)
        return lambda: pairing.observe(value, x)

    def _route(self, rt: TenantRuntime, contact: Contact, now: float) -> Decision | None:
        """Agent surplus: reserve the chosen eligible agent for ``contact``, if any."""
        index, rows = rt.routing.candidate_agents(contact, now)
        if rows.size == 0:
            return None
        pol = rt.policy(contact.queue)
        scorer = rt.scorer
        x = self._ranked(rt, scorer, contact, now) if scorer is not None else None
        monitor = rt.config.monitor
        slot_on, compared = rt.slot(contact.queue, now)
        choice = Choice(mode=Mode.BASELINE, policy="baseline")
        if self.degraded(rt.config.name):
            k = _baseline_pick(index, rows)
            choice.mode = Mode.DEGRADED
        elif pol.name == "baseline" and not monitor:
            k = _baseline_pick(index, rows)
        elif slot_on is False:
            k = _baseline_pick(index, rows)
            choice.mode = Mode.CONTROL
        elif scorer is None or x is None:
            k = _baseline_pick(index, rows)
            choice.mode = Mode.NO_PROFILE
        else:
            self._bands(rt, index, scorer, pol, now)
            u, c0 = contact.u, contact.c0
            assert u is not None
            pairing = rt.pairing(index.name)
            worth = pairing.idle_worth(index) if pol.name == "priced" else 0.0
            k = choose_agent(pol, index, rows, u, c0, contact.pct, scorer.logistic, worth)
            choice = Choice(
                mode=Mode.PAIRED,
                policy=pol.name,
                model_version=scorer.version,
                predicted=_predict(scorer, index, rows, int(rows[k]), u, c0),
            )
            if monitor:
                shadow_k, k = k, _baseline_pick(index, rows)
                choice.mode = Mode.BASELINE
                choice.policy = f"monitor:{pol.name}"
                choice.shadow_agent = index.ids[int(rows[shadow_k])] or ""
                choice.shadow_predicted = choice.predicted
                choice.predicted = _predict(scorer, index, rows, int(rows[k]), u, c0)
            if pol.name == "priced":  # the agent that takes the contact ends its idle spell
                charge(index, pairing, int(rows[k]), now)
        choice.slot_on, choice.compared = slot_on, compared
        agent_id = index.ids[int(rows[k])]
        assert agent_id is not None
        return self._decide(rt, contact, rt.routing.agents[agent_id], choice, now)

    def _decide(
        self, rt: TenantRuntime, contact: Contact, agent: Agent, choice: Choice, now: float
    ) -> Decision:
        """Reserve ``agent`` for ``contact`` and build the decision (no awaits).
        Nothing is reserved once the caller's deadline has passed."""
        check_deadline("an agent was claimed")
        if contact.opted_out:  # baseline-routed (no profile): say why
            choice = Choice(mode=Mode.OPTED_OUT, policy="baseline", slot_on=choice.slot_on)
        if not choice.model_version and rt.scorer is not None:
            choice.model_version = rt.scorer.version  # reported on every decision
        decision = Decision(
            decision_id=f"{self._id_prefix}{next(self._ids):x}",
            mode=choice.mode,
            contact_id=contact.contact_id,
            agent_id=agent.agent_id,
            queue=contact.queue,
            channel=contact.channel,
            policy=choice.policy,
            decided_at=now,
            expires_at=now + rt.config.offer_timeout_s,
            model_version=choice.model_version,
            predicted_outcome=choice.predicted,
            shadow_agent_id=choice.shadow_agent,
            shadow_contact_id=choice.shadow_contact,
            shadow_predicted_outcome=choice.shadow_predicted,
            slot_on=choice.slot_on,
            compared=choice.compared,
        )
        rt.routing.reserve(contact, agent, decision, now)
        note_decision(decision.decision_id)
        if self.shared is not None:  # written by the same commit as the reservation
            self.shared.stage_record(rt.config.name, rt.routing,
                                     self._record_of(rt, contact, decision))
        return decision

    @staticmethod
    def _record_of(rt: TenantRuntime, contact: Contact, d: Decision) -> DecisionRecord:
        ttl_s = rt.config.decision_ttl_days * DAY_S
        return DecisionRecord(d, contact.digest, expires_at=d.decided_at + ttl_s,
                              context=contact.context,
                              profile_ms=contact.profile_ms if contact.profile is not None else 0)

    async def _record(self, tenant: str, rt: TenantRuntime, contact: Contact, d: Decision) -> None:
        try:
            if self.shared is None:
                await self.store.record_decision(tenant, self._record_of(rt, contact, d))
            elif self.degraded(tenant) and d.decision_id:
                # Decided while the shared state was out of reach (the record could
                # not go with the commit): say so, and keep it if Redis takes it.
                # (Opted out stays opted out: the switch and the outcome's
                # withholding go by it.)
                if d.mode is not Mode.OPTED_OUT:
                    d.mode = Mode.DEGRADED
                d.predicted_outcome = 0.0
                # In the background: the caller does not wait on a Redis in trouble.
                task = asyncio.ensure_future(self._soft(
                    self.store.record_decision(tenant, self._record_of(rt, contact, d))))
                self._background.add(task)
                task.add_done_callback(self._background.discard)
        except BaseException:
            # Cancelled (caller gone) or the store failed: the decision will not
            # reach the caller, so its reservation must not outlive this call.
            self.abandon(tenant, d.decision_id)
            raise
        if logs.debug_on():  # per decision: skip building the event when it is dropped
            log.debug(
                "contact_routed",
                tenant=tenant,
                decision_id=d.decision_id,
                mode=d.mode.name,
                agent=d.agent_id,
                queue=d.queue,
            )

    @staticmethod
    def _queued(contact_id: str, agent_id: str, queue: str, channel: int, position: int,
                now: float) -> Decision:
        return Decision(
            decision_id="",
            mode=Mode.QUEUED,
            contact_id=contact_id,
            agent_id=agent_id,
            queue=queue,
            channel=channel,
            policy="",
            decided_at=now,
            queue_position=position,
        )

    async def route_contact(self, tenant: str, req: ContactRequest) -> Decision:
        rt = self._rt(tenant)
        # Opted out: no digest kept, no profile read (an in-memory set lookup).
        digests, opted_out = self.privacy.screen(tenant, req.customer_key)
        digest = digests[0] if digests else ""
        row = None
        shared = self.shared
        if (digest and rt.scorer is not None and rt.wants_profiles(req.queue)
                and not self.degraded(tenant)):
            read = self.privacy.customer_profile(tenant, digests, self.clock.now())
            row = await (read if shared is None else self._soft(read))
        if shared is None:  # the embedded store: the operation's changes are the state
            decision, contact, accepted = self._route_op(rt, req, digest, row, opted_out)
        else:
            decision, contact, accepted = await self.coord.run(
                tenant, rt.routing,
                lambda: self._route_op(rt, req, *self._screened_again(tenant, digest, row,
                                                                      opted_out)),
                contacts=(req.contact_id,),
            )
        accepted()
        if contact is not None:
            await self._record(tenant, rt, contact, decision)
        return decision

    def _screened_again(
        self, tenant: str, digest: str, row: ProfileRow | None, opted_out: bool
    ) -> tuple[str, ProfileRow | None, bool]:
        """(digest, profile, opted out) for the routing step, checked again right
        before it: with shared state the profile read and the wait for the tenant's
        turn come between the screen and the step, and an opt-out or a deletion
        applied meanwhile must hold for this contact too (else it would wait, or be
        paired on another replica later, on data its customer withdrew)."""
        if not digest:
            return "", None, opted_out
        if self.privacy.opted_out(tenant, digest):
            return "", None, True
        if row is None:
            return digest, None, False
        deleted_ms = self.privacy.tenants[tenant].tombstones.get(row.key)
        if deleted_ms is not None and row.source_time_ms <= deleted_ms:
            return digest, None, False  # read before a deletion purged it
        return digest, row, False

    async def _soft(self, call: Coroutine[Any, Any, T]) -> T | None:
        """A store read or write on the routing path: with shared state, Redis
        trouble gives None (the caller goes on without it) instead of failing."""
        if self.shared is None:
            return await call
        sent = time.monotonic()
        try:
            result = await call
        except REDIS_ERRORS as exc:
            log.warning("store_unreachable", error=repr(exc))
            self.shared.out_of_touch(exc)  # the next calls do not wait on it too
            return None
        if time.monotonic() - sent > self.shared.slow_s:
            self.shared.slow_call(f"a store call took {time.monotonic() - sent:.3f} s")
        return result

    def _route_op(
        self, rt: TenantRuntime, req: ContactRequest, digest: str, profile: ProfileRow | None,
        opted_out: bool,
    ) -> tuple[Decision, Contact | None, Callable[[], None]]:
        """RouteContact on the routing state (no awaits): the decision, the contact
        when a new decision is to be recorded, and the step that adds the contact to
        its queue's statistics once the change is committed."""
        now = self.clock.now()
        routing = rt.routing
        routing.expire(now)
        contact = routing.contacts.get(req.contact_id)
        if contact is not None:
            note_contact(req.contact_id, created=False)  # (see limits.note_contact)
            if contact.queue != req.queue or contact.channel != req.channel:
                raise AlreadyExists(
                    f"contact {req.contact_id!r} is live in queue {contact.queue!r} "
                    f"({contact.channel.name.lower()}); end it before routing it elsewhere"
                )
            if contact.state is not ContactState.WAITING:
                assert contact.decision is not None
                return contact.decision, None, _nothing  # a retried call: same decision
            decision = self._route(rt, contact, now)  # a waiting contact: try again
            if decision is None:
                return self._queued(contact.contact_id, "", contact.queue, contact.channel,
                                    routing.still_waiting(contact), now), None, _nothing
            return decision, contact, _nothing
        if req.queue not in routing.queues:
            rt.admit_queues((req.queue,))
        note_contact(req.contact_id)
        contact = routing.new_contact(
            req.contact_id,
            req.queue,
            req.channel,
            req.priority,
            digest,
            () if opted_out else req.context,
            req.min_proficiency,
            req.excluded_agent_ids,
            now,
            req.preferred_agent_ids,
        )
        if profile is not None:
            contact.profile, contact.profile_ms = profile.vector, profile.source_time_ms
        contact.opted_out = opted_out
        accepted = self._arrive(rt, contact, now)
        decision = self._route(rt, contact, now)
        if decision is None:
            position = routing.enqueue(contact)
            return self._queued(contact.contact_id, "", contact.queue, contact.channel,
                                position, now), None, accepted
        return decision, contact, accepted

    def _pick_contact(
        self, rt: TenantRuntime, agent: Agent, candidates: list[Contact], now: float
    ) -> tuple[Contact, Choice]:
        """Contact surplus: choose among ``candidates`` (best first by priority, age)."""
        top = [c for c in candidates if c.priority == candidates[0].priority]
        pol = rt.policy(top[0].queue)
        if pol.name == "priced":
            # Prices are per queue: pair within the queue the baseline would serve.
            top = [c for c in top if c.queue == top[0].queue]
        scorer = rt.scorer
        a = rt.routing.agent_vectors.get(agent.agent_id)
        slot_on, compared = rt.slot(top[0].queue, now)
        if self.degraded(rt.config.name):
            # (counted in its slot, as in agent surplus: the report compares slots
            # as assigned, whatever the store's health meanwhile)
            return top[0], Choice(mode=Mode.DEGRADED, policy="baseline", slot_on=slot_on,
                                  compared=compared)
        if pol.name == "baseline" and not rt.config.monitor:
            return top[0], Choice(mode=Mode.BASELINE, policy="baseline")
        if slot_on is False:
            return top[0], Choice(mode=Mode.CONTROL, policy="baseline", slot_on=False,
                                  compared=compared)
        if len({c.queue for c in top}) > 1:
            # The agent serves several queues: pair only among the contacts of queues
            # under the same policy and in the same benchmark slot state as the one
            # the baseline would serve (a contact of a queue whose slot is OFF, or
            # that the first queue's policy does not govern, is not paired as if it
            # were: its decision would be counted on the wrong side of the report).
            states = {top[0].queue: True}
            for c in top:
                if c.queue not in states:
                    states[c.queue] = (rt.policy(c.queue) == pol
                                       and rt.slot(c.queue, now) == (slot_on, compared))
            top = [c for c in top if states[c.queue]]
        xs = [self._ranked(rt, scorer, c, now) for c in top] if scorer is not None else []
        if scorer is None or a is None or not any(x is not None for x in xs):
            return top[0], Choice(mode=Mode.NO_PROFILE, policy="baseline", slot_on=slot_on,
                                  compared=compared)
        v, c0 = scorer.fold_agent(a)
        lo = np.empty(len(top))
        hi = np.empty(len(top))
        price = np.empty(len(top))
        for i, c in enumerate(top):
            index = rt.routing.queue(c.queue)
            self._bands(rt, index, scorer, pol, now)
            row = index.row_of[agent.agent_id]
            lo[i], hi[i], price[i] = index.lo[row], index.hi[row], index.price[row]
        waits = [now - c.arrival for c in top]
        keys, scores = contact_keys(pol, xs, [c.pct for c in top], waits, v, float(c0), (lo, hi),
                                    values=[c.value for c in top], price=price,
                                    logistic=scorer.logistic)
        j = int(np.argmin(keys))
        if pol.batch and len(top) > 1:
            j = self._batch(rt, agent, top, xs, keys, pol, scorer, now, j)
        assert scores is not None
        chosen = top[j]
        if pol.name == "priced":
            index = rt.routing.queue(chosen.queue)
            charge(index, rt.pairing(chosen.queue), index.row_of[agent.agent_id], now)
        choice = Choice(
            mode=Mode.PAIRED if xs[j] is not None else Mode.NO_PROFILE,
            policy=pol.name,
            model_version=scorer.version,
            predicted=scorer.predict(float(scores[j])),
            slot_on=slot_on,
            compared=compared,
        )
        if rt.config.monitor:
            choice = Choice(
                mode=Mode.BASELINE,
                policy=f"monitor:{pol.name}",
                model_version=scorer.version,
                predicted=scorer.predict(float(scores[0])),
                shadow_contact=chosen.contact_id,
                shadow_predicted=choice.predicted,
            )
            chosen = top[0]
        return chosen, choice

    def _batch(
        self,
        rt: TenantRuntime,
        agent: Agent,
        top: list[Contact],
        xs: list[np.ndarray | None],
        keys: np.ndarray,
        pol: PolicyConfig,
        scorer: Scorer,
        now: float,
        fallback: int,
    ) -> int:
        """Both at once: when other agents are free too, solve the assignment of the
        waiting window to every free agent and give ``agent`` its part."""
        others: dict[str, tuple[int, ...]] = {}
        eligible: list[set[str]] = []
        mine = np.zeros(len(top), dtype=np.bool_)  # may go to ``agent``
        for i, c in enumerate(top):
            index, rows = rt.routing.candidate_agents(c, now)
            ids = {index.ids[int(r)] for r in rows} - {None}
            # (every one of ``top`` may go to ``agent``, unless held for another)
            mine[i] = not rt.routing.prefers_other(c, agent.agent_id, now)
            ids.discard(agent.agent_id)
            eligible.append(ids)  # type: ignore[arg-type]
            for a in ids:
                others.setdefault(a, ())  # type: ignore[arg-type]
        if not others:
            return fallback
        names = [agent.agent_id, *list(others)[: pol.window - 1]]
        cost = np.full((len(top), len(names)), NO_PAIR)
        ok = np.zeros(cost.shape, dtype=np.bool_)
        cost[:, 0] = keys
        ok[:, 0] = mine
        waits = np.array([now - c.arrival for c in top]) / WAIT_UNIT_S * pol.wait_weight
        scores = None
        if pol.name in ("greedy", "priced"):
            # Contacts without a profile score as their key says; agents without
            # one as the mean of those with one (as greedy's keys in L1). Scores
            # that overflowed float32 are finite from here (see finite_scores).
            X = np.stack([x if x is not None else np.zeros(scorer.W.shape[0], np.float32)
                          for x in xs])
            A = np.stack([rt.routing.agent_vectors.get(a, np.zeros(scorer.W.shape[1], np.float32))
                          for a in names])
            raw = np.empty((len(top), len(names)), dtype=np.float32)
            kernels.score_batch(X, scorer.W, A, np.arange(len(names), dtype=np.int64),
                                scorer.wc, scorer.wa, scorer.b, raw)
            scores = raw.astype(np.float64)
            if not np.isfinite(raw).all():  # float32 overflowed: again in float64
                X64, A64 = X.astype(np.float64), A.astype(np.float64)
                with np.errstate(over="ignore", invalid="ignore"):
                    full = (float(scorer.b) + (X64 @ scorer.wc)[:, None]
                            + (A64 @ scorer.wa)[None, :] + X64 @ scorer.W @ A64.T)
                scores = finite_scores(full)
            known = np.array([a in rt.routing.agent_vectors for a in names])
            if not known.all():  # as in L1: the mean of the agents with a profile
                scores[:, ~known] = scores[:, known].mean(axis=1, keepdims=True)
        for col, other in enumerate(names[1:], start=1):
            rows_ok = [i for i, ids in enumerate(eligible) if other in ids]
            if not rows_ok:
                continue
            ok[rows_ok, col] = True
            if pol.name == "priced":
                assert scores is not None
                for i in rows_ok:
                    index = rt.routing.queue(top[i].queue)
                    # Reduced cost, as contact_keys gives it (0 without a profile).
                    cost[i, col] = (top[i].value - float(link(scores[i, col], scorer.logistic))
                                    + index.price[index.row_of[other]]
                                    if xs[i] is not None else 0.0) - waits[i]
            elif scores is not None:
                for i in rows_ok:
                    # Without a profile, the contact's key holds its score and its
                    # waiting credit already (the same for every agent).
                    if xs[i] is None:
                        cost[i, col] = keys[i]
                    else:
                        cost[i, col] = -float(scores[i, col]) - waits[i]
            else:
                for i in rows_ok:
                    index = rt.routing.queue(top[i].queue)
                    row = index.row_of[other]
                    p = top[i].pct
                    cost[i, col] = max(index.lo[row] - p, p - index.hi[row], 0.0) - waits[i]
        for i, col in assign_batch(cost, ok):
            if col == 0:
                return i
        return fallback

    async def agent_ready(self, tenant: str, agent_id: str) -> Decision:
        rt = self._rt(tenant)
        if self.shared is None:  # the embedded store: as in route_contact
            decision, contact = self._ready_op(rt, agent_id)
        else:
            decision, contact = await self.coord.run(
                tenant, rt.routing, lambda: self._ready_op(rt, agent_id), agents=(agent_id,)
            )
        if contact is not None:
            await self._record(tenant, rt, contact, decision)
        return decision

    def _ready_op(self, rt: TenantRuntime, agent_id: str) -> tuple[Decision, Contact | None]:
        now = self.clock.now()
        # Before the agent changes: a refused call changes nothing (past here the
        # operation runs without awaits, and _decide checks again before a claim).
        check_deadline("the agent was made ready")
        routing = rt.routing
        routing.expire(now)
        agent = routing.agent_ready(agent_id, now)
        candidates = routing.candidate_contacts(agent, now, limit=rt.config.window)
        if not candidates:
            return self._queued("", agent_id, "", 0, 0, now), None
        contact, choice = self._pick_contact(rt, agent, candidates, now)
        return self._decide(rt, contact, agent, choice, now), contact

    async def set_agent_state(self, tenant: str, req: AgentStateRequest) -> AgentView:
        rt = self._rt(tenant)
        wrap_s = req.wrap_up_s or rt.config.wrap_up_s

        def op() -> AgentView:
            now = self.clock.now()
            rt.routing.expire(now)
            if req.queues:
                rt.admit_queues((q for q, _ in req.queues), req.agent_id)
            rt.routing.set_agent_state(
                req.agent_id, req.status, req.queues, req.capacities, wrap_s, now
            )
            return rt.routing.view(req.agent_id, now)

        view = await self.coord.run(tenant, rt.routing, op, agents=(req.agent_id,))
        log.info("agent_state_set", tenant=tenant, agent=req.agent_id, status=req.status.name)
        return view

    async def get_agent_state(self, tenant: str, agent_id: str) -> AgentView:
        rt = self._rt(tenant)

        def op() -> AgentView:
            now = self.clock.now()
            rt.routing.expire(now)
            return rt.routing.view(agent_id, now)

        return await self.coord.run(tenant, rt.routing, op, agents=(agent_id,))

    async def confirm(self, tenant: str, decision_id: str) -> Decision:
        rt = self._rt(tenant)

        def op() -> Decision:
            rt.routing.expire(self.clock.now())
            return rt.routing.confirm(decision_id)

        return await self.coord.run(tenant, rt.routing, op, decisions=(decision_id,))

    async def release(
        self, tenant: str, decision_id: str, reason: ReleaseReason
    ) -> tuple[Decision, AgentStatus]:
        rt = self._rt(tenant)

        def op() -> tuple[Decision, AgentStatus]:
            now = self.clock.now()
            rt.routing.expire(now)
            decision = rt.routing.release(decision_id, reason, now)
            return decision, rt.routing.agents[decision.agent_id].status(now)

        return await self.coord.run(tenant, rt.routing, op, decisions=(decision_id,))

    async def end_contact(
        self, tenant: str, contact_id: str, reason: EndReason, wrap_up_s: float
    ) -> EndResult:
        rt = self._rt(tenant)
        wrap_s = wrap_up_s or rt.config.wrap_up_s

        def op() -> EndResult:
            now = self.clock.now()
            rt.routing.expire(now)
            return rt.routing.end_contact(contact_id, reason, wrap_s, now)

        return await self.coord.run(tenant, rt.routing, op, contacts=(contact_id,))

    async def report_outcome(
        self, tenant: str, decision_id: str, outcomes: dict[str, float]
    ) -> bool:
        """False when the outcome is not stored: the decision was for an
        opted-out customer (only counted)."""
        record = await self.store.get_decision(tenant, decision_id, self.clock.now())
        if self.privacy.withhold_outcome(tenant, record):
            return False
        if not await self.store.record_outcome(tenant, decision_id, outcomes, self.clock.now()):
            raise NotFound(f"decision {decision_id!r} is not known (or past retention)")
        return True

    async def benchmark_report(self, tenant: str, outcome: str, queue: str) -> Report:
        """ON vs OFF for one outcome (see :mod:`pairline.benchmark`)."""
        records = await self.store.decisions(tenant, self.clock.now())
        return estimate(
            Observation(d.queue, d.decided_at, bool(d.slot_on), r.outcomes[outcome], d.agent_id)
            for r in records
            if (d := r.decision).slot_on is not None
            and d.compared
            and outcome in r.outcomes
            and (not queue or d.queue == queue)
        )

    async def export_history(
        self, tenant: str, outcome: str, since: float
    ) -> list[tuple[DecisionRecord, np.ndarray | None, np.ndarray | None]]:
        """Kept decisions with ``outcome`` reported, with the stored customer profile
        as of the decision (None where there is none, or only a newer one) and the
        stored agent profile, oldest first."""
        now = self.clock.now()
        out = []
        for r in await self.store.decisions(tenant, now):
            d = r.decision
            if outcome not in r.outcomes or d.decided_at < since:
                continue
            if not self.privacy.exportable(tenant, r):  # opted out since
                continue
            customer = None
            if r.customer_digest:
                # Point in time: the profile the decision was made with, while it is
                # the one stored; for a decision made without one, a stored profile
                # from before the decision. A newer one would pair the outcome with
                # data from after it (a CRM refresh after the sale).
                row = await self.store.get_customer_profile(tenant, r.customer_digest, now)
                if row is not None and (row.source_time_ms == r.profile_ms if r.profile_ms
                                        else row.source_time_ms <= d.decided_at * 1000):
                    customer = row.vector
            agent = await self.store.get_agent_profile(tenant, d.agent_id)
            out.append((r, customer, agent.vector if agent is not None else None))
        return out

    def queue_stats(self, tenant: str, queue: str) -> list[QueueStats]:
        rt = self._rt(tenant)
        now = self.clock.now()
        if self.shared is None:  # shared state: the sweeper returns expired offers
            rt.routing.expire(now)
        return rt.routing.queue_stats(queue or None, now)

    def abandon(self, tenant: str, decision_id: str) -> bool:
        """Undo a reservation whose caller is gone (cancelled, or its deadline passed
        before the decision reached it): as if the offer had timed out at once, the
        agent is free again and the contact waits in its place. False when the
        decision holds no reservation (already confirmed, released or expired).
        With shared state the release is committed in the background."""
        rt = self.tenants.get(tenant)
        if rt is None or decision_id not in rt.routing.reservations:
            return False
        log.info("decision_abandoned", tenant=tenant, decision_id=decision_id)
        if self.shared is None:
            rt.routing.release(decision_id, ReleaseReason.NOT_CONNECTED, self.clock.now())
            return True

        def op() -> None:
            if decision_id in rt.routing.reservations:
                rt.routing.release(decision_id, ReleaseReason.NOT_CONNECTED, self.clock.now())

        task = asyncio.ensure_future(
            self.coord.run(tenant, rt.routing, op, decisions=(decision_id,)))
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        return True

    async def expire_all(self) -> int:
        """Release timed-out reservations of every tenant (the periodic sweep)."""
        if self.shared is not None and self.shared.degraded:
            await self.shared.maintain({n: rt.routing for n, rt in self.tenants.items()})
        if self.shared is not None:
            await self.shared.beat()
        now = self.clock.now()
        n = 0
        for name, rt in self.tenants.items():
            if self.degraded(name) and not self.shared.outage_routing:  # type: ignore[union-attr]
                continue  # out of touch, and not routing alone: nothing to expire here
            if rt.routing.next_expiry() <= now:
                try:
                    n += len(await self.coord.run(name, rt.routing,
                                                  lambda r=rt.routing: r.expire(now)))
                except Unavailable:
                    continue  # Redis went out of reach meanwhile: the next sweep
        if self.shared is not None and time.monotonic() - self._reconciled_at >= RECONCILE_S:
            self._reconciled_at = time.monotonic()
            for name, rt in self.tenants.items():
                try:
                    if await self.shared.reconcile(name, rt.routing):
                        log.info("mirror_reconciled", tenant=name)
                except REDIS_ERRORS:
                    pass  # (the next sweep)
        return n

    async def sweep_retention(self) -> int:
        now = self.clock.now()
        n = await self.store.sweep(now) + self.privacy.sweep_contacts(now)
        if self.shared is not None:  # Redis's copies of those contacts too
            for name, rt in self.tenants.items():
                if self.degraded(name):
                    continue  # (the next sweep)
                limit = now - rt.config.contact_data_ttl_s
                await self.shared.scrub(
                    name, rt.routing,
                    lambda snap, limit=limit: snap["arr"] <= limit and bool(snap["dg"]
                                                                          or snap["ctx"]),
                    lambda c: scrub_contact(c, opted_out=False))
        return n

    # --------------------------------------------------------------- profiles
    @staticmethod
    def _rows(
        profiles: Sequence[ProfileIn], dim: int, field: str | None, key_of: object = None
    ) -> list[ProfileRow]:
        """Check every profile against ``dim`` before any is written. ``field`` is
        the list's path (None for a lone profile, whose fields are top-level)."""
        if not profiles:
            raise InvalidArgument(field or "profile", "at least one profile is needed")
        if len(profiles) > MAX_BATCH:
            raise InvalidArgument(field or "profile", f"at most {MAX_BATCH} profiles per batch")
        rows = []
        for i, p in enumerate(profiles):
            where = f"{field}[{i}].vector" if field is not None else "vector"
            if len(p.vector) != dim:
                raise InvalidArgument(where, f"has {len(p.vector)} values, expected {dim}")
            with np.errstate(over="ignore"):
                vec = np.asarray(p.vector, dtype=np.float32)
            if not np.all(np.isfinite(vec)):
                raise InvalidArgument(where, "has NaN or infinite values")
            key = key_of(p.key) if callable(key_of) else p.key
            rows.append(ProfileRow(key, vec, p.version, p.source_time_ms))
        return rows

    async def upsert_customer_profiles(
        self, tenant: str, profiles: Sequence[ProfileIn], field: str | None = "profiles"
    ) -> UpsertOutcome:
        rt = self._rt(tenant)
        keys = self.privacy.tenants[tenant].keys
        rows = self._rows(profiles, rt.config.customer_dim, field, keys.digest)
        ttl_s = rt.config.profile_ttl_days * DAY_S

        async def write(kept: Sequence[ProfileRow]) -> list[int]:
            if not kept:
                return []
            return await self.store.upsert_customer_profiles(tenant, kept, ttl_s,
                                                             self.clock.now())

        # Tombstoned customers' older data is refused (and audited) here.
        stale = await self.privacy.upsert_profiles(tenant, rows, write)
        return UpsertOutcome(len(rows) - len(stale), stale)

    async def upsert_agent_profiles(
        self, tenant: str, profiles: Sequence[ProfileIn]
    ) -> UpsertOutcome:
        rt = self._rt(tenant)
        rows = self._rows(profiles, rt.config.agent_dim, "profiles")
        stale = await self.store.upsert_agent_profiles(tenant, rows, self.clock.now())
        skip = set(stale)
        for i, row in enumerate(rows):
            if i not in skip:
                rt.routing.set_agent_vector(row.key, row.vector)
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
            await self._activate(tenant, model)
        log.info("model_uploaded", tenant=tenant, version=model.version, active=activate)
        return model

    async def activate_model(self, tenant: str, version: str) -> Model:
        model = await self.store.get_model(tenant, version)
        if model is None:
            raise NotFound(f"model version {version!r} was not uploaded")
        await self._activate(tenant, model)
        return model

    async def _activate(self, tenant: str, model: Model) -> None:
        await self.store.set_active_model(tenant, model.version)
        self._use_model(self._rt(tenant), model)
        log.info("model_activated", tenant=tenant, version=model.version)

    @staticmethod
    def _use_model(rt: TenantRuntime, model: Model) -> None:
        old = rt.scorer
        rt.scorer = Scorer(model)  # one reference swap: atomic for every decision
        if old is not None and old.version != model.version:
            # What pairing derived from the old model goes: contact values (ranked
            # against each other) and the agents' axis; waiting contacts are ranked
            # again under the new one when next paired (see _ranked).
            same_inputs = old.model.context_features == model.context_features
            rt.reset_pairings(same_inputs)
        for index in rt.routing.queues.values():
            index.bands_dirty = True
            index.bands_at = -1.0

    async def _load_shared(self, name: str, rt: TenantRuntime) -> None:
        assert self.shared is not None
        for agent_id, row in (await self.shared.store.all_agent_profiles(name)).items():
            rt.routing.set_agent_vector(agent_id, row.vector)
        await self.shared.load(name, rt.routing)
        if self.shared.outage_routing:
            await self.shared.lift_fence(name)

    async def start(self) -> None:
        """Load models named in the configuration; restore the active ones. With
        shared state, also rebuild every tenant's routing mirror from Redis and
        follow the change feed (started first, so nothing changed meanwhile is
        missed: older snapshots are ignored by version); load the privacy
        records."""
        if self.shared is None:  # (a local ledger's errors are not worth waiting on)
            await self.privacy.start()
        else:
            await _patiently("privacy_ledger", self.privacy.start)
        if self.shared is not None:
            self._feed = FeedFollower(self.shared.store, self.on_feed)
            await _patiently("change_feed", self._feed.start)
            self.shared.catch_up = self._feed.catch_up
            self.shared.skip_feed = self._feed.skip_to
            self.shared.fence_feed = self._feed.fence
            self.shared.on_recovered = self._readopt
            self.shared.now = self.clock.now
            self.privacy.scrub_shared = self._scrub_shared
            self._feed.on_gap = self._feed_gap
            for name, rt in self.tenants.items():
                await _patiently("routing_state", functools.partial(self._load_shared, name, rt))
        for name, rt in self.tenants.items():
            if rt.config.model_path:
                with open(rt.config.model_path, "rb") as fh:
                    await self.upload_model(name, fh.read(), activate=True)
                continue
            version = await self.store.active_model_version(name)
            model = await self.store.get_model(name, version) if version else None
            if model is not None:
                self._use_model(rt, model)
        if self.shared is not None:
            for name, rt in self.tenants.items():
                for contact_id in list(rt.routing.contacts):
                    await self._adopt(name, rt, contact_id)

    async def _readopt(self, tenant: str) -> None:
        rt = self.tenants[tenant]
        for contact_id in list(rt.routing.contacts):
            await self._soft(self._adopt(tenant, rt, contact_id))

    async def stop(self) -> None:
        if self._feed is not None:
            await self._feed.stop()
            self._feed = None

    @property
    def feed_connected(self) -> bool:
        return self._feed is None or self._feed.connected

    async def on_feed(self, tenant: str, kind: str, fields: Mapping[bytes, bytes]) -> None:
        """Apply one change made through another replica (or this one)."""
        rt = self.tenants.get(tenant)
        if rt is None or self.shared is None:
            return
        if kind == "snap":
            if self.shared.holds_unseen(tenant):
                # Out of touch, this mirror holds changes Redis has not seen; another
                # replica's snapshot would overwrite them (an agent or contact it
                # holds given away again here). The mirror is rebuilt from Redis and
                # its changes merged back when it is in touch again. (Out of touch
                # but not routing alone yet, it applies them: the changes the others
                # made up to the fence must all be here before it does.)
                return
            for contact_id in self.shared.apply_feed(rt.routing, fields):
                await self._adopt(tenant, rt, contact_id)
            return
        ids = fields.get(b"ids", b"").decode().split("\n")
        if kind == "oo":  # opt-outs (or their withdrawal) made through any replica
            self.privacy.apply_opt_outs(tenant, ids, fields.get(b"on") == b"1")
        elif kind == "del":  # a deletion's tombstone: no replica keeps the data
            self.privacy.apply_deletion(tenant, ids, int(fields.get(b"ms", b"0")))
            self.shared.store.forget(tenant, ids)
        elif kind == "cp":
            self.shared.store.forget(tenant, ids)
        elif kind == "ap":
            rows = await self.shared.store.agent_profiles(tenant, ids)
            for agent_id in ids:
                row = rows.get(agent_id)
                rt.routing.set_agent_vector(agent_id, row.vector if row else None)
        elif kind == "model" and (rt.scorer is None or rt.scorer.version != ids[0]):
            model = await self.store.get_model(tenant, ids[0])
            if model is not None:
                self._use_model(rt, model)

    async def _feed_gap(self, tenant: str) -> None:
        """The feed lost events this replica had not applied (it was cut off longer
        than the feed keeps them): reload what they would have told it: routing
        state, opt-outs and deletions, agent profiles, the active model, and no
        cached customer profile."""
        assert self.shared is not None
        rt = self.tenants[tenant]
        self.shared.store.forget_all(tenant)
        for agent_id, row in (await self.shared.store.all_agent_profiles(tenant)).items():
            rt.routing.set_agent_vector(agent_id, row.vector)
        active = await self.store.active_model_version(tenant)
        if active and (rt.scorer is None or rt.scorer.version != active):
            model = await self.store.get_model(tenant, active)
            if model is not None:
                self._use_model(rt, model)
        await self.shared.resync(tenant, rt.routing)
        await self.privacy.reload(tenant)

    async def _scrub_shared(self, tenant: str, digests: set[str], opted_out: bool) -> int:
        """Rewrite in Redis, without their data, the live contacts whose record still
        names one of ``digests`` (every mirror has dropped it already)."""
        assert self.shared is not None
        return await self.shared.scrub(
            tenant, self.tenants[tenant].routing, lambda snap: snap["dg"] in digests,
            lambda c: scrub_contact(c, opted_out=opted_out))

    async def _adopt(self, tenant: str, rt: TenantRuntime, contact_id: str) -> None:
        """A contact routed through another replica that waits here too: load its
        profile, so this replica pairs it as the first would have."""
        contact = rt.routing.contacts.get(contact_id)
        if contact is not None and self.privacy.opted_out(tenant, contact.digest):
            # Routed elsewhere before that replica had the customer's opt-out: not
            # paired here on their data either.
            scrub_contact(contact, opted_out=True)
            return
        if (contact is None or contact.state is not ContactState.WAITING or not contact.digest
                or rt.scorer is None or not rt.wants_profiles(contact.queue)):
            return
        row = await self.store.get_customer_profile(tenant, contact.digest, self.clock.now())
        if row is not None and contact.profile is None:
            contact.profile, contact.profile_ms = row.vector, row.source_time_ms
            self._arrive(rt, contact, self.clock.now())  # its percentile, not counted again

    async def model_info(self, tenant: str) -> tuple[str, list[Model]]:
        active = await self.store.active_model_version(tenant)
        return active, await self.store.list_models(tenant)
