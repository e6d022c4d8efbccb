"""Pairing policies for every routing state. Pure NumPy + :mod:`pairline.kernels`.

- **L1, agent surplus** (:func:`choose_agent`): one contact, the eligible free
  agents of its queue. Each policy turns the candidates into keys (lower is
  better); :func:`kernels.pick_min` breaks ties by the baseline's own order
  (least loaded, then longest idle), so a policy with nothing to say falls back
  to the baseline.
- **L2, contact surplus** (:func:`choose_contact`): one agent, the waiting
  contacts it may take, limited to the highest priority present and a window
  of the oldest of those; a ``wait_weight`` knob trades pairing quality against
  waiting time.
- **L3, both at once** (:func:`assign_batch`): several free agents and several
  waiting contacts: the assignment with the best total key, solved with
  ``scipy.optimize.linear_sum_assignment``.

Policies:

- ``baseline``: every key equal (longest-idle agent / oldest contact);
- ``greedy``: the highest predicted outcome (performance-based routing; it
  overloads the strongest agents);
- ``diagonal``: behavioral pairing. Agents are ordered by expected performance
  (their predicted outcome against the queue's average contact) and given
  percentile bands that partition [0, 1]; contacts are given the percentile of
  their value among the queue's recent contacts (see :func:`contact_value`),
  drawn uniformly within the band of equal values, so load spreads evenly. A contact goes to
  the free agent whose band is closest to its percentile. ``skew`` widens the
  bands of stronger agents (0 = equal bands, balanced utilisation; large =
  towards greedy).
- ``priced``: fair performance-and-interaction pairing. A pair's value is its
  predicted outcome (probability) minus the agent's *price*; each contact takes
  the free agent of highest value (L1), each free agent the waiting contact whose
  value it loses least against that contact's best agent (L2, the reduced cost),
  and batches minimise total reduced cost (L3). Prices play the part of the dual
  variables of the fair ceiling's problem (assign contacts to equal agent
  shares), set by feedback rather than solved for: an agent's price falls with
  the time it has spent idle (:func:`charge`), so an agent picked more than its
  share grows dearer than the rest until occupancies meet. Strong agents end up
  priced so that they take the contacts they help most, and work stays spread
  evenly, with no percentile bands and no skew to tune.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy.optimize import linear_sum_assignment

from pairline import kernels
from pairline.model import Model
from pairline.routing import QueueIndex

POLICIES = ("baseline", "greedy", "diagonal", "priced")
# Waiting time is counted in units of this many seconds against pairing keys.
WAIT_UNIT_S = 20.0
_NO_PAIR = 1e9  # cost of an ineligible pair in a batch
# A batch's eligible pairs cost at most this much either way (see assign_batch).
_COST_LIMIT = _NO_PAIR / 4
# Scores that overflow float32 (huge but finite profile values) are taken as the
# largest float32 of their sign; an undefined score (NaN: inf - inf, 0 * inf) as the
# worst. See finite_scores.
F32_MAX = float(np.finfo(np.float32).max)
# Greedy keys from one BLAS pass over the whole agent matrix (see greedy_keys) when
# it has at least DENSE_MIN_ROWS rows and at least 1/DENSE_SHARE of them are
# selected. Measured here (64 dims): 10,000 rows all selected, 109 us row by row
# against 71 us; at 1,000 rows the row-by-row kernel is faster (8.6 against 9.6 us:
# the matrix is in cache and the BLAS call has a fixed cost).
DENSE_MIN_ROWS = 4096
DENSE_SHARE = 2
# Priced pairing: what an agent's idle time is worth, in outcome probability per
# *cycle* of the queue: the time in which each agent takes one contact on average
# (agents / decisions per second; about handle time / occupancy). An agent's price
# falls by this much for every cycle it waits idle (see :func:`charge`), so an
# agent that strong contacts keep busy grows dearer than one left idle until their
# occupancies meet. Measured in cycles, the knob is the same for 5-minute calls and
# 30-second chats: 0.04 prices a strong agent's edge of 5 points of probability at
# about one cycle and a quarter of idle time.
IDLE_WORTH = 0.04


@dataclass(frozen=True, slots=True)
class PolicyConfig:
    name: str = "baseline"
    skew: float = 0.0
    wait_weight: float = 0.0
    window: int = 32
    batch: bool = True


class Scorer:
    """One model folded for the kernels. Immutable: a decision holds one Scorer
    from start to end, so it never mixes two models."""

    __slots__ = ("W", "_ctx_index", "b", "dc", "logistic", "model", "version", "wa", "wc")

    def __init__(self, model: Model) -> None:
        self.model = model
        self.version = model.version
        self.W, self.wc, self.wa = model.W, model.wc, model.wa
        self.b = np.float32(model.b)
        self.dc = model.customer_dim
        self.logistic = model.link == "logistic"
        self._ctx_index = {
            name: model.customer_dim + i for i, name in enumerate(model.context_features)
        }

    def x_of(self, profile: np.ndarray, context: Sequence[tuple[str, float]]) -> np.ndarray:
        """The model input: the profile followed by the named context features."""
        x = np.zeros(self.W.shape[0], dtype=np.float32)
        x[: self.dc] = profile
        for name, value in context:
            i = self._ctx_index.get(name)
            if i is not None:
                x[i] = value
        return x

    def fold_contact(self, x: np.ndarray) -> tuple[np.ndarray, np.float32]:
        """``(u, c0)`` with ``score(x, a) = c0 + u . a``."""
        u = x @ self.W
        u += self.wa
        return u, np.float32(self.b + self.wc @ x)

    def fold_agent(self, a: np.ndarray) -> tuple[np.ndarray, np.float32]:
        """``(v, c0)`` with ``score(x, a) = c0 + x . v``."""
        v = self.W @ a
        v += self.wc
        return v, np.float32(self.b + self.wa @ a)

    def predict(self, raw: float) -> float:
        raw = float(raw)
        if not math.isfinite(raw):  # as finite_scores takes it
            raw = F32_MAX if raw == math.inf else -F32_MAX
        if not self.logistic:
            return raw
        return 1.0 / (1.0 + math.exp(-max(-60.0, min(60.0, raw))))


class QueuePairing:
    """What diagonal pairing remembers of one queue: recent contact values (for
    contact percentiles), the running mean contact input (for agent performance)
    and the agents' performance axis (for contact values)."""

    __slots__ = ("axis", "count", "decided", "gap_s", "last_decision", "n", "pos", "rng",
                 "since_sort", "sorted", "values", "xbar")

    def __init__(self, rng: np.random.Generator, capacity: int = 1024) -> None:
        self.values = np.zeros(capacity, dtype=np.float64)
        self.sorted = np.zeros(0, dtype=np.float64)
        self.n = 0
        self.pos = 0
        self.since_sort = 0
        self.count = 0
        self.rng = rng
        self.xbar: np.ndarray | None = None
        self.axis: np.ndarray | None = None
        # Priced: running mean time between the policy's decisions in the queue.
        self.decided = 0
        self.gap_s = 0.0
        self.last_decision = 0.0

    def idle_worth(self, index: QueueIndex, per_cycle: float = IDLE_WORTH) -> float:
        """Priced: what one second of idle time is worth now (``per_cycle`` over the
        queue's cycle, see :data:`IDLE_WORTH`); 0 until two decisions were made."""
        n = int(index.logged_in.sum())
        if self.decided < 2 or self.gap_s <= 0 or n == 0:
            return 0.0
        return per_cycle / (n * self.gap_s)

    def decision(self, now: float) -> None:
        """Priced: one more decision at ``now`` (for the cycle's length)."""
        if self.decided:
            alpha = max(1.0 / self.decided, 1.0 / 256)
            self.gap_s += alpha * (max(0.0, now - self.last_decision) - self.gap_s)
        self.decided += 1
        self.last_decision = now

    def reset_model(self, keep_xbar: bool) -> None:
        """A new model is active: forget what was derived from the old one (contact
        values, the agents' performance axis), so contacts are ranked only against
        values of the same model. The mean contact input stays when ``keep_xbar``
        (the new model reads the same inputs)."""
        self.values[:] = 0.0
        self.sorted = np.zeros(0, dtype=np.float64)
        self.n = self.pos = self.since_sort = 0
        self.axis = None
        if not keep_xbar:
            self.xbar = None
            self.count = 0

    def percentile(self, value: float) -> float:
        """Where ``value`` falls among recent contacts, uniform within ties."""
        s = self.sorted
        if s.size == 0:
            return float(self.rng.random())
        lt = int(np.searchsorted(s, value, "left"))
        le = int(np.searchsorted(s, value, "right"))
        return (lt + self.rng.random() * (le - lt + 1)) / (s.size + 1)

    def observe(self, value: float, x: np.ndarray | None) -> None:
        """One more contact value; and its input ``x`` for the mean (None: counted
        in the mean already)."""
        self.values[self.pos] = value
        self.pos = (self.pos + 1) % self.values.size
        self.n = min(self.n + 1, self.values.size)
        self.since_sort += 1
        if self.since_sort >= 32 or self.sorted.size < 32:
            self.sorted = np.sort(self.values[: self.n])
            self.since_sort = 0
        if x is None:
            return
        self.count += 1
        if self.xbar is None or self.xbar.shape != x.shape:
            self.xbar = x.astype(np.float64)
        else:
            alpha = max(1.0 / self.count, 1e-3)
            self.xbar += alpha * (x - self.xbar)


def refresh_bands(index: QueueIndex, pairing: QueuePairing, scorer: Scorer, skew: float,
                  now: float) -> None:
    """Recompute every logged-in agent's percentile band and the mean agent."""
    rows = np.flatnonzero(index.logged_in & index.has_vec)
    index.bands_dirty = False
    index.bands_at = now
    if rows.size == 0:
        pairing.axis = None
        return
    A = index.vec[rows].astype(np.float64)
    xbar = pairing.xbar if pairing.xbar is not None else np.zeros(scorer.W.shape[0])
    perf = A @ (xbar @ scorer.W + scorer.wa)
    order = np.lexsort((rows, perf))
    n = rows.size
    half = max(1, n // 2)
    axis = A[order[n - half :]].mean(axis=0) - A[order[:half]].mean(axis=0)
    pairing.axis = axis.astype(np.float32)
    w = np.exp(skew * (np.arange(n) + 0.5) / n)
    w /= w.sum()
    hi = np.cumsum(w)
    hi[-1] = 1.0
    index.lo[rows[order]] = hi - w
    index.hi[rows[order]] = hi


def contact_value(pairing: QueuePairing, u: np.ndarray, c0: float) -> float:
    """How much a contact gains from a stronger agent: its score's slope along the
    agents' performance axis (the stronger half's mean profile minus the weaker
    half's). Ordering contacts by this, rather than by their outcome against the
    average agent, is what makes pairing close percentiles pay: a contact whose
    outcome rises most with agent strength meets the strongest agents."""
    if pairing.axis is None:
        value = float(c0)
    else:
        value = float(u @ pairing.axis)
        if not math.isfinite(value):  # float32 overflowed: again in float64
            with np.errstate(over="ignore", invalid="ignore"):
                value = float(u.astype(np.float64) @ pairing.axis.astype(np.float64))
    if not math.isfinite(value):  # still: the same for every such contact
        return 0.0 if math.isnan(value) else math.copysign(F32_MAX, value)
    return value


def finite_scores(scores: np.ndarray) -> np.ndarray:
    """``scores`` (higher is better) as finite float64: +-inf (an overflow of huge
    but finite profile values) as +-F32_MAX, NaN as -F32_MAX (an undefined score is
    never preferred). Ties among them go by the baseline's order."""
    return np.nan_to_num(np.asarray(scores, dtype=np.float64), nan=-F32_MAX, posinf=F32_MAX,
                         neginf=-F32_MAX)


def scores64(M: np.ndarray, w: np.ndarray, c0: float) -> np.ndarray:
    """``c0 + M @ w`` in float64, made finite (:func:`finite_scores`): what the
    float32 kernels compute, for when they overflowed (huge but finite profile
    values; the kernels' fastmath gives inf or NaN there, depending on the CPU)."""
    with np.errstate(over="ignore", invalid="ignore"):
        return finite_scores(float(c0) + M.astype(np.float64) @ w.astype(np.float64))


def link(raw: np.ndarray, logistic: bool) -> np.ndarray:
    """Model scores as predicted outcomes (probabilities for a logistic model)."""
    raw = np.asarray(raw, dtype=np.float64)
    if not logistic:
        return raw
    out: np.ndarray = 1.0 / (1.0 + np.exp(-np.clip(raw, -60.0, 60.0)))
    return out


def greedy_keys(index: QueueIndex, rows: np.ndarray, u: np.ndarray, c0: float) -> np.ndarray:
    """Greedy's keys for one contact (folded into ``u``, ``c0``) against the agents
    at ``rows``: minus the score; agents without a profile get the mean of the others.

    When the rows are a large share of a large matrix, every row is scored at once
    by BLAS (``vec[:top] @ u``, one contiguous pass) and the selected ones are read
    from it: the same keys up to float32 rounding (the sums run in another order)."""
    keys = np.empty(rows.size, dtype=np.float64)
    top = index.top
    if top >= DENSE_MIN_ROWS and rows.size * DENSE_SHARE >= top:
        with np.errstate(over="ignore", invalid="ignore"):
            scores = np.matmul(index.vec[:top], u, out=index.scores[:top])
        kernels.greedy_keys_dense(scores, index.has_vec, rows, np.float32(c0), keys)
    else:
        kernels.greedy_keys(index.vec, index.has_vec, rows, u, np.float32(c0), keys)
    # (one sum: finite keys are float32-sized, so their float64 sum is finite)
    if not math.isfinite(keys.sum()):
        # float32 overflowed (huge profile values): the keys again in float64, made
        # finite, and agents without a profile at the mean of the others again.
        keys = -scores64(index.vec[rows], u, c0)
        known = index.has_vec[rows]
        if not known.all():
            keys[~known] = keys[known].mean() if known.any() else -float(c0)
    return keys


def neutral_score(index: QueueIndex, rows: np.ndarray, u: np.ndarray, c0: float) -> float:
    """The score greedy gives an agent without a profile among ``rows``: the mean
    score of those with one (``c0`` if none has)."""
    known = rows[index.has_vec[rows]]
    if known.size == 0:
        return float(c0)
    return float(-greedy_keys(index, known, u, c0).mean())


def _predicted(index: QueueIndex, rows: np.ndarray, u: np.ndarray, c0: float,
               logistic: bool) -> np.ndarray:
    """Predicted outcomes of one contact with the agents at ``rows`` (the greedy
    keys' scores: agents without a profile get the mean of the others)."""
    return link(-greedy_keys(index, rows, u, c0), logistic)


def contact_price_value(index: QueueIndex, u: np.ndarray, c0: float, logistic: bool) -> float:
    """Priced: a contact's value, ``max_a (predicted(c, a) - price_a)`` over the
    queue's logged-in agents."""
    rows = np.flatnonzero(index.logged_in).astype(np.int64)
    if rows.size == 0:
        return 0.0
    return float((_predicted(index, rows, u, c0, logistic) - index.price[rows]).max())


def charge(index: QueueIndex, pairing: QueuePairing, row: int, now: float) -> None:
    """Priced: the agent at ``row`` takes a contact at ``now``; its price falls by
    the worth of the idle spell this ends (:meth:`QueuePairing.idle_worth`), then
    every logged-in agent's price is shifted so that prices keep a mean of 0 (a
    newcomer's 0 is the average). Prices are thus minus the worth of each agent's
    total idle time, up to a common constant: an integral controller on occupancy."""
    worth = pairing.idle_worth(index)
    pairing.decision(now)
    index.price[row] -= worth * max(0.0, now - float(index.idle_since[row]))
    live = index.logged_in
    if live.any():
        index.price[live] -= index.price[live].mean()


def _neutral(scores: np.ndarray, known: np.ndarray) -> np.ndarray:
    """Scores of candidates without a profile set to the mean of the others."""
    if not known.all():
        scores = scores.copy()
        scores[~known] = scores[known].mean() if known.any() else 0.0
    return scores


def choose_agent(
    policy: PolicyConfig,
    index: QueueIndex,
    rows: np.ndarray,
    u: np.ndarray | None,
    c0: float,
    pct: float,
    logistic: bool = True,
    idle_worth: float = 0.0,
) -> int:
    """L1: the chosen position in the eligible ``rows`` for one contact (folded into
    the model as ``u``, ``c0``; ``pct`` its percentile; ``idle_worth`` what a second
    of idle time is worth, for priced). Each policy turns the rows into keys, lower
    is better; ties go by the baseline's order."""
    if policy.name == "greedy" and u is not None:
        keys = greedy_keys(index, rows, u, c0)
        k = int(kernels.pick_min(keys, rows, index.load, index.idle_since))
        if k >= 0 and not index.has_vec[rows[k]]:
            # An agent without a profile scores the mean of the others: on an equal
            # key, an agent whose score is known is preferred to it.
            tied = np.flatnonzero((keys == keys[k]) & index.has_vec[rows])
            if tied.size:
                k = int(tied[kernels.pick_min(keys[tied], rows[tied], index.load,
                                              index.idle_since)])
        return k
    elif policy.name == "priced" and u is not None:
        # The current idle spell counts too: idle_worth * idle_since is, up to the
        # common -idle_worth * now, the part of the price not yet charged.
        keys = (index.price[rows] + idle_worth * index.idle_since[rows]
                - _predicted(index, rows, u, c0, logistic))
    else:
        keys = np.zeros(rows.size, dtype=np.float64)
        if policy.name == "diagonal":
            kernels.band_distance(rows, index.lo, index.hi, pct, keys)
    return int(kernels.pick_min(keys, rows, index.load, index.idle_since))


def contact_keys(
    policy: PolicyConfig,
    xs: Sequence[np.ndarray | None],
    pcts: Sequence[float],
    waits_s: Sequence[float],
    v: np.ndarray | None,
    c0: float,
    band: tuple[float, float],
    *,
    values: Sequence[float] = (),
    price: float | np.ndarray = 0.0,
    logistic: bool = True,
) -> tuple[np.ndarray, np.ndarray | None]:
    """L2 keys for waiting contacts (best first by priority then age) and raw scores.
    ``band`` is the agent's diagonal band; ``values`` (the contacts' values) and
    ``price`` (the agent's) are priced pairing's."""
    m = len(xs)
    scores = None
    if v is not None:
        known = np.array([x is not None for x in xs])
        raw = np.zeros(m, dtype=np.float64)
        if known.any():
            X = np.stack([x for x in xs if x is not None])
            out = np.empty(X.shape[0], dtype=np.float32)
            kernels.score_contacts(X, v, np.float32(c0), out)
            if not np.isfinite(out).all():  # float32 overflowed: again in float64
                out = scores64(X, v, c0)
            raw[known] = out
        scores = _neutral(raw, known)
    if policy.name == "baseline" or (policy.name == "greedy" and scores is None):
        return np.arange(m, dtype=np.float64), scores
    if policy.name == "greedy":
        assert scores is not None
        keys = -scores.astype(np.float64)
    elif policy.name == "priced":
        if scores is None:
            return np.arange(m, dtype=np.float64), scores
        # Reduced cost: what the contact loses with this agent against its best one.
        keys = np.asarray(values, dtype=np.float64) - (link(scores, logistic) - price)
        keys[~known] = 0.0  # no profile: indifferent between agents, as far as we know
    else:
        lo, hi = band
        p = np.asarray(pcts, dtype=np.float64)
        keys = np.maximum(np.maximum(lo - p, p - hi), 0.0)
    keys -= policy.wait_weight * np.asarray(waits_s, dtype=np.float64) / WAIT_UNIT_S
    return keys, scores


def assign_batch(cost: np.ndarray, eligible: np.ndarray | None = None) -> list[tuple[int, int]]:
    """Best total assignment of rows (contacts) to columns (agents); pairs that are
    not ``eligible`` (cost at least ``NO_PAIR / 2`` when no mask is given) are
    dropped. The solver only sees finite costs: eligible pairs' costs (inf or NaN
    where scores overflowed) are brought within +-_COST_LIMIT, NaN as the worst.
    Empty when the solver fails all the same (the caller decides alone)."""
    if cost.size == 0:
        return []
    if eligible is None:
        eligible = cost < _NO_PAIR / 2
    finite = np.clip(np.nan_to_num(cost, nan=_COST_LIMIT, posinf=_COST_LIMIT,
                                   neginf=-_COST_LIMIT), -_COST_LIMIT, _COST_LIMIT)
    finite[~eligible] = _NO_PAIR
    try:
        r, c = linear_sum_assignment(finite)
    except ValueError:
        return []
    return [(int(i), int(j)) for i, j in zip(r, c, strict=True) if eligible[i, j]]


NO_PAIR = _NO_PAIR
