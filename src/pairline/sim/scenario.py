"""What a simulated contact center is made of: distributions, queues, agent groups,
the ground-truth outcome model's knobs, pairing policies to compare, and the
scenarios the tests and the report use.

Everything here is a frozen dataclass of plain numbers and strings, so a scenario
can be printed, compared, hashed and turned into JSON (:func:`scenario_summary`).
Times are in seconds (``_s``), rates per second (``_per_s``).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np

from pairline.config import POLICIES
from pairline.domain import N_CHANNELS, Channel

DISTS = ("exponential", "lognormal", "fixed", "none")


@dataclass(frozen=True, slots=True)
class Dist:
    """A positive duration distribution given by its mean and coefficient of variation.

    ``exponential`` (cv is 1 by definition), ``lognormal`` (mean, cv), ``fixed``
    (the mean, always) or ``none`` (infinite: e.g. customers who never abandon).
    """

    kind: str = "exponential"
    mean_s: float = 1.0
    cv: float = 1.0

    def __post_init__(self) -> None:
        if self.kind not in DISTS:
            raise ValueError(f"distribution kind must be one of {DISTS}, not {self.kind!r}")
        if self.kind != "none" and not (self.mean_s > 0 and math.isfinite(self.mean_s)):
            raise ValueError("a distribution's mean_s must be positive and finite")
        if self.cv < 0:
            raise ValueError("cv must be >= 0")

    @classmethod
    def exponential(cls, mean_s: float) -> Dist:
        return cls("exponential", mean_s, 1.0)

    @classmethod
    def lognormal(cls, mean_s: float, cv: float) -> Dist:
        return cls("lognormal", mean_s, cv)

    @classmethod
    def fixed(cls, value_s: float) -> Dist:
        return cls("fixed", value_s, 0.0)

    @classmethod
    def never(cls) -> Dist:
        return cls("none", math.inf, 0.0)

    @property
    def finite(self) -> bool:
        return self.kind != "none"

    def sample(self, rng: np.random.Generator, n: int) -> np.ndarray:
        if self.kind == "exponential":
            return rng.exponential(self.mean_s, n)
        if self.kind == "lognormal":
            sigma2 = math.log1p(self.cv * self.cv)
            mu = math.log(self.mean_s) - sigma2 / 2
            return rng.lognormal(mu, math.sqrt(sigma2), n)
        if self.kind == "fixed":
            return np.full(n, self.mean_s)
        return np.full(n, math.inf)


@dataclass(frozen=True, slots=True)
class QueueSpec:
    """One skill group: its contacts' channel, arrival rate, handle and patience times."""

    name: str
    arrival_rate_per_s: float
    handle: Dist
    patience: Dist = field(default_factory=Dist.never)
    channel: Channel = Channel.VOICE

    def __post_init__(self) -> None:
        if self.arrival_rate_per_s < 0:
            raise ValueError(f"queue {self.name}: arrival_rate_per_s must be >= 0")
        if not self.handle.finite:
            raise ValueError(f"queue {self.name}: handle times must be finite")


@dataclass(frozen=True, slots=True)
class AgentGroup:
    """``count`` agents alike in what they serve: (queue, proficiency) pairs and a
    capacity per channel (index = Channel - 1). Agents differ in their latent
    vectors (see :class:`TruthSpec`), not in their group."""

    count: int
    queues: tuple[tuple[str, int], ...]
    capacities: tuple[int, ...] = (1, 0, 0, 0, 0)

    def __post_init__(self) -> None:
        if self.count < 0 or not self.queues:
            raise ValueError("an agent group needs count >= 0 and at least one queue")
        if len(self.capacities) != N_CHANNELS or any(c < 0 for c in self.capacities):
            raise ValueError(f"capacities are {N_CHANNELS} non-negative counts")


@dataclass(frozen=True, slots=True)
class TruthSpec:
    """The ground-truth outcome model (see :mod:`pairline.sim.truth`).

    ``P(success | c, a) = sigmoid(b + wc.z_c + wa.w_a + z_c' W w_a)`` with latent
    vectors ``z_c, w_a ~ N(0, I_dim)``. ``customer_effect_sd`` and
    ``agent_effect_sd`` are the standard deviations (logit scale) of the main
    effects; ``interaction_strength`` is the standard deviation of the interaction
    term ``z' W w``. ``interaction_alignment`` (0..1) is the share of that
    interaction (in standard deviation) that lies along the agent-quality axis
    (stronger agents help some customers more than others: what diagonal pairing
    exploits); the rest is a random rotation (customer-agent affinity that no
    one-dimensional ranking captures). ``base_rate`` is the outcome rate of the
    average customer with the average agent.
    """

    dim: int = 4
    base_rate: float = 0.25
    customer_effect_sd: float = 0.8
    agent_effect_sd: float = 0.3
    interaction_strength: float = 0.2
    interaction_alignment: float = 0.5
    # What the service sees: the latent vectors plus Gaussian noise of this sd.
    customer_noise_sd: float = 0.5
    agent_noise_sd: float = 0.2

    def __post_init__(self) -> None:
        if self.dim < 1 or not 0 < self.base_rate < 1:
            raise ValueError("truth: dim >= 1 and 0 < base_rate < 1")
        if not 0 <= self.interaction_alignment <= 1:
            raise ValueError("truth: interaction_alignment is in [0, 1]")
        if min(self.customer_effect_sd, self.agent_effect_sd, self.interaction_strength,
               self.customer_noise_sd, self.agent_noise_sd) < 0:
            raise ValueError("truth: standard deviations must be >= 0")


@dataclass(frozen=True, slots=True)
class PolicySpec:
    """A pairing policy as the service runs it (the tenant's knobs)."""

    name: str = "baseline"
    skew: float = 0.0
    wait_weight: float = 0.0
    window: int = 32
    batch: bool = True
    label: str = ""

    def __post_init__(self) -> None:
        if self.name not in POLICIES:
            raise ValueError(f"policy must be one of {POLICIES}, not {self.name!r}")

    @property
    def key(self) -> str:
        """The name the results use: the label, or the name with knobs that differ
        from the defaults."""
        if self.label:
            return self.label
        knobs = [f"{k}={getattr(self, k):g}" for k in ("skew", "wait_weight")
                 if getattr(self, k)]
        if self.window != 32:
            knobs.append(f"window={self.window}")
        if not self.batch:
            knobs.append("batch=0")
        return f"{self.name}({','.join(knobs)})" if knobs else self.name


@dataclass(frozen=True, slots=True)
class Scenario:
    """One contact center over one horizon.

    Contacts arrive (Poisson, per queue) from 0 to ``horizon_s``; the run goes on
    until every contact has been handled or has abandoned. Contacts arriving
    before ``warmup_s`` and agent time before it are left out of the metrics (the
    center starts empty). ``rate_profile`` is a time-of-day profile:
    ``(duration_s, multiplier)`` segments applied to every queue's rate, repeated
    until the horizon (empty: a flat rate).
    """

    queues: tuple[QueueSpec, ...]
    agents: tuple[AgentGroup, ...]
    horizon_s: float
    warmup_s: float = 0.0
    wrap_up_s: float = 0.0
    rate_profile: tuple[tuple[float, float], ...] = ()
    sl_threshold_s: float = 20.0
    n_customers: int = 20_000
    truth: TruthSpec = field(default_factory=TruthSpec)
    name: str = "custom"

    def __post_init__(self) -> None:
        names = [q.name for q in self.queues]
        if not names or len(set(names)) != len(names):
            raise ValueError("a scenario needs queues with distinct names")
        for g in self.agents:
            for q, _ in g.queues:
                if q not in names:
                    raise ValueError(f"an agent group serves unknown queue {q!r}")
        if self.n_agents < 1:
            raise ValueError("a scenario needs at least one agent")
        if not 0 <= self.warmup_s < self.horizon_s:
            raise ValueError("0 <= warmup_s < horizon_s")
        if self.wrap_up_s < 0 or self.n_customers < 1:
            raise ValueError("wrap_up_s >= 0 and n_customers >= 1")
        if any(d <= 0 or m < 0 for d, m in self.rate_profile):
            raise ValueError("rate_profile segments are (duration_s > 0, multiplier >= 0)")

    @property
    def n_agents(self) -> int:
        return sum(g.count for g in self.agents)

    def mean_multiplier(self) -> float:
        """The time-average of the rate profile over the horizon."""
        if not self.rate_profile:
            return 1.0
        t = total = 0.0
        while t < self.horizon_s:
            for d, m in self.rate_profile:
                step = min(d, self.horizon_s - t)
                total += m * step
                t += step
                if t >= self.horizon_s:
                    break
        return total / self.horizon_s

    def offered_load(self) -> float:
        """Offered work per agent slot, wrap-up included: the occupancy the center
        would have if every contact were handled (single-capacity agents)."""
        work = sum(q.arrival_rate_per_s * (q.handle.mean_s + self.wrap_up_s) for q in self.queues)
        return work * self.mean_multiplier() / self.n_agents

    def with_truth(self, **changes: Any) -> Scenario:
        return replace(self, truth=replace(self.truth, **changes))


def scenario_summary(s: Scenario) -> dict[str, Any]:
    """A JSON-ready description of the scenario (for the result)."""
    out = asdict(s)
    out["queues"] = [
        {**asdict(q), "channel": Channel(q.channel).name.lower(),
         "patience": asdict(q.patience) if q.patience.finite else None}
        for q in s.queues
    ]
    out["n_agents"] = s.n_agents
    out["offered_load"] = round(s.offered_load(), 4)
    return out


def default_scenario(*, horizon_s: float = 48 * 3600.0, **changes: Any) -> Scenario:
    """A realistic sales line: 40 voice agents, 5 min mean handle time (lognormal,
    cv 1), 15 s wrap-up, customers who abandon after 3 min on average, about 85 %
    occupancy, about 19k contacts over 48 h at a flat rate; the default
    :class:`TruthSpec`, in which behavioral pairing is worth a few percent (an
    interaction of 0.2 logit sd, half of it along agent quality)."""
    agents = 40
    handle = Dist.lognormal(300.0, 1.0)
    wrap = 15.0
    rate = 0.86 * agents / (handle.mean_s + wrap)
    s = Scenario(
        queues=(QueueSpec("sales", rate, handle, Dist.exponential(180.0)),),
        agents=(AgentGroup(agents, (("sales", 50),)),),
        horizon_s=horizon_s,
        warmup_s=min(1800.0, horizon_s / 10),
        wrap_up_s=wrap,
        n_customers=20_000,
        truth=TruthSpec(),
        name="default",
    )
    return replace(s, **changes)


def erlang_scenario(
    *,
    agents: int = 12,
    arrivals_per_min: float = 4.2,
    handle_min: float = 2.0,
    patience_min: float | None = None,
    horizon_s: float,
    warmup_s: float | None = None,
) -> Scenario:
    """M/M/n (or M/M/n+M with ``patience_min``): one queue, exponential handle and
    patience, no wrap-up: the textbook case Erlang C / Erlang A describe."""
    patience = Dist.never() if patience_min is None else Dist.exponential(patience_min * 60)
    return Scenario(
        queues=(QueueSpec("q", arrivals_per_min / 60, Dist.exponential(handle_min * 60),
                          patience),),
        agents=(AgentGroup(agents, (("q", 50),)),),
        horizon_s=horizon_s,
        warmup_s=horizon_s / 20 if warmup_s is None else warmup_s,
        n_customers=1000,
        truth=TruthSpec(interaction_strength=0.0),
        name=f"erlang-{agents}x{arrivals_per_min}/min",
    )
