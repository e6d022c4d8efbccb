"""Routing state of one tenant: agents, waiting contacts, reservations.

Pure Python + NumPy, no gRPC, no Redis. Every method runs to completion without
awaiting, so on the embedded store one call is atomic with respect to every
other call on the event loop.

Layout, per queue (:class:`QueueIndex`): one row per member agent in contiguous
arrays (``routable`` bool[n], ``ready_at`` f8[n], ``free`` i4[n, 5] capacity
left per channel, ``load`` i4[n], ``idle_since`` f8[n], ``prof`` i4[n]), kept
up to date incrementally as agents change, so eligibility is a few vectorised
comparisons and never a Python loop over agents. Waiting contacts live in one
sorted list per (queue, channel), ordered by priority (high first), then
arrival, then a sequence number.
"""

from __future__ import annotations

import collections
import contextlib
import heapq
import itertools
import json
import operator
from collections.abc import Iterable
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any

import numpy as np
from sortedcontainers import SortedList

from pairline import kernels
from pairline.domain import (
    N_CHANNELS,
    AgentStatus,
    AgentView,
    Channel,
    ChannelStats,
    Decision,
    EndReason,
    EndResult,
    QueueStats,
    ReleaseReason,
)
from pairline.errors import FailedPrecondition, NotFound, ResourceExhausted

# Replica snapshots on the wire (Redis values, feed events): JSON arrays in these
# field orders (shorter and quicker to encode than objects); read back as the
# dicts agent_snapshot/contact_snapshot give. A dict (the older layout) is read
# as it is.
AGENT_FIELDS = ("p", "q", "cap", "use", "wu", "idle", "res", "con")
CONTACT_FIELDS = ("q", "ch", "pr", "arr", "seq", "dg", "ctx", "mp", "ex", "pf", "st", "d", "oo")
DECISION_FIELDS: tuple[str, ...] = tuple(Decision.__slots__)  # type: ignore[attr-defined]
decision_values = operator.attrgetter(*DECISION_FIELDS)
_ENCODER = json.JSONEncoder(separators=(",", ":"), check_circular=False)
# (what JSONEncoder.iterencode builds for a one-shot encode; None without the C module)
_c_make_encoder = getattr(json.encoder, "c_make_encoder", None)
_c_encode = None if _c_make_encoder is None else _c_make_encoder(
    None, _ENCODER.default, json.encoder.encode_basestring_ascii, None, ":", ",", False,
    False, True)


def wire_json(obj: Any) -> str:
    """Compact JSON of a wire snapshot or record: what
    ``JSONEncoder(separators=(",", ":"), check_circular=False).encode`` gives, with
    its C encoder made once here rather than on every call (a few µs each, and the
    claim path encodes several per decision)."""
    if _c_encode is None:  # (no C accelerator: the pure-Python encoder)
        return _ENCODER.encode(obj)
    return "".join(_c_encode(obj, 0))


def snapshot_of(kind: str, obj: Any) -> dict[str, Any] | None:
    """The snapshot dict of a decoded wire snapshot of ``kind`` (a/c)."""
    if obj is None or isinstance(obj, dict):
        return obj
    if kind == "a":
        return dict(zip(AGENT_FIELDS, obj, strict=True))
    snap = dict(zip(CONTACT_FIELDS, obj, strict=True))
    if snap["d"] is not None:
        snap["d"] = dict(zip(DECISION_FIELDS, snap["d"], strict=True))
    return snap

_SETTABLE_PRESENCE = (
    AgentStatus.LOGGED_OUT,
    AgentStatus.AVAILABLE,
    AgentStatus.AWAY,
    AgentStatus.BUSY,
)
_DEFAULT_CAPACITY = (1, 0, 0, 0, 0)  # one voice contact


class ContactState(IntEnum):
    WAITING = 1
    RESERVED = 2
    CONNECTED = 3


@dataclass(slots=True)
class Agent:
    agent_id: str
    presence: AgentStatus  # LOGGED_OUT, AVAILABLE, AWAY or BUSY; wrap-up is wrap_until
    queues: dict[str, int]
    capacity: list[int]
    in_use: list[int] = field(default_factory=lambda: [0] * N_CHANNELS)
    wrap_until: float = 0.0
    idle_since: float = 0.0
    reservations: dict[str, str] = field(default_factory=dict)  # decision id -> contact id
    connected: dict[str, str] = field(default_factory=dict)  # contact id -> decision id

    def status(self, now: float) -> AgentStatus:
        if self.presence is not AgentStatus.AVAILABLE:
            return self.presence
        if self.reservations:
            return AgentStatus.RESERVED
        if self.wrap_until > now:
            return AgentStatus.WRAP_UP
        if self.connected:
            return AgentStatus.BUSY
        return AgentStatus.AVAILABLE

    def routable_on(self, channel: Channel, now: float) -> bool:
        c = channel - 1
        return (
            self.presence is AgentStatus.AVAILABLE
            and self.wrap_until <= now
            and self.in_use[c] < self.capacity[c]
        )


@dataclass(slots=True)
class Contact:
    contact_id: str
    queue: str
    channel: Channel
    priority: int
    arrival: float
    seq: int
    digest: str
    context: tuple[tuple[str, float], ...]
    min_proficiency: int
    excluded: frozenset[str]
    preferred: frozenset[str] = frozenset()
    state: ContactState = ContactState.WAITING
    decision: Decision | None = None
    # Pairing inputs, set at arrival when the customer has a profile and a model
    # is active: the model input x (profile + context), the model version it was
    # built for, and the contact's percentile within its queue (diagonal).
    profile: np.ndarray | None = None
    profile_ms: int = 0  # the profile's source time (ms)
    x: np.ndarray | None = None
    x_version: str = ""
    # x folded into the model for scoring against agents: score = c0 + u . a
    u: np.ndarray | None = None
    c0: float = 0.0
    pct: float = 0.5
    # Priced pairing: the contact's best price-adjusted predicted outcome over the
    # queue's agents at arrival (its dual value; see pairing.contact_price_value).
    value: float = 0.0
    # The customer opted out: routed by the baseline, mode OPTED_OUT, no data.
    opted_out: bool = False

    @property
    def key(self) -> tuple[int, float, int, str]:
        return (-self.priority, self.arrival, self.seq, self.contact_id)


def _contact_of(contact_id: str, snap: dict[str, Any], c: Contact | None = None) -> Contact:
    """A contact as a snapshot describes it (``c`` updated in place when given, so
    what this replica derived from its profile stays)."""
    c = c or Contact(
        contact_id=contact_id, queue="", channel=Channel.VOICE, priority=0, arrival=0.0,
        seq=0, digest="", context=(), min_proficiency=0, excluded=frozenset(),
    )
    c.queue, c.channel, c.priority = snap["q"], Channel(snap["ch"]), int(snap["pr"])
    c.arrival, c.seq, c.digest = float(snap["arr"]), int(snap["seq"]), snap["dg"]
    c.context = tuple((str(k), float(v)) for k, v in snap["ctx"])
    c.min_proficiency = int(snap["mp"])
    c.excluded, c.preferred = frozenset(snap["ex"]), frozenset(snap["pf"])
    c.state = ContactState(snap["st"])
    c.decision = Decision.of(snap["d"]) if snap["d"] else None
    c.opted_out = bool(snap.get("oo", False))
    return c


class QueueIndex:
    """Member agents of one queue as contiguous arrays (see the module docstring)."""

    __slots__ = (
        "_buf",
        "bands_at",
        "bands_dirty",
        "free",
        "free_rows",
        "has_vec",
        "hi",
        "idle_since",
        "ids",
        "lo",
        "load",
        "logged_in",
        "name",
        "price",
        "prof",
        "ready_at",
        "routable",
        "row_of",
        "scores",
        "top",
        "vec",
    )

    def __init__(self, name: str, agent_dim: int = 1, rows: int = 16) -> None:
        self.name = name
        self.row_of: dict[str, int] = {}
        self.ids: list[str | None] = [None] * rows
        self.free_rows: list[int] = list(range(rows - 1, -1, -1))
        self.routable = np.zeros(rows, dtype=np.bool_)
        self.ready_at = np.zeros(rows, dtype=np.float64)
        self.free = np.zeros((rows, N_CHANNELS), dtype=np.int32)
        self.load = np.zeros(rows, dtype=np.int32)
        self.idle_since = np.zeros(rows, dtype=np.float64)
        self.prof = np.zeros(rows, dtype=np.int32)
        self.logged_in = np.zeros(rows, dtype=np.bool_)
        # Agent profile matrix (rows without a profile are zero, has_vec False).
        self.vec = np.zeros((rows, agent_dim), dtype=np.float32)
        self.has_vec = np.zeros(rows, dtype=np.bool_)
        # Diagonal-pairing percentile band of each agent (see pairing.refresh_bands).
        self.lo = np.full(rows, 0.5, dtype=np.float64)
        self.hi = np.full(rows, 0.5, dtype=np.float64)
        # Priced pairing: each agent's price (see pairing.charge); 0 is the mean.
        self.price = np.zeros(rows, dtype=np.float64)
        self.bands_dirty = True
        self.bands_at = -1.0
        self._buf = np.empty(rows, dtype=np.int64)
        self.scores = np.empty(rows, dtype=np.float32)  # scratch: one contact vs every row
        # 1 + the highest row ever given to an agent: rows from here on are unused
        # (a removed agent's row is given to the next one first).
        self.top = 0

    def __len__(self) -> int:
        return len(self.row_of)

    def _grow(self) -> None:
        old = len(self.ids)
        new = old * 2
        self.ids.extend([None] * old)
        self.free_rows.extend(range(new - 1, old - 1, -1))
        for name in (
            "routable", "ready_at", "free", "load", "idle_since", "prof", "logged_in", "vec",
            "has_vec", "lo", "hi", "price",
        ):
            arr = getattr(self, name)
            grown = np.zeros((new, *arr.shape[1:]), dtype=arr.dtype)
            grown[:old] = arr
            setattr(self, name, grown)
        self.lo[old:] = 0.5
        self.hi[old:] = 0.5
        self._buf = np.empty(new, dtype=np.int64)
        self.scores = np.empty(new, dtype=np.float32)

    def sync(self, agent: Agent, proficiency: int, vector: np.ndarray | None) -> None:
        row = self.row_of.get(agent.agent_id)
        if row is None:
            if not self.free_rows:
                self._grow()
            row = self.free_rows.pop()
            self.top = max(self.top, row + 1)
            self.row_of[agent.agent_id] = row
            self.ids[row] = agent.agent_id
            self.set_vector(row, vector)
        logged_in = agent.presence is not AgentStatus.LOGGED_OUT
        if logged_in != self.logged_in[row]:
            self.logged_in[row] = logged_in
            self.bands_dirty = True
        self.routable[row] = agent.presence is AgentStatus.AVAILABLE
        self.ready_at[row] = agent.wrap_until
        cap, use = agent.capacity, agent.in_use
        self.free[row] = (cap[0] - use[0], cap[1] - use[1], cap[2] - use[2], cap[3] - use[3],
                          cap[4] - use[4])
        self.load[row] = use[0] + use[1] + use[2] + use[3] + use[4]
        self.idle_since[row] = agent.idle_since
        self.prof[row] = proficiency

    def set_vector(self, row: int, vector: np.ndarray | None) -> None:
        if vector is None:
            self.vec[row] = 0.0
            self.has_vec[row] = False
        else:
            self.vec[row] = vector
            self.has_vec[row] = True
        self.lo[row] = self.hi[row] = 0.5
        self.price[row] = 0.0
        self.bands_dirty = True

    def remove(self, agent_id: str) -> None:
        row = self.row_of.pop(agent_id, None)
        if row is None:
            return
        self.ids[row] = None
        self.routable[row] = False
        self.logged_in[row] = False
        self.free[row] = 0
        self.set_vector(row, None)
        self.free_rows.append(row)

    def eligible_rows(
        self,
        channel: Channel,
        now: float,
        min_proficiency: int,
        excluded: Iterable[str] = (),
        only: Iterable[str] = (),
    ) -> np.ndarray:
        """Rows of agents that may take a contact of ``channel`` now, in row order
        (a fresh array). ``only``, when it names any eligible agent, narrows to those."""
        k = kernels.eligible_rows(
            self.routable, self.free, channel - 1, self.ready_at, now, self.prof,
            min_proficiency, self._buf,
        )
        rows = self._buf[:k].copy()
        if excluded:
            drop = [self.row_of[a] for a in excluded if a in self.row_of]
            if drop:
                rows = rows[~np.isin(rows, drop)]
        if only:
            keep = [self.row_of[a] for a in only if a in self.row_of]
            if keep:
                narrowed = rows[np.isin(rows, keep)]
                if narrowed.size:
                    rows = narrowed
        return rows

    def any_eligible(
        self, ids: Iterable[str], channel: Channel, now: float, min_proficiency: int,
        excluded: frozenset[str],
    ) -> bool:
        """Whether any agent named in ``ids`` may take a contact of ``channel`` now
        (the test of :meth:`eligible_rows`, for a few named agents only)."""
        ch = channel - 1
        for agent_id in ids:
            row = self.row_of.get(agent_id)
            if (row is not None and agent_id not in excluded and self.routable[row]
                    and self.free[row, ch] > 0 and self.ready_at[row] <= now
                    and self.prof[row] >= min_proficiency):
                return True
        return False

    def baseline_order(self, rows: np.ndarray) -> np.ndarray:
        """``rows`` ordered least loaded first, then longest idle (the switch's own rule)."""
        return rows[np.lexsort((rows, self.idle_since[rows], self.load[rows]))]


class TenantRouting:
    """Agents, contacts and reservations of one tenant."""

    def __init__(
        self,
        *,
        max_waiting: int,
        max_agents: int,
        max_queues: int = 1_000,
        preferred_hold_s: float = 30.0,
        agent_dim: int = 1,
        relax_steps: tuple[tuple[float, int], ...] = (),
    ) -> None:
        self.max_waiting = max_waiting
        self.max_agents = max_agents
        self.max_queues = max_queues
        self.preferred_hold_s = preferred_hold_s
        self.agent_dim = agent_dim
        self.relax_steps = relax_steps
        self.agent_vectors: dict[str, np.ndarray] = {}
        self.agents: dict[str, Agent] = {}
        self.contacts: dict[str, Contact] = {}
        self.queues: dict[str, QueueIndex] = {}
        self.waiting: dict[tuple[str, Channel], SortedList] = {}
        self.n_waiting = 0
        self.reservations: dict[str, Decision] = {}
        self._expiry: list[tuple[float, str]] = []
        self._seq = itertools.count()
        # Shared state (Redis): while ``recording``, the ids of agents and contacts
        # an operation changed, so they can be committed; the version of each as
        # last committed or applied (see :mod:`pairline.replica`).
        self.recording = False
        self.touched_agents: set[str] = set()
        self.touched_contacts: set[str] = set()
        self.agent_v: dict[str, int] = {}
        self.contact_v: dict[str, int] = {}
        # Ended contacts whose version is still remembered, with when it may be
        # forgotten (shared state: see SharedRouting.note_gone), oldest first.
        self.gone_v: collections.deque[tuple[float, str]] = collections.deque()
        # Two tenant-wide counters make "nothing is free" decisions safe across
        # replicas: ``av`` counts changes that may free an agent, ``wv`` contacts
        # that started waiting. An operation that found no agent (no contact)
        # commits only if no other replica changed that meanwhile. ``needs_*``:
        # this operation relied on the counter; ``bumps_*``: it moves it.
        self.av = 0
        self.wv = 0
        # Changed while Redis could not be reached: written back when it returns.
        self.dirty_agents: set[str] = set()
        self.dirty_contacts: set[str] = set()
        # Decision records to write with the commit:
        # (id, JSON, ttl ms, expires at, customer digest).
        self.outbox: list[tuple[str, bytes, int, float, str]] = []
        # The decisions of those records as encoded for them, by decision id:
        # (decision, its field values then, JSON array); see decision_wire.
        self.staged: dict[str, tuple[Decision, tuple[Any, ...], str]] = {}
        # While a commit is in flight: the version it will give each entity it
        # writes, keyed by (kind, id) (a feed event of exactly that version is the
        # commit's own, or another replica's that makes the commit fail and fetch).
        self.inflight: dict[tuple[str, str], int] = {}
        self.needs_av = self.needs_wv = self.bumps_av = self.bumps_wv = False
        # Reservations released by their offer timeout since start (a metric).
        self.expired_total = 0
        # Offers decided before this time do not expire here (0: all may). Set
        # while this mirror is out of touch with the shared state: an offer made
        # before may have been confirmed through another replica meanwhile, so
        # giving its contact or agent away again here could give it twice; it
        # expires once the mirror is rebuilt from the shared state.
        self.hold_before = 0.0

    def clear(self) -> None:
        """Forget every agent, contact and reservation (before a rebuild from the
        shared state); agent profiles stay."""
        self.hold_before = 0.0
        self.agents.clear()
        self.contacts.clear()
        self.queues.clear()
        self.waiting.clear()
        self.n_waiting = 0
        self.reservations.clear()
        self._expiry.clear()
        self.agent_v.clear()
        self.contact_v.clear()
        self.gone_v.clear()

    def _tc(self, contact_id: str) -> None:
        if self.recording:
            self.touched_contacts.add(contact_id)

    # ----------------------------------------------------------------- agents
    def _agent(self, agent_id: str) -> Agent:
        agent = self.agents.get(agent_id)
        if agent is None:
            raise NotFound(f"agent {agent_id!r} is not known")
        return agent

    def _sync(self, agent: Agent) -> None:
        if self.recording:
            self.touched_agents.add(agent.agent_id)
        vector = self.agent_vectors.get(agent.agent_id)
        for queue, prof in agent.queues.items():
            self.queue(queue).sync(agent, prof, vector)

    def admit_queues(self, names: Iterable[str], agent_id: str = "") -> list[str]:
        """Refuse (ResourceExhausted, nothing changed) when ``names`` bring the
        queues in use past ``max_queues`` (``agent_id``: the agent about to serve
        ``names`` instead of its queues now; a queue only it serves is counted as
        left). Before refusing, queues no agent serves and no live contact is in are
        forgotten: their names are returned (the caller drops what it keeps per
        queue too)."""
        names = set(names)
        new = {n for n in names if n not in self.queues}
        if not new or len(self.queues) + len(new) <= self.max_queues:
            return []
        busy = {c.queue for c in self.contacts.values()}
        dropped = self.drop_idle_queues(busy)
        agent = self.agents.get(agent_id)
        if agent is not None:
            left = sum(1 for q in agent.queues if q not in names and q not in busy
                       and q in self.queues and self.queues[q].row_of.keys() == {agent_id})
        else:
            left = 0
        if len(self.queues) - left + len(new) > self.max_queues:
            raise ResourceExhausted(
                f"tenant has the maximum of {self.max_queues} queues in use (served by an "
                "agent or with a live contact); end contacts or log agents out of queues "
                "no longer used, or raise max_queues")
        return dropped

    def drop_idle_queues(self, busy: set[str]) -> list[str]:
        """Forget the queues that no agent serves and no live contact is in (``busy``:
        the queues of the live contacts)."""
        idle = [n for n, index in self.queues.items() if not index.row_of and n not in busy]
        for name in idle:
            del self.queues[name]
        for key in [k for k, pool in self.waiting.items() if not pool and k[0] not in busy]:
            del self.waiting[key]
        return idle

    def queue(self, name: str) -> QueueIndex:
        index = self.queues.get(name)
        if index is None:
            index = self.queues[name] = QueueIndex(name, self.agent_dim)
        return index

    def set_agent_vector(self, agent_id: str, vector: np.ndarray | None) -> None:
        """Cache an agent's profile and write it into every queue matrix it is in."""
        if vector is None:
            self.agent_vectors.pop(agent_id, None)
        else:
            self.agent_vectors[agent_id] = vector
        agent = self.agents.get(agent_id)
        if agent is not None:
            for queue in agent.queues:
                index = self.queues[queue]
                index.set_vector(index.row_of[agent_id], vector)

    def min_proficiency(self, contact: Contact, now: float) -> int:
        """The contact's required proficiency, relaxed step by step as it waits."""
        need = contact.min_proficiency
        if need and self.relax_steps:
            waited = now - contact.arrival
            for after_s, at_most in self.relax_steps:
                if waited < after_s:
                    break
                need = min(need, at_most)
        return need

    def set_agent_state(
        self,
        agent_id: str,
        status: AgentStatus,
        queues: tuple[tuple[str, int], ...] | None,
        capacities: tuple[int, ...] | None,
        wrap_up_s: float,
        now: float,
    ) -> list[str]:
        """Apply a SetAgentState. Returns contact ids put back in the pool."""
        agent = self.agents.get(agent_id)
        if agent is None:
            if status is not AgentStatus.LOGGED_OUT and not queues:
                raise FailedPrecondition(
                    f"agent {agent_id!r} is new: give the queues it serves"
                )
            if len(self.agents) >= self.max_agents:
                raise ResourceExhausted(f"tenant has the maximum of {self.max_agents} agents")
        elif status is AgentStatus.LOGGED_OUT and agent.connected:
            raise FailedPrecondition(
                f"agent {agent_id!r} is handling {len(agent.connected)} contact(s): "
                "end them before logging out"
            )
        if agent is None:
            agent = Agent(
                agent_id=agent_id,
                presence=AgentStatus.LOGGED_OUT,
                queues={},
                capacity=list(_DEFAULT_CAPACITY),
                idle_since=now,
            )
            self.agents[agent_id] = agent
        returned: list[str] = []
        if status is AgentStatus.LOGGED_OUT:
            returned = [self._release(d, now) for d in list(agent.reservations)]
        if queues is not None:
            new = dict(queues)
            for gone in set(agent.queues) - set(new):
                self.queues[gone].remove(agent_id)
            agent.queues = new
        if capacities is not None:
            agent.capacity = list(capacities)
        was_routable = agent.presence is AgentStatus.AVAILABLE and agent.wrap_until <= now
        if status is AgentStatus.WRAP_UP:
            agent.presence = AgentStatus.AVAILABLE
            agent.wrap_until = now + wrap_up_s
            agent.idle_since = agent.wrap_until
        else:
            assert status in _SETTABLE_PRESENCE
            agent.presence = status
            if status is AgentStatus.AVAILABLE:
                agent.wrap_until = min(agent.wrap_until, now)
                if not was_routable:
                    agent.idle_since = now
            elif status is AgentStatus.LOGGED_OUT:
                agent.wrap_until = 0.0
        self._sync(agent)
        # Only an available agent may have become free for someone (an agent
        # going away or logging out frees no one: its returned contacts wait again,
        # which moves the other counter).
        self.bumps_av = self.recording and agent.presence is AgentStatus.AVAILABLE
        return returned

    def agent_ready(self, agent_id: str, now: float) -> Agent:
        """The agent says it is free: available now, wrap-up ended early."""
        agent = self._agent(agent_id)
        if agent.presence is AgentStatus.LOGGED_OUT:
            raise FailedPrecondition(f"agent {agent_id!r} is logged out: log it in first")
        was_routable = agent.presence is AgentStatus.AVAILABLE and agent.wrap_until <= now
        agent.presence = AgentStatus.AVAILABLE
        if agent.wrap_until > now:
            agent.wrap_until = now
            agent.idle_since = now
        elif not was_routable:
            agent.idle_since = now
        self._sync(agent)
        self.bumps_av = self.recording
        return agent

    def view(self, agent_id: str, now: float) -> AgentView:
        agent = self._agent(agent_id)
        return AgentView(
            agent_id=agent.agent_id,
            status=agent.status(now),
            queues=tuple(sorted(agent.queues.items())),
            capacities=tuple(agent.capacity),
            in_use=tuple(agent.in_use),
            idle_since=agent.idle_since,
            wrap_until=agent.wrap_until if agent.wrap_until > now else 0.0,
            contact_ids=tuple(sorted([*agent.reservations.values(), *agent.connected])),
        )

    # --------------------------------------------------------------- contacts
    def new_contact(
        self,
        contact_id: str,
        queue: str,
        channel: Channel,
        priority: int,
        digest: str,
        context: tuple[tuple[str, float], ...],
        min_proficiency: int,
        excluded: frozenset[str],
        now: float,
        preferred: frozenset[str] = frozenset(),
    ) -> Contact:
        return Contact(
            contact_id=contact_id,
            queue=queue,
            channel=channel,
            priority=priority,
            arrival=now,
            seq=next(self._seq),
            digest=digest,
            context=context,
            min_proficiency=min_proficiency,
            excluded=excluded,
            preferred=preferred,
        )

    def candidate_agents(self, contact: Contact, now: float) -> tuple[QueueIndex, np.ndarray]:
        """Eligible agents for ``contact`` (rows of its queue's index)."""
        index = self.queue(contact.queue)
        rows = index.eligible_rows(
            contact.channel,
            now,
            self.min_proficiency(contact, now),
            contact.excluded,
            contact.preferred,
        )
        return index, rows

    def enqueue(self, contact: Contact) -> int:
        """Put a new contact in the waiting pool; returns its 1-based position."""
        if self.n_waiting >= self.max_waiting:
            raise ResourceExhausted(
                f"tenant has the maximum of {self.max_waiting} waiting contacts"
            )
        self.contacts[contact.contact_id] = contact
        self.needs_av = self.recording  # queued because no agent was free
        return self._wait(contact)

    def _wait(self, contact: Contact) -> int:
        self._tc(contact.contact_id)
        self.bumps_wv = self.recording
        contact.state = ContactState.WAITING
        contact.decision = None
        pool = self.waiting.get((contact.queue, contact.channel))
        if pool is None:
            pool = self.waiting[(contact.queue, contact.channel)] = SortedList()
        pool.add(contact.key)
        self.n_waiting += 1
        return int(pool.index(contact.key)) + 1

    def _unwait(self, contact: Contact) -> None:
        self._tc(contact.contact_id)
        self.waiting[(contact.queue, contact.channel)].remove(contact.key)
        self.n_waiting -= 1

    def still_waiting(self, contact: Contact) -> int:
        """A waiting contact routed again found no agent: its position. (Shared state:
        the answer rests on the contact being unchanged and no agent freed
        meanwhile, so both are checked at commit.)"""
        self._tc(contact.contact_id)
        self.needs_av = self.recording
        return self.position(contact)

    def position(self, contact: Contact) -> int:
        if contact.state is not ContactState.WAITING:
            return 0
        return int(self.waiting[(contact.queue, contact.channel)].index(contact.key)) + 1

    def prefers_other(self, contact: Contact, agent_id: str, now: float) -> bool:
        """Whether ``contact`` is held, in contact surplus, for one of its preferred
        agents other than ``agent_id`` that is free for it now (RouteContact would
        give it to that one). Held for at most ``preferred_hold_s`` of waiting: an
        agent that became free without a call (its wrap-up over) may never ask, and
        the contact must not wait for it forever."""
        if (not contact.preferred or agent_id in contact.preferred
                or now - contact.arrival >= self.preferred_hold_s):
            return False
        return self.queue(contact.queue).any_eligible(
            contact.preferred, contact.channel, now, self.min_proficiency(contact, now),
            contact.excluded)

    def candidate_contacts(self, agent: Agent, now: float, limit: int) -> list[Contact]:
        """Waiting contacts ``agent`` may take now, best first by (priority, age), at most
        ``limit``, across every queue and channel the agent serves. A contact held
        for another, free, preferred agent (:meth:`prefers_other`) is not among them
        (as in :meth:`candidate_agents`, the preference narrows the choice)."""
        if agent.presence is not AgentStatus.AVAILABLE or agent.wrap_until > now:
            return []
        found: list[tuple[tuple[int, float, int, str], Contact]] = []
        for queue, prof in agent.queues.items():
            for c in range(N_CHANNELS):
                if agent.in_use[c] >= agent.capacity[c]:
                    continue
                pool = self.waiting.get((queue, Channel(c + 1)))
                if not pool:
                    continue
                taken = 0
                for key in pool:
                    contact = self.contacts[key[3]]
                    need = self.min_proficiency(contact, now)
                    if need > prof or agent.agent_id in contact.excluded:
                        continue
                    if contact.preferred and self.prefers_other(contact, agent.agent_id, now):
                        continue
                    found.append((key, contact))
                    taken += 1
                    if taken >= limit:
                        break
        found.sort(key=lambda kc: kc[0])
        if not found:
            self.needs_wv = self.recording  # idle because no contact waited
        return [c for _, c in found[:limit]]

    # ----------------------------------------------------------- reservations
    def reserve(self, contact: Contact, agent: Agent, decision: Decision, now: float) -> None:
        """Claim ``agent`` for ``contact`` under ``decision`` (must be eligible)."""
        assert contact.state is ContactState.WAITING
        c = contact.channel - 1
        if not agent.routable_on(contact.channel, now):
            raise FailedPrecondition(f"agent {agent.agent_id!r} is not free for this contact")
        if contact.contact_id in self.contacts:  # a waiting contact leaves the pool
            self._unwait(contact)
        else:
            self.contacts[contact.contact_id] = contact
        self._tc(contact.contact_id)
        contact.state = ContactState.RESERVED
        contact.decision = decision
        agent.in_use[c] += 1
        agent.reservations[decision.decision_id] = contact.contact_id
        self.reservations[decision.decision_id] = decision
        heapq.heappush(self._expiry, (decision.expires_at, decision.decision_id))
        self._sync(agent)

    def confirm(self, decision_id: str) -> Decision:
        decision = self.reservations.pop(decision_id, None)
        if decision is None:
            raise NotFound(f"decision {decision_id!r} holds no reservation (expired or unknown)")
        contact = self.contacts[decision.contact_id]
        agent = self.agents[decision.agent_id]
        del agent.reservations[decision_id]
        agent.connected[contact.contact_id] = decision_id
        self._tc(contact.contact_id)
        contact.state = ContactState.CONNECTED
        self._sync(agent)
        return decision

    def release(self, decision_id: str, reason: ReleaseReason, now: float) -> Decision:
        decision = self.reservations.get(decision_id)
        if decision is None:
            raise NotFound(f"decision {decision_id!r} holds no reservation (expired or unknown)")
        self._release(decision_id, now)
        if reason is ReleaseReason.AGENT_REJECTED:
            agent = self.agents[decision.agent_id]
            agent.presence = AgentStatus.AWAY
            self._sync(agent)
        return decision

    def _release(self, decision_id: str, now: float) -> str:
        """Undo a reservation: the agent as it was, the contact back in its place."""
        decision = self.reservations.pop(decision_id)
        agent = self.agents[decision.agent_id]
        contact = self.contacts[decision.contact_id]
        del agent.reservations[decision_id]
        agent.in_use[contact.channel - 1] -= 1
        self._sync(agent)
        self.bumps_av = self.recording
        self._wait(contact)
        return contact.contact_id

    def next_expiry(self) -> float:
        """When the next offer may time out (inf when none is pending)."""
        return self._expiry[0][0] if self._expiry else float("inf")

    def expire(self, now: float) -> list[Decision]:
        """Release every reservation whose offer timed out. Cheap when none did."""
        expired: list[Decision] = []
        held: list[tuple[float, str]] = []
        while self._expiry and self._expiry[0][0] <= now:
            entry = heapq.heappop(self._expiry)
            decision = self.reservations.get(entry[1])
            if decision is not None and decision.expires_at <= now:
                if decision.decided_at < self.hold_before:
                    held.append(entry)  # (see hold_before)
                    continue
                self._release(entry[1], now)
                expired.append(decision)
                self.expired_total += 1
        for entry in held:
            heapq.heappush(self._expiry, entry)
        return expired

    def end_contact(
        self, contact_id: str, reason: EndReason, wrap_up_s: float, now: float
    ) -> EndResult:
        contact = self.contacts.get(contact_id)
        if contact is None:
            raise NotFound(f"contact {contact_id!r} is not live (unknown or already ended)")
        if contact.state is ContactState.WAITING:
            if reason is EndReason.HANDLED:
                raise FailedPrecondition(
                    f"contact {contact_id!r} is waiting: it cannot have been handled"
                )
            self._unwait(contact)
            del self.contacts[contact_id]
            return EndResult(contact_id, "", 0.0)  # _unwait recorded it
        decision = contact.decision
        assert decision is not None
        agent = self.agents[decision.agent_id]
        if contact.state is ContactState.RESERVED:
            if reason is not EndReason.HANDLED:
                # Gone while ringing: the agent returns as it was, no wrap-up.
                del self.reservations[decision.decision_id]
                del agent.reservations[decision.decision_id]
                agent.in_use[contact.channel - 1] -= 1
                self._sync(agent)
                self.bumps_av = self.recording
                self._tc(contact_id)
                del self.contacts[contact_id]
                return EndResult(contact_id, agent.agent_id, 0.0)
            self.confirm(decision.decision_id)
        del agent.connected[contact_id]
        agent.in_use[contact.channel - 1] -= 1
        if agent.presence is not AgentStatus.LOGGED_OUT:
            agent.wrap_until = max(agent.wrap_until, now + wrap_up_s)
            agent.idle_since = agent.wrap_until
        self._sync(agent)
        self.bumps_av = self.recording
        self._tc(contact_id)
        del self.contacts[contact_id]
        return EndResult(contact_id, agent.agent_id, agent.wrap_until if wrap_up_s > 0 else 0.0)

    # ------------------------------------------------------ replica snapshots
    # Shared state (Redis) travels as whole snapshots of one agent or contact;
    # applying one makes this mirror's copy equal to it, derived indexes included.
    def agent_snapshot(self, agent_id: str) -> dict[str, object]:
        a = self.agents[agent_id]
        return {
            "p": int(a.presence), "q": sorted(a.queues.items()), "cap": a.capacity,
            "use": a.in_use, "wu": a.wrap_until, "idle": a.idle_since,
            "res": a.reservations, "con": a.connected,
        }

    def contact_snapshot(self, contact_id: str) -> dict[str, object] | None:
        """None when the contact has ended (is gone)."""
        c = self.contacts.get(contact_id)
        if c is None:
            return None
        return {
            "q": c.queue, "ch": int(c.channel), "pr": c.priority, "arr": c.arrival,
            "seq": c.seq, "dg": c.digest, "ctx": [list(kv) for kv in c.context],
            "mp": c.min_proficiency, "ex": sorted(c.excluded), "pf": sorted(c.preferred),
            "st": int(c.state), "d": c.decision.as_dict() if c.decision else None,
            "oo": c.opted_out,
        }

    def agent_wire(self, agent_id: str) -> str:
        """:meth:`agent_snapshot` encoded for the wire (see ``AGENT_FIELDS``)."""
        a = self.agents[agent_id]
        return wire_json((int(a.presence), sorted(a.queues.items()), a.capacity, a.in_use,
                          a.wrap_until, a.idle_since, a.reservations, a.connected))

    def contact_wire(self, contact_id: str) -> str:
        """:meth:`contact_snapshot` encoded for the wire; "" when the contact is gone."""
        c = self.contacts.get(contact_id)
        if c is None:
            return ""
        d = c.decision
        # The decision is spliced in as decision_wire gives it: the record staged with
        # the same commit (see :attr:`staged`) has encoded it already.
        head = wire_json((c.queue, int(c.channel), c.priority, c.arrival, c.seq, c.digest,
                          c.context, c.min_proficiency, sorted(c.excluded), sorted(c.preferred),
                          int(c.state)))
        decision = "null" if d is None else self.decision_wire(d)
        return f"{head[:-1]},{decision},{'true' if c.opted_out else 'false'}]"

    def decision_wire(self, d: Decision) -> str:
        """``d``'s fields (``DECISION_FIELDS``) as a JSON array; the encoding staged with
        this operation's record when it is of this very decision, unchanged."""
        values = decision_values(d)
        staged = self.staged.get(d.decision_id)
        if staged is not None and staged[0] is d and staged[1] == values:
            return staged[2]
        return wire_json(values)

    def stage_decision(self, d: Decision) -> str:
        """:meth:`decision_wire` of ``d``, kept for this operation's commit (its record
        and its contact's snapshot carry the same array, encoded once)."""
        values = decision_values(d)
        wire = wire_json(values)
        self.staged[d.decision_id] = (d, values, wire)
        return wire

    def apply_agent(self, agent_id: str, snap: dict[str, Any] | None) -> None:
        if snap is None:  # never committed: drop what this mirror made up
            agent = self.agents.pop(agent_id, None)
            if agent is not None:
                for queue in agent.queues:
                    self.queues[queue].remove(agent_id)
            return
        agent = self.agents.get(agent_id)
        if agent is None:
            agent = self.agents[agent_id] = Agent(
                agent_id=agent_id, presence=AgentStatus.LOGGED_OUT, queues={},
                capacity=list(_DEFAULT_CAPACITY),
            )
        queues = {q: int(p) for q, p in snap["q"]}
        for gone in set(agent.queues) - set(queues):
            self.queues[gone].remove(agent_id)
        agent.presence = AgentStatus(snap["p"])
        agent.queues = queues
        agent.capacity = [int(x) for x in snap["cap"]]
        agent.in_use = [int(x) for x in snap["use"]]
        agent.wrap_until = float(snap["wu"])
        agent.idle_since = float(snap["idle"])
        agent.reservations = dict(snap["res"])
        agent.connected = dict(snap["con"])
        self._sync(agent)

    def apply_contact(self, contact_id: str, snap: dict[str, Any] | None) -> None:
        old = self.contacts.get(contact_id)
        if old is not None:
            if old.state is ContactState.WAITING:
                pool = self.waiting.get((old.queue, old.channel))
                if pool is not None and old.key in pool:
                    pool.remove(old.key)
                    self.n_waiting -= 1
            elif old.state is ContactState.RESERVED and old.decision is not None:
                self.reservations.pop(old.decision.decision_id, None)
        if snap is None:
            self.contacts.pop(contact_id, None)
            return
        c = _contact_of(contact_id, snap, old)
        self.contacts[contact_id] = c
        if c.state is ContactState.WAITING:
            c.decision = None
            pool = self.waiting.get((c.queue, c.channel))
            if pool is None:
                pool = self.waiting[(c.queue, c.channel)] = SortedList()
            pool.add(c.key)
            self.n_waiting += 1
        elif c.state is ContactState.RESERVED and c.decision is not None:
            self.reservations[c.decision.decision_id] = c.decision
            heapq.heappush(self._expiry, (c.decision.expires_at, c.decision.decision_id))

    def merge_back(
        self,
        agents: dict[str, dict[str, Any]],
        contacts: dict[str, dict[str, Any] | None],
        now: float,
    ) -> list[str]:
        """After an outage of the shared state: fold what this replica decided on its
        own (``agents``, ``contacts``: its snapshots of what it changed) into the
        current shared state held here. Agents take their presence, queues and
        capacities; each contact keeps its decision if its agent still has room on
        that channel, and otherwise waits again (the decision is dropped; the switch
        learns it from NOT_FOUND on confirm). Nothing ever goes over capacity.
        Returns the ids of contacts whose decision was dropped."""
        for agent_id, snap in agents.items():
            status = AgentStatus(snap["p"])
            current = self.agents.get(agent_id)
            if current is not None and status is AgentStatus.LOGGED_OUT and current.connected:
                status = AgentStatus.BUSY  # calls it handles elsewhere: not logged out
            try:
                self.set_agent_state(agent_id, status, tuple(snap["q"]), tuple(snap["cap"]),
                                     0.0, now)
            except (FailedPrecondition, ResourceExhausted):
                continue
            agent = self.agents[agent_id]
            agent.wrap_until = max(agent.wrap_until, float(snap["wu"]))
            self._sync(agent)
        dropped = []
        merged: set[str] = set()  # decisions placed by this merge
        # Contacts that ended here first: the agents they held are free for the
        # decisions made here after them; then the connected ones (the switch has
        # them), then the offers.
        for contact_id, snap in sorted(contacts.items(), key=lambda kv: (
                kv[1] is not None,
                kv[1] is not None and ContactState(kv[1]["st"]) is not ContactState.CONNECTED)):
            current = self.contacts.get(contact_id)
            if snap is None:  # ended here
                if current is not None:
                    reason = (EndReason.HANDLED if current.state is ContactState.CONNECTED
                              else EndReason.ABANDONED)
                    self.end_contact(contact_id, reason, 0.0, now)
                continue
            if current is not None and current.state is not ContactState.WAITING:
                ours = snap.get("d") or {}
                if not (current.state is ContactState.RESERVED and current.decision is not None
                        and ContactState(snap["st"]) is ContactState.CONNECTED
                        and ours.get("decision_id") != current.decision.decision_id):
                    continue  # decided elsewhere too: the shared state's decision stands
                # Offered elsewhere (a commit whose answer timed out, so its caller
                # never learnt of it) but connected here: the switch follows ours.
                self._release(current.decision.decision_id, now)
            local = _contact_of(contact_id, snap)
            decision = local.decision
            if current is not None:
                current.decision = decision
                local = current
            local.state = ContactState.WAITING
            agent = self.agents.get(decision.agent_id) if decision is not None else None
            c = local.channel - 1
            if (agent is not None and agent.in_use[c] >= agent.capacity[c]
                    and ContactState(snap["st"]) is ContactState.CONNECTED):
                # Connected here, and the agent's place taken by an offer in the
                # shared state (made by a commit whose caller never got the answer,
                # or not confirmed yet): the switch connected ours, so that offer
                # yields (its contact waits again; a late confirm finds NOT_FOUND).
                for did, cid in list(agent.reservations.items()):
                    other = self.contacts.get(cid)
                    if did not in merged and other is not None and other.channel == local.channel:
                        self._release(did, now)
                        break
            if (decision is None or agent is None or agent.presence is AgentStatus.LOGGED_OUT
                    or agent.in_use[c] >= agent.capacity[c]):
                if decision is not None:
                    dropped.append(contact_id)
                if current is None:
                    with contextlib.suppress(ResourceExhausted):
                        self.enqueue(local)
                continue
            if current is not None:
                self._unwait(current)
            self.contacts[contact_id] = local
            local.state = ContactState.RESERVED
            agent.in_use[c] += 1
            agent.reservations[decision.decision_id] = contact_id
            self.reservations[decision.decision_id] = decision
            merged.add(decision.decision_id)
            heapq.heappush(self._expiry, (decision.expires_at, decision.decision_id))
            self._tc(contact_id)
            self._sync(agent)
            if ContactState(snap["st"]) is ContactState.CONNECTED:
                self.confirm(decision.decision_id)
        return dropped

    # ------------------------------------------------------------------ stats
    def queue_stats(self, queue: str | None, now: float) -> list[QueueStats]:
        names = sorted({*self.queues, *(q for q, _ in self.waiting)})
        if queue:
            names = [queue] if queue in names else []
        out = []
        for name in names:
            st = QueueStats(queue=name)
            for ch in Channel:
                pool = self.waiting.get((name, ch))
                if not pool:
                    continue
                oldest = min(k[1] for k in pool)  # priority order != age order
                st.channels.append(ChannelStats(ch, len(pool), now - oldest))
                st.waiting += len(pool)
                st.oldest_wait_s = max(st.oldest_wait_s, now - oldest)
            index = self.queues.get(name)
            if index is not None:
                for agent_id in index.row_of:
                    agent = self.agents[agent_id]
                    if agent.presence is AgentStatus.LOGGED_OUT:
                        continue
                    st.agents_logged_in += 1
                    st.agents_reserved += bool(agent.reservations)
                    st.agents_available += any(agent.routable_on(c, now) for c in Channel)
                    # (.get: a mirror applying the feed may hold an agent's snapshot
                    # a moment before its contact's; a read never fails on that)
                    st.contacts_in_service += sum(
                        1
                        for cid in (*agent.reservations.values(), *agent.connected)
                        if (c := self.contacts.get(cid)) is not None and c.queue == name
                    )
            out.append(st)
        return out
