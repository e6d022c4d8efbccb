"""Many switch calls at once against one real server: capacity, exclusivity and
conservation of contacts hold under any interleaving, with the clock moving
while calls are in flight (so offers time out and wrap-ups end mid-round).

Each round issues a seeded random mix of calls for two tenants (the same agent
and contact ids in both) with ``asyncio.gather``. A model of each tenant takes
every reply into account; since the calls of a round may run in any order, the
model only accepts what some order allows, and between rounds it must equal the
server exactly: every agent's contacts and capacity in use, the waiting counts
per queue and channel, and created = ended + held + waiting. The baseline runs,
and so do the pairing policies with a model and profiles (batch assignment
included): the invariants do not depend on who is chosen.
"""

from __future__ import annotations

import asyncio
import itertools
import random
from collections import Counter, defaultdict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import grpc
import numpy as np
import pytest
from support import Client, Running, running, settings

from pairline._proto.pairline.v1 import common_pb2 as cpb
from pairline._proto.pairline.v1 import insights_pb2 as ipb
from pairline._proto.pairline.v1 import profiles_pb2 as ppb
from pairline._proto.pairline.v1 import router_pb2 as rpb
from pairline.model import dump_model

OK = grpc.StatusCode.OK
NOT_FOUND = grpc.StatusCode.NOT_FOUND
FAILED_PRECONDITION = grpc.StatusCode.FAILED_PRECONDITION
BROKEN = (grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN)
CODE_BY_NUMBER = {c.value[0]: c for c in grpc.StatusCode}

QUEUES = ("sales", "support", "billing")
OFFER_MS = 10_000  # support.tenant: offer_timeout_s=10
DEFAULT_WRAP_MS = 5_000  # support.tenant: wrap_up_s=5
VOICE, CHAT, EMAIL = cpb.CHANNEL_VOICE, cpb.CHANNEL_CHAT, cpb.CHANNEL_EMAIL
ADVANCES_S = (0.25, 0.5, 1.0, 2.0, 3.0, 4.5, 6.0, 10.5)  # exact in binary: no rounding

AGENT_OPS = {"login", "logout", "away", "busy", "available", "wrapup", "ready"}
CONTACT_OPS = {"route_new", "route_retry", "confirm", "release", "end"}
# Calls that change routing state (the ones counted towards the 2,000).
WRITES = AGENT_OPS | CONTACT_OPS


def ms(seconds: float) -> int:
    return round(seconds * 1000)


@dataclass
class Op:
    """One call of a round, and its outcome once run."""

    kind: str
    method: str  # Router / Insights method name
    request: Any
    agent: str = ""
    contact: str = ""
    decision: str = ""
    wrap_ms: int = 0
    code: grpc.StatusCode | None = None
    reply: Any = None


@dataclass
class MAgent:
    agent_id: str
    queues: dict[str, int]
    caps: tuple[int, ...]  # per channel, index = channel - 1
    presence: str = "out"  # out | available | away | busy
    exists: bool = False
    wrap_ms: int = 0  # unix ms the wrap-up ends, as the server last reported (0: none)

    def login(self) -> rpb.SetAgentStateRequest:
        return rpb.SetAgentStateRequest(
            agent_id=self.agent_id,
            status=rpb.AGENT_STATUS_AVAILABLE,
            queues=[rpb.QueueMembership(queue=q, proficiency=p) for q, p in self.queues.items()],
            capacities=[
                rpb.ChannelCapacity(channel=i + 1, capacity=c) for i, c in enumerate(self.caps)
            ],
        )


@dataclass
class MContact:
    contact_id: str
    queue: str
    channel: int
    min_prof: int
    excluded: frozenset[str]
    decision: str | None = None  # the live decision holding it, None while waiting


@dataclass
class MDecision:
    decision_id: str
    contact: str
    agent: str
    channel: int
    expires_ms: int
    confirmed: bool = False


class Tenant:
    """The model of one tenant's routing state, as the switch can know it from replies."""

    def __init__(self, name: str, client: Client, rng: random.Random,
                 policy: str = "baseline", monitor: bool = False) -> None:
        self.name = name
        self.client = client
        self.rng = rng
        self.policy = policy
        self.monitor = monitor
        self.customer_keys = [f"+1555{i:06d}" for i in range(60)]
        self.agents: dict[str, MAgent] = {}
        for i in range(40):
            qs = rng.sample(QUEUES, rng.choice((1, 1, 2)))
            if i < 26:  # voice agents
                caps = (1, 0, 0, 0, 0)
            else:  # chat agents, some also on voice
                caps = (rng.choice((0, 1)), rng.choice((2, 3)), 0, 0, 0)
            aid = f"a{i:02d}"
            self.agents[aid] = MAgent(aid, {q: rng.randrange(20, 95, 5) for q in qs}, caps)
        self.contacts: dict[str, MContact] = {}  # live: waiting, reserved or connected
        self.decisions: dict[str, MDecision] = {}  # live reservations / connections
        self.dead: set[str] = set()  # decision ids no longer live
        self.ended: set[str] = set()
        self.created = 0
        self.seq = itertools.count()
        self.stats: Counter[str] = Counter()

    async def setup_pairing(self, model_seed: int) -> None:
        """A model, and profiles for most agents and for half the customers."""
        gen = np.random.default_rng(model_seed)
        model = dump_model(version="v1", W=gen.normal(size=(4, 3)), wc=gen.normal(size=4),
                           wa=gen.normal(size=3), b=0.0)
        p = self.client.profiles
        await p.UploadModel(ppb.UploadModelRequest(model=model, activate=True))
        await p.UpsertAgentProfiles(ppb.AgentProfileBatch(profiles=[
            ppb.AgentProfile(agent_id=a, vector=gen.normal(size=3).tolist(), source_time_ms=1)
            for i, a in enumerate(self.agents) if i % 4]))
        for key in self.customer_keys[::2]:
            await p.UpsertCustomerProfile(ppb.CustomerProfile(
                customer_key=key, vector=gen.normal(size=4).tolist(), source_time_ms=1))

    def check_choice(self, d: cpb.Decision, where: str) -> None:
        """Mode, policy and model version as the tenant's policy makes them."""
        if self.policy == "baseline" and not self.monitor:
            assert (d.mode, d.policy, d.model_version) == (cpb.MODE_BASELINE, "baseline", ""), where
            return
        assert d.model_version == "v1", where  # every decision reports the active model
        if self.monitor:
            assert d.mode in (cpb.MODE_BASELINE, cpb.MODE_NO_PROFILE), where
            if d.mode == cpb.MODE_BASELINE:
                assert d.policy == f"monitor:{self.policy}", where
        else:
            assert d.mode in (cpb.MODE_PAIRED, cpb.MODE_NO_PROFILE), where
            if d.mode == cpb.MODE_PAIRED:
                assert d.policy == self.policy, where
                self.stats["paired"] += 1

    # ------------------------------------------------------------------ plan
    def plan(self, n_new: int) -> list[Op]:
        rng = self.rng
        ops: list[Op] = []
        touched_agents: set[str] = set()

        def agent_op(kind: str, a: MAgent, request: Any, method: str = "SetAgentState") -> None:
            ops.append(Op(kind, method, request, agent=a.agent_id))
            touched_agents.add(a.agent_id)

        def state(a: MAgent, status: int, wrap_ms: int = 0) -> rpb.SetAgentStateRequest:
            return rpb.SetAgentStateRequest(agent_id=a.agent_id, status=status, wrap_up_ms=wrap_ms)

        for a in rng.sample(list(self.agents.values()), len(self.agents)):
            p = rng.random()
            if a.presence == "out":
                if p < 0.4:
                    agent_op("login", a, a.login())
            elif a.presence == "available":
                if p < 0.22:
                    agent_op("ready", a, rpb.AgentReadyRequest(agent_id=a.agent_id), "AgentReady")
                elif p < 0.26:
                    agent_op("away", a, state(a, rpb.AGENT_STATUS_AWAY))
                elif p < 0.29:
                    agent_op("busy", a, state(a, rpb.AGENT_STATUS_BUSY))
                elif p < 0.32:
                    wrap = rng.choice((0, 2_000, 7_000))
                    op = Op("wrapup", "SetAgentState", state(a, rpb.AGENT_STATUS_WRAP_UP, wrap),
                            agent=a.agent_id, wrap_ms=wrap or DEFAULT_WRAP_MS)
                    ops.append(op)
                    touched_agents.add(a.agent_id)
                elif p < 0.37:
                    agent_op("logout", a, state(a, rpb.AGENT_STATUS_LOGGED_OUT))
                elif p < 0.40:
                    agent_op("available", a, state(a, rpb.AGENT_STATUS_AVAILABLE))
            elif p < 0.3:
                agent_op("available", a, state(a, rpb.AGENT_STATUS_AVAILABLE))
            elif p < 0.5:
                agent_op("ready", a, rpb.AgentReadyRequest(agent_id=a.agent_id), "AgentReady")
            elif p < 0.55:
                agent_op("logout", a, state(a, rpb.AGENT_STATUS_LOGGED_OUT))

        for c in rng.sample(list(self.contacts.values()), len(self.contacts)):
            p = rng.random()
            cid = c.contact_id
            d = self.decisions.get(c.decision) if c.decision else None
            if d is None:  # waiting
                if p < 0.12:
                    ops.append(Op("route_retry", "RouteContact", self._route_req(c), contact=cid))
                elif p < 0.20:
                    reason = rng.choice((rpb.END_REASON_ABANDONED, rpb.END_REASON_TRANSFERRED))
                    ops.append(Op("end", "EndContact",
                                  rpb.EndContactRequest(contact_id=cid, reason=reason),
                                  contact=cid))
            elif not d.confirmed:  # reserved
                did = d.decision_id
                if p < 0.5:
                    ops.append(Op("confirm", "ConfirmDecision",
                                  rpb.ConfirmDecisionRequest(decision_id=did),
                                  contact=cid, decision=did))
                elif p < 0.57:
                    reason = rpb.RELEASE_REASON_NOT_CONNECTED
                    if d.agent not in touched_agents and rng.random() < 0.5:
                        reason = rpb.RELEASE_REASON_AGENT_REJECTED  # sets the agent away
                        touched_agents.add(d.agent)
                    ops.append(Op("release", "ReleaseDecision",
                                  rpb.ReleaseDecisionRequest(decision_id=did, reason=reason),
                                  agent=d.agent if reason == rpb.RELEASE_REASON_AGENT_REJECTED
                                  else "", contact=cid, decision=did))
                elif p < 0.62:
                    ops.append(Op("end", "EndContact",
                                  rpb.EndContactRequest(contact_id=cid,
                                                        reason=rpb.END_REASON_ABANDONED),
                                  contact=cid))
                elif p < 0.67:
                    ops.append(Op("route_retry", "RouteContact", self._route_req(c), contact=cid))
            elif p < 0.38:  # connected
                reason = rng.choice((rpb.END_REASON_HANDLED,) * 5 + (rpb.END_REASON_TRANSFERRED,))
                wrap = rng.choice((0, 0, 1_000, 3_000, 8_000))
                ops.append(Op("end", "EndContact",
                              rpb.EndContactRequest(contact_id=cid, reason=reason, wrap_up_ms=wrap),
                              contact=cid, wrap_ms=wrap or DEFAULT_WRAP_MS))

        for _ in range(n_new):
            c = self._new_contact()
            ops.append(Op("route_new", "RouteContact", self._route_req(c), contact=c.contact_id))
        for did in rng.sample(sorted(self.dead), min(3, len(self.dead))):
            ops.append(Op("confirm_dead", "ConfirmDecision",
                          rpb.ConfirmDecisionRequest(decision_id=did), decision=did))
        existing = [a for a in self.agents.values() if a.exists]
        for a in rng.sample(existing, min(8, len(existing))):
            ops.append(Op("snapshot", "GetAgentState",
                          rpb.GetAgentStateRequest(agent_id=a.agent_id), agent=a.agent_id))
        ops.append(Op("stats", "GetQueueStats", ipb.GetQueueStatsRequest()))
        return ops

    def _new_contact(self) -> MContact:
        rng = self.rng
        cid = f"c{next(self.seq):05d}"
        p = rng.random()
        channel = VOICE if p < 0.55 else CHAT if p < 0.95 else EMAIL  # nobody takes email
        p = rng.random()
        min_prof = 0 if p < 0.8 else 60 if p < 0.97 else 99
        excluded = frozenset()
        if rng.random() < 0.1:
            excluded = frozenset(rng.sample(sorted(self.agents), rng.randint(1, 4))) | {"ghost"}
        return MContact(cid, rng.choice(QUEUES), channel, min_prof, excluded)

    def _route_req(self, c: MContact) -> rpb.RouteContactRequest:
        return rpb.RouteContactRequest(
            contact_id=c.contact_id,
            queue=c.queue,
            channel=c.channel,
            priority=self.rng.choice((0, 0, 0, 1, 2, 5)),
            customer_key=self.rng.choice(self.customer_keys),
            min_proficiency=c.min_prof,
            excluded_agent_ids=sorted(c.excluded),
        )

    # ---------------------------------------------------------------- settle
    def settle(self, ops: list[Op], t0: int, t1: int) -> None:
        """Take a round's replies into the model, checking each against every order the
        round's calls could have run in. ``t0``/``t1``: clock (ms) before/after the round."""
        for op in ops:
            assert op.code is not None, f"{self.name}: {op.kind} got no reply"
            assert op.code not in BROKEN, f"{self.name}: {op.kind} {op.request} -> {op.reply}"
            self.stats[f"{op.kind}:{op.code.name}"] += 1
        by_agent = {op.agent: op for op in ops if op.kind in AGENT_OPS}
        by_contact = {op.contact: op for op in ops if op.kind in CONTACT_OPS}
        assert len(by_agent) == sum(op.kind in AGENT_OPS for op in ops)
        assert len(by_contact) == sum(op.kind in CONTACT_OPS for op in ops)
        logged_out = {a for a, op in by_agent.items() if op.kind == "logout" and op.code is OK}
        confirmed_now = {op.decision for op in ops if op.kind == "confirm" and op.code is OK}
        released = {op.decision for op in ops if op.kind == "release" and op.code is OK}
        ended = {c for c, op in by_contact.items() if op.kind == "end" and op.code is OK}
        live_before = dict(self.decisions)
        for op in ops:
            if op.kind == "route_new":
                assert op.code is OK, f"{self.name}: new contact {op.contact}: {op.reply}"
                r = op.request
                self.contacts[op.contact] = MContact(
                    op.contact, r.queue, r.channel, r.min_proficiency,
                    frozenset(r.excluded_agent_ids))
                self.created += 1

        def may_be_gone(d: MDecision) -> bool:
            """An unconfirmed reservation may have ended during the round by itself."""
            return d.agent in logged_out or d.expires_ms <= t1

        # Replies carrying decisions, and the codes every order allows.
        seen: dict[str, cpb.Decision] = {}
        for op in ops:
            self._check_reply(op, live_before, logged_out, confirmed_now, ended, may_be_gone,
                              t0, t1)
            if op.kind in ("route_new", "route_retry", "ready") and op.code is OK:
                d = op.reply
                if d.decision_id:
                    assert seen.setdefault(d.decision_id, d) == d, "one id, two decisions"
        new: dict[str, MDecision] = {}
        for did, d in seen.items():
            assert did not in self.dead, f"{self.name}: dead decision {did} handed out again"
            if did in live_before:
                known = live_before[did]
                assert (d.contact_id, d.agent_id) == (known.contact, known.agent)
                continue
            self._check_new_decision(d, by_agent, t0, t1)
            new[did] = MDecision(did, d.contact_id, d.agent_id, d.channel, d.offer_expires_at_ms)
            self.stats["decisions"] += 1

        for d in live_before.values():
            if d.agent in logged_out and (d.confirmed or d.decision_id in confirmed_now):
                assert d.contact in ended, (
                    f"{self.name}: agent {d.agent} logged out while connected to {d.contact}")

        def cut_short(d: MDecision) -> bool:
            """Ended by something other than the end of its contact."""
            confirmed = d.confirmed or d.decision_id in confirmed_now
            if d.decision_id in released:
                return True
            return not confirmed and (d.agent in logged_out or d.expires_ms <= t1)

        by_contact_decisions: dict[str, list[MDecision]] = defaultdict(list)
        for d in itertools.chain(live_before.values(), new.values()):
            by_contact_decisions[d.contact].append(d)
        survivors: dict[str, MDecision] = {}
        for cid, ds in by_contact_decisions.items():
            alive = [d for d in ds if not cut_short(d)]
            # No contact is ever held by two live decisions at the same time.
            assert len(alive) <= 1, (
                f"{self.name}: contact {cid} held by two live decisions: "
                f"{[(d.decision_id[:8], d.agent) for d in alive]}")
            if alive:
                survivors[cid] = alive[0]
            for d in ds:
                if cut_short(d) and d.expires_ms <= t1 and d.decision_id not in released:
                    self.stats["offers_lapsed_or_logged_out"] += 1
        for cid in ended:
            op = by_contact[cid]
            ds = by_contact_decisions.get(cid, [])
            if cid in survivors:
                assert op.reply.agent_id == survivors[cid].agent, (
                    f"{self.name}: {cid} ended from {op.reply.agent_id!r}, held by "
                    f"{survivors[cid].agent}")
            else:
                assert op.reply.agent_id in {"", *(d.agent for d in ds)}, op.reply

        # The new live state.
        self.decisions = {}
        for d in itertools.chain(live_before.values(), new.values()):
            keep = survivors.get(d.contact) is d and d.contact not in ended
            if keep:
                d.confirmed = d.confirmed or d.decision_id in confirmed_now
                self.decisions[d.decision_id] = d
            else:
                self.dead.add(d.decision_id)
        for cid in ended:
            del self.contacts[cid]
            self.ended.add(cid)
        for c in self.contacts.values():
            d = survivors.get(c.contact_id)
            c.decision = d.decision_id if d is not None else None
        for aid, op in by_agent.items():
            if op.code is not OK:
                continue
            a = self.agents[aid]
            a.exists = True
            a.presence = {"login": "available", "logout": "out", "away": "away", "busy": "busy",
                          "available": "available", "wrapup": "available",
                          "ready": "available"}[op.kind]
        for op in ops:
            if op.kind == "release" and op.code is OK and op.agent:
                self.agents[op.agent].presence = "away"  # rejected: the agent is set away
        # Capacity, reconstructed from the decisions alone.
        load: Counter[tuple[str, int]] = Counter(
            (d.agent, d.channel) for d in self.decisions.values())
        for (aid, ch), n in load.items():
            assert n <= self.agents[aid].caps[ch - 1], f"{self.name}: {aid} holds {n} on {ch}"
            if n >= 2:
                self.stats["multi_chat"] += 1

    def _check_reply(
        self,
        op: Op,
        live_before: dict[str, MDecision],
        logged_out: set[str],
        confirmed_now: set[str],
        ended: set[str],
        may_be_gone: Callable[[MDecision], bool],
        t0: int,
        t1: int,
    ) -> None:
        code, reply, kind = op.code, op.reply, op.kind
        where = f"{self.name}: {kind} agent={op.agent} contact={op.contact}: {code} {reply}"
        a = self.agents.get(op.agent)
        if kind == "login":
            assert code is OK, where
            assert reply.status == rpb.AGENT_STATUS_AVAILABLE and not reply.contact_ids, where
        elif kind == "logout":
            assert a is not None
            mine = [d for d in live_before.values() if d.agent == a.agent_id]
            connected = [d for d in mine if d.confirmed]
            if connected and not all(d.contact in ended for d in connected):
                assert code is FAILED_PRECONDITION, where
            elif not connected and not any(d.decision_id in confirmed_now for d in mine):
                assert code is OK, where
            else:
                assert code in (OK, FAILED_PRECONDITION), where
            if code is OK:
                assert reply.status == rpb.AGENT_STATUS_LOGGED_OUT, where
                assert not reply.contact_ids and not reply.in_use, where
            else:
                self.stats["logout_refused"] += 1
        elif kind in ("away", "busy"):
            assert code is OK, where
            want = rpb.AGENT_STATUS_AWAY if kind == "away" else rpb.AGENT_STATUS_BUSY
            assert reply.status == want, where
        elif kind == "available":
            assert code is OK, where
            assert reply.status in (rpb.AGENT_STATUS_AVAILABLE, rpb.AGENT_STATUS_RESERVED,
                                    rpb.AGENT_STATUS_BUSY), where
            assert reply.wrap_up_until_ms == 0, where
        elif kind == "wrapup":
            assert code is OK, where
            assert reply.status in (rpb.AGENT_STATUS_WRAP_UP, rpb.AGENT_STATUS_RESERVED), where
            assert t0 + op.wrap_ms <= reply.wrap_up_until_ms <= t1 + op.wrap_ms, where
        elif kind == "ready":
            assert a is not None
            if a.presence == "out":
                assert code is FAILED_PRECONDITION, where
                return
            assert code is OK, where
            assert reply.agent_id == a.agent_id, where
            if reply.decision_id:
                assert reply.contact_id, where
                self.check_choice(reply, where)
                self.stats["ready_handed_contact"] += 1
            else:
                assert reply.mode == cpb.MODE_QUEUED and not reply.contact_id, where
        elif kind in ("route_new", "route_retry"):
            assert code is OK, where
            assert reply.contact_id == op.contact and reply.queue == op.request.queue, where
            if reply.decision_id:
                assert reply.agent_id, where
                self.check_choice(reply, where)
            else:
                assert reply.mode == cpb.MODE_QUEUED and not reply.agent_id, where
                assert reply.queue_position >= 1 and reply.offer_expires_at_ms == 0, where
                self.stats["queued"] += 1
            held = self.contacts[op.contact].decision if kind == "route_retry" else None
            if held is not None and not (
                not live_before[held].confirmed and may_be_gone(live_before[held])
            ):
                # A retry for a contact that stays held answers its current decision.
                assert reply.decision_id == held, where
        elif kind in ("confirm", "release"):
            d = live_before[op.decision]
            if may_be_gone(d):
                assert code in (OK, NOT_FOUND), where
            else:
                assert code is OK, where
            if code is OK:
                assert (reply.contact_id, reply.agent_id) == (d.contact, d.agent), where
                if kind == "release" and op.agent:
                    assert reply.agent_status == rpb.AGENT_STATUS_AWAY, where
            else:
                self.stats[f"{kind}_too_late"] += 1
        elif kind == "confirm_dead":
            assert code is NOT_FOUND, where
        elif kind == "end":
            assert code is OK, where
            assert reply.contact_id == op.contact, where
            c = self.contacts[op.contact]
            d = live_before.get(c.decision) if c.decision else None
            if d is not None and d.confirmed:  # connected: handled puts its agent in wrap-up
                assert reply.agent_id == d.agent, where
                if op.request.reason == rpb.END_REASON_HANDLED:
                    assert reply.wrap_up_until_ms >= t0 + op.wrap_ms, where
                    self.stats["wrap_ups"] += 1
            elif reply.agent_id:  # gone while ringing: no wrap-up
                assert reply.wrap_up_until_ms == 0, where
        elif kind == "snapshot":
            assert code is OK, where
            self._check_view(reply, where)
        elif kind == "stats":
            assert code is OK, where
            assert all(q.waiting >= 0 for q in reply.queues), where
        else:
            raise AssertionError(f"unknown op {kind}")

    def _check_view(self, st: rpb.AgentState, where: str) -> None:
        """Any AgentState, at any moment: within capacity, consistent with itself."""
        caps = {c.channel: c.capacity for c in st.capacities}
        in_use = {c.channel: c.capacity for c in st.in_use}
        for ch, n in in_use.items():
            assert n <= caps.get(ch, 0), f"over capacity: {where}"
        assert sum(in_use.values()) == len(st.contact_ids), where
        assert len(set(st.contact_ids)) == len(st.contact_ids), where
        assert not set(st.contact_ids) & self.ended, f"ended contact held: {where}"
        if in_use.get(CHAT, 0) >= 2:
            self.stats["multi_chat"] += 1

    def _check_new_decision(
        self, d: cpb.Decision, by_agent: dict[str, Op], t0: int, t1: int
    ) -> None:
        where = f"{self.name}: decision {d}"
        assert d.contact_id in self.contacts, f"decision for a contact not live: {where}"
        a = self.agents.get(d.agent_id)
        assert a is not None, where
        c = self.contacts[d.contact_id]
        assert (d.queue, d.channel) == (c.queue, c.channel), where
        self.check_choice(d, where)
        assert c.queue in a.queues and a.queues[c.queue] >= c.min_prof, f"ineligible: {where}"
        assert d.agent_id not in c.excluded, f"excluded agent chosen: {where}"
        assert a.caps[c.channel - 1] > 0, f"no capacity on channel: {where}"
        assert t0 <= d.decided_at_ms <= t1, where
        assert d.offer_expires_at_ms == d.decided_at_ms + OFFER_MS, where
        op = by_agent.get(a.agent_id)
        freed = op is not None and op.code is OK and op.kind in ("login", "available", "ready")
        present = a.presence == "available" or freed or (
            op is not None and op.code is OK and op.kind == "wrapup")
        assert present, f"agent was never available this round: {where}"
        # WRAP_UP sets a new end (which may be earlier than the one it replaces).
        rewrapped = op is not None and op.code is OK and op.kind == "wrapup" and (
            op.reply.wrap_up_until_ms <= d.decided_at_ms)
        assert freed or rewrapped or a.wrap_ms <= d.decided_at_ms, f"agent in wrap-up: {where}"

    # ------------------------------------------------------------- reconcile
    async def reconcile(self, t: int, wrap_hint: dict[str, int] | None = None) -> None:
        """The server equals the model: per agent, per queue and channel, and in total."""
        r = self.client.router
        existing = [a for a in self.agents.values() if a.exists]
        states = await asyncio.gather(
            *(r.GetAgentState(rpb.GetAgentStateRequest(agent_id=a.agent_id)) for a in existing))
        held: dict[str, list[MDecision]] = defaultdict(list)
        for d in self.decisions.values():
            held[d.agent].append(d)
        total_held = 0
        for a, st in zip(existing, states, strict=True):
            where = f"{self.name}: {a.agent_id} {a.presence} {st}"
            self._check_view(st, where)
            mine = held.get(a.agent_id, [])
            assert sorted(st.contact_ids) == sorted(d.contact for d in mine), where
            assert {c.channel: c.capacity for c in st.in_use} == dict(
                Counter(d.channel for d in mine)), where
            assert {c.channel: c.capacity for c in st.capacities} == {
                i + 1: n for i, n in enumerate(a.caps) if n}, where
            total_held += len(st.contact_ids)
            if a.presence == "available":
                if any(not d.confirmed for d in mine):
                    want = rpb.AGENT_STATUS_RESERVED
                elif st.wrap_up_until_ms > t:
                    want = rpb.AGENT_STATUS_WRAP_UP
                elif mine:
                    want = rpb.AGENT_STATUS_BUSY
                else:
                    want = rpb.AGENT_STATUS_AVAILABLE
            else:
                want = {"out": rpb.AGENT_STATUS_LOGGED_OUT, "away": rpb.AGENT_STATUS_AWAY,
                        "busy": rpb.AGENT_STATUS_BUSY}[a.presence]
            assert st.status == want, where
            if wrap_hint and a.agent_id in wrap_hint:
                w = wrap_hint[a.agent_id]
                assert st.wrap_up_until_ms == (w if w > t else 0), where
            a.wrap_ms = st.wrap_up_until_ms
            if st.status == rpb.AGENT_STATUS_WRAP_UP:
                self.stats["seen_wrap_up"] += 1

        stats = await self.client.insights.GetQueueStats(ipb.GetQueueStatsRequest())
        waiting = Counter(
            (c.queue, c.channel) for c in self.contacts.values() if c.decision is None)
        server_waiting = {
            (q.queue, ch.channel): ch.waiting for q in stats.queues for ch in q.channels
        }
        assert server_waiting == dict(waiting), f"{self.name}: waiting {server_waiting} != model"
        in_service = Counter(self.contacts[d.contact].queue for d in self.decisions.values())
        for q in stats.queues:
            members = [a for a in existing if q.queue in a.queues]
            assert q.waiting == sum(n for (name, _), n in waiting.items() if name == q.queue)
            assert q.contacts_in_service == in_service[q.queue], f"{self.name}: {q}"
            assert q.agents_logged_in == sum(a.presence != "out" for a in members), q
            assert q.agents_reserved == sum(
                a.presence != "out" and any(not d.confirmed for d in held.get(a.agent_id, []))
                for a in members), q
        # Conservation: every contact ever routed is ended, held or waiting.
        server_total_waiting = sum(q.waiting for q in stats.queues)
        assert len(self.ended) + total_held + server_total_waiting == self.created, (
            f"{self.name}: {len(self.ended)} ended + {total_held} held + "
            f"{server_total_waiting} waiting != {self.created} created")
        assert total_held == len(self.decisions)

    async def drain(self, execute: Callable[[Tenant, Op], Awaitable[None]], t: int) -> None:
        """End every live contact and log every agent out: each call finds what the model
        says it holds; afterwards nothing is held or waiting."""
        ops = []
        for c in self.contacts.values():
            d = self.decisions.get(c.decision) if c.decision else None
            reason = (rpb.END_REASON_HANDLED if d is not None and d.confirmed
                      else rpb.END_REASON_ABANDONED)
            ops.append(Op("end", "EndContact",
                          rpb.EndContactRequest(contact_id=c.contact_id, reason=reason),
                          contact=c.contact_id, wrap_ms=DEFAULT_WRAP_MS))
        await asyncio.gather(*(execute(self, op) for op in ops))
        for op in ops:
            c = self.contacts[op.contact]
            d = self.decisions.get(c.decision) if c.decision else None
            assert op.code is OK, f"{self.name}: contact {op.contact} lost: {op.reply}"
            assert op.reply.agent_id == (d.agent if d is not None else ""), op.reply
        self.settle(ops, t, t)
        assert not self.contacts and not self.decisions
        await self.reconcile(t)
        outs = [Op("logout", "SetAgentState",
                   rpb.SetAgentStateRequest(agent_id=a.agent_id,
                                            status=rpb.AGENT_STATUS_LOGGED_OUT),
                   agent=a.agent_id)
                for a in self.agents.values() if a.exists]
        await asyncio.gather(*(execute(self, op) for op in outs))
        assert all(op.code is OK for op in outs), [op.reply for op in outs if op.code is not OK]
        self.settle(outs, t, t)
        await self.reconcile(t)
        stats = await self.client.insights.GetQueueStats(ipb.GetQueueStatsRequest())
        assert sum(q.waiting + q.contacts_in_service + q.agents_logged_in
                   for q in stats.queues) == 0, stats


# ------------------------------------------------------------------ transports
async def run_unary(tenant: Tenant, op: Op) -> None:
    stub = tenant.client.insights if op.method == "GetQueueStats" else tenant.client.router
    try:
        op.reply = await getattr(stub, op.method)(op.request)
        op.code = OK
    except grpc.aio.AioRpcError as err:
        op.code, op.reply = err.code(), err.details()


EVENT_FIELDS = {
    "RouteContact": ("route_contact", "decision"),
    "AgentReady": ("agent_ready", "decision"),
    "SetAgentState": ("set_agent_state", "agent_state"),
    "ConfirmDecision": ("confirm_decision", "confirm_decision"),
    "ReleaseDecision": ("release_decision", "release_decision"),
    "EndContact": ("end_contact", "end_contact"),
}


@dataclass
class Stream:
    call: Any
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    reader: asyncio.Task[None] | None = None


class Streams:
    """Several Connect streams per tenant; events of a round are spread over them and
    pipelined; replies are matched by request_id."""

    def __init__(self, tenants: list[Tenant], per_tenant: int) -> None:
        self.streams: dict[str, list[Stream]] = {}
        self.pending: dict[str, asyncio.Future[rpb.SwitchReply]] = {}
        self.strays: list[rpb.SwitchReply] = []
        self.ids = itertools.count()
        self.rng = random.Random(7)
        for t in tenants:
            self.streams[t.name] = []
            for _ in range(per_tenant):
                s = Stream(t.client.router.Connect(timeout=None))
                s.reader = asyncio.create_task(self._read(s))
                self.streams[t.name].append(s)

    async def _read(self, s: Stream) -> None:
        try:
            async for reply in s.call:
                fut = self.pending.pop(reply.request_id, None)
                if fut is None or fut.done():
                    self.strays.append(reply)
                else:
                    fut.set_result(reply)
        except grpc.aio.AioRpcError as err:  # the stream broke: fail what waits, at once
            for fut in self.pending.values():
                if not fut.done():
                    fut.set_exception(AssertionError(f"Connect stream failed: {err}"))
            raise

    async def run(self, tenant: Tenant, op: Op) -> None:
        if op.method not in EVENT_FIELDS:
            await run_unary(tenant, op)  # reads are unary: both views must agree
            return
        event_field, reply_field = EVENT_FIELDS[op.method]
        rid = f"{tenant.name}-{next(self.ids)}"
        fut: asyncio.Future[rpb.SwitchReply] = asyncio.get_running_loop().create_future()
        self.pending[rid] = fut
        s = self.rng.choice(self.streams[tenant.name])
        async with s.lock:
            await s.call.write(rpb.SwitchEvent(request_id=rid, **{event_field: op.request}))
        reply = await asyncio.wait_for(fut, 30)
        assert reply.request_id == rid
        which = reply.WhichOneof("reply")
        if which == "error":
            op.code, op.reply = CODE_BY_NUMBER[reply.error.code], reply.error.message
        else:
            assert which == reply_field, f"{op.method} answered with {which}"
            op.code, op.reply = OK, getattr(reply, reply_field)

    async def close(self) -> None:
        for streams in self.streams.values():
            for s in streams:
                await s.call.done_writing()
        for streams in self.streams.values():
            for s in streams:
                assert s.reader is not None
                await asyncio.wait_for(s.reader, 30)
                assert await s.call.code() is OK
        assert not self.pending, f"{len(self.pending)} events never answered"
        assert not self.strays, f"unexpected replies: {self.strays[:3]}"


# ----------------------------------------------------------------------- driver
async def drive(
    r: Running, execute: Callable[[Tenant, Op], Awaitable[None]], tenants: list[Tenant],
    rng: random.Random, min_writes: int = 2000,
) -> Counter[str]:
    """Rounds of concurrent calls until ``min_writes`` routing calls have been made."""
    t0 = ms(r.clock.now())
    writes = rounds = 0
    kinds: Counter[str] = Counter()
    while writes < min_writes:
        batch: list[tuple[Tenant | None, Op]] = []
        for t in tenants:
            batch += [(t, op) for op in t.plan(n_new=50 if rounds == 0 else 30)]
        if rounds and (rounds % 4 == 3 or rng.random() < 0.7):
            delay = rng.random() * 0.01
            # Every fourth round the clock passes the offer timeout while calls are in flight.
            step = OFFER_MS / 1000 + 0.5 if rounds % 4 == 3 else rng.choice(ADVANCES_S)
            batch.append((None, Op("advance", "", (delay, step))))
        rng.shuffle(batch)

        async def one(t: Tenant | None, op: Op) -> None:
            if t is None:  # the clock moves while calls are in flight
                await asyncio.sleep(op.request[0])
                r.clock.advance(op.request[1])
                return
            await execute(t, op)

        await asyncio.gather(*(one(t, op) for t, op in batch))
        t1 = ms(r.clock.now())
        for t in tenants:
            mine = [op for owner, op in batch if owner is t]
            t.settle(mine, t0, t1)
            wrap_hint = _wrap_hint(mine)
            await t.reconcile(t1, wrap_hint)
        for _, op in batch:
            kinds[op.kind] += 1
            writes += op.kind in WRITES
        t0 = t1
        rounds += 1
    for t in tenants:
        await t.drain(execute, t0)
    kinds["rounds"] = rounds
    kinds["writes"] = writes
    return kinds


def _wrap_hint(ops: list[Op]) -> dict[str, int]:
    """Agents whose wrap-up end is known from the round's replies alone: those whose only
    wrap-up change was the end of connected contacts (the latest reply has the maximum)."""
    ends: dict[str, int] = {}
    other: set[str] = set()
    for op in ops:
        if op.kind == "end" and op.code is OK and op.reply.wrap_up_until_ms:
            ends[op.reply.agent_id] = max(ends.get(op.reply.agent_id, 0),
                                          op.reply.wrap_up_until_ms)
        elif op.kind in AGENT_OPS and op.code is OK:
            other.add(op.agent)
    return {a: w for a, w in ends.items() if a not in other}


def _assert_exercised(tenants: list[Tenant], kinds: Counter[str]) -> None:
    """The mix really covered the interesting paths (otherwise the invariants prove little)."""
    stats: Counter[str] = sum((t.stats for t in tenants), Counter())
    assert kinds["writes"] >= 2000
    for key in ("queued", "ready_handed_contact", "wrap_ups", "seen_wrap_up", "multi_chat",
                "offers_lapsed_or_logged_out", "logout_refused", "confirm:OK",
                "release:OK", "end:OK", "ready:OK", "login:OK", "logout:OK", "away:OK",
                "confirm_dead:NOT_FOUND", "decisions"):
        assert stats[key] > 0, f"the mix never exercised {key}: {dict(stats)}"
    if any(t.policy != "baseline" and not t.monitor for t in tenants):
        assert stats["paired"] > 0, "the pairing policy never paired"


async def tenants_for(r: Running, rng: random.Random, policy: str,
                      monitor: bool = False) -> list[Tenant]:
    tenants = [Tenant("acme", r.acme, random.Random(rng.random()), policy, monitor),
               Tenant("globex", r.globex, random.Random(rng.random()), policy, monitor)]
    if policy != "baseline" or monitor:
        for i, t in enumerate(tenants):
            await t.setup_pairing(model_seed=i)
    return tenants


class TestConcurrentUnary:
    @pytest.mark.parametrize(("policy", "monitor"), [
        ("baseline", False), ("greedy", False), ("greedy", True)])
    async def test_invariants_hold_under_concurrent_unary_calls(
        self, policy: str, monitor: bool
    ) -> None:
        """2,000+ concurrent unary routing calls never over-book, double-book or lose a contact."""
        rng = random.Random(20_261_129)
        async with running(settings(policy=policy, monitor=monitor)) as r:
            tenants = await tenants_for(r, rng, policy, monitor)
            kinds = await drive(r, run_unary, tenants, rng)
            _assert_exercised(tenants, kinds)


class TestConcurrentStreams:
    @pytest.mark.parametrize("policy", ["baseline", "diagonal"])
    async def test_invariants_hold_over_several_connect_streams(self, policy: str) -> None:
        """The same mix pipelined over several Connect streams per tenant keeps every invariant."""
        rng = random.Random(4_242)
        async with running(settings(policy=policy)) as r:
            tenants = await tenants_for(r, rng, policy)
            streams = Streams(tenants, per_tenant=3)
            try:
                kinds = await drive(r, streams.run, tenants, rng)
            finally:
                await streams.close()
            _assert_exercised(tenants, kinds)
