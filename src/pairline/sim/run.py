"""Side-by-side runs: :func:`simulate` and its text table, :func:`render_table`.

Every policy of a call runs on the same :class:`~pairline.sim.workload.Workload`
(common random numbers) against its own fresh service, then the result compares
them with the baseline, the unfair oracle and the fair ceiling.

The result is plain JSON (the contract the CLI and the report build on)::

    {
      "seed": 7, "switch": "service", "sl_threshold_s": 20.0,
      "scenario": {...},                      # scenario_summary()
      "policies": [                           # one row per policy, in call order
        {"policy": "diagonal", "base_policy": "diagonal", "skew": 0.0, ...,
         "contacts": 3652, "handled": 3611, "abandoned": 41,
         "outcome_rate": 0.283, "expected_outcome_rate": 0.281,
         "gain_vs_baseline": 0.031, "gain_ci_low": 0.012, "gain_ci_high": 0.050,
         "expected_gain_vs_baseline": 0.027,
         "ceiling_share": 0.42,
         "service_level": 0.81, "asa_s": 9.6, "abandon_rate": 0.011, "wait_p90_s": 31.0,
         "occupancy_mean": 0.85, "occupancy_spread": 0.07, "occupancy_gini": 0.011,
         "occupancy_weakest_quarter": 0.85, "occupancy_strongest_quarter": 0.86,
         "agent_occupancy": [...], "paired_share": 1.0, "events": ..., "run_time_s": ...},
        ...
      ],
      "fair_ceiling_outcome_rate": 0.29, "fair_random_outcome_rate": 0.27,
      "fair_ceiling": {...},                  # truth.Ceiling as a dict
      "unfair_oracle_outcome_rate": 0.30,
      "unfair_oracle": {...},                 # a row like the policies'
      "run_time_s": 12.3
    }

``gain_ci_low`` / ``gain_ci_high`` bound ``gain_vs_baseline`` at 95 % (see
:func:`gain_interval`). ``gain_vs_baseline`` is relative (``rate / baseline_rate - 1``) on the drawn
outcomes; ``expected_gain_vs_baseline`` the same on the true probabilities of the
pairs made (less noisy). ``ceiling_share`` is the share of the fair ceiling's
gain captured: ``(expected rate - baseline's expected rate) / (fair ceiling -
fair random rate)``. Gains are ``None`` when no baseline runs.

The unfair oracle is the service itself with policy ``greedy``, the truth's model
and the customers' and agents' exact latent vectors as profiles: greedy on the
true probabilities, decided by the same code paths (agent surplus, contact
surplus, batch assignment) as every other policy.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict
from typing import Any

import numpy as np

from pairline.benchmark import Z95
from pairline.sim.engine import Engine, agent_logins, customer_key
from pairline.sim.metrics import summarise
from pairline.sim.scenario import PolicySpec, Scenario, default_scenario, scenario_summary
from pairline.sim.switch import BaselineSwitch, InProcessSwitch, Switch, SwitchSetup
from pairline.sim.truth import GroundTruth, fair_ceiling
from pairline.sim.workload import Workload, streams

SWITCHES = ("service", "pure")
DEFAULT_POLICIES = ("baseline", "greedy", "diagonal", "priced")
# Builds the switch of one policy run: (policy, setup, seed) -> Switch.
SwitchFactory = Callable[[PolicySpec, SwitchSetup, int], Switch]


def as_policy(p: str | PolicySpec) -> PolicySpec:
    return p if isinstance(p, PolicySpec) else PolicySpec(p)


def switch_setup(scenario: Scenario, truth: GroundTruth, *, exact: bool = False) -> SwitchSetup:
    """What the service is given: the oracle-fitted model, and the noisy profiles
    (``exact``: the latent vectors themselves, for the unfair oracle)."""
    return SwitchSetup(
        agents=agent_logins(scenario),
        wrap_up_s=scenario.wrap_up_s,
        customer_dim=scenario.truth.dim,
        agent_dim=scenario.truth.dim,
        model=truth.model_bytes(),
        customer_keys=[customer_key(i) for i in range(scenario.n_customers)],
        customer_vectors=truth.z.astype(np.float32) if exact else truth.customer_profiles,
        agent_vectors=truth.w.astype(np.float32) if exact else truth.agent_profiles,
    )


def make_switch(kind: str | SwitchFactory, policy: PolicySpec, setup: SwitchSetup,
                seed: int) -> Switch:
    if callable(kind):
        return kind(policy, setup, seed)
    if kind == "service":
        return InProcessSwitch(policy, setup, seed=seed)
    if kind == "pure":
        if policy.name != "baseline":
            raise ValueError(f"the pure switch runs the baseline only, not {policy.name!r}")
        return BaselineSwitch(setup)
    raise ValueError(f"switch must be one of {SWITCHES}, not {kind!r}")


def run_policy(
    scenario: Scenario,
    workload: Workload,
    truth: GroundTruth,
    policy: PolicySpec,
    *,
    setup: SwitchSetup | None = None,
    switch: str | SwitchFactory = "service",
    service_seed: int = 0,
) -> dict[str, Any]:
    """One policy over one workload: its metrics row (no comparisons)."""
    setup = setup or switch_setup(scenario, truth)
    sw = make_switch(switch, policy, setup, service_seed)
    log = Engine(scenario, workload, sw, truth.pair_prob()).run()
    row: dict[str, Any] = {"policy": policy.key, "base_policy": policy.name}
    row.update({k: v for k, v in asdict(policy).items() if k not in ("name", "label")})
    row.update(summarise(scenario, workload, log, truth))
    return row


def gain_interval(rate: float | None, n: int, base_rate: float | None,
                  base_n: int) -> tuple[float | None, float | None]:
    """95 % interval of ``rate / base_rate - 1`` (delta method), the two runs' drawn
    outcomes taken as independent binomial samples. The runs share their outcome
    draws (common random numbers), which correlates them positively, so the
    interval is conservative (wider than it need be)."""
    if rate is None or base_rate is None or not base_rate or n < 2 or base_n < 2:
        return None, None
    gain = rate / base_rate - 1
    var = rate * (1 - rate) / n / base_rate**2 + rate**2 * base_rate * (1 - base_rate) / (
        base_n * base_rate**4)
    half = Z95 * math.sqrt(var)
    return gain - half, gain + half


def _compare(row: dict[str, Any], base: dict[str, Any] | None, ceiling_gain: float | None) -> None:
    def rel(a: float | None, b: float | None) -> float | None:
        return None if a is None or not b else a / b - 1

    row["gain_vs_baseline"] = rel(row["outcome_rate"], base["outcome_rate"]) if base else None
    row["gain_ci_low"], row["gain_ci_high"] = (
        gain_interval(row["outcome_rate"], row["handled"], base["outcome_rate"], base["handled"])
        if base else (None, None))
    row["expected_gain_vs_baseline"] = (
        rel(row["expected_outcome_rate"], base["expected_outcome_rate"]) if base else None)
    row["ceiling_share"] = None
    if base and ceiling_gain and row["expected_outcome_rate"] is not None:
        row["ceiling_share"] = (
            (row["expected_outcome_rate"] - base["expected_outcome_rate"]) / ceiling_gain)


def simulate(
    scenario: Scenario | None = None,
    policies: Iterable[str | PolicySpec] = DEFAULT_POLICIES,
    seed: int = 0,
    *,
    switch: str | SwitchFactory = "service",
    oracle: bool = True,
    ceiling: bool = True,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Run ``policies`` side by side on one pre-drawn workload; returns the JSON
    contract described in the module docstring.

    ``switch``: ``"service"`` (the real service in process), ``"pure"`` (the
    plain-Python baseline, for long queueing runs; baseline only), or a factory
    ``(policy, setup, seed) -> Switch`` (e.g. a
    :class:`~pairline.sim.remote.GrpcSwitch` on a running server, whose tenant
    configuration then decides the policy: the spec only names the row).
    ``oracle`` adds the unfair oracle's run (always in process), ``ceiling`` the
    fair ceiling. ``progress`` is told the name of each step as it starts
    (a progress bar on long runs).
    """
    step = progress or (lambda name: None)
    started = time.perf_counter()
    scenario = scenario or default_scenario()
    specs = [as_policy(p) for p in policies]
    keys = [p.key for p in specs]
    if len(set(keys)) != len(keys):
        raise ValueError(f"policy names must be distinct (give labels): {keys}")
    ss = streams(seed)
    workload = Workload.draw(scenario, seed)
    truth = GroundTruth.for_scenario(scenario, ss["truth"], ss["profiles"])
    service_seed = int(ss["service"].generate_state(1)[0])
    setup = switch_setup(scenario, truth)
    rows = []
    for p in specs:
        step(f"policy {p.key}")
        rows.append(run_policy(scenario, workload, truth, p, setup=setup, switch=switch,
                               service_seed=service_seed))
    if ceiling:
        step("fair ceiling")
    ceil = fair_ceiling(truth, scenario, ss["ceiling"]) if ceiling else None
    oracle_row = None
    if oracle:
        step("unfair oracle")
        oracle_row = run_policy(scenario, workload, truth,
                                PolicySpec("greedy", label="unfair_oracle"),
                                setup=switch_setup(scenario, truth, exact=True),
                                service_seed=service_seed)
    base = next((r for r, p in zip(rows, specs, strict=True)
                 if p == PolicySpec("baseline")), None)
    ceiling_gain = ceil.gain if ceil is not None else None
    for r in rows:
        _compare(r, base, ceiling_gain)
    if oracle_row is not None:
        _compare(oracle_row, base, ceiling_gain)
    return {
        "seed": seed,
        "switch": switch if isinstance(switch, str) else "custom",
        "sl_threshold_s": scenario.sl_threshold_s,
        "scenario": scenario_summary(scenario),
        "policies": rows,
        "fair_ceiling_outcome_rate": ceil.outcome_rate if ceil else None,
        "fair_random_outcome_rate": ceil.random_rate if ceil else None,
        "fair_ceiling": asdict(ceil) if ceil else None,
        "unfair_oracle_outcome_rate": oracle_row["outcome_rate"] if oracle_row else None,
        "unfair_oracle": oracle_row,
        "run_time_s": round(time.perf_counter() - started, 3),
    }


def _fmt(v: Any, spec: str) -> str:
    return "-" if v is None else format(v, spec)


_COLUMNS: Sequence[tuple[str, str, str, int]] = (
    # (header, key, format, width)
    ("policy", "policy", "s", 16),
    ("contacts", "contacts", "d", 8),
    ("outcome", "outcome_rate", ".4f", 7),
    ("expected", "expected_outcome_rate", ".4f", 8),
    ("gain", "gain_vs_baseline", "+.2%", 7),
    ("exp.gain", "expected_gain_vs_baseline", "+.2%", 8),
    ("ceil.share", "ceiling_share", ".0%", 10),
    ("SL", "service_level", ".1%", 6),
    ("ASA s", "asa_s", ".1f", 6),
    ("p90 s", "wait_p90_s", ".0f", 5),
    ("aband.", "abandon_rate", ".2%", 6),
    ("occ", "occupancy_mean", ".1%", 6),
    ("spread", "occupancy_spread", ".1%", 6),
    ("gini", "occupancy_gini", ".3f", 5),
    ("occ weak/strong", "_occ_ws", "s", 15),
)


def render_table(result: dict[str, Any]) -> str:
    """The result as a readable text table (policies, then the references)."""
    sc = result["scenario"]
    lines = [
        f"scenario {sc['name']}: {sc['n_agents']} agents, {len(sc['queues'])} queue(s), "
        f"offered load {sc['offered_load']:.1%}, horizon {sc['horizon_s'] / 3600:g} h, "
        f"seed {result['seed']}, switch {result['switch']}, "
        f"SL threshold {result['sl_threshold_s']:g} s",
    ]
    rows = list(result["policies"])
    if result.get("unfair_oracle"):
        rows.append(result["unfair_oracle"])
    columns = [(h, k, f, max(w, *(len(r["policy"]) for r in rows)) if k == "policy" else w)
               for h, k, f, w in _COLUMNS]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(c.rjust(w) if i else c.ljust(w)
                         for i, (c, (_, _, _, w)) in enumerate(zip(cells, columns, strict=True)))

    header = line([h for h, _, _, _ in columns])
    lines += [header, "-" * len(header)]
    for r in rows:
        r = dict(r)
        weak, strong = r.get("occupancy_weakest_quarter"), r.get("occupancy_strongest_quarter")
        r["_occ_ws"] = f"{weak:.1%}/{strong:.1%}" if weak is not None else "-"
        lines.append(line([_fmt(r.get(k), f) for _, k, f, _ in columns]))
    ceil = result.get("fair_ceiling")
    if ceil:
        lines.append(
            f"fair ceiling: {ceil['outcome_rate']:.4f} (random equal shares "
            f"{ceil['random_rate']:.4f}, gain {ceil['gain'] / ceil['random_rate']:+.2%}; "
            f"{ceil['contacts']} customer rows)")
    lines.append(f"run time {result['run_time_s']:.1f} s")
    return "\n".join(lines)
