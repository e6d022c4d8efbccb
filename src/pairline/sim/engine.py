"""The discrete-event contact center.

One run replays a :class:`~pairline.sim.workload.Workload` (pre-drawn contacts)
against a :class:`~pairline.sim.switch.Switch`, calling it exactly as an ACD
would:

- a contact arrives: ``route``; a decision is ``confirm``-ed at once and the
  contact is handled for its pre-drawn handle time; otherwise it waits, and
  ``abandon``-s when its patience runs out first;
- a handled contact ends: ``end`` (the agent goes to wrap-up) and ``outcome``;
  then ``ready`` for the agent, at once without wrap-up, or when its wrap-up ends
  (``ready`` during wrap-up would end it early). An agent with capacity left
  after taking a contact asks ``ready`` again, until nothing is offered.

Events live in one :mod:`heapq` (handle ends, wrap-up ends, patience ends),
merged with the sorted arrivals. At equal times heap events come first, in the
order they were scheduled. Everything the metrics need is kept per contact in
arrays (:class:`RunLog`).
"""

from __future__ import annotations

import heapq
import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from pairline.domain import N_CHANNELS, Channel
from pairline.sim.scenario import Scenario
from pairline.sim.switch import AgentLogin, Offer, Switch
from pairline.sim.workload import Workload

_END, _WRAP, _ABANDON = 0, 1, 2
# Contact states.
PENDING, WAITING, SERVING, DONE, ABANDONED = 0, 1, 2, 3, 4


def agent_logins(scenario: Scenario) -> tuple[AgentLogin, ...]:
    """The scenario's agents, ``a0``, ``a1``, ... in group order."""
    out: list[AgentLogin] = []
    for g in scenario.agents:
        for _ in range(g.count):
            out.append(AgentLogin(f"a{len(out)}", g.queues, g.capacities))
    return tuple(out)


def customer_key(i: int) -> str:
    return f"cust-{i}"


@dataclass(slots=True, eq=False)
class RunLog:
    """What happened to every contact (arrays of the workload's length) and agent."""

    state: np.ndarray  # i1: DONE or ABANDONED (every contact ends one way or the other)
    answer_s: np.ndarray  # f8: time the decision was made (nan if abandoned)
    end_s: np.ndarray  # f8: handle end, or abandonment time
    agent: np.ndarray  # i8: agent index (-1 if abandoned)
    mode: np.ndarray  # i1: the decision's Mode (0 if abandoned)
    predicted: np.ndarray  # f8: the service's predicted outcome (0 if none)
    success: np.ndarray  # bool: drawn outcome (False if abandoned)
    # Busy intervals (handling a contact, or wrap-up), possibly overlapping:
    # agent index, start, end.
    busy_agent: np.ndarray
    busy_start: np.ndarray
    busy_end: np.ndarray
    events: int
    wall_s: float


class Engine:
    """One run of one switch over one workload.

    ``prob``, if given, is the truth: ``prob(customer_index, agent_index)`` is the
    success probability of a pair, used to draw each handled contact's outcome
    when it ends (``outcome_u < prob``) and report it to the switch.
    """

    __slots__ = ("logins", "prob", "scenario", "switch", "workload")

    def __init__(self, scenario: Scenario, workload: Workload, switch: Switch,
                 prob: Callable[[int, int], float] | None = None) -> None:
        self.scenario = scenario
        self.workload = workload
        self.switch = switch
        self.prob = prob
        self.logins = agent_logins(scenario)

    def run(self) -> RunLog:
        """Play every contact to its end."""
        t0 = time.perf_counter()
        sc, wl, sw, prob = self.scenario, self.workload, self.switch, self.prob
        n = len(wl)
        arrival = wl.arrival_s.tolist()
        queue_of = wl.queue.tolist()
        customer = wl.customer.tolist()
        handle = wl.handle_s.tolist()
        patience = wl.patience_s.tolist()
        outcome_u = wl.outcome_u.tolist()
        q_names = [q.name for q in sc.queues]
        q_channels = [Channel(q.channel) for q in sc.queues]
        wrap_s = sc.wrap_up_s
        cids = [f"c{i}" for i in range(n)]
        cix = {c: i for i, c in enumerate(cids)}
        aids = [a.agent_id for a in self.logins]
        aix = {a: i for i, a in enumerate(aids)}
        cap = [list(a.capacities) for a in self.logins]
        # Channels an agent can take work on (capacity > 0 on a queue it serves).
        chans = []
        qch = {q.name: q.channel - 1 for q in sc.queues}
        for login in self.logins:
            chans.append(sorted({qch[q] for q, _ in login.queues
                                 if login.capacities[qch[q]] > 0}))
        in_use = [[0] * N_CHANNELS for _ in self.logins]
        wrap_until = [0.0] * len(self.logins)

        state = [PENDING] * n
        answer = [math.nan] * n
        end = [math.nan] * n
        agent_of = [-1] * n
        mode = [0] * n
        predicted = [0.0] * n
        success = [False] * n
        offer_of: list[Offer | None] = [None] * n
        b_agent: list[int] = []
        b_start: list[float] = []
        b_end: list[float] = []

        heap: list[tuple[float, int, int, int]] = []
        push, pop = heapq.heappush, heapq.heappop
        seq = 0
        events = 0
        inf = math.inf

        def start(offer: Offer, t: float) -> None:
            nonlocal seq
            i = cix[offer.contact_id]
            a = aix[offer.agent_id]
            if state[i] != WAITING and state[i] != PENDING:
                raise RuntimeError(f"switch offered contact {offer.contact_id} twice")
            ch = q_channels[queue_of[i]] - 1
            in_use[a][ch] += 1
            if in_use[a][ch] > cap[a][ch]:
                raise RuntimeError(f"switch gave agent {offer.agent_id} more than its capacity")
            sw.confirm(offer)
            state[i] = SERVING
            answer[i] = t
            agent_of[i] = a
            mode[i] = offer.mode
            predicted[i] = offer.predicted
            offer_of[i] = offer
            seq += 1
            push(heap, (t + handle[i], seq, _END, i))

        def ready(a: int, t: float) -> None:
            offer = sw.ready(aids[a])
            while offer is not None:
                start(offer, t)
                use, c = in_use[a], cap[a]
                if not any(use[ch] < c[ch] for ch in chans[a]):
                    return
                offer = sw.ready(aids[a])

        nxt = 0
        next_arrival = arrival[0] if n else inf
        while True:
            if heap and heap[0][0] <= next_arrival:
                t, _, kind, x = pop(heap)
                events += 1
                if kind == _END:
                    i = x
                    a = agent_of[i]
                    sw.advance(t)
                    sw.end(cids[i], wrap_s)
                    ch = q_channels[queue_of[i]] - 1
                    in_use[a][ch] -= 1
                    state[i] = DONE
                    end[i] = t
                    b_agent.append(a)
                    b_start.append(answer[i])
                    b_end.append(t)
                    if prob is not None:
                        ok = outcome_u[i] < prob(customer[i], a)
                        success[i] = ok
                        offer = offer_of[i]
                        assert offer is not None
                        sw.outcome(offer, ok)
                    offer_of[i] = None
                    if wrap_s > 0:
                        until = t + wrap_s
                        b_agent.append(a)
                        b_start.append(t)
                        b_end.append(until)
                        wrap_until[a] = max(wrap_until[a], until)
                        seq += 1
                        push(heap, (until, seq, _WRAP, a))
                    else:
                        ready(a, t)
                elif kind == _WRAP:
                    if t >= wrap_until[x]:  # a later end may have extended the wrap-up
                        sw.advance(t)
                        ready(x, t)
                else:  # _ABANDON
                    i = x
                    if state[i] == WAITING:
                        sw.advance(t)
                        sw.abandon(cids[i])
                        state[i] = ABANDONED
                        end[i] = t
            elif nxt < n:
                i = nxt
                t = next_arrival
                nxt += 1
                next_arrival = arrival[nxt] if nxt < n else inf
                events += 1
                sw.advance(t)
                state[i] = WAITING
                qi = queue_of[i]
                offer = sw.route(cids[i], q_names[qi], q_channels[qi], customer_key(customer[i]))
                if offer is not None:
                    start(offer, t)
                    if offer.contact_id != cids[i]:
                        raise RuntimeError("switch answered an arrival with another contact")
                elif patience[i] < inf:
                    seq += 1
                    push(heap, (t + patience[i], seq, _ABANDON, i))
            else:
                break
        sw.close()
        return RunLog(
            state=np.asarray(state, dtype=np.int8),
            answer_s=np.asarray(answer),
            end_s=np.asarray(end),
            agent=np.asarray(agent_of, dtype=np.int64),
            mode=np.asarray(mode, dtype=np.int8),
            predicted=np.asarray(predicted),
            success=np.asarray(success, dtype=bool),
            busy_agent=np.asarray(b_agent, dtype=np.int64),
            busy_start=np.asarray(b_start),
            busy_end=np.asarray(b_end),
            events=events,
            wall_s=time.perf_counter() - t0,
        )
