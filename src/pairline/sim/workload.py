"""The contacts of one run, drawn once from the seed (common random numbers).

Every policy compared in a run sees the same :class:`Workload`: the same arrival
times, queues, customers, handle times, patience and outcome draws, so that a
difference between two policies is due to the policies and not to luck. Each
stream has its own child of the seed's :class:`numpy.random.SeedSequence`, so
changing one (say, the patience distribution) leaves the others as they were.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pairline.sim.scenario import Scenario

# Child seed sequences, by stream (the order is part of reproducibility: append only).
STREAMS = ("arrivals", "customers", "handle", "patience", "outcome", "truth", "profiles",
           "service", "ceiling")


def streams(seed: int) -> dict[str, np.random.SeedSequence]:
    children = np.random.SeedSequence(seed).spawn(len(STREAMS))
    return dict(zip(STREAMS, children, strict=True))


def child(ss: np.random.SeedSequence, i: int) -> np.random.Generator:
    """The ``i``-th sub-stream of ``ss`` (the same whatever else was drawn)."""
    return np.random.default_rng(
        np.random.SeedSequence(ss.entropy, spawn_key=(*ss.spawn_key, i)))


def arrival_times(
    rate_per_s: float,
    horizon_s: float,
    profile: tuple[tuple[float, float], ...],
    rng: np.random.Generator,
) -> np.ndarray:
    """A Poisson process on ``[0, horizon_s)`` whose rate is ``rate_per_s`` times the
    profile's multiplier of the segment (piecewise constant, repeated). Each
    segment draws its own count and uniform times: exact for a Poisson process."""
    segments = profile or ((horizon_s, 1.0),)
    out = []
    t = 0.0
    while t < horizon_s:
        for duration, mult in segments:
            end = min(t + duration, horizon_s)
            n = rng.poisson(rate_per_s * mult * (end - t))
            out.append(rng.uniform(t, end, n))
            t = end
            if t >= horizon_s:
                break
    times = np.concatenate(out) if out else np.zeros(0)
    times.sort()
    return times


@dataclass(frozen=True, slots=True, eq=False)
class Workload:
    """Contacts in arrival order; arrays of length ``n``."""

    arrival_s: np.ndarray  # f8, sorted
    queue: np.ndarray  # i8, index into scenario.queues
    customer: np.ndarray  # i8, index of the customer (0..n_customers-1)
    handle_s: np.ndarray  # f8
    patience_s: np.ndarray  # f8 (inf: never abandons)
    outcome_u: np.ndarray  # f8 uniform [0, 1): success iff u < P(success | c, a)

    def __len__(self) -> int:
        return int(self.arrival_s.size)

    @classmethod
    def draw(cls, scenario: Scenario, seed: int) -> Workload:
        ss = streams(seed)
        times, queues = [], []
        for qi, q in enumerate(scenario.queues):
            t = arrival_times(q.arrival_rate_per_s, scenario.horizon_s, scenario.rate_profile,
                              child(ss["arrivals"], qi))
            times.append(t)
            queues.append(np.full(t.size, qi, dtype=np.int64))
        arrival = np.concatenate(times)
        queue = np.concatenate(queues)
        order = np.argsort(arrival, kind="stable")
        arrival, queue = arrival[order], queue[order]
        n = arrival.size
        customer = np.random.default_rng(ss["customers"]).integers(
            0, scenario.n_customers, n, dtype=np.int64)
        # Arrivals, handle and patience times: a sub-stream per queue, so that one
        # queue's settings never shift another queue's draws.
        handle = np.empty(n)
        patience = np.empty(n)
        for qi, q in enumerate(scenario.queues):
            mine = queue == qi
            handle[mine] = q.handle.sample(child(ss["handle"], qi), int(mine.sum()))
            patience[mine] = q.patience.sample(child(ss["patience"], qi), int(mine.sum()))
        outcome_u = np.random.default_rng(ss["outcome"]).random(n)
        return cls(arrival, queue, customer, handle, patience, outcome_u)
