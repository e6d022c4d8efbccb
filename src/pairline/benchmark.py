"""ON/OFF benchmarking: the slot schedule and the stratified gain estimate.

Pure Python + NumPy. Pairing is switched ON and OFF in short slots per tenant
and queue. Whether a slot is ON is a keyed hash of (queue, slot number) under a
key derived from the tenant's secret, so the switch can neither predict nor
influence it, and every replica computes the same schedule without talking.
Decisions routed within ``stabilise_s`` after the state changed are left out of
the comparison (agents freed by the previous regime are still being used up).

The estimate compares mean outcomes ON vs OFF within each stratum (queue x
hour of day) and combines the strata with one set of weights (each stratum's
share of all compared decisions) for both sides, so an uneven ON/OFF mix across
strata cannot flip the sign (Simpson's paradox). The 95% interval of the
relative gain uses the delta method on the weighted means.
"""

from __future__ import annotations

import hashlib
import hmac
import math
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np

Z95 = 1.959963984540054


class SlotSchedule:
    """Which slots are ON, per queue, for one tenant."""

    __slots__ = ("_key", "on_share", "slot_s", "stabilise_s")

    def __init__(self, secret: str, slot_s: float, on_share: float, stabilise_s: float) -> None:
        self._key = hmac.new(secret.encode(), b"pairline-benchmark-slots", hashlib.sha256).digest()
        self.slot_s = slot_s
        self.on_share = on_share
        self.stabilise_s = stabilise_s

    def _on(self, queue: str, slot: int) -> bool:
        mac = hmac.new(self._key, f"{queue}\x00{slot}".encode(), hashlib.sha256).digest()
        return int.from_bytes(mac[:8], "big") / 2**64 < self.on_share

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
    queue: str
    period: str
    on: list[float] = field(default_factory=list)
    off: list[float] = field(default_factory=list)


@dataclass(slots=True)
class Report:
    strata: list[Stratum]
    on_mean: float = 0.0
    off_mean: float = 0.0
    relative_gain: float = 0.0
    ci_low: float = 0.0
    ci_high: float = 0.0
    on_count: int = 0
    off_count: int = 0
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


def estimate(observations: Iterable[Observation]) -> Report:
    """Stratified ON vs OFF comparison (see the module docstring)."""
    strata: dict[tuple[str, str], Stratum] = {}
    agents: dict[bool, dict[str, int]] = {True: defaultdict(int), False: defaultdict(int)}
    for o in observations:
        key = (o.queue, period_of(o.decided_at))
        st = strata.get(key)
        if st is None:
            st = strata[key] = Stratum(*key)
        (st.on if o.on else st.off).append(o.value)
        agents[o.on][o.agent_id] += 1
    ordered = [strata[k] for k in sorted(strata)]
    report = Report(
        strata=ordered,
        on_count=sum(len(s.on) for s in ordered),
        off_count=sum(len(s.off) for s in ordered),
        on_utilisation_spread=_spread(agents[True]),
        off_utilisation_spread=_spread(agents[False]),
    )
    both = [s for s in ordered if len(s.on) >= 2 and len(s.off) >= 2]
    if not both:
        return report
    n = np.array([len(s.on) + len(s.off) for s in both], dtype=np.float64)
    w = n / n.sum()
    m_on = np.array([np.mean(s.on) for s in both])
    m_off = np.array([np.mean(s.off) for s in both])
    v_on = np.array([np.var(s.on, ddof=1) / len(s.on) for s in both])
    v_off = np.array([np.var(s.off, ddof=1) / len(s.off) for s in both])
    on, off = float(w @ m_on), float(w @ m_off)
    var_on, var_off = float(w**2 @ v_on), float(w**2 @ v_off)
    report.on_mean, report.off_mean = on, off
    if off == 0:
        return report
    gain = on / off - 1.0
    # Delta method for on/off with independent sides.
    se = math.sqrt(var_on / off**2 + on**2 * var_off / off**4)
    report.relative_gain = gain
    report.ci_low, report.ci_high = gain - Z95 * se, gain + Z95 * se
    return report
