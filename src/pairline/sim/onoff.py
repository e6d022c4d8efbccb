"""Is the ON/OFF benchmark honest? What its report should say, from the ground truth.

A run of the simulator through a server with benchmarking on (pairing ON and OFF
in alternating slots, see :mod:`pairline.benchmark`) gives two things to compare:

- the server's report (``Insights.GetBenchmarkReport``): the stratified ON vs OFF
  gain on the outcomes drawn and reported with ``ReportOutcome``, and its 95 %
  interval;
- :func:`true_report`: the very same estimate with each compared decision's drawn
  outcome replaced by its expectation under the ground truth, *given the agent
  chosen but not the customer who happened to call*: ``mu_q + p(c, a) - pbar(c)``,
  where ``p(c, a)`` is the pair's true success probability, ``pbar(c)`` the
  customer's mean over the queue's agents (what a random agent would give) and
  ``mu_q`` the mean of ``pbar`` over the whole customer population. So it keeps
  what pairing did (each pair's lift over a random agent) and takes out both the
  noise of the outcome draws and the luck of which customers fell into ON or OFF
  slots: it is the gain the report estimates, the truth its interval must cover.
  When no agent differs from another for any customer, every lift is 0 and the
  true gain is exactly 0.

:func:`true_report` finds which decisions the report compares by recomputing the
tenant's slot schedule (it is a keyed hash of the tenant's secret, so anyone who
holds the secret can) at each decision's time, which in a simulation driven by
the engine is the simulated time.
"""

from __future__ import annotations

import numpy as np

from pairline.benchmark import Observation, Report, SlotSchedule, estimate
from pairline.domain import Mode
from pairline.sim.engine import DONE, RunLog
from pairline.sim.scenario import Scenario
from pairline.sim.truth import GroundTruth, eligibility
from pairline.sim.workload import Workload


def true_report(scenario: Scenario, workload: Workload, truth: GroundTruth, log: RunLog,
                schedule: SlotSchedule) -> Report:
    """The benchmark estimate on expected outcomes (see the module docstring).

    A decision's side is its mode (PAIRED: ON; CONTROL: OFF), which must agree with
    the schedule; decisions the schedule leaves out (stabilisation) are left out."""
    names = [q.name for q in scenario.queues]
    elig = eligibility(scenario)
    P = truth.matrix(np.arange(scenario.n_customers))  # customers x agents
    pbar = np.stack([P[:, elig[q]].mean(axis=1) for q in range(len(names))])  # queue x cust
    mu = pbar.mean(axis=1)
    obs = []
    for i in range(len(workload)):
        if log.state[i] != DONE:
            continue
        q = int(workload.queue[i])
        t = float(log.answer_s[i])
        on, counted = schedule.state(names[q], t)
        mode = Mode(int(log.mode[i]))
        if mode not in (Mode.PAIRED, Mode.CONTROL):
            continue
        if (mode is Mode.PAIRED) != on:
            raise RuntimeError(f"decision at {t} s is {mode.name} in a slot that is "
                               f"{'ON' if on else 'OFF'}: not the server's schedule")
        if not counted:
            continue
        c, a = int(workload.customer[i]), int(log.agent[i])
        value = float(mu[q] + P[c, a] - pbar[q, c])
        obs.append(Observation(names[q], t, on, value, f"a{a}"))
    return estimate(obs)
