"""Slow, obviously-correct twins of :mod:`pairline.kernels`.

Plain Python loops over plain Python numbers: every array is turned into lists
of ints / floats first, so all arithmetic is float64 (scores included, whereas
the kernels accumulate in float32). Each twin takes the kernel's inputs, minus
the preallocated ``out`` array, and returns what the kernel writes there (or
returns).
"""

from __future__ import annotations

from fractions import Fraction
from typing import Any


def _floats(a: Any) -> list[float]:
    return [float(x) for x in list(a)]


def _ints(a: Any) -> list[int]:
    return [int(x) for x in list(a)]


def _matrix(a: Any) -> list[list[float]]:
    return [[float(x) for x in list(row)] for row in list(a)]


def naive_eligible_rows(routable: Any, free: Any, ch: int, ready_at: Any, now: float, prof: Any,
                        min_prof: int) -> list[int]:
    """The rows ``i``, in increasing order, with ``routable[i]``, ``free[i, ch] > 0``,
    ``ready_at[i] <= now`` and ``prof[i] >= min_prof``."""
    result = []
    for i in range(len(routable)):
        if not bool(routable[i]):
            continue
        if int(free[i][ch]) <= 0:
            continue
        if float(ready_at[i]) > float(now):
            continue
        if int(prof[i]) < int(min_prof):
            continue
        result.append(i)
    return result


def naive_dot(a: list[float], b: list[float]) -> float:
    total = 0.0
    for j in range(len(a)):
        total += a[j] * b[j]
    return total


def naive_score_rows(A: Any, rows: Any, u: Any, c0: float) -> list[float]:
    """``c0 + A[rows[k]] . u`` for every ``k``, in float64."""
    A_, u_ = _matrix(A), _floats(u)
    result = []
    for r in _ints(rows):
        result.append(float(c0) + naive_dot(A_[r], u_))
    return result


def naive_greedy_keys(A: Any, has_vec: Any, rows: Any, u: Any, c0: float) -> list[float]:
    """Greedy's keys, in float64: ``-(c0 + A[r] . u)`` for each selected row ``r``
    with a profile; each row without one gets the mean of the keys of the
    selected rows with one (a row selected twice counts twice), or ``-c0`` if
    no selected row has a profile."""
    A_, u_ = _matrix(A), _floats(u)
    rows_ = _ints(rows)
    known_keys = []
    for r in rows_:
        if bool(has_vec[r]):
            known_keys.append(-(float(c0) + naive_dot(A_[r], u_)))
    if known_keys:
        neutral = sum(known_keys) / len(known_keys)
    else:
        neutral = -float(c0)
    result = []
    for r in rows_:
        if bool(has_vec[r]):
            result.append(-(float(c0) + naive_dot(A_[r], u_)))
        else:
            result.append(neutral)
    return result


def naive_score_contacts(X: Any, v: Any, c0: float) -> list[float]:
    """``c0 + X[i] . v`` for every contact ``i``, in float64."""
    X_, v_ = _matrix(X), _floats(v)
    result = []
    for x in X_:
        result.append(float(c0) + naive_dot(x, v_))
    return result


def naive_score(x: list[float], W: list[list[float]], a: list[float], wc: list[float],
                wa: list[float], b: float) -> float:
    """The bilinear model ``b + wc.x + wa.a + x W a``, term by term."""
    total = float(b)
    total += naive_dot(wc, x)
    total += naive_dot(wa, a)
    for p in range(len(x)):
        for q in range(len(a)):
            total += x[p] * W[p][q] * a[q]
    return total


def naive_score_batch(X: Any, W: Any, A: Any, rows: Any, wc: Any, wa: Any,
                      b: float) -> list[list[float]]:
    """``[[score(X[i], A[rows[k]]) for k] for i]``, in float64."""
    X_, W_, A_ = _matrix(X), _matrix(W), _matrix(A)
    wc_, wa_ = _floats(wc), _floats(wa)
    rows_ = _ints(rows)
    result = []
    for x in X_:
        line = []
        for r in rows_:
            line.append(naive_score(x, W_, A_[r], wc_, wa_, float(b)))
        result.append(line)
    return result


def naive_percentile_ranks(values: Any) -> list[float]:
    """Mid-rank percentiles: value ``v`` occupies the 0-based ranks
    ``less .. less + equal - 1`` (``less`` values below it, ``equal`` values equal
    to it, itself included); its percentile is ``(average rank + 0.5) / n``,
    computed exactly and rounded once."""
    vals = _floats(values)
    n = len(vals)
    result = []
    for v in vals:
        less = 0
        equal = 0
        for w in vals:
            if w < v:
                less += 1
            elif w == v:
                equal += 1
        avg_rank = Fraction(less) + Fraction(equal - 1, 2)
        result.append(float((avg_rank + Fraction(1, 2)) / n))
    return result


def naive_band_distance(rows: Any, lo: Any, hi: Any, c: float) -> list[float]:
    """Distance of ``c`` to ``[lo[r], hi[r]]`` for every ``r`` in ``rows``: 0 inside."""
    lo_, hi_ = _floats(lo), _floats(hi)
    c = float(c)
    result = []
    for r in _ints(rows):
        if c < lo_[r]:
            result.append(lo_[r] - c)
        elif c > hi_[r]:
            result.append(c - hi_[r])
        else:
            result.append(0.0)
    return result


def naive_pick_min(keys: Any, rows: Any, load: Any, idle_since: Any) -> int:
    """The ``k`` with the smallest ``(keys[k], load[r], idle_since[r], r)``,
    ``r = rows[k]``; the first such ``k`` if several are equal; -1 if empty."""
    keys_, rows_ = _floats(keys), _ints(rows)
    load_, idle_ = _ints(load), _floats(idle_since)
    best = -1
    best_order: tuple[float, int, float, int] | None = None
    for k in range(len(rows_)):
        r = rows_[k]
        order = (keys_[k], load_[r], idle_[r], r)
        if best_order is None or order < best_order:
            best = k
            best_order = order
    return best
