"""All Numba code: arrays in, arrays out. Compiled (or loaded from the on-disk
cache) when first imported, and called once by :func:`warm` before the server
reports SERVING.

Shapes and dtypes (n agents in a queue index, m contacts, Da / Dx dimensions):

- ``routable`` b1[n], ``free`` i4[n, 5], ``ready_at`` f8[n], ``prof`` i4[n]:
  a queue's availability arrays (see :class:`pairline.routing.QueueIndex`);
- ``A`` f4[n, Da]: agent profile matrix; ``u`` f4[Da]: the contact folded
  into the model (``x @ W + wa``), so a contact-vs-agents score is one dot
  product per agent;
- ``rows`` i8[k]: selected rows; ``out`` arrays are preallocated by the caller.

Every kernel has a slow, obviously-correct twin in ``tests/naive.py``.
"""

from __future__ import annotations

import numba
import numpy as np

_OPTS = {"cache": True, "nogil": True}


@numba.njit("i8(b1[::1], i4[:, ::1], i8, f8[::1], f8, i4[::1], i8, i8[::1])", **_OPTS)
def eligible_rows(routable, free, ch, ready_at, now, prof, min_prof, out):  # type: ignore[no-untyped-def]
    """Write the rows that may take a contact of channel column ``ch`` now into
    ``out``; return how many."""
    k = 0
    for i in range(routable.shape[0]):
        if routable[i] and free[i, ch] > 0 and ready_at[i] <= now and prof[i] >= min_prof:
            out[k] = i
            k += 1
    return k


@numba.njit("void(f4[:, ::1], i8[::1], f4[::1], f4, f4[::1])", fastmath=True, **_OPTS)
def score_rows(A, rows, u, c0, out):  # type: ignore[no-untyped-def]
    """``out[k] = c0 + A[rows[k]] . u`` (one contact against the given agents)."""
    d = u.shape[0]
    for k in range(rows.shape[0]):
        r = rows[k]
        acc = np.float32(0.0)
        for j in range(d):
            acc += A[r, j] * u[j]
        out[k] = c0 + acc


@numba.njit("void(b1[::1], i8[::1], f8, i8, f4, f8[::1])", **_OPTS)
def _key_unprofiled(has_vec, rows, total, known, c0, out):  # type: ignore[no-untyped-def]
    """The greedy keys' last step: rows without a profile get the mean key of the
    ``known`` selected rows with one (their scores sum to ``total``), ``-c0`` if none."""
    neutral = -(total / known) if known > 0 else -float(c0)
    for k in range(rows.shape[0]):
        if not has_vec[rows[k]]:
            out[k] = neutral


@numba.njit("void(f4[:, ::1], b1[::1], i8[::1], f4[::1], f4, f8[::1])", fastmath=True, **_OPTS)
def greedy_keys(A, has_vec, rows, u, c0, out):  # type: ignore[no-untyped-def]
    """Greedy's keys: ``out[k] = -(c0 + A[rows[k]] . u)``; agents without a profile
    (``has_vec`` false) get the mean key of those with one (``-c0`` if none has)."""
    d = u.shape[0]
    total = 0.0
    known = 0
    for k in range(rows.shape[0]):
        r = rows[k]
        if has_vec[r]:
            acc = np.float32(0.0)
            for j in range(d):
                acc += A[r, j] * u[j]
            s = c0 + acc
            out[k] = -s
            total += s
            known += 1
    _key_unprofiled(has_vec, rows, total, known, c0, out)


@numba.njit("void(f4[::1], b1[::1], i8[::1], f4, f8[::1])", **_OPTS)
def greedy_keys_dense(scores, has_vec, rows, c0, out):  # type: ignore[no-untyped-def]
    """:func:`greedy_keys` from every row's ``A[r] . u`` computed beforehand
    (``scores``, one BLAS pass over the matrix, when most rows are selected)."""
    total = 0.0
    known = 0
    for k in range(rows.shape[0]):
        r = rows[k]
        if has_vec[r]:
            s = c0 + scores[r]
            out[k] = -s
            total += s
            known += 1
    _key_unprofiled(has_vec, rows, total, known, c0, out)


@numba.njit("void(f4[:, ::1], f4[::1], f4, f4[::1])", fastmath=True, **_OPTS)
def score_contacts(X, v, c0, out):  # type: ignore[no-untyped-def]
    """``out[j] = c0 + X[j] . v`` (one agent, folded into ``v = W a + wc``,
    against the contacts ``X`` f4[m, Dx])."""
    d = v.shape[0]
    for i in range(X.shape[0]):
        acc = np.float32(0.0)
        for j in range(d):
            acc += X[i, j] * v[j]
        out[i] = c0 + acc


@numba.njit("void(f4[:, ::1], f4[:, ::1], f4[:, ::1], i8[::1], f4[::1], f4[::1], f4, f4[:, ::1])",
            fastmath=True, **_OPTS)
def score_batch(X, W, A, rows, wc, wa, b, out):  # type: ignore[no-untyped-def]
    """``out[i, k]`` = score of contact ``X[i]`` with agent ``A[rows[k]]``:
    ``b + wc.x + wa.a + x W a``."""
    m, dx = X.shape
    da = W.shape[1]
    u = np.empty(da, dtype=np.float32)
    for i in range(m):
        c0 = b
        for p in range(dx):
            c0 += wc[p] * X[i, p]
        for q in range(da):
            acc = wa[q]
            for p in range(dx):
                acc += X[i, p] * W[p, q]
            u[q] = acc
        for k in range(rows.shape[0]):
            r = rows[k]
            acc = c0
            for q in range(da):
                acc += A[r, q] * u[q]
            out[i, k] = acc


@numba.njit("void(f8[::1], f8[::1])", **_OPTS)
def percentile_ranks(values, out):  # type: ignore[no-untyped-def]
    """Mid-rank percentiles in (0, 1): ``(rank + 0.5) / n``, ties sharing their
    average rank."""
    n = values.shape[0]
    order = np.argsort(values, kind="mergesort")
    i = 0
    while i < n:
        j = i
        while j + 1 < n and values[order[j + 1]] == values[order[i]]:
            j += 1
        pct = ((i + j) / 2.0 + 0.5) / n
        for t in range(i, j + 1):
            out[order[t]] = pct
        i = j + 1


@numba.njit("void(i8[::1], f8[::1], f8[::1], f8, f8[::1])", **_OPTS)
def band_distance(rows, lo, hi, c, out):  # type: ignore[no-untyped-def]
    """Distance of percentile ``c`` to each agent's band ``[lo, hi]`` (0 inside)."""
    for k in range(rows.shape[0]):
        r = rows[k]
        if c < lo[r]:
            out[k] = lo[r] - c
        elif c > hi[r]:
            out[k] = c - hi[r]
        else:
            out[k] = 0.0


@numba.njit("i8(f8[::1], i8[::1], i4[::1], f8[::1])", **_OPTS)
def pick_min(keys, rows, load, idle_since):  # type: ignore[no-untyped-def]
    """Index ``k`` of the smallest ``keys[k]``; ties go to the least loaded, then
    longest idle, then lowest row (the baseline's own order). -1 if empty."""
    best = -1
    for k in range(rows.shape[0]):
        if best < 0:
            best = k
            continue
        r, b = rows[k], rows[best]
        if keys[k] < keys[best] or (
            keys[k] == keys[best]
            and (
                load[r] < load[b]
                or (load[r] == load[b] and (idle_since[r] < idle_since[b]
                                            or (idle_since[r] == idle_since[b] and r < b)))
            )
        ):
            best = k
    return best


def warm() -> None:
    """Run every kernel once on tiny inputs (compiles or loads the cache)."""
    n, d = 4, 3
    routable = np.ones(n, dtype=np.bool_)
    free = np.ones((n, 5), dtype=np.int32)
    ready = np.zeros(n, dtype=np.float64)
    prof = np.zeros(n, dtype=np.int32)
    rows = np.empty(n, dtype=np.int64)
    k = eligible_rows(routable, free, 0, ready, 1.0, prof, 0, rows)
    rows = rows[:k]
    A = np.ones((n, d), dtype=np.float32)
    out = np.empty(k, dtype=np.float32)
    score_rows(A, rows, np.ones(d, dtype=np.float32), np.float32(0), out)
    greedy_keys(A, routable, rows, np.ones(d, dtype=np.float32), np.float32(0),
                np.empty(k, dtype=np.float64))
    greedy_keys_dense(np.ones(n, dtype=np.float32), routable, rows, np.float32(0),
                      np.empty(k, dtype=np.float64))
    score_contacts(A, np.ones(d, dtype=np.float32), np.float32(0), np.empty(n, dtype=np.float32))
    W = np.ones((d, d), dtype=np.float32)
    score_batch(A, W, A, rows, np.ones(d, np.float32), np.ones(d, np.float32), np.float32(0),
                np.empty((n, k), dtype=np.float32))
    pct = np.empty(n, dtype=np.float64)
    percentile_ranks(np.arange(n, dtype=np.float64), pct)
    dist = np.empty(k, dtype=np.float64)
    band_distance(rows, pct, pct, 0.5, dist)
    pick_min(dist, rows, np.zeros(n, dtype=np.int32), np.zeros(n, dtype=np.float64))
