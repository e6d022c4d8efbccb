"""Statistics that are honest: simulated traffic routed through a real server with
ON/OFF benchmarking, outcomes drawn from the simulator's ground truth and reported
with ReportOutcome, the report read through Insights.GetBenchmarkReport, compared
with the truth (:func:`pairline.sim.onoff.true_report`) over 20 seeds.

The engine moves the server's fake clock to each event's simulated time, so 90
simulated minutes of a 40-agent center (~600 contacts, ~3k RPCs) take about two
seconds of real RPCs per seed; seeds run side by side, a worker process (with its
own server) per core. Every seed has its own tenant secret, hence its own slot
schedule (120 s slots, 50:50, 20 s stabilisation). Deterministic: the
same seeds give the same decisions, so the counts below do not flicker; with a
perfectly calibrated interval each bound (>= 18 of 20) would still fail for about
7 % of seed sets, which is the issue's own criterion.
"""

from __future__ import annotations

import asyncio
import math
from dataclasses import dataclass

import grpc
import numpy as np
import pytest
from support import KEYS, on_every_core, running, settings

from pairline._proto.pairline.v1 import insights_pb2 as ipb
from pairline.benchmark import SlotSchedule
from pairline.sim.engine import Engine
from pairline.sim.onoff import true_report
from pairline.sim.remote import GrpcSwitch
from pairline.sim.run import switch_setup
from pairline.sim.scenario import Scenario, default_scenario
from pairline.sim.truth import GroundTruth
from pairline.sim.workload import Workload, streams
from pairline.testing import FakeClock

SEEDS = range(20)
SLOT_S, STABILISE_S, ON_SHARE = 120.0, 20.0, 0.5
HORIZON_S = 1.5 * 3600.0


@dataclass(frozen=True, slots=True)
class Trial:
    seed: int
    gain: float  # the server's report
    ci_low: float
    ci_high: float
    on_count: int
    off_count: int
    true_gain: float  # from the ground truth
    estimable: bool  # the report's flags
    relative_estimable: bool
    absolute: float  # the report's ON - OFF, its interval, and the truth's
    absolute_ci: tuple[float, float]
    true_absolute: float

    @property
    def covers(self) -> bool:
        return self.ci_low <= self.true_gain <= self.ci_high

    @property
    def covers_absolute(self) -> bool:
        return self.absolute_ci[0] <= self.true_absolute <= self.absolute_ci[1]

    @property
    def significant(self) -> bool:
        return self.ci_low > 0 or self.ci_high < 0


def scenario(**truth: float) -> Scenario:
    """The default scenario (40 agents, 85 % occupancy), 90 minutes, from empty."""
    return default_scenario(horizon_s=HORIZON_S, warmup_s=0.0, n_customers=2000).with_truth(
        **truth)


async def trial(s: Scenario, seed: int, policy: str = "priced") -> Trial:
    """One seed: the engine drives a real server over gRPC (GrpcSwitch), outcomes
    drawn from the truth are reported, the report is read back."""
    workload = Workload.draw(s, seed)
    ss = streams(seed)
    truth = GroundTruth.for_scenario(s, ss["truth"], ss["profiles"])
    setup = switch_setup(s, truth)
    clock = FakeClock(0.0)
    # A secret per seed: each seed gets its own slot schedule.
    secret = f"seed-{seed}-secret-0123456789"
    cfg = settings(secret=secret, policy=policy, benchmark=True, slot_s=SLOT_S, on_share=ON_SHARE,
                   stabilise_s=STABILISE_S, customer_dim=s.truth.dim, agent_dim=s.truth.dim,
                   wrap_up_s=s.wrap_up_s, offer_timeout_s=3600.0)
    async with running(cfg, clock) as srv:
        def drive():  # type: ignore[no-untyped-def]
            with grpc.insecure_channel(srv.server.address) as channel:
                sw = GrpcSwitch(setup, KEYS["acme"], channel=channel,
                                advance=lambda t: setattr(clock, "t", t))
                return Engine(s, workload, sw, truth.pair_prob()).run()

        log = await asyncio.to_thread(drive)
        rep = await srv.acme.insights.GetBenchmarkReport(
            ipb.GetBenchmarkReportRequest(outcome="success"))
    schedule = SlotSchedule(secret, SLOT_S, ON_SHARE, STABILISE_S)
    true = true_report(s, workload, truth, log, schedule)
    # The truth is computed on exactly the decisions the server compared.
    assert (true.on_count, true.off_count) == (rep.on_count, rep.off_count)
    assert (true.on_slots, true.off_slots) == (rep.on_slots, rep.off_slots)
    return Trial(
        seed=seed,
        gain=rep.relative_gain,
        ci_low=rep.ci_low,
        ci_high=rep.ci_high,
        on_count=rep.on_count,
        off_count=rep.off_count,
        true_gain=true.relative_gain,
        estimable=rep.estimable,
        relative_estimable=rep.relative_estimable,
        absolute=rep.absolute_gain,
        absolute_ci=(rep.absolute_ci_low, rep.absolute_ci_high),
        true_absolute=true.on_mean - true.off_mean,
    )


def trial_here(s: Scenario, seed: int) -> Trial:
    """:func:`trial` with an event loop of its own (in a worker process)."""
    return asyncio.run(trial(s, seed))


async def trials(s: Scenario) -> list[Trial]:
    # Seeds are independent: a worker process (with its own server) per core.
    got = await asyncio.to_thread(on_every_core, trial_here, [(s, seed) for seed in SEEDS])
    # The figures, for `pytest -rP` (the report of the issue quotes them).
    for t in got:
        print(f"seed {t.seed:2d}: reported {t.gain:+.3f} [{t.ci_low:+.3f}, {t.ci_high:+.3f}] "
              f"(ON {t.on_count}, OFF {t.off_count}), true {t.true_gain:+.4f}, "
              f"covered {t.covers}, significant {t.significant}")
    print(
        f"covered {sum(t.covers for t in got)}/{len(got)}, "
        f"significant {sum(t.significant for t in got)}/{len(got)}, "
        f"absolute covered {sum(t.covers_absolute for t in got)}/{len(got)}"
    )
    return got


class TestHonestReport:
    async def test_interval_covers_the_true_gain(self) -> None:
        """Default truth, policy priced: every report is estimable, and over 20 seeds
        its 95 % intervals contain the true gain in at least 18 (relative and absolute);
        the true gain is positive (there is something to find) and the reported gains
        are unbiased around it."""
        got = await trials(scenario())
        assert all(t.on_count > 100 and t.off_count > 100 for t in got)
        assert all(t.estimable and t.relative_estimable for t in got)
        covered = sum(t.covers for t in got)
        assert covered >= 18, [(t.seed, t.gain, t.ci_low, t.ci_high, t.true_gain) for t in got]
        assert sum(t.covers_absolute for t in got) >= 18
        true = np.array([t.true_gain for t in got])
        assert (true > 0).sum() >= 18 and true.mean() > 0.03
        err = np.array([t.gain - t.true_gain for t in got])
        assert abs(err.mean()) < 3 * err.std(ddof=1) / math.sqrt(err.size)

    async def test_useless_pairing_is_not_significant(self) -> None:
        """With pairing made useless (no interaction, and no agent better than another
        for any customer: every pair's lift is 0) the reported gain is not significant
        in at least 18 of 20 seeds. (Interaction 0 alone is not enough on a logistic
        truth: a stronger agent adds more probability to a mid-range customer than to
        a sure one, which fair pairing can use; see docs in pairline.sim.onoff.)"""
        got = await trials(scenario(interaction_strength=0.0, agent_effect_sd=0.0))
        assert all(t.true_gain == pytest.approx(0.0, abs=1e-12) for t in got)
        significant = [t for t in got if t.significant]
        assert len(significant) <= 2, significant
        assert sum(t.covers_absolute for t in got) >= 18  # ON - OFF: 0
        # The intervals are not vacuous: they are a few tens of percent wide.
        assert np.median([t.ci_high - t.ci_low for t in got]) < 0.8
