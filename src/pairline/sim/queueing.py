"""Queueing theory the simulator's baseline must reproduce.

- **Erlang C** (M/M/n, no abandonment): the probability of waiting, the service
  level ``P(wait <= t)`` and the average speed of answer, from the closed forms.
- **Erlang A** (M/M/n+M: exponential patience with mean ``1/theta``): solved
  exactly (up to a truncation whose tail mass is below 1e-14) as the birth-death
  chain of the number of contacts in the system, ``lambda`` up, ``min(j, n) mu +
  max(j - n, 0) theta`` down. Waiting-time quantities follow a tagged contact
  that arrives to find ``j >= n`` (PASTA: with the stationary probability of
  ``j``): under first-come-first-served it reaches an agent after ``j - n + 1``
  stages, the stage with ``i`` contacts ahead of it lasting an exponential time of
  rate ``n mu + i theta`` (a completion, or an abandonment ahead of it); its own
  patience is an independent exponential of rate ``theta``.

Rates are per second, times in seconds. Service level here is
``P(answered and wait <= t)`` over all arrivals, the simulator's definition.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


def erlang_b(n: int, load: float) -> float:
    """Blocking probability of M/M/n/n with offered ``load = lambda / mu`` Erlangs."""
    b = 1.0
    for k in range(1, n + 1):
        b = load * b / (k + load * b)
    return b


def erlang_c(n: int, load: float) -> float:
    """Probability that an arrival waits in M/M/n (requires ``load < n``)."""
    if load >= n:
        return 1.0
    b = erlang_b(n, load)
    return n * b / (n - load * (1 - b))


@dataclass(frozen=True, slots=True)
class QueueFigures:
    """Steady-state figures of one queue."""

    p_wait: float  # an arrival finds every agent busy
    p_abandon: float
    service_level: float  # P(answered and wait <= t), over all arrivals
    asa_s: float  # mean wait of answered contacts
    occupancy: float  # mean share of agents busy
    mean_queue: float  # mean number waiting


def erlang_c_figures(n: int, arrival_rate: float, handle_mean_s: float,
                     threshold_s: float) -> QueueFigures:
    """M/M/n: ``P(W <= t) = 1 - C e^{-(n mu - lambda) t}``, ``ASA = C / (n mu - lambda)``."""
    mu = 1.0 / handle_mean_s
    load = arrival_rate / mu
    if load >= n:
        raise ValueError(f"unstable: offered load {load:.3f} >= {n} agents")
    c = erlang_c(n, load)
    drain = n * mu - arrival_rate
    return QueueFigures(
        p_wait=c,
        p_abandon=0.0,
        service_level=1.0 - c * math.exp(-drain * threshold_s),
        asa_s=c / drain,
        occupancy=load / n,
        mean_queue=c * arrival_rate / drain,
    )


def _stationary(n: int, lam: float, mu: float, theta: float) -> np.ndarray:
    """Stationary distribution of the number in system of M/M/n+M, truncated where
    the tail is negligible (log-space products, then normalised)."""
    logs = [0.0]
    j = 0
    while True:
        j += 1
        death = min(j, n) * mu + max(j - n, 0) * theta
        logs.append(logs[-1] + math.log(lam / death))
        if j > n and (logs[-1] - max(logs) < math.log(1e-16)) and lam < death:
            break
        if j > 10_000_000:
            raise ValueError("the chain does not settle (theta = 0 with load >= n?)")
    arr = np.asarray(logs)
    p: np.ndarray = np.exp(arr - arr.max())
    p /= p.sum()
    return p


def erlang_a_figures(n: int, arrival_rate: float, handle_mean_s: float,
                     patience_mean_s: float, threshold_s: float) -> QueueFigures:
    """M/M/n+M, exactly (see the module docstring). ``patience_mean_s = inf`` gives
    Erlang C through the same chain (for cross-checks)."""
    lam, mu = arrival_rate, 1.0 / handle_mean_s
    theta = 0.0 if math.isinf(patience_mean_s) else 1.0 / patience_mean_s
    pi = _stationary(n, lam, mu, theta)
    # An arrival finding j >= n has i = j - n contacts ahead of it in the queue.
    ahead = pi[n:]
    m = ahead.size
    i = np.arange(m)
    move = n * mu + i * theta  # rate of moving up one place (or into service at i = 0)
    # Served before abandoning (h) and E[wait; served] (g), by the number ahead:
    # from i the next event comes after Exp(move_i + theta); it is a move with
    # probability move_i / (move_i + theta).
    h = np.empty(m)
    g = np.empty(m)
    prev_h, prev_g = 1.0, 0.0
    for k in range(m):
        r = move[k] + theta
        h[k] = move[k] / r * prev_h
        g[k] = h[k] / r + move[k] / r * prev_g
        prev_h, prev_g = h[k], g[k]
    p_wait = float(ahead.sum())
    answered = float(pi[:n].sum() + ahead @ h)
    asa = float(ahead @ g) / answered
    # P(served within t): the tagged contact's position as a pure-death chain
    # (states i = m-1 .. 0, then "served"), killed at rate theta by its own
    # patience; the mass in "served" at time t.
    from scipy.sparse import diags
    from scipy.sparse.linalg import expm_multiply

    # Generator, transposed for column vectors: state k (k ahead) -> k-1, state 0 -> served (m).
    size = m + 1
    out_rate = np.append(move + theta, 0.0)
    sub = np.append(move[1:], 0.0)  # k -> k-1 for k >= 1 lands at index k-1
    Q = diags([-out_rate, sub], [0, 1], shape=(size, size), format="lil")
    Q[m, 0] = move[0]  # from 0 ahead into service
    start = np.append(ahead, 0.0)
    served_by_t = float(expm_multiply(Q.tocsr() * threshold_s, start)[m])
    p_abandon = 1.0 - answered
    mean_queue = float(ahead @ i)
    busy = float(pi[:n] @ np.arange(n) + n * pi[n:].sum())
    return QueueFigures(
        p_wait=p_wait,
        p_abandon=p_abandon,
        service_level=float(pi[:n].sum()) + served_by_t,
        asa_s=asa,
        occupancy=busy / n,
        mean_queue=mean_queue,
    )


# ----------------------------------------------------------- control variates
# A simulated M/M/n queue near saturation is slow to average out: the queue length
# drifts for thousands of arrivals, so a mean wait over 10^5 contacts is still off
# by several percent. Control variates remove most of that noise: statistics of
# simpler queues driven by the very same arrivals, handle times and patience, whose
# exact means are known, and which drift together with the simulated one. The
# estimate stays unbiased for the simulated queue (up to the regression's O(1/runs)).


def fast_server(arrival_s: np.ndarray, work_s: np.ndarray,
                patience_s: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """One first-come-first-served server doing ``work_s`` per contact (Lindley's
    recursion): each contact's offered wait and whether it was served (its wait not
    longer than its patience; an abandoning contact brings no work). With handle
    times divided by ``n`` this is the M/M/1(+M) queue with an ``n`` times faster
    agent, whose figures are :func:`erlang_a_figures` with ``n = 1``."""
    waits = np.empty(arrival_s.size)
    served = np.ones(arrival_s.size, dtype=bool)
    pat = patience_s.tolist() if patience_s is not None else None
    v = 0.0
    last = 0.0
    for k, (a, s) in enumerate(zip(arrival_s.tolist(), work_s.tolist(), strict=True)):
        v -= a - last
        if v < 0.0:
            v = 0.0
        last = a
        waits[k] = v
        if pat is not None and v > pat[k]:
            served[k] = False
        else:
            v += s
    return waits, served


def infinite_server_counts(arrival_s: np.ndarray, handle_s: np.ndarray) -> np.ndarray:
    """Contacts in an infinite-server system (every contact handled at once) just
    before each arrival; stationary law Poisson(offered load), by PASTA."""
    ends = np.sort(arrival_s + handle_s)
    return np.arange(arrival_s.size) - np.searchsorted(ends, arrival_s, side="right")


def poisson_excess(load: float, n: int) -> tuple[float, float]:
    """For ``N ~ Poisson(load)``: ``P(N >= n)`` and ``E[(N - n + 1)^+]``."""
    from scipy.stats import poisson

    k = np.arange(n, n + 50 + int(10 * load + 10 * math.sqrt(load + 1)))
    pk = poisson.pmf(k, load)
    return float(poisson.sf(n - 1, load)), float(pk @ (k - n + 1))


@dataclass(frozen=True, slots=True)
class Controls:
    """Control statistics of one run (``values``) and their exact means (``means``)."""

    names: tuple[str, ...]
    values: np.ndarray
    means: np.ndarray


def queue_controls(
    arrival_s: np.ndarray,
    handle_s: np.ndarray,
    patience_s: np.ndarray | None,
    measured: np.ndarray,
    *,
    agents: int,
    arrival_rate: float,
    handle_mean_s: float,
    patience_mean_s: float,
    threshold_s: float,
) -> Controls:
    """Controls for one M/M/n(+M) run: the fast single server's mean wait of
    answered contacts, service level and abandonment (same arrivals, handle times
    / n, same patience) and the infinite-server system's ``P(N >= n)`` and
    ``E[(N - n + 1)^+]`` at arrivals, each over the ``measured`` contacts."""
    waits, served = fast_server(arrival_s, handle_s / agents,
                                None if math.isinf(patience_mean_s) else patience_s)
    w, s = waits[measured], served[measured]
    fast = erlang_a_figures(1, arrival_rate, handle_mean_s / agents, patience_mean_s,
                            threshold_s)
    inf_n = infinite_server_counts(arrival_s, handle_s)[measured]
    p_busy, excess = poisson_excess(arrival_rate * handle_mean_s, agents)
    names = ["fast_asa", "fast_sl", "inf_p_busy", "inf_excess"]
    values = [float(w[s].mean()), float((s & (w <= threshold_s)).mean()),
              float((inf_n >= agents).mean()), float(np.maximum(inf_n - agents + 1, 0).mean())]
    means = [fast.asa_s, fast.service_level, p_busy, excess]
    if not math.isinf(patience_mean_s):
        names.append("fast_abandon")
        values.append(float((~s).mean()))
        means.append(fast.p_abandon)
    return Controls(tuple(names), np.asarray(values), np.asarray(means))


def controlled_mean(y: np.ndarray, controls: np.ndarray, means: np.ndarray) -> tuple[float, float]:
    """Regression control-variate estimate of ``E[y]`` from runs ``y[r]`` with control
    statistics ``controls[r, :]`` of known ``means``: ``mean(y - (C - means) b)``
    with ``b`` the least-squares slope; returns (estimate, standard error)."""
    r, p = controls.shape
    if r <= p + 2:
        raise ValueError(f"need more runs than controls + 2 ({r} runs, {p} controls)")
    X = controls - means
    A = np.column_stack([np.ones(r), X])
    coef, *_ = np.linalg.lstsq(A, y, rcond=None)
    resid = y - A @ coef
    # The intercept is the estimate; its standard error from the regression.
    sigma2 = float(resid @ resid) / (r - p - 1)
    cov = sigma2 * np.linalg.inv(A.T @ A)
    return float(coef[0]), math.sqrt(float(cov[0, 0]))
