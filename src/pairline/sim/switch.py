"""Switches: what the simulated contact center talks to, as an ACD talks to pairline.

The engine (:mod:`pairline.sim.engine`) speaks only the :class:`Switch`
protocol: ``route`` a new contact, ``confirm`` a decision, ``end`` a handled
contact, ``abandon`` a waiting one, say an agent is ``ready``, report an
``outcome``. Two implementations:

- :class:`InProcessSwitch` drives a real :class:`pairline.service.Service` (memory
  store, a :class:`pairline.testing.FakeClock` moved to each event's time) exactly
  as a switch would drive the server, with no event loop: the service's
  coroutines never suspend on the memory store, so :func:`run_now` steps each to
  its end in one ``send``.
- :class:`BaselineSwitch` is the switch's own rule in plain Python (longest-idle
  agent, oldest contact), with the service's tie-breaking, so the engine can be
  checked against queueing theory on long runs quickly; a test checks it makes
  the very same decisions as the service's baseline.

A remote switch (a real server over gRPC) fits the same protocol; see
:class:`Switch` for what it would have to do about time.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple, Protocol

import numpy as np

from pairline.config import Settings, TenantConfig
from pairline.domain import (
    N_CHANNELS,
    AgentStateRequest,
    AgentStatus,
    Channel,
    ContactRequest,
    Decision,
    EndReason,
    Mode,
)
from pairline.service import MAX_BATCH, ProfileIn, Service, run_now
from pairline.sim.scenario import PolicySpec
from pairline.stores import MemoryStore
from pairline.testing import FakeClock

TENANT = "sim"
# In process the service's clock reads the simulation time itself (t = 0 at the
# start): absolute times computed by the service (wrap-up ends) are then the very
# floats the engine computes, with no rounding at Unix-time magnitudes.
CLOCK_START = 0.0


class Offer(NamedTuple):
    """A decision as the engine needs it."""

    decision_id: str
    contact_id: str
    agent_id: str
    mode: int  # a pairline.domain.Mode
    predicted: float


@dataclass(frozen=True, slots=True)
class AgentLogin:
    agent_id: str
    queues: tuple[tuple[str, int], ...]
    capacities: tuple[int, ...]


@dataclass(frozen=True, slots=True, eq=False)
class SwitchSetup:
    """What a switch is told before the first contact: agents (logged in, in this
    order, at time 0), the model file and the profiles (absent for baseline runs)."""

    agents: tuple[AgentLogin, ...]
    wrap_up_s: float
    customer_dim: int
    agent_dim: int
    model: bytes | None = None
    customer_keys: Sequence[str] = ()
    customer_vectors: np.ndarray | None = None  # f4[len(customer_keys), customer_dim]
    agent_vectors: np.ndarray | None = None  # f4[len(agents), agent_dim]


class Switch(Protocol):
    """The calls a switch makes. ``advance`` comes first at every event: it tells the
    switch the simulation time in seconds since the start. In process this sets the
    service's fake clock. A remote switch (``--target HOST:PORT``) cannot move the
    server's clock: it has to pace the events in real time (or the server needs a
    simulation clock), since wrap-up ends, diagonal band refreshes, ``wait_weight``
    and offer timeouts are all measured by the server's own clock."""

    def advance(self, t: float) -> None: ...

    def route(self, contact_id: str, queue: str, channel: Channel,
              customer_key: str) -> Offer | None: ...

    def confirm(self, offer: Offer) -> None: ...

    def end(self, contact_id: str, wrap_up_s: float) -> None: ...

    def abandon(self, contact_id: str) -> None: ...

    def ready(self, agent_id: str) -> Offer | None: ...

    def outcome(self, offer: Offer, success: bool) -> None: ...

    def close(self) -> None: ...


def _offer(d: Decision) -> Offer | None:
    if d.mode is Mode.QUEUED:
        return None
    return Offer(d.decision_id, d.contact_id, d.agent_id, int(d.mode), d.predicted_outcome)


class InProcessSwitch:
    """A real :class:`Service` in this process, one tenant, one policy.

    ``seed`` seeds the tenant's random generator (diagonal draws a contact's
    percentile uniformly within ties), so a run is reproducible. The service has no
    hook for that yet; the generator is replaced right after construction, before
    any pairing state that holds it exists.
    """

    __slots__ = ("_svc", "clock", "report_outcomes", "service")

    def __init__(self, policy: PolicySpec, setup: SwitchSetup, *, seed: int = 0,
                 report_outcomes: bool = True) -> None:
        cfg = TenantConfig(
            name=TENANT,
            api_key_sha256=("0" * 64,),
            secret="pairline-simulator-secret",
            customer_dim=setup.customer_dim,
            agent_dim=setup.agent_dim,
            policy=policy.name,
            skew=policy.skew,
            wait_weight=policy.wait_weight,
            window=policy.window,
            batch=policy.batch,
            wrap_up_s=setup.wrap_up_s,
            # The engine confirms every decision at once: an offer never times out.
            offer_timeout_s=3600.0,
            max_waiting=10_000_000,
            max_agents=1_000_000,
        )
        self.clock = FakeClock(CLOCK_START)
        self.service = Service(Settings(tenants=(cfg,)), MemoryStore(), self.clock, seed=seed)
        self.report_outcomes = report_outcomes
        svc = self.service
        if setup.model is not None:
            run_now(svc.upload_model(TENANT, setup.model, activate=True))
        if setup.agent_vectors is not None:
            rows = [ProfileIn(a.agent_id, v.tolist(), 1, 1)
                    for a, v in zip(setup.agents, setup.agent_vectors, strict=True)]
            for i in range(0, len(rows), MAX_BATCH):
                run_now(svc.upsert_agent_profiles(TENANT, rows[i : i + MAX_BATCH]))
        if setup.customer_vectors is not None:
            rows = [ProfileIn(k, v, 1, 1)
                    for k, v in zip(setup.customer_keys, setup.customer_vectors, strict=True)]
            for i in range(0, len(rows), MAX_BATCH):
                run_now(svc.upsert_customer_profiles(TENANT, rows[i : i + MAX_BATCH]))
        for a in setup.agents:
            run_now(svc.set_agent_state(TENANT, AgentStateRequest(
                a.agent_id, AgentStatus.AVAILABLE, a.queues, a.capacities)))
        self._svc = svc

    def advance(self, t: float) -> None:
        self.clock.t = CLOCK_START + t

    def route(self, contact_id: str, queue: str, channel: Channel,
              customer_key: str) -> Offer | None:
        return _offer(run_now(self._svc.route_contact(
            TENANT, ContactRequest(contact_id, queue, channel, customer_key=customer_key))))

    def confirm(self, offer: Offer) -> None:
        run_now(self._svc.confirm(TENANT, offer.decision_id))

    def end(self, contact_id: str, wrap_up_s: float) -> None:
        run_now(self._svc.end_contact(TENANT, contact_id, EndReason.HANDLED, wrap_up_s))

    def abandon(self, contact_id: str) -> None:
        run_now(self._svc.end_contact(TENANT, contact_id, EndReason.ABANDONED, 0.0))

    def ready(self, agent_id: str) -> Offer | None:
        return _offer(run_now(self._svc.agent_ready(TENANT, agent_id)))

    def outcome(self, offer: Offer, success: bool) -> None:
        if self.report_outcomes:
            run_now(self._svc.report_outcome(TENANT, offer.decision_id,
                                             {"success": 1.0 if success else 0.0}))

    def close(self) -> None:
        return None


class BaselineSwitch:
    """The baseline in plain Python, for long queueing runs.

    Agent surplus: the eligible agent with the least capacity in use, then idle the
    longest (``idle_since`` set where the service sets it: at login, and to the
    wrap-up end when a contact ends), then first logged in. Contact surplus: the
    oldest waiting contact across the agent's queues and the channels it has
    capacity left on. No profiles, priorities or proficiency requirements.
    """

    __slots__ = (
        "_agent_ix",
        "_cap",
        "_contacts",
        "_idle",
        "_ids",
        "_in_use",
        "_load",
        "_members",
        "_n",
        "_queues",
        "_waiting",
        "_wrap",
        "now",
    )

    def __init__(self, setup: SwitchSetup) -> None:
        self.now = 0.0
        self._ids = [a.agent_id for a in setup.agents]
        self._agent_ix = {a: i for i, a in enumerate(self._ids)}
        self._queues = [tuple(q for q, _ in a.queues) for a in setup.agents]
        self._cap = [list(a.capacities) for a in setup.agents]
        self._in_use = [[0] * N_CHANNELS for _ in setup.agents]
        self._load = [0] * len(setup.agents)
        self._idle = [0.0] * len(setup.agents)
        self._wrap = [0.0] * len(setup.agents)
        self._members: dict[str, list[int]] = {}
        for i, queues in enumerate(self._queues):
            for q in queues:
                self._members.setdefault(q, []).append(i)
        # (queue, channel column) -> deque of (arrival, seq, contact id); abandoned
        # contacts are dropped lazily when they reach the head.
        self._waiting: dict[tuple[str, int], deque[tuple[float, int, str]]] = {}
        # contact id -> [channel column, agent index (-1: waiting)]
        self._contacts: dict[str, list[int]] = {}
        self._n = 0

    def advance(self, t: float) -> None:
        self.now = t

    def route(self, contact_id: str, queue: str, channel: Channel,
              customer_key: str) -> Offer | None:
        now, ch = self.now, channel - 1
        best = -1
        load, idle, wrap, in_use, cap = self._load, self._idle, self._wrap, self._in_use, self._cap
        for a in self._members.get(queue, ()):
            if wrap[a] <= now and in_use[a][ch] < cap[a][ch] and (
                best < 0 or load[a] < load[best]
                or (load[a] == load[best] and idle[a] < idle[best])
            ):
                best = a
        self._n += 1
        if best < 0:
            pool = self._waiting.get((queue, ch))
            if pool is None:
                pool = self._waiting[(queue, ch)] = deque()
            pool.append((now, self._n, contact_id))
            self._contacts[contact_id] = [ch, -1]
            return None
        self._contacts[contact_id] = [ch, best]
        return self._reserve(contact_id, best, ch)

    def _reserve(self, contact_id: str, a: int, ch: int) -> Offer:
        self._in_use[a][ch] += 1
        self._load[a] += 1
        return Offer(f"d{self._n}-{contact_id}", contact_id, self._ids[a], int(Mode.BASELINE),
                     0.0)

    def confirm(self, offer: Offer) -> None:
        return None

    def end(self, contact_id: str, wrap_up_s: float) -> None:
        ch, a = self._contacts.pop(contact_id)
        self._in_use[a][ch] -= 1
        self._load[a] -= 1
        self._wrap[a] = max(self._wrap[a], self.now + wrap_up_s)
        self._idle[a] = self._wrap[a]

    def abandon(self, contact_id: str) -> None:
        ch, a = self._contacts.pop(contact_id)
        if a >= 0:  # reserved, not yet connected: the agent returns as it was
            self._in_use[a][ch] -= 1
            self._load[a] -= 1

    def ready(self, agent_id: str) -> Offer | None:
        a = self._agent_ix[agent_id]
        now = self.now
        if self._wrap[a] > now:  # ready ends a wrap-up early
            self._wrap[a] = now
            self._idle[a] = now
        best: tuple[float, int, str] | None = None
        best_pool: deque[tuple[float, int, str]] | None = None
        in_use, cap = self._in_use[a], self._cap[a]
        for q in self._queues[a]:
            for ch in range(N_CHANNELS):
                if in_use[ch] >= cap[ch]:
                    continue
                pool = self._waiting.get((q, ch))
                while pool and pool[0][2] not in self._contacts:
                    pool.popleft()  # abandoned
                if pool and (best is None or pool[0] < best):
                    best, best_pool = pool[0], pool
        if best is None or best_pool is None:
            return None
        best_pool.popleft()
        contact_id = best[2]
        entry = self._contacts[contact_id]
        entry[1] = a
        self._n += 1
        return self._reserve(contact_id, a, entry[0])

    def outcome(self, offer: Offer, success: bool) -> None:
        return None

    def close(self) -> None:
        return None
