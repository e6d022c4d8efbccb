"""ON/OFF benchmarking: the slot schedule and the stratified gain estimate.

Pure Python + NumPy (SciPy for a t quantile). Pairing is switched ON and OFF in
short slots per tenant and queue. Whether a slot is ON is a keyed hash of
(queue, slot number) under a key derived from the tenant's ``benchmark_key``
(its ``secret`` when no benchmark key is set), so the switch can neither predict
nor influence it, and every replica computes the same schedule without talking.
Decisions routed within ``stabilise_s`` after the state changed are left out of
the comparison (agents freed by the previous regime are still being used up).

The unit of analysis is the slot, not the decision. ON/OFF is assigned per slot,
and the decisions of one slot share whatever moved since the last one (staffing,
a campaign, the mix of callers), so a thousand decisions in one slot are not a
thousand independent observations; an interval that treats them so is too
narrow. :func:`estimate` groups each side's decisions into *slot runs*: maximal
runs of consecutive compared decisions of one queue with the same state, cut at
every clock hour (strata are hours). A slot has one state, so each slot lies
wholly inside one run (or, if ``slot_s`` does not divide an hour, two): runs are
unions of whole slots, as independent as the slots are, only coarser; cutting
them at slot boundaries as well was tried and gave the same coverage. They are
found from the recorded state alone, so they stay right when ``slot_s``,
``on_share`` or the schedule's key changed within the period reported, and need
no configuration.

In each stratum (queue x hour of day) and side the mean outcome is the ratio of
the runs' summed outcomes to their summed decisions, with its linearised,
cluster-robust variance ``G/(G-1) * sum_g (y_g - mean * m_g)**2 / M**2`` over the
side's ``G`` runs (``y_g`` their summed outcomes, ``m_g`` their decisions, ``M``
all of the side's decisions). Strata with at least two runs on each side are
combined with one set of weights (each stratum's share of the decisions used)
for both sides, so an uneven ON/OFF mix across strata cannot flip the sign
(Simpson's paradox); the others are reported as excluded. ON and OFF runs are
disjoint slots, so the two sides are independent. The absolute gain (ON - OFF)
and the relative gain (ON / OFF - 1, delta method) each get a 95% interval from
Student's t with Welch-Satterthwaite degrees of freedom (few runs: a wider
interval). Where the data cannot carry an interval the report says *not
estimable* and why, and the interval is (-inf, +inf), never a zero-width one from
no information: no stratum with two runs on each side (the gains are NaN: there
is nothing to compare), or no variation within any of them (the point estimates
stand: an exact comparison, as of a simulator's expected outcomes). The relative
gain alone is not estimable (NaN) also when the OFF mean is <= 0 or its interval
reaches 0: the absolute gain is the one to read then.
"""

from __future__ import annotations

import hashlib
import hmac
import math
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from pairline.config import TenantConfig

Z95 = 1.959963984540054
NAN = math.nan
INF = math.inf


class SlotSchedule:
    """Which slots are ON, per queue, for one tenant."""

    __slots__ = ("_key", "_memo", "on_share", "slot_s", "stabilise_s")

    def __init__(self, secret: str, slot_s: float, on_share: float, stabilise_s: float) -> None:
        self._key = hmac.new(secret.encode(), b"pairline-benchmark-slots", hashlib.sha256).digest()
        # (queue, slot) -> ON?: a decision asks for its slot and the one before, so
        # the HMACs are done once per queue and slot, not per decision.
        self._memo: dict[tuple[str, int], bool] = {}
        self.slot_s = slot_s
        self.on_share = on_share
        self.stabilise_s = stabilise_s

    @classmethod
    def for_tenant(cls, config: TenantConfig) -> SlotSchedule:
        """The tenant's schedule: keyed by ``benchmark_key``, or by ``secret`` when
        no benchmark key is set (then rotating the secret reshuffles the slots)."""
        return cls(
            config.benchmark_key or config.secret,
            config.slot_s,
            config.on_share,
            config.stabilise_s,
        )

    def _on(self, queue: str, slot: int) -> bool:
        on = self._memo.get((queue, slot))
        if on is None:
            mac = hmac.new(self._key, f"{queue}\x00{slot}".encode(), hashlib.sha256).digest()
            on = int.from_bytes(mac[:8], "big") / 2**64 < self.on_share
            if len(self._memo) >= 4096:  # (slots go by: keep it small)
                self._memo.clear()
            self._memo[(queue, slot)] = on
        return on

    def state(self, queue: str, now: float) -> tuple[bool, bool]:
        """(pairing ON?, counted in the comparison?) for a decision at ``now``."""
        slot = math.floor(now / self.slot_s)
        on = self._on(queue, slot)
        into = now - slot * self.slot_s
        counted = into >= self.stabilise_s or self._on(queue, slot - 1) == on
        return on, counted


@dataclass(frozen=True, slots=True)
class Observation:
    """One compared decision with its outcome."""

    queue: str
    decided_at: float
    on: bool
    value: float
    agent_id: str


@dataclass(slots=True)
class Stratum:
    """One queue in one hour of the day: compared decisions, their slot runs and
    mean outcome on each side; ``included`` when it has two runs on each side
    (and so enters the combined estimate)."""

    queue: str
    period: str
    on_count: int = 0
    off_count: int = 0
    on_mean: float = NAN
    off_mean: float = NAN
    on_slots: int = 0
    off_slots: int = 0
    included: bool = False


@dataclass(slots=True)
class Report:
    """The stratified comparison. Counts, slot runs and means are over the
    included strata; ``excluded_*`` counts the compared decisions of the others.
    ``estimable`` False (``reason`` says why): no interval, both are (-inf, +inf).
    ``relative_estimable`` False (``relative_reason``): the same for the relative
    gain only. A gain is NaN when there is no point estimate either."""

    strata: list[Stratum] = field(default_factory=list)
    estimable: bool = False
    reason: str = ""
    on_mean: float = NAN
    off_mean: float = NAN
    absolute_gain: float = NAN
    absolute_ci_low: float = -INF
    absolute_ci_high: float = INF
    relative_estimable: bool = False
    relative_reason: str = ""
    relative_gain: float = NAN
    ci_low: float = -INF
    ci_high: float = INF
    on_count: int = 0
    off_count: int = 0
    on_slots: int = 0
    off_slots: int = 0
    excluded_on_count: int = 0
    excluded_off_count: int = 0
    on_utilisation_spread: float = 0.0
    off_utilisation_spread: float = 0.0


def period_of(t: float) -> str:
    """The time-of-day part of a stratum (UTC hour)."""
    return f"{int(t // 3600) % 24:02d}h"


def _spread(counts: dict[str, int]) -> float:
    """(max - min) / mean of contacts per agent; 0 with fewer than two agents."""
    if len(counts) < 2:
        return 0.0
    values = np.fromiter(counts.values(), dtype=np.float64)
    return float((values.max() - values.min()) / values.mean())


def t95(df: float) -> float:
    """Two-sided 95% quantile of Student's t with ``df`` degrees of freedom."""
    from scipy.special import stdtrit

    return float(stdtrit(max(df, 1.0), 0.975))


def satterthwaite(parts: np.ndarray, dof: np.ndarray) -> float:
    """Welch-Satterthwaite degrees of freedom of a sum of independent variance
    estimates ``parts`` with ``dof`` degrees of freedom each."""
    total = float(parts.sum())
    denom = float((parts**2 / dof).sum())
    return total**2 / denom if denom > 0 else INF


def slot_runs(queue: np.ndarray, t: np.ndarray, on: np.ndarray) -> np.ndarray:
    """Run number of each decision (arrays sorted by queue, then time): a new run
    starts where the queue, the state or the clock hour changes."""
    new = np.ones(t.size, dtype=bool)
    hour = np.floor(t / 3600.0)
    new[1:] = (queue[1:] != queue[:-1]) | (on[1:] != on[:-1]) | (hour[1:] != hour[:-1])
    return np.cumsum(new) - 1


def _sides(
    stratum: np.ndarray, run: np.ndarray, on: np.ndarray, y: np.ndarray, n_strata: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per (stratum, side) (index ``2 * stratum + on``): decisions, runs, mean, and
    the ratio mean's cluster-robust variance (NaN with fewer than two runs)."""
    n_runs = int(run[-1]) + 1
    first = np.flatnonzero(np.r_[True, run[1:] != run[:-1]])
    cell = 2 * stratum[first] + on[first]  # each run's (stratum, side)
    y_run = np.bincount(run, weights=y, minlength=n_runs)
    m_run = np.bincount(run, minlength=n_runs).astype(np.float64)
    size = 2 * n_strata
    count = np.bincount(cell, weights=m_run, minlength=size)
    runs = np.bincount(cell, minlength=size)
    total = np.bincount(cell, weights=y_run, minlength=size)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = total / count
        resid = y_run - mean[cell] * m_run
        ss = np.bincount(cell, weights=resid**2, minlength=size)
        var = runs / (runs - 1) * ss / count**2
    var[runs < 2] = NAN
    return count, runs, mean, var


def estimate(observations: Iterable[Observation]) -> Report:
    """Stratified ON vs OFF comparison over slot runs (see the module docstring)."""
    agents: dict[bool, dict[str, int]] = {True: defaultdict(int), False: defaultdict(int)}
    queues: dict[str, int] = {}
    qs: list[int] = []
    ts: list[float] = []
    ons: list[bool] = []
    ys: list[float] = []
    for o in observations:
        qs.append(queues.setdefault(o.queue, len(queues)))
        ts.append(o.decided_at)
        ons.append(o.on)
        ys.append(o.value)
        agents[o.on][o.agent_id] += 1
    report = Report(
        on_utilisation_spread=_spread(agents[True]),
        off_utilisation_spread=_spread(agents[False]),
    )
    if not ts:
        report.reason = "no compared decisions with this outcome"
        report.relative_reason = report.reason
        return report
    q, t = np.array(qs, dtype=np.int64), np.array(ts, dtype=np.float64)
    on, y = np.array(ons, dtype=bool), np.array(ys, dtype=np.float64)
    order = np.lexsort((on, t, q))  # by queue, then time (then side: a stable order)
    q, t, on, y = q[order], t[order], on[order], y[order]
    run = slot_runs(q, t, on)
    # Strata in (queue name, period) order.
    names = sorted(queues)
    rank = np.empty(len(names), dtype=np.int64)
    rank[[queues[n] for n in names]] = np.arange(len(names))
    hour = (np.floor(t / 3600.0) % 24).astype(np.int64)
    key = rank[q] * 24 + hour
    keys, stratum = np.unique(key, return_inverse=True)
    count, runs, mean, var = _sides(stratum, run, on.astype(np.int64), y, keys.size)
    count_off, count_on = count[0::2], count[1::2]
    runs_off, runs_on = runs[0::2], runs[1::2]
    included = (runs_on >= 2) & (runs_off >= 2)
    report.strata = [
        Stratum(
            queue=names[int(k) // 24],
            period=f"{int(k) % 24:02d}h",
            on_count=int(count_on[i]),
            off_count=int(count_off[i]),
            on_mean=float(mean[2 * i + 1]),
            off_mean=float(mean[2 * i]),
            on_slots=int(runs_on[i]),
            off_slots=int(runs_off[i]),
            included=bool(included[i]),
        )
        for i, k in enumerate(keys)
    ]
    report.on_count = int(count_on[included].sum())
    report.off_count = int(count_off[included].sum())
    report.on_slots = int(runs_on[included].sum())
    report.off_slots = int(runs_off[included].sum())
    report.excluded_on_count = int(count_on[~included].sum())
    report.excluded_off_count = int(count_off[~included].sum())
    if not included.any():
        report.reason = (
            "no stratum (queue x hour) has at least two ON and two OFF slots "
            f"({keys.size} strata, {int(runs_on.sum())} ON and {int(runs_off.sum())} OFF "
            "slot runs): collect more slots"
        )
        report.relative_reason = report.reason
        return report
    _combine(report, included, count_on + count_off, mean, var, runs)
    return report


def _combine(
    report: Report,
    included: np.ndarray,
    n: np.ndarray,
    mean: np.ndarray,
    var: np.ndarray,
    runs: np.ndarray,
) -> None:
    """The weighted means, the gains and their intervals, into ``report``."""
    idx = np.flatnonzero(included)
    w = n[idx] / n[idx].sum()
    m_on, m_off = mean[2 * idx + 1], mean[2 * idx]
    p_on, p_off = w**2 * var[2 * idx + 1], w**2 * var[2 * idx]  # variance parts
    d_on, d_off = runs[2 * idx + 1] - 1.0, runs[2 * idx] - 1.0  # their degrees of freedom
    on, off = float(w @ m_on), float(w @ m_off)
    var_on, var_off = float(p_on.sum()), float(p_off.sum())
    report.on_mean, report.off_mean = on, off
    diff = on - off
    report.absolute_gain = diff
    if math.sqrt(var_on + var_off) <= 1e-12 * max(abs(on), abs(off)) or var_on + var_off == 0:
        # The point estimates stand (an exact comparison, as in a simulator's truth);
        # an interval from no variation would be zero-width: none is given.
        report.reason = (
            "no variation within the ON or OFF slots of any included stratum: "
            "no interval can be given"
        )
        report.relative_reason = report.reason
        if off > 0:
            report.relative_gain = on / off - 1.0
        return
    report.estimable = True
    half = t95(satterthwaite(np.r_[p_on, p_off], np.r_[d_on, d_off])) * math.sqrt(var_on + var_off)
    report.absolute_ci_low, report.absolute_ci_high = diff - half, diff + half
    if off <= 0:
        report.relative_reason = (
            f"the OFF mean is {off:.6g} (<= 0): a relative gain is undefined; see the absolute gain"
        )
        return
    off_low = off - t95(satterthwaite(p_off, d_off)) * math.sqrt(var_off)
    if off_low <= 0:
        report.relative_reason = (
            "the OFF mean's 95% interval reaches 0: a relative gain is unbounded; "
            "see the absolute gain"
        )
        return
    # Delta method for on / off with independent sides.
    a_on, a_off = p_on / off**2, p_off * on**2 / off**4
    gain = on / off - 1.0
    half = t95(satterthwaite(np.r_[a_on, a_off], np.r_[d_on, d_off])) * math.sqrt(
        float(a_on.sum() + a_off.sum())
    )
    report.relative_estimable = True
    report.relative_gain = gain
    report.ci_low, report.ci_high = gain - half, gain + half
