"""The simulator's ground truth: who succeeds with whom, and what the service sees.

``P(success | c, a) = sigmoid(b + wc.z_c + wa.w_a + z_c' W w_a)`` with latent
customer vectors ``z_c`` and agent vectors ``w_a`` (both ``N(0, I_dim)``):

- ``wc`` and ``wa`` point in random directions with lengths
  ``customer_effect_sd`` and ``agent_effect_sd`` (so the main effects have those
  standard deviations on the logit scale);
- ``W = s (rho u g' + sqrt(1 - rho^2) R)``, ``s`` the interaction strength,
  ``g = wa / |wa|`` the agent-quality axis, ``u`` a random customer direction and
  ``R`` a random matrix orthogonal to ``u g'`` with unit Frobenius norm: the
  interaction term ``z' W w`` then has standard deviation ``s`` exactly, a share
  ``rho`` of it (in sd) along agent quality;
- ``b = logit(base_rate)``.

The service is given profiles that are noisy copies of the latent vectors and an
"oracle-fitted" model whose ``W``, ``wc``, ``wa``, ``b`` are the truth's (the
simulator knows the truth, so no training is involved; training is judged
elsewhere). The unfair oracle is given the exact latent vectors instead.

:func:`fair_ceiling` is the best any fair policy could do: the optimal assignment
of a large sample of contacts to equal agent shares under the true probabilities.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from scipy.optimize import linear_sum_assignment

from pairline.model import dump_model
from pairline.sim.scenario import Scenario, TruthSpec

_INELIGIBLE = 1e6


def _unit(rng: np.random.Generator, k: int) -> np.ndarray:
    v = rng.standard_normal(k)
    return v / np.linalg.norm(v)


def sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-z))


class GroundTruth:
    """Latent vectors, true weights, noisy profiles and the oracle-fitted model."""

    __slots__ = ("W", "b", "customer_profiles", "agent_profiles", "spec", "w", "wa", "wc", "z")

    def __init__(
        self,
        spec: TruthSpec,
        n_customers: int,
        n_agents: int,
        truth_seed: np.random.SeedSequence,
        profile_seed: np.random.SeedSequence,
    ) -> None:
        self.spec = spec
        k = spec.dim
        rng = np.random.default_rng(truth_seed)
        self.z = rng.standard_normal((n_customers, k))
        self.w = rng.standard_normal((n_agents, k))
        g = _unit(rng, k)
        self.wa = spec.agent_effect_sd * g
        self.wc = spec.customer_effect_sd * _unit(rng, k)
        u = _unit(rng, k)
        aligned = np.outer(u, g)
        R = rng.standard_normal((k, k))
        R -= float(u @ R @ g) * aligned  # orthogonal to u g' (Frobenius inner product)
        norm = float(np.linalg.norm(R))
        rho = spec.interaction_alignment if norm > 1e-9 else 1.0  # dim 1: aligned only
        R = R / norm if norm > 1e-9 else np.zeros_like(R)
        self.W = spec.interaction_strength * (rho * aligned + math.sqrt(1 - rho * rho) * R)
        self.b = math.log(spec.base_rate / (1 - spec.base_rate))
        prng = np.random.default_rng(profile_seed)
        self.customer_profiles = (
            self.z + spec.customer_noise_sd * prng.standard_normal(self.z.shape)
        ).astype(np.float32)
        self.agent_profiles = (
            self.w + spec.agent_noise_sd * prng.standard_normal(self.w.shape)
        ).astype(np.float32)

    @classmethod
    def for_scenario(cls, scenario: Scenario, truth_seed: np.random.SeedSequence,
                     profile_seed: np.random.SeedSequence) -> GroundTruth:
        return cls(scenario.truth, scenario.n_customers, scenario.n_agents, truth_seed,
                   profile_seed)

    @property
    def agent_effect(self) -> np.ndarray:
        """Each agent's main effect (logit scale): its strength against the average customer."""
        return self.w @ self.wa

    def logit(self, customers: np.ndarray, agents: np.ndarray) -> np.ndarray:
        """True logits of the pairs ``(customers[i], agents[i])``."""
        z, w = self.z[customers], self.w[agents]
        return self.b + z @ self.wc + w @ self.wa + np.einsum("ij,ij->i", z @ self.W, w)

    def prob(self, customers: np.ndarray, agents: np.ndarray) -> np.ndarray:
        return sigmoid(self.logit(customers, agents))

    def matrix(self, customers: np.ndarray, agents: np.ndarray | None = None) -> np.ndarray:
        """True probabilities, customers x agents."""
        w = self.w if agents is None else self.w[agents]
        z = self.z[customers]
        logits = self.b + (z @ self.wc)[:, None] + (w @ self.wa)[None, :] + (z @ self.W) @ w.T
        return sigmoid(logits)

    def pair_prob(self) -> Callable[[int, int], float]:
        """A fast ``(customer, agent) -> probability`` for the engine's inner loop: a
        lookup in the precomputed matrix when it is small enough, else one small
        dot product per call."""
        n_c, n_a = self.z.shape[0], self.w.shape[0]
        if n_c * n_a <= 8_000_000:
            table = self.matrix(np.arange(n_c)).tolist()
            return lambda c, a: table[c][a]  # type: ignore[no-any-return]
        cz = (self.b + self.z @ self.wc).tolist()
        aw = (self.w @ self.wa).tolist()
        zW = self.z @ self.W
        w = self.w

        def prob(c: int, a: int) -> float:
            return 1.0 / (1.0 + math.exp(-(cz[c] + aw[a] + float(zW[c] @ w[a]))))

        return prob

    def model_bytes(self, version: str = "sim-oracle-fitted") -> bytes:
        """A pairline model file encoding the truth (customer_dim = agent_dim = dim)."""
        return dump_model(version=version, W=self.W, wc=self.wc, wa=self.wa, b=self.b,
                          outcome="success")


def eligibility(scenario: Scenario) -> np.ndarray:
    """bool[n_queues, n_agents]: may agent ``a`` take a contact of queue ``q``."""
    queues = {q.name: i for i, q in enumerate(scenario.queues)}
    out = np.zeros((len(scenario.queues), scenario.n_agents), dtype=bool)
    a = 0
    for g in scenario.agents:
        for _ in range(g.count):
            for name, _prof in g.queues:
                qi = queues[name]
                if g.capacities[scenario.queues[qi].channel - 1] > 0:
                    out[qi, a] = True
            a += 1
    return out


@dataclass(frozen=True, slots=True)
class Ceiling:
    """The fair ceiling (see :func:`fair_ceiling`)."""

    outcome_rate: float  # fair random rate + the mean gain of the optimal assignment
    random_rate: float  # expected outcome of a random eligible agent (equal shares)
    gain: float  # ceiling - random (absolute), averaged over the batches
    gain_se: float  # its standard error across batches
    contacts: int  # contacts assigned in all batches
    slots_per_agent: int
    feasible: bool  # False: equal shares were impossible under eligibility


def fair_ceiling(
    truth: GroundTruth,
    scenario: Scenario,
    seed: np.random.SeedSequence,
    *,
    contacts: int = 3000,
    batches: int = 3,
) -> Ceiling:
    """The best outcome rate a fair policy could reach on this truth.

    Each batch samples ``k * n_agents`` contacts (``k = contacts // n_agents``)
    from the scenario's arrival mix and customer population, repeats every agent
    ``k`` times (equal shares), and solves the assignment maximising the total
    true probability with :func:`scipy.optimize.linear_sum_assignment` (no
    waiting, no timing: every contact may go to any eligible agent slot). Its gain
    over a random eligible assignment of the same batch is averaged over the
    batches and added to the population's random-assignment rate (a paired
    estimate: much less noisy than the batch rates themselves).

    It is an upper bound for policies that give agents equal shares of the arrival
    mix, up to sampling noise (a finite batch slightly overstates the large-sample
    optimum). It is not a bound for unfair policies (greedy overloads strong
    agents and can pass it) nor for abandonment that selects which contacts get
    handled.
    """
    rng = np.random.default_rng(seed)
    n = scenario.n_agents
    k = max(1, contacts // n)
    size = k * n
    elig = eligibility(scenario)
    mix = np.array([q.arrival_rate_per_s for q in scenario.queues], dtype=float)
    mix = mix / mix.sum() if mix.sum() > 0 else np.full(mix.size, 1 / mix.size)
    # Random-assignment rate over the population (at most 20k customers sampled).
    pop = scenario.n_customers
    cust = np.arange(pop) if pop <= 20_000 else rng.choice(pop, 20_000, replace=False)
    P_pop = truth.matrix(cust)
    random_rate = float(sum(
        mix[q] * P_pop[:, elig[q]].mean() for q in range(mix.size) if elig[q].any()))
    gains, feasible = [], True
    for _ in range(batches):
        customers = rng.integers(0, pop, size)
        queues = rng.choice(mix.size, size, p=mix)
        P = truth.matrix(customers)
        ok = elig[queues]  # contacts x agents
        cost = np.where(ok, -P, _INELIGIBLE)
        rows, cols = linear_sum_assignment(np.repeat(cost, k, axis=1))
        agents = cols // k
        if not ok[rows, agents].all():
            feasible = False
        best = float(P[rows, agents].mean())
        rand = float((np.where(ok, P, 0).sum(axis=1) / np.maximum(ok.sum(axis=1), 1)).mean())
        gains.append(best - rand)
    g = np.asarray(gains)
    se = float(g.std(ddof=1) / math.sqrt(g.size)) if g.size > 1 else 0.0
    return Ceiling(random_rate + float(g.mean()), random_rate, float(g.mean()), se,
                   size * batches, k, feasible)
