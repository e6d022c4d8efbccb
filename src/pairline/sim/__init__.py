"""The contact-center simulator: a discrete-event contact center that drives the
pairing policies through the real service (in process), with a ground-truth
outcome model, queueing-theory checks and the references a policy is judged by
(the fair ceiling and the unfair oracle). See :func:`simulate`."""

from pairline.sim.engine import Engine, RunLog
from pairline.sim.run import render_table, run_policy, simulate
from pairline.sim.scenario import (
    AgentGroup,
    Dist,
    PolicySpec,
    QueueSpec,
    Scenario,
    TruthSpec,
    default_scenario,
    erlang_scenario,
)
from pairline.sim.switch import BaselineSwitch, InProcessSwitch, Offer, Switch
from pairline.sim.truth import GroundTruth, fair_ceiling
from pairline.sim.workload import Workload

__all__ = [
    "AgentGroup",
    "BaselineSwitch",
    "Dist",
    "Engine",
    "GroundTruth",
    "InProcessSwitch",
    "Offer",
    "PolicySpec",
    "QueueSpec",
    "RunLog",
    "Scenario",
    "Switch",
    "TruthSpec",
    "Workload",
    "default_scenario",
    "erlang_scenario",
    "fair_ceiling",
    "render_table",
    "run_policy",
    "simulate",
]
