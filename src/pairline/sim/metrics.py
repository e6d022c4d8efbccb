"""Metrics of one run, from its :class:`~pairline.sim.engine.RunLog`.

Measured contacts are those arriving in ``[warmup_s, horizon_s)``; each of them
is either answered (a decision was made) or abandoned, since a run goes on until
every contact has ended.

- ``service_level``: answered within ``sl_threshold_s`` / (answered + abandoned).
  Abandoned contacts count against it however short their wait (the strict
  definition; it is also what Erlang A's ``P(answered, wait <= t)`` is).
- ``asa_s``: mean wait of answered contacts (zero waits included).
- ``abandon_rate``: abandoned / (answered + abandoned).
- ``outcome_rate``: share of handled contacts whose drawn outcome is a success;
  ``expected_outcome_rate``: the mean true probability of the pairs made (the same
  quantity without the outcome draw's noise); ``expected_yield``: expected
  successes per measured contact, abandoned ones counting 0 (a policy that lets
  unpromising contacts abandon raises the outcome rate, not the yield).
- ``occupancy``: per agent, the share of ``[warmup_s, horizon_s]`` it was busy:
  handling at least one contact or in wrap-up (an agent handling three chats at
  once is as busy as one on a call); ``occupancy_spread`` is its max - min,
  ``occupancy_gini`` its Gini coefficient.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from pairline.domain import Mode
from pairline.sim.engine import ABANDONED, DONE, RunLog
from pairline.sim.scenario import Scenario
from pairline.sim.truth import GroundTruth
from pairline.sim.workload import Workload


def gini(x: np.ndarray) -> float:
    """Gini coefficient of non-negative values (0: all equal)."""
    x = np.sort(np.asarray(x, dtype=float))
    n = x.size
    if n == 0 or x.sum() <= 0:
        return 0.0
    ranks = np.arange(1, n + 1)
    return float((2 * ranks - n - 1) @ x / (n * x.sum()))


def occupancy(scenario: Scenario, log: RunLog) -> np.ndarray:
    """Per-agent busy share of the measurement window: the length of the union of
    the agent's busy intervals within it, over its length."""
    t0, t1 = scenario.warmup_s, scenario.horizon_s
    start = np.maximum(log.busy_start, t0)
    end = np.minimum(log.busy_end, t1)
    keep = end > start
    agent, start, end = log.busy_agent[keep], start[keep], end[keep]
    # Shift each agent's intervals to a range of its own, so that one sort and one
    # running maximum merge every agent's overlapping intervals at once.
    shift = agent * (2.0 * (t1 - t0) + 1.0)
    order = np.lexsort((start + shift, agent))
    s, e, a = start[order] + shift[order], end[order] + shift[order], agent[order]
    covered = np.maximum.accumulate(e)
    prev = np.concatenate(([-np.inf], covered[:-1]))
    length = np.clip(e - np.maximum(s, prev), 0, None)
    busy = np.bincount(a, weights=length, minlength=scenario.n_agents)
    return busy / (t1 - t0)


def _rates(measured: np.ndarray, log: RunLog, wait: np.ndarray, threshold_s: float,
           truth: GroundTruth | None, customers: np.ndarray) -> dict[str, Any]:
    answered = measured & (log.state == DONE)
    abandoned = measured & (log.state == ABANDONED)
    n = int(measured.sum())
    n_ans = int(answered.sum())
    out: dict[str, Any] = {
        "contacts": n,
        "handled": n_ans,
        "abandoned": int(abandoned.sum()),
        "service_level": float((answered & (wait <= threshold_s)).sum() / n) if n else None,
        "asa_s": float(wait[answered].mean()) if n_ans else None,
        "abandon_rate": float(abandoned.sum() / n) if n else None,
        "outcome_rate": float(log.success[answered].mean()) if n_ans else None,
        "expected_outcome_rate": None,
    }
    out["expected_yield"] = None
    if truth is not None and n_ans:
        p = truth.prob(customers[answered], log.agent[answered])
        out["expected_outcome_rate"] = float(p.mean())
        out["expected_yield"] = float(p.sum() / n)
    return out


def summarise(scenario: Scenario, workload: Workload, log: RunLog,
              truth: GroundTruth | None) -> dict[str, Any]:
    """One policy's row of the result (without the comparisons to other rows)."""
    measured = (workload.arrival_s >= scenario.warmup_s) & (workload.arrival_s < scenario.horizon_s)
    wait = log.answer_s - workload.arrival_s
    row = _rates(measured, log, wait, scenario.sl_threshold_s, truth, workload.customer)
    answered = measured & (log.state == DONE)
    waits = wait[answered]
    row["wait_p90_s"] = float(np.percentile(waits, 90)) if waits.size else None
    # Time in queue of every measured contact, abandoned ones included (their
    # patience): the tail a non-first-come policy lengthens.
    queued = np.where(log.state == DONE, wait, log.end_s - workload.arrival_s)[measured]
    row["queue_time_p99_s"] = float(np.percentile(queued, 99)) if queued.size else None
    row["paired_share"] = (
        float((log.mode[answered] == Mode.PAIRED).mean()) if answered.any() else None)
    occ = occupancy(scenario, log)
    row["occupancy_mean"] = float(occ.mean())
    row["occupancy_spread"] = float(occ.max() - occ.min())
    row["occupancy_gini"] = gini(occ)
    if truth is not None and scenario.n_agents >= 4:
        order = np.argsort(truth.agent_effect, kind="stable")
        q = max(1, scenario.n_agents // 4)
        row["occupancy_weakest_quarter"] = float(occ[order[:q]].mean())
        row["occupancy_strongest_quarter"] = float(occ[order[-q:]].mean())
    row["agent_occupancy"] = [round(float(x), 5) for x in occ]
    if len(scenario.queues) > 1:
        row["queues"] = {
            q.name: _rates(measured & (workload.queue == qi), log, wait, scenario.sl_threshold_s,
                           truth, workload.customer)
            for qi, q in enumerate(scenario.queues)
        }
    row["events"] = log.events
    row["run_time_s"] = round(log.wall_s, 3)
    return row
