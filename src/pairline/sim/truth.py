"""The simulator's ground truth: who succeeds with whom, and what the service sees.

``P(success | c, a) = sigmoid(b + wc.z_c + wa.w_a + z_c' W w_a)`` with latent
customer vectors ``z_c`` and agent vectors ``w_a`` (both ``N(0, I_dim)``):

- ``wc`` and ``wa`` point in random directions with lengths
  ``customer_effect_sd`` and ``agent_effect_sd`` (so the main effects have those
  standard deviations on the logit scale);
- ``W = s (rho u g' + sqrt(1 - rho^2) R)``, ``s`` the interaction strength,
  ``g = wa / |wa|`` the agent-quality axis, ``u`` a random customer direction and
  ``R`` a random matrix with ``R g = 0`` and unit Frobenius norm: the interaction
  term ``z' W w`` then has standard deviation ``s`` exactly, and ``W g = s rho u``:
  the share ``rho`` of it (in sd) lies along agent quality (stronger agents help
  some customers more: what diagonal pairing ranks by), the rest is affinity
  across the other agent dimensions. ``u`` and the rows of ``R`` are orthogonal to
  ``wc`` (dim > 1): the interaction does not involve the customer main effect;
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

from pairline.model import dump_model
from pairline.sim.scenario import Scenario, TruthSpec


def _unit(rng: np.random.Generator, k: int) -> np.ndarray:
    v = rng.standard_normal(k)
    return v / np.linalg.norm(v)


def sigmoid(z: np.ndarray) -> np.ndarray:
    out: np.ndarray = 1.0 / (1.0 + np.exp(-z))
    return out


class GroundTruth:
    """Latent vectors, true weights, noisy profiles and the oracle-fitted model."""

    __slots__ = ("W", "agent_profiles", "b", "customer_profiles", "spec", "w", "wa", "wc", "z")

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
        c = _unit(rng, k)
        self.wa = spec.agent_effect_sd * g
        self.wc = spec.customer_effect_sd * c
        # The interaction's customer side is kept orthogonal to the customer main
        # effect (when dim > 1), so that interaction strength 0 and > 0 differ only
        # by the interaction: no policy ranks contacts by their main effect by accident.
        keep = np.eye(k) - np.outer(c, c) if k > 1 else np.eye(k)
        u = keep @ rng.standard_normal(k)
        u /= np.linalg.norm(u)
        aligned = np.outer(u, g)
        # The rest: a random matrix that touches neither the customer main effect nor
        # the agent-quality axis (R g = 0), so exactly the share rho (in sd) of the
        # interaction lies along agent quality.
        R = keep @ rng.standard_normal((k, k)) @ (np.eye(k) - np.outer(g, g))
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
        out: np.ndarray = self.b + z @ self.wc + w @ self.wa + np.einsum("ij,ij->i", z @ self.W, w)
        return out

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
            return lambda c, a: float(table[c][a])
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

    outcome_rate: float  # the best fair outcome rate (an upper bound, see fair_ceiling)
    random_rate: float  # expected outcome of a random eligible agent (equal shares)
    gain: float  # outcome_rate - random_rate (absolute)
    contacts: int  # customer x queue rows the bound was computed on


@dataclass(frozen=True, slots=True)
class TransportBound:
    value: float  # weak-duality upper bound on the best equal-shares assignment
    prices: np.ndarray  # f8[n]: the agents' dual prices
    shares: np.ndarray  # f8[n]: shares of the dual's argmax assignment


def _dual(prices: np.ndarray, P: np.ndarray, ok: np.ndarray, weights: np.ndarray,
          shares: np.ndarray, tau: float) -> tuple[float, np.ndarray]:
    """Smoothed dual ``sum_r w_r tau logsumexp((P_r - prices)/tau) + shares.prices`` and
    its gradient (an upper bound of the exact dual, which it approaches as tau -> 0)."""
    V = np.where(ok, P - prices, -np.inf) / tau
    m = V.max(axis=1, keepdims=True)
    E = np.exp(V - m)
    s = E.sum(axis=1, keepdims=True)
    value = float(weights @ (tau * (np.log(s[:, 0]) + m[:, 0]))) + float(shares @ prices)
    grad = -(weights @ (E / s)) + shares
    return value, grad


def transport_bound(P: np.ndarray, ok: np.ndarray | None = None,
                    weights: np.ndarray | None = None,
                    shares: np.ndarray | None = None) -> TransportBound:
    """The best mean of assigning rows (contacts, with probability ``weights``) to
    columns (agents) so that column ``a`` gets the share ``shares[a]`` (equal shares
    by default), bounded from above by LP duality: for any prices ``l``,
    ``sum_r w_r max_a (P[r, a] - l_a) + shares.l`` is at least the optimum, with
    equality at the optimal prices (the semi-discrete optimal transport dual).
    The prices are found by L-BFGS on a smoothed dual with a shrinking
    temperature; the value returned is the exact dual at those prices, so it is an
    upper bound however well that converged. (The returned ``shares``, those of the
    argmax at the prices, need not match at the optimum: rows indifferent between
    agents are split by the primal, not the argmax.) The shares must be possible
    under ``ok``; when they are not, the bound holds only within the price box.

    On a sample of ``k * n`` rows with equal weights this is the
    ``linear_sum_assignment`` optimum with every agent repeated ``k`` times, divided
    by the number of rows (the tests check it), at a fraction of the cost; on the
    whole customer population it has no finite-batch optimism."""
    from scipy.optimize import minimize

    m, n = P.shape
    ok = np.ones_like(P, dtype=bool) if ok is None else ok
    w = np.full(m, 1.0 / m) if weights is None else weights / weights.sum()
    q = np.full(n, 1.0 / n) if shares is None else shares / shares.sum()
    prices = np.zeros(n)
    for tau in (1e-2, 1e-3, 1e-4):
        res = minimize(_dual, prices, args=(P, ok, w, q, tau), jac=True, method="L-BFGS-B",
                       bounds=[(-2.0, 2.0)] * n, options={"maxiter": 500, "gtol": 1e-10})
        prices = res.x
    V = np.where(ok, P - prices, -np.inf)
    best = V.argmax(axis=1)
    value = float(w @ V[np.arange(m), best]) + float(q @ prices)
    got = np.bincount(best, weights=w, minlength=n)
    return TransportBound(value, prices, got)


def fair_ceiling(
    truth: GroundTruth,
    scenario: Scenario,
    seed: np.random.SeedSequence,
    *,
    max_customers: int = 20_000,
) -> Ceiling:
    """The best outcome rate a fair policy could reach on this truth: every contact
    assigned, with no waiting and no timing, to the eligible agent that is best for
    the whole, under the constraint that every agent takes an equal share; the
    contacts are the scenario's arrival mix over its customer population (at most
    ``max_customers`` sampled, per queue).

    This is the optimal assignment of a large sample of contacts to equal agent
    slots (``linear_sum_assignment`` with each agent repeated ``k`` times, as
    ``k`` grows), computed through its dual (:func:`transport_bound`), which is an
    upper bound at any prices: so it bounds the expected outcome of every policy
    that gives agents equal shares of the arrival mix, up to the agents'
    deviation from equal shares. It is not a bound for unfair policies (greedy
    overloads strong agents and can pass it), nor when abandonment selects which
    contacts get handled.
    """
    rng = np.random.default_rng(seed)
    elig = eligibility(scenario)
    mix = np.array([q.arrival_rate_per_s for q in scenario.queues], dtype=float)
    mix = mix / mix.sum() if mix.sum() > 0 else np.full(mix.size, 1 / mix.size)
    pop = scenario.n_customers
    cust = np.arange(pop) if pop <= max_customers else rng.choice(pop, max_customers,
                                                                    replace=False)
    P1 = truth.matrix(cust)
    queues = [q for q in range(mix.size) if mix[q] > 0 and elig[q].any()]
    P = np.concatenate([P1] * len(queues))
    ok = np.concatenate([np.broadcast_to(elig[q], P1.shape) for q in queues])
    weights = np.concatenate([np.full(cust.size, mix[q]) for q in queues])
    weights /= weights.sum()
    random_rate = float(weights @ (np.where(ok, P, 0).sum(axis=1) / ok.sum(axis=1)))
    bound = transport_bound(P, ok, weights)
    return Ceiling(bound.value, random_rate, bound.value - random_rate, int(P.shape[0]))
