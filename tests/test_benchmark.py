"""ON/OFF benchmarking: the slot schedule, the stratified estimate, and the report
through a real server."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from support import contact, error_field, login, running, settings
from test_pairing import setup_pairing

from pairline._proto.pairline.v1 import common_pb2 as cpb
from pairline._proto.pairline.v1 import insights_pb2 as ipb
from pairline._proto.pairline.v1 import router_pb2 as rpb
from pairline.benchmark import Observation, SlotSchedule, estimate, period_of
from pairline.config import TenantConfig, hash_api_key, load_settings

M = cpb


class TestSlotSchedule:
    def test_deterministic_keyed_and_shared_by_replicas(self) -> None:
        """Two schedules with one secret agree; another secret gives another schedule."""
        a = SlotSchedule("secret-0123456789", 60, 0.5, 10)
        b = SlotSchedule("secret-0123456789", 60, 0.5, 10)
        c = SlotSchedule("other-0123456789", 60, 0.5, 10)
        times = [30.0 + 60 * k for k in range(400)]
        sa = [a.state("q", t)[0] for t in times]
        assert sa == [b.state("q", t)[0] for t in times]
        assert sa != [c.state("q", t)[0] for t in times]
        assert sa != [a.state("other-queue", t)[0] for t in times]

    @pytest.mark.parametrize("share", [0.5, 0.8])
    def test_on_share_is_kept(self, share: float) -> None:
        """Over many slots the ON share is close to the configured one."""
        s = SlotSchedule("secret-0123456789", 60, share, 0)
        on = np.mean([s.state("q", 60 * k + 1)[0] for k in range(5000)])
        assert abs(on - share) < 0.03

    def test_stabilisation_window_only_after_a_switch(self) -> None:
        """Decisions early in a slot are left out only when the state just changed."""
        s = SlotSchedule("secret-0123456789", 60, 0.5, 10)
        for k in range(1, 200):
            changed = s.state("q", 60 * k + 30)[0] != s.state("q", 60 * (k - 1) + 30)[0]
            assert s.state("q", 60 * k + 5)[1] == (not changed)
            assert s.state("q", 60 * k + 10)[1] is True


# ---------------------------------------------------------------- test data
T0 = 1_800_000_000.0 - 1_800_000_000.0 % 86400  # a midnight (UTC)
SLOT_S, STABILISE_S = 60.0, 6.0


def alternating(
    queue: str, on: list[list[float]], off: list[list[float]], start: float = T0
) -> list[Observation]:
    """Slots of 60 s alternating ON, OFF, ON, ...: ``on[k]`` are the outcomes of the
    k-th ON slot (one decision a second), ``off[k]`` those of the k-th OFF slot."""
    obs = []
    for k in range(max(len(on), len(off))):
        for side, slots in ((True, on), (False, off)):
            if k < len(slots):
                t = start + SLOT_S * (2 * k + (not side))
                obs += [
                    Observation(queue, t + i, side, v, f"{queue}{i}")
                    for i, v in enumerate(slots[k])
                ]
    return obs


def drifting(
    seed: int,
    drift_sd: float,
    gain: float = 0.0,
    hours: int = 3,
    per_slot: float = 12.0,
    p: float = 0.5,
) -> list[Observation]:
    """The reviewer's scenario (/tmp/review-bench/r3_coverage.py), scaled down: one
    queue, the real :class:`SlotSchedule` (60 s slots, 50:50, 6 s stabilisation),
    Poisson(``per_slot``) decisions a slot, success with probability ``p`` (times
    ``1 + gain`` when ON) plus a slot effect ~ N(0, ``drift_sd``) shared by the
    slot's decisions, ON and OFF slots alike."""
    rng = np.random.default_rng(seed)
    sched = SlotSchedule(f"drift-{seed}-0123456789", SLOT_S, 0.5, STABILISE_S)
    first, n = int(T0 // SLOT_S), int(hours * 3600 / SLOT_S)
    # (ON?, counted at the slot's start?) per slot, from the schedule itself
    state = np.array([sched.state("q", (first + k) * SLOT_S) for k in range(n)])
    slot = np.repeat(np.arange(n), rng.poisson(per_slot, n))
    into = rng.random(slot.size) * SLOT_S
    counted = (into >= STABILISE_S) | state[slot, 1]
    slot, into = slot[counted], into[counted]
    on = state[slot, 0]
    prob = np.clip(p * np.where(on, 1.0 + gain, 1.0) + rng.normal(0, drift_sd, n)[slot], 0, 1)
    y = (rng.random(slot.size) < prob).astype(np.float64)
    t = (first + slot) * SLOT_S + into
    return [
        Observation("q", a, b, c, "x")
        for a, b, c in zip(t.tolist(), on.tolist(), y.tolist(), strict=True)
    ]


def per_decision_interval(obs: list[Observation]) -> tuple[float, float]:
    """The interval of ON - OFF the report gave before: the same strata and weights,
    but every decision taken as independent."""
    hours = np.array([o.decided_at // 3600 for o in obs])
    on = np.array([o.on for o in obs])
    y = np.array([o.value for o in obs])
    parts = []
    for hour in np.unique(hours):
        a, b = y[(hours == hour) & on], y[(hours == hour) & ~on]
        parts.append(
            (a.size + b.size, a.mean() - b.mean(), a.var(ddof=1) / a.size + b.var(ddof=1) / b.size)
        )
    n = np.array([x[0] for x in parts], dtype=np.float64)
    w = n / n.sum()
    diff = float(w @ np.array([x[1] for x in parts]))
    half = 1.96 * math.sqrt(float(w**2 @ np.array([x[2] for x in parts])))
    return diff - half, diff + half


def naive_estimate(obs: list[Observation]) -> dict[str, Any]:
    """Slow, obviously-correct twin of :func:`estimate`: plain loops over slot runs
    (consecutive decisions of a queue in one state and one clock hour), the ratio
    mean and its cluster-robust variance per stratum and side, Satterthwaite
    degrees of freedom and ``scipy.stats.t``."""
    from scipy.stats import t as student

    cells: dict[tuple[str, str, bool], list[list[float]]] = {}
    for queue in {o.queue for o in obs}:
        mine = sorted((o for o in obs if o.queue == queue), key=lambda o: (o.decided_at, o.on))
        last = None
        for o in mine:
            here = (o.on, math.floor(o.decided_at / 3600))
            runs = cells.setdefault((queue, period_of(o.decided_at), o.on), [])
            if here != last:
                runs.append([])
            runs[-1].append(o.value)
            last = here
    strata = []
    for queue, period in sorted({(q, p) for q, p, _ in cells}):
        side = {}
        for on in (True, False):
            runs = cells.get((queue, period, on), [])
            m = sum(len(r) for r in runs)
            mean = sum(sum(r) for r in runs) / m if m else math.nan
            g = len(runs)
            var = (
                g / (g - 1) * sum((sum(r) - mean * len(r)) ** 2 for r in runs) / m**2
                if g >= 2
                else math.nan
            )
            side[on] = (m, g, mean, var)
        strata.append((queue, period, side, side[True][1] >= 2 and side[False][1] >= 2))
    used = [s for s in strata if s[3]]
    out: dict[str, Any] = {
        "strata": [
            (q, p, sd[True][0], sd[False][0], sd[True][1], sd[False][1], inc)
            for q, p, sd, inc in strata
        ],
        "counts": (
            sum(sd[True][0] for _, _, sd, _ in used),
            sum(sd[False][0] for _, _, sd, _ in used),
        ),
        "excluded": (
            sum(sd[True][0] for _, _, sd, inc in strata if not inc),
            sum(sd[False][0] for _, _, sd, inc in strata if not inc),
        ),
    }
    if not used:
        return out
    total = sum(sd[True][0] + sd[False][0] for _, _, sd, _ in used)
    w = [(sd[True][0] + sd[False][0]) / total for _, _, sd, _ in used]
    on_mean = sum(wi * sd[True][2] for wi, (_, _, sd, _) in zip(w, used, strict=True))
    off_mean = sum(wi * sd[False][2] for wi, (_, _, sd, _) in zip(w, used, strict=True))
    parts = [
        (wi**2 * sd[s][3], sd[s][1] - 1)
        for wi, (_, _, sd, _) in zip(w, used, strict=True)
        for s in (True, False)
    ]

    def interval(centre: float, parts: list[tuple[float, int]]) -> tuple[float, float]:
        var = sum(v for v, _ in parts)
        if var == 0:
            return -math.inf, math.inf
        dof = var**2 / sum(v**2 / d for v, d in parts if v > 0)
        half = float(student.ppf(0.975, dof)) * math.sqrt(var)
        return centre - half, centre + half

    out.update(on=on_mean, off=off_mean, absolute=interval(on_mean - off_mean, parts))
    if off_mean > 0:
        gain = on_mean / off_mean - 1
        scaled = [
            (v / off_mean**2 if i % 2 == 0 else v * on_mean**2 / off_mean**4, d)
            for i, (v, d) in enumerate(parts)
        ]
        out["relative"] = (gain, interval(gain, scaled))
    return out


class TestEstimate:
    def test_stratification_resists_simpsons_paradox(self) -> None:
        """ON is better in every stratum but mostly sampled in the poor one: the pooled means
        say OFF wins, the stratified estimate says ON wins."""
        obs: list[Observation] = []
        # Stratum 1 (queue a, high outcomes): OFF 90 x 0.8, ON 10 x 0.9
        # Stratum 2 (queue b, low outcomes):  OFF 10 x 0.2, ON 90 x 0.3
        # (each side in slots of 5 or 45 decisions)
        for q, on_n, on_p, off_n, off_p in [("a", 10, 0.9, 90, 0.8), ("b", 90, 0.3, 10, 0.2)]:

            def split(n: int, p: float) -> list[list[float]]:
                values = [1.0 if i < round(n * p) else 0.0 for i in range(n)]
                half = n // 2
                return [values[::2][:half], values[1::2][:half]]  # two slots, similar means

            obs += alternating(q, split(on_n, on_p), split(off_n, off_p))
        pooled_on = np.mean([o.value for o in obs if o.on])
        pooled_off = np.mean([o.value for o in obs if not o.on])
        assert pooled_on < pooled_off
        r = estimate(obs)
        assert r.on_mean > r.off_mean and r.relative_gain > 0 and r.absolute_gain > 0
        assert r.on_mean == pytest.approx(0.5 * 0.9 + 0.5 * 0.3)
        assert r.off_mean == pytest.approx(0.5 * 0.8 + 0.5 * 0.2)
        assert (r.on_count, r.off_count) == (100, 100)

    def test_interval_covers_the_true_gain(self) -> None:
        """Over 40 seeded runs (3 hours, no drift) with a known 10% gain the 95%
        intervals cover it in >= 36: the relative one 10%, the absolute one 10% of
        the OFF mean."""
        covered = absolute = 0
        for seed in range(40):
            obs = drifting(seed, drift_sd=0.0, gain=0.1, hours=3, per_slot=20, p=0.3)
            r = estimate(obs)
            assert r.estimable and r.relative_estimable
            covered += r.ci_low <= 0.1 <= r.ci_high
            absolute += r.absolute_ci_low <= 0.03 <= r.absolute_ci_high
        assert covered >= 36 and absolute >= 36

    def test_no_gain_is_not_significant(self) -> None:
        """With no true difference both intervals contain 0 in >= 36 of 40 runs."""
        hits = 0
        for seed in range(40):
            r = estimate(drifting(1000 + seed, drift_sd=0.0, hours=2, per_slot=15, p=0.3))
            hits += r.ci_low <= 0 <= r.ci_high and r.absolute_ci_low <= 0 <= r.absolute_ci_high
        assert hits >= 36

    @pytest.mark.parametrize("seed", range(12))
    def test_matches_its_naive_twin(self, seed: int) -> None:
        """On seeded mixes (several queues and hours, strata with one slot on a side,
        ties in time, constant and negative values) the estimate equals the slow twin."""
        rng = np.random.default_rng(seed)
        kind = seed % 4  # binary, negative, constant, skewed outcomes
        obs = []
        for q in ("a", "b", "c")[: 1 + seed % 3]:
            n = int(rng.integers(5, 400))
            t = np.sort(T0 + rng.integers(0, 3 * 3600, n).astype(np.float64))  # ties
            on = (np.floor(t / SLOT_S) * 7919 + len(q) + seed) % 5 < 2 + seed % 2  # per slot
            y = (
                (rng.random(n) < 0.3).astype(float)
                if kind == 0
                else (
                    rng.normal(-3.0, 2.0, n)
                    if kind == 1
                    else (np.full(n, 2.0) if kind == 2 else rng.exponential(50.0, n))
                )
            )
            obs += [
                Observation(q, float(a), bool(b), float(c), f"g{i % 7}")
                for i, (a, b, c) in enumerate(zip(t, on, y, strict=True))
            ]
        r, twin = estimate(obs), naive_estimate(obs)
        assert [
            (s.queue, s.period, s.on_count, s.off_count, s.on_slots, s.off_slots, s.included)
            for s in r.strata
        ] == twin["strata"]
        assert (r.on_count, r.off_count) == twin["counts"]
        assert (r.excluded_on_count, r.excluded_off_count) == twin["excluded"]
        assert r.on_slots == sum(s.on_slots for s in r.strata if s.included)
        if "on" not in twin:
            assert not r.estimable and math.isnan(r.absolute_gain)
            return
        assert (r.on_mean, r.off_mean) == pytest.approx((twin["on"], twin["off"]), rel=1e-9)
        if kind == 2:  # constant outcomes: no variation, no interval
            assert not r.estimable and r.absolute_gain == pytest.approx(0.0, abs=1e-12)
            assert (r.absolute_ci_low, r.absolute_ci_high) == (-math.inf, math.inf)
            return
        assert r.estimable
        assert (r.absolute_ci_low, r.absolute_ci_high) == pytest.approx(twin["absolute"], rel=1e-9)
        if r.relative_estimable:
            gain, (low, high) = twin["relative"]
            assert (r.relative_gain, r.ci_low, r.ci_high) == pytest.approx(
                (gain, low, high), rel=1e-9
            )


class TestSlotIsTheUnit:
    """Issue: ON/OFF is assigned per slot and outcomes within a slot move together,
    so an interval that takes each decision as independent is too narrow (coverage
    79% in the reviewer's run). Both tests run 200 seeded replications of
    :func:`drifting` (about 2,000 decisions each, true gain 0). Bound (binomial): a
    calibrated 95% interval covers 0 in fewer than 180 of 200 (90%) with probability
    0.12%, 0.4% at the 94.4% that 1,000 replications of the drifting case measured;
    an interval covering 77.5% (the per-decision one's 155 of 200 here) reaches 180
    with probability 3e-6."""

    RUNS = 200

    def test_drift_between_slots_keeps_nominal_coverage(self) -> None:
        """Slot effects with sd 0.2 around p = 0.5, about 12 decisions a slot: the
        per-decision interval covers the true gain 0 in under 85% of runs, the
        report's (slot runs as units) in at least 90%, and is wider to do so."""
        ours = theirs = 0
        width = []
        for seed in range(self.RUNS):
            obs = drifting(seed, drift_sd=0.2)
            r = estimate(obs)
            low, high = per_decision_interval(obs)
            ours += r.absolute_ci_low <= 0 <= r.absolute_ci_high
            theirs += low <= 0 <= high
            width.append((r.absolute_ci_high - r.absolute_ci_low) / (high - low))
        assert theirs < 0.85 * self.RUNS  # the scenario has teeth
        assert ours >= 0.90 * self.RUNS, (ours, theirs)
        assert np.median(width) > 1.3

    def test_independent_outcomes_keep_coverage_and_width(self) -> None:
        """Without slot effects the report's interval still covers 0 in at least 90%
        of runs, and is no wider than the per-decision one (median ratio within 10%):
        slot runs cost nothing when decisions are independent."""
        ours = 0
        width = []
        for seed in range(self.RUNS):
            obs = drifting(seed, drift_sd=0.0)
            r = estimate(obs)
            low, high = per_decision_interval(obs)
            ours += r.absolute_ci_low <= 0 <= r.absolute_ci_high
            width.append((r.absolute_ci_high - r.absolute_ci_low) / (high - low))
        assert ours >= 0.90 * self.RUNS
        assert 0.9 < np.median(width) < 1.1


class TestNotEstimable:
    def test_empty(self) -> None:
        """No decisions: not estimable, NaN gains, an interval of everything."""
        r = estimate([])
        assert not r.estimable and not r.relative_estimable and "no compared" in r.reason
        assert math.isnan(r.relative_gain) and math.isnan(r.absolute_gain)
        assert (
            (r.ci_low, r.ci_high)
            == (r.absolute_ci_low, r.absolute_ci_high)
            == (-math.inf, math.inf)
        )

    def test_one_sided_and_single_slots(self) -> None:
        """Fewer than two slots on a side in every stratum (the reviewer's one-sided and
        all-in-one-slot cases): not estimable, saying why; the decisions are counted
        as excluded, not as used."""
        one_sided = [Observation("q", T0, True, 1.0, "a")] * 50 + [
            Observation("q", T0 + 60, False, 0.0, "b")
        ]
        one_slot = [Observation("q", T0, True, float(i < 5), "a") for i in range(10)] + [
            Observation("q", T0, False, 0.0, "b") for _ in range(10)
        ]
        for obs in (one_sided, one_slot):
            r = estimate(obs)
            assert not r.estimable and "at least two ON and two OFF slots" in r.reason
            assert math.isnan(r.absolute_gain) and math.isnan(r.relative_gain)
            assert (r.absolute_ci_low, r.absolute_ci_high) == (-math.inf, math.inf)
            assert (r.on_count, r.off_count) == (0, 0)
            assert (r.excluded_on_count, r.excluded_off_count) == (
                sum(o.on for o in obs),
                sum(not o.on for o in obs),
            )
            assert [s.included for s in r.strata] == [False]

    def test_no_variation_within_any_stratum(self) -> None:
        """Every slot of a side has the same mean in every stratum: the point estimates
        stand but no interval is given (never a zero-width one)."""
        obs = alternating("q", [[1.0] * 5] * 3, [[0.0] * 5] * 3)
        obs += alternating("r", [[0.5] * 5] * 3, [[0.5] * 5] * 3, start=T0 + 3600)
        r = estimate(obs)
        assert not r.estimable and not r.relative_estimable and "no variation" in r.reason
        assert (r.on_mean, r.off_mean, r.absolute_gain) == pytest.approx((0.75, 0.25, 0.5))
        assert r.relative_gain == pytest.approx(2.0)
        assert (r.absolute_ci_low, r.absolute_ci_high) == (-math.inf, math.inf)
        assert (r.ci_low, r.ci_high) == (-math.inf, math.inf)


class TestCounts:
    def test_excluded_strata_are_counted_apart(self) -> None:
        """A stratum with one OFF slot is left out of the estimate: its decisions are
        in the excluded counts, not in the used ones, and it is flagged."""
        big = alternating(
            "big", [[1, 0, 1], [0, 0, 1], [1, 1, 1]], [[0, 0, 1], [1, 0, 0], [0, 0, 0]]
        )
        vip = alternating("vip", [[0.0] * 50, [1.0] * 50], [[0.0]], start=T0 + 7200)
        r = estimate(big + vip)
        assert [(s.queue, s.included) for s in r.strata] == [("big", True), ("vip", False)]
        assert (r.on_count, r.off_count, r.on_slots, r.off_slots) == (9, 9, 3, 3)
        assert (r.excluded_on_count, r.excluded_off_count) == (100, 1)
        assert r.on_mean == pytest.approx(6 / 9) and r.off_mean == pytest.approx(2 / 9)

    def test_slot_runs(self) -> None:
        """Consecutive slots in one state are one run; a run ends at a clock hour."""
        obs = [
            Observation("q", T0 + 60 * k + 1, on, 1.0, "a")
            for k, on in enumerate([True, True, False, True, False, False])
        ]
        obs.append(Observation("q", T0 + 3600, False, 1.0, "a"))  # next hour: another run
        s = estimate(obs).strata
        assert [(x.period, x.on_slots, x.off_slots) for x in s] == [("00h", 2, 2), ("01h", 0, 1)]


class TestRelativeGain:
    def test_negative_baseline(self) -> None:
        """ON -5 vs OFF -10 (net revenue after refunds): ON is better by 5; a relative
        gain (which would read -50%) is not reported."""
        on = [[-5.0 + d for d in (-1, 0, 1)] for _ in range(5)]
        off = [[-10.0 + d + 0.1 * k for d in (-1, 0, 1)] for k in range(5)]
        r = estimate(alternating("q", on, off))
        assert r.estimable and r.absolute_gain == pytest.approx(4.8)
        assert 0 < r.absolute_ci_low < 4.8 < r.absolute_ci_high
        assert not r.relative_estimable and "<= 0" in r.relative_reason
        assert math.isnan(r.relative_gain) and (r.ci_low, r.ci_high) == (-math.inf, math.inf)

    def test_off_mean_of_zero(self) -> None:
        """OFF converts nothing, ON does: the absolute gain has an interval, the
        relative one is undefined."""
        r = estimate(alternating("q", [[1, 0, 0], [1, 1, 0], [0, 0, 0]], [[0, 0, 0]] * 3))
        assert r.estimable and r.absolute_gain == pytest.approx(1 / 3)
        assert not r.relative_estimable and math.isnan(r.relative_gain)

    def test_off_mean_near_zero(self) -> None:
        """OFF converts once in 50: its interval reaches 0, so the ratio is unbounded and
        no relative gain is reported; the absolute gain is."""
        on = [[float((i + k) % 2) for i in range(5)] for k in range(10)]
        off = [[float(i == 0 and k == 1) for i in range(5)] for k in range(10)]
        r = estimate(alternating("q", on, off))
        assert r.estimable and r.absolute_ci_low > 0
        assert not r.relative_estimable and "reaches 0" in r.relative_reason

    def test_both_when_the_baseline_is_clear(self) -> None:
        """A clearly positive OFF mean: both gains, consistent with each other."""
        r = estimate(drifting(3, drift_sd=0.0, gain=0.2, hours=2, per_slot=20, p=0.4))
        assert r.estimable and r.relative_estimable
        assert r.relative_gain == pytest.approx(r.absolute_gain / r.off_mean)
        assert r.ci_low < r.relative_gain < r.ci_high


class TestBenchmarkKey:
    OLD, NEW, KEY = "old-secret-0123456789", "new-secret-0123456789", "bench-key-0123456789"

    def tenant(self, secret: str, benchmark_key: str = "") -> TenantConfig:
        return TenantConfig(
            name="t",
            api_key_sha256=(hash_api_key("k"),),
            secret=secret,
            benchmark=True,
            slot_s=300.0,
            stabilise_s=30.0,
            benchmark_key=benchmark_key,
        )

    def states(self, schedule: SlotSchedule) -> list[tuple[bool, bool]]:
        return [
            schedule.state(q, T0 + 300 * k + at)
            for q in ("sales", "vip")
            for k in range(1000)
            for at in (1.0, 100.0)
        ]

    def test_rotating_the_secret_keeps_the_schedule(self) -> None:
        """With benchmark_key set, rotating the secret changes no slot's state (nor
        which decisions are counted); without it about half the slots flip."""
        before = SlotSchedule.for_tenant(self.tenant(self.OLD, self.KEY))
        after = SlotSchedule.for_tenant(self.tenant(self.NEW, self.KEY))
        assert self.states(before) == self.states(after)
        unkeyed = [
            self.states(SlotSchedule.for_tenant(self.tenant(s))) for s in (self.OLD, self.NEW)
        ]
        flips = sum(a != b for a, b in zip(*unkeyed, strict=True))
        assert flips > 0.3 * len(unkeyed[0])

    def test_old_secret_as_benchmark_key_keeps_todays_schedule(self) -> None:
        """Unset, the schedule is keyed by the secret as before; setting the old secret
        as benchmark_key at a rotation keeps exactly that schedule."""
        today = self.states(SlotSchedule(self.OLD, 300.0, 0.5, 30.0))
        assert self.states(SlotSchedule.for_tenant(self.tenant(self.OLD))) == today
        rotated = SlotSchedule.for_tenant(self.tenant(self.NEW, benchmark_key=self.OLD))
        assert self.states(rotated) == today

    def test_setting(self, tmp_path: Path) -> None:
        """benchmark_key is read from the file, at least 16 chars, never in a repr."""
        base = '[[tenants]]\nname = "t"\napi_keys = "k"\nsecret = "s3cret-0123456789"\n'
        path = tmp_path / "p.toml"
        path.write_text(base + f'benchmark_key = "{self.KEY}"\n')
        settings_ = load_settings(path, {})
        assert settings_.tenants[0].benchmark_key == self.KEY
        assert self.KEY not in repr(settings_)
        path.write_text(base + 'benchmark_key = "short"\n')
        with pytest.raises(ValueError, match="benchmark_key"):
            load_settings(path, {})


class TestReportThroughServer:
    async def test_control_slots_and_report(self) -> None:
        """OFF slots route by baseline with mode CONTROL; reported outcomes come back
        stratified, with counts, means and an interval around the gain."""
        cfg = settings(policy="greedy", benchmark=True, slot_s=60.0, on_share=0.5, stabilise_s=5.0)
        async with running(cfg) as srv:
            await setup_pairing(srv, {"weak": [0, 0, 0], "strong": [1, 1, 0]}, {"+1": [1, 0, 0, 0]})
            r = srv.acme.router
            await r.SetAgentState(login("weak", "sales"))
            await r.SetAgentState(login("strong", "sales"))
            sched = SlotSchedule(cfg.tenants[0].secret, 60.0, 0.5, 5.0)  # what replicas compute
            modes: dict[int, int] = {}
            expect: dict[bool, list[float]] = {True: [], False: []}
            srv.clock.t = 1_800_000_000.0 - (1_800_000_000.0 % 3600)  # start of an hour
            for i in range(120):
                srv.clock.advance(20.0)
                d = await r.RouteContact(contact(f"c{i}", customer_key="+1"))
                modes[d.mode] = modes.get(d.mode, 0) + 1
                assert d.mode in (M.MODE_PAIRED, M.MODE_CONTROL)
                if d.mode == M.MODE_PAIRED:
                    assert d.agent_id == "strong"
                value = 1.0 if (d.agent_id == "strong") == (i % 3 != 0) else 0.0
                await r.ReportOutcome(
                    rpb.ReportOutcomeRequest(
                        decision_id=d.decision_id, outcomes={"converted": value}
                    )
                )
                on, counted = sched.state("sales", srv.clock.t)
                assert on == (d.mode == M.MODE_PAIRED)
                if counted:
                    expect[on].append(value)
                await r.EndContact(
                    rpb.EndContactRequest(contact_id=d.contact_id, reason=rpb.END_REASON_ABANDONED)
                )
            assert modes.get(M.MODE_PAIRED, 0) > 10 and modes.get(M.MODE_CONTROL, 0) > 10
            rep = await srv.acme.insights.GetBenchmarkReport(
                ipb.GetBenchmarkReportRequest(outcome="converted")
            )
            assert (rep.on_count, rep.off_count) == (len(expect[True]), len(expect[False]))
            assert sum(s.on_count for s in rep.strata) == rep.on_count
            assert (rep.excluded_on_count, rep.excluded_off_count) == (0, 0)
            assert [(s.queue, s.included) for s in rep.strata] == [("sales", True)]
            assert rep.estimable and rep.relative_estimable and not rep.reason
            assert rep.ci_low <= rep.relative_gain <= rep.ci_high
            assert rep.absolute_ci_low <= rep.absolute_gain <= rep.absolute_ci_high
            assert 2 <= rep.on_slots == rep.strata[0].on_slots <= 40
            # One hour, one stratum: the weighted means are the plain means.
            assert rep.on_mean == pytest.approx(np.mean(expect[True]))
            assert rep.off_mean == pytest.approx(np.mean(expect[False]))
            assert rep.absolute_gain == pytest.approx(rep.on_mean - rep.off_mean)

    async def test_not_estimable_through_the_server(self) -> None:
        """Two decisions in one slot: the report says not estimable and why, with an
        interval of everything, and counts them as excluded."""
        cfg = settings(policy="greedy", benchmark=True, slot_s=60.0, stabilise_s=0.0)
        async with running(cfg) as srv:
            await setup_pairing(srv, {"a": [1, 0, 0]}, {"+1": [1, 0, 0, 0]})
            await srv.acme.router.SetAgentState(login("a", "sales"))
            for i in range(2):
                srv.clock.advance(1)
                d = await srv.acme.router.RouteContact(contact(f"c{i}", customer_key="+1"))
                await srv.acme.router.ReportOutcome(
                    rpb.ReportOutcomeRequest(
                        decision_id=d.decision_id, outcomes={"converted": float(i)}
                    )
                )
                await srv.acme.router.EndContact(
                    rpb.EndContactRequest(contact_id=d.contact_id, reason=rpb.END_REASON_ABANDONED)
                )
            rep = await srv.acme.insights.GetBenchmarkReport(
                ipb.GetBenchmarkReportRequest(outcome="converted")
            )
        assert not rep.estimable and not rep.relative_estimable and "two ON" in rep.reason
        assert math.isnan(rep.relative_gain) and math.isnan(rep.absolute_gain)
        assert (rep.ci_low, rep.ci_high) == (-math.inf, math.inf)
        assert (rep.on_count, rep.off_count) == (0, 0)
        assert rep.excluded_on_count + rep.excluded_off_count == 2
        assert [s.included for s in rep.strata] == [False]

    async def test_server_keeps_its_schedule_through_a_rotation(self) -> None:
        """A tenant whose secret was rotated with the old one as benchmark_key routes
        ON (PAIRED) and OFF (CONTROL) by the old schedule."""
        old = settings().tenants[0].secret
        cfg = settings(
            secret="rotated-secret-0123456789",
            benchmark_key=old,
            policy="greedy",
            benchmark=True,
            slot_s=60.0,
            stabilise_s=0.0,
        )
        schedule = SlotSchedule(old, 60.0, 0.5, 0.0)
        async with running(cfg) as srv:
            await setup_pairing(srv, {"a": [1, 0, 0]}, {"+1": [1, 0, 0, 0]})
            await srv.acme.router.SetAgentState(login("a", "sales"))
            for i in range(40):
                srv.clock.advance(60)
                d = await srv.acme.router.RouteContact(contact(f"c{i}", customer_key="+1"))
                assert (d.mode == M.MODE_PAIRED) == schedule.state("sales", srv.clock.t)[0]
                await srv.acme.router.EndContact(
                    rpb.EndContactRequest(contact_id=d.contact_id, reason=rpb.END_REASON_ABANDONED)
                )

    async def test_outcome_name_is_required(self) -> None:
        """The report needs the outcome to compare on."""
        async with running(settings(benchmark=True)) as srv:
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await srv.acme.insights.GetBenchmarkReport(ipb.GetBenchmarkReportRequest())
            assert err.value.code() is grpc.StatusCode.INVALID_ARGUMENT
            assert error_field(err.value) == "outcome"


class TestReportCommand:
    async def test_report_prints_json_table_and_plot(self, tmp_path, capsys) -> None:  # type: ignore[no-untyped-def]
        """`pairline report` reads the server's report: JSON, a table, and a PNG plot."""
        import asyncio
        import json

        from support import KEYS

        from pairline.cli import main

        cfg = settings(policy="greedy", benchmark=True, slot_s=60.0, stabilise_s=0.0)
        async with running(cfg) as srv:
            await setup_pairing(srv, {"a": [1, 0, 0]}, {"+1": [1, 0, 0, 0]})
            await srv.acme.router.SetAgentState(login("a", "sales"))
            for i in range(60):
                srv.clock.advance(30)
                d = await srv.acme.router.RouteContact(contact(f"c{i}", customer_key="+1"))
                await srv.acme.router.ReportOutcome(
                    rpb.ReportOutcomeRequest(
                        decision_id=d.decision_id, outcomes={"converted": float(i % 3 == 0)}
                    )
                )
                await srv.acme.router.EndContact(
                    rpb.EndContactRequest(contact_id=d.contact_id, reason=rpb.END_REASON_ABANDONED)
                )
            args = ["report", "--target", srv.server.address, "--key", KEYS["acme"]]
            png = tmp_path / "report.png"
            rc = await asyncio.to_thread(main, [*args, "--json", "--plot", str(png)])
            out = json.loads(capsys.readouterr().out)
            assert rc == 0 and out["outcome"] == "converted"
            assert int(out["onCount"]) + int(out["offCount"]) == 60
            assert out["estimable"] is True and "absoluteCiLow" in out
            assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
            rc = await asyncio.to_thread(main, args)
            text = capsys.readouterr().out
            assert rc == 0 and "relative gain" in text and "sales" in text
            assert "absolute gain (ON - OFF)" in text and "not estimable" not in text
            rc = await asyncio.to_thread(main, [*args, "--outcome", "never-reported"])
            text = capsys.readouterr().out
            assert rc == 0 and "gain not estimable: no compared decisions" in text
            rc = await asyncio.to_thread(
                main, ["report", "--target", srv.server.address, "--key", "wrong"]
            )
            assert rc == 1 and "UNAUTHENTICATED" in capsys.readouterr().err
