"""Kernels against NumPy and against their naive twins, 100 / 1,000 / 10,000
agents x 64 dims (seeded). Ratios are in extra_info of the Numba runs."""

from __future__ import annotations

import naive
import numpy as np
import pytest

from pairline import kernels

DIM = 64
SIZES = [100, 1_000, 10_000]


def _case(n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.float32, np.ndarray]:
    rng = np.random.default_rng(n)
    A = rng.normal(size=(n, DIM)).astype(np.float32)
    rows = np.sort(rng.choice(n, size=max(1, n // 2), replace=False)).astype(np.int64)
    u = rng.normal(size=DIM).astype(np.float32)
    return A, rows, u, np.float32(0.25), np.empty(rows.size, dtype=np.float32)


@pytest.mark.parametrize("n", SIZES)
@pytest.mark.benchmark(group="score_rows")
def test_score_rows_numba(benchmark, n: int) -> None:  # type: ignore[no-untyped-def]
    A, rows, u, c0, out = _case(n)
    benchmark(kernels.score_rows, A, rows, u, c0, out)
    assert np.allclose(out, A[rows] @ u + c0, rtol=1e-4, atol=1e-3)


@pytest.mark.parametrize("n", SIZES)
@pytest.mark.benchmark(group="score_rows")
def test_score_rows_numpy(benchmark, n: int) -> None:  # type: ignore[no-untyped-def]
    A, rows, u, c0, _ = _case(n)
    out = benchmark(lambda: A[rows] @ u + c0)
    assert out.shape == rows.shape


@pytest.mark.parametrize("n", SIZES)
@pytest.mark.benchmark(group="score_rows")
def test_score_rows_naive(benchmark, n: int) -> None:  # type: ignore[no-untyped-def]
    A, rows, u, c0, _ = _case(n)
    out = benchmark.pedantic(naive.naive_score_rows, args=(A, rows, u, c0), rounds=3, iterations=1)
    assert len(out) == rows.size


def _avail(n: int) -> tuple[np.ndarray, ...]:
    rng = np.random.default_rng(n + 1)
    routable = rng.random(n) < 0.7
    free = rng.integers(0, 2, size=(n, 5)).astype(np.int32)
    ready = rng.random(n) * 10
    prof = rng.integers(0, 100, size=n).astype(np.int32)
    return routable, free, ready, prof


@pytest.mark.parametrize("n", SIZES)
@pytest.mark.benchmark(group="eligible_rows")
def test_eligible_numba(benchmark, n: int) -> None:  # type: ignore[no-untyped-def]
    routable, free, ready, prof = _avail(n)
    out = np.empty(n, dtype=np.int64)
    k = benchmark(kernels.eligible_rows, routable, free, 0, ready, 5.0, prof, 30, out)
    want = np.flatnonzero(routable & (free[:, 0] > 0) & (ready <= 5.0) & (prof >= 30))
    assert np.array_equal(out[:k], want)


@pytest.mark.parametrize("n", SIZES)
@pytest.mark.benchmark(group="eligible_rows")
def test_eligible_numpy(benchmark, n: int) -> None:  # type: ignore[no-untyped-def]
    routable, free, ready, prof = _avail(n)
    rows = benchmark(lambda: np.flatnonzero(routable & (free[:, 0] > 0) & (ready <= 5.0) & (prof >= 30)))
    assert rows.size > 0


def _greedy_case(n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Every agent free and profiled (agent surplus): all n rows selected."""
    rng = np.random.default_rng(n + 2)
    A = rng.normal(size=(n, DIM)).astype(np.float32)
    return A, np.ones(n, dtype=np.bool_), np.arange(n, dtype=np.int64), \
        rng.normal(size=DIM).astype(np.float32)


@pytest.mark.parametrize("how", ["rowwise", "dense", "numpy"])
@pytest.mark.parametrize("n", SIZES)
def test_greedy_keys(benchmark, n: int, how: str) -> None:  # type: ignore[no-untyped-def]
    """Greedy's keys over all n agents: the row-by-row kernel, the BLAS pass with
    greedy_keys_dense (pairing.greedy_keys takes it from 4,096 rows when at least
    half are selected), and plain NumPy."""
    benchmark.group = f"greedy_keys-{n}"
    A, has_vec, rows, u = _greedy_case(n)
    out = np.empty(n, dtype=np.float64)
    if how == "rowwise":
        benchmark(kernels.greedy_keys, A, has_vec, rows, u, np.float32(0.25), out)
    elif how == "dense":
        benchmark(lambda: kernels.greedy_keys_dense(A @ u, has_vec, rows, np.float32(0.25), out))
    else:
        out = benchmark(lambda: -(A[rows] @ u + np.float32(0.25)).astype(np.float64))
    np.testing.assert_allclose(out, -(A @ u + 0.25), rtol=1e-4, atol=1e-3)
