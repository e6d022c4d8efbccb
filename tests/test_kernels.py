"""The Numba kernels against their slow twins in ``naive.py``: seeded random cases
of many sizes, ties, zeros, extremes, empty inputs, unsorted and repeated row
selections, and hypothesis properties."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from naive import (
    naive_band_distance,
    naive_eligible_rows,
    naive_greedy_keys,
    naive_percentile_ranks,
    naive_pick_min,
    naive_score_batch,
    naive_score_contacts,
    naive_score_rows,
)

from pairline import kernels, pairing
from pairline.domain import AgentStatus
from pairline.routing import Agent, QueueIndex

SIZES = (0, 1, 2, 100, 1000)
DIMS = (1, 3, 64)
SEEDS = (0, 1, 2)
PROPS = settings(max_examples=200, deadline=None)

# float32 fastmath scores vs float64 twins: relative to the sum of the absolute
# terms (what float32 accumulation errs relative to), plus a floor for subnormals.
RTOL32 = 1e-4
ATOL_FLOOR = 1e-30


def assert_scores_close(got: np.ndarray, want: object, magnitude: object) -> None:
    got64 = np.asarray(got, dtype=np.float64)
    want64 = np.asarray(want, dtype=np.float64).reshape(got64.shape)
    mag = np.asarray(magnitude, dtype=np.float64).reshape(got64.shape)
    assert np.all(np.isfinite(got64))
    err = np.abs(got64 - want64)
    tol = RTOL32 * mag + ATOL_FLOOR
    bad = np.flatnonzero(err > tol)
    assert bad.size == 0, (
        f"{bad.size} scores off, first at {bad[0]}: got {got64.flat[bad[0]]!r}, "
        f"want {want64.flat[bad[0]]!r}, tol {tol.flat[bad[0]]!r}"
    )


def row_selection(rng: np.random.Generator, n: int, k: int, kind: str) -> np.ndarray:
    """``k`` rows of ``0..n-1``: sorted distinct, shuffled distinct, or with repeats."""
    if n == 0 or k == 0:
        return np.zeros(0, dtype=np.int64)
    if kind == "repeats":
        return rng.integers(0, n, size=k).astype(np.int64)
    rows = rng.choice(n, size=min(k, n), replace=False).astype(np.int64)
    return np.sort(rows) if kind == "sorted" else rows


def f32(rng: np.random.Generator, shape: object, scale: float = 1.0) -> np.ndarray:
    return np.ascontiguousarray((rng.standard_normal(shape) * scale).astype(np.float32))


# --- eligible_rows -----------------------------------------------------------------


def queue(rng: np.random.Generator, n: int, now: float = 10.0):  # type: ignore[no-untyped-def]
    routable = rng.random(n) < 0.7
    free = rng.integers(0, 3, size=(n, 5)).astype(np.int32)
    free[rng.random((n, 5)) < 0.2] = -1
    ready_at = np.where(rng.random(n) < 0.5, now, now + rng.normal(0, 5, n)).astype(np.float64)
    prof = rng.integers(0, 101, size=n).astype(np.int32)
    return routable, free, ready_at, prof


def run_eligible(routable, free, ch, ready_at, now, prof, min_prof):  # type: ignore[no-untyped-def]
    n = routable.shape[0]
    out = np.full(n + 3, -7, dtype=np.int64)
    k = kernels.eligible_rows(routable, free, ch, ready_at, now, prof, min_prof, out)
    assert 0 <= k <= n
    assert np.all(out[k:] == -7), "wrote past the returned count"
    return [int(r) for r in out[:k]]


def all_eligible(n: int):  # type: ignore[no-untyped-def]
    return (np.ones(n, dtype=np.bool_), np.ones((n, 5), dtype=np.int32),
            np.zeros(n, dtype=np.float64), np.full(n, 50, dtype=np.int32))


class TestEligibleRows:
    @pytest.mark.parametrize("seed", SEEDS)
    @pytest.mark.parametrize("n", SIZES)
    def test_matches_naive(self, n: int, seed: int) -> None:
        """For every channel column and several thresholds, the rows equal the twin's, in order."""
        rng = np.random.default_rng(1000 + seed)
        now = 10.0
        routable, free, ready_at, prof = queue(rng, n, now)
        for ch in range(5):
            for min_prof in (0, 1, 50, 100, 101):
                got = run_eligible(routable, free, ch, ready_at, now, prof, min_prof)
                assert got == naive_eligible_rows(routable, free, ch, ready_at, now, prof, min_prof)

    def test_empty_queue_returns_zero(self) -> None:
        """With no rows at all the count is 0 and nothing is written."""
        routable, free, ready, prof = all_eligible(0)
        assert run_eligible(routable, free, 0, ready, 1.0, prof, 0) == []

    def test_nobody_eligible_returns_zero(self) -> None:
        """When every row fails some condition the count is 0 and nothing is written."""
        routable, free, ready, prof = all_eligible(6)
        routable[:2] = False
        free[2:4, 1] = 0
        ready[4] = 2.0
        prof[5] = 10
        assert run_eligible(routable, free, 1, ready, 1.0, prof, 20) == []

    def test_all_eligible(self) -> None:
        """When every row qualifies, every row is returned in increasing order."""
        routable, free, ready, prof = all_eligible(7)
        assert run_eligible(routable, free, 3, ready, 0.0, prof, 50) == list(range(7))

    def test_not_routable_excluded(self) -> None:
        """A row that is not routable is skipped, whatever else holds."""
        routable, free, ready, prof = all_eligible(5)
        routable[2] = False
        assert run_eligible(routable, free, 0, ready, 1.0, prof, 0) == [0, 1, 3, 4]

    @pytest.mark.parametrize("n_free", [0, -1])
    def test_no_free_slot_excluded(self, n_free: int) -> None:
        """A row with no free slot (0 or negative) in the channel column is skipped."""
        routable, free, ready, prof = all_eligible(5)
        free[1, 0] = n_free
        assert run_eligible(routable, free, 0, ready, 1.0, prof, 0) == [0, 2, 3, 4]

    def test_ready_at_boundary(self) -> None:
        """A row is eligible when ``ready_at <= now`` and not when ``ready_at > now``."""
        routable, free, ready, prof = all_eligible(4)
        ready[:] = [0.5, 1.0, np.nextafter(1.0, 2.0), 5.0]
        assert run_eligible(routable, free, 0, ready, 1.0, prof, 0) == [0, 1]

    def test_proficiency_boundary(self) -> None:
        """A row is eligible when ``prof >= min_prof`` and not when below it."""
        routable, free, ready, prof = all_eligible(4)
        prof[:] = [49, 50, 51, 0]
        assert run_eligible(routable, free, 0, ready, 1.0, prof, 50) == [1, 2]
        assert run_eligible(routable, free, 0, ready, 1.0, prof, 0) == [0, 1, 2, 3]

    @pytest.mark.parametrize("ch", range(5))
    def test_channel_column_selects(self, ch: int) -> None:
        """Only the free count in column ``ch`` matters: row ``c`` is free only in column ``c``."""
        routable, free, ready, prof = all_eligible(5)
        free[:] = 0
        for c in range(5):
            free[c, c] = 1
        assert run_eligible(routable, free, ch, ready, 1.0, prof, 0) == [ch]

    @PROPS
    @given(data=st.data(), n=st.integers(0, 30), ch=st.integers(0, 4),
           now=st.floats(-1e6, 1e6), min_prof=st.integers(-5, 105))
    def test_property_matches_naive(self, data: st.DataObject, n: int, ch: int, now: float,
                                    min_prof: int) -> None:
        """Any availability arrays: the kernel returns exactly the twin's rows."""
        routable = data.draw(hnp.arrays(np.bool_, n))
        free = data.draw(hnp.arrays(np.int32, (n, 5), elements=st.integers(-2, 3)))
        ready = data.draw(hnp.arrays(np.float64, n, elements=st.one_of(
            st.just(now), st.floats(-1e6, 1e6))))
        prof = data.draw(hnp.arrays(np.int32, n, elements=st.integers(-5, 105)))
        got = run_eligible(routable, free, ch, ready, now, prof, min_prof)
        assert got == naive_eligible_rows(routable, free, ch, ready, now, prof, min_prof)


# --- score_rows / score_contacts -----------------------------------------------------


def run_score_rows(A, rows, u, c0):  # type: ignore[no-untyped-def]
    out = np.full(rows.shape[0], np.nan, dtype=np.float32)
    kernels.score_rows(A, rows, u, np.float32(c0), out)
    return out


def check_score_rows(A, rows, u, c0) -> None:  # type: ignore[no-untyped-def]
    got = run_score_rows(A, rows, u, c0)
    want = naive_score_rows(A, rows, u, c0)
    mag = naive_score_rows(np.abs(A), rows, np.abs(u), abs(c0))
    assert got.shape == (rows.shape[0],)
    assert_scores_close(got, want, mag)


def run_score_contacts(X, v, c0):  # type: ignore[no-untyped-def]
    out = np.full(X.shape[0], np.nan, dtype=np.float32)
    kernels.score_contacts(X, v, np.float32(c0), out)
    return out


def check_score_contacts(X, v, c0) -> None:  # type: ignore[no-untyped-def]
    got = run_score_contacts(X, v, c0)
    want = naive_score_contacts(X, v, c0)
    mag = naive_score_contacts(np.abs(X), np.abs(v), abs(c0))
    assert_scores_close(got, want, mag)


def f32_arrays(shape: object, bound: float) -> st.SearchStrategy[np.ndarray]:
    return hnp.arrays(np.float32, shape, elements=st.floats(-bound, bound, width=32))


class TestScoreRows:
    @pytest.mark.parametrize("kind", ["sorted", "shuffled", "repeats"])
    @pytest.mark.parametrize("d", DIMS)
    @pytest.mark.parametrize("n", SIZES)
    def test_matches_naive(self, n: int, d: int, kind: str) -> None:
        """Random profiles and selections of every shape: scores equal the float64 twin's."""
        rng = np.random.default_rng(2000 + n * 7 + d)
        A, u = f32(rng, (n, d)), f32(rng, d)
        for k in sorted({0, 1, 2, n, max(n // 2, 0)}):
            rows = row_selection(rng, n, k, kind)
            check_score_rows(A, rows, u, np.float32(rng.normal()))

    def test_empty_rows_write_nothing(self) -> None:
        """With no rows the output is left untouched."""
        A = np.ones((3, 2), dtype=np.float32)
        out = np.full(3, 42.0, dtype=np.float32)
        kernels.score_rows(A, np.zeros(0, dtype=np.int64), np.ones(2, np.float32),
                           np.float32(1), out[:0])
        kernels.score_rows(A, np.zeros(0, dtype=np.int64), np.ones(2, np.float32),
                           np.float32(1), out)
        assert np.all(out == 42.0)

    def test_writes_only_selected_prefix(self) -> None:
        """With ``k`` rows, only ``out[:k]`` is written."""
        A = np.arange(12, dtype=np.float32).reshape(4, 3)
        out = np.full(5, 42.0, dtype=np.float32)
        kernels.score_rows(A, np.array([3, 0], dtype=np.int64), np.ones(3, np.float32),
                           np.float32(0.5), out)
        assert out.tolist() == [30.5, 3.5, 42.0, 42.0, 42.0]

    def test_zeros(self) -> None:
        """Zero profiles or a zero contact give exactly ``c0``."""
        rng = np.random.default_rng(2100)
        A, u = f32(rng, (10, 3)), f32(rng, 3)
        rows = np.array([9, 0, 0, 4], dtype=np.int64)
        assert np.all(run_score_rows(A, rows, np.zeros(3, np.float32), 1.5) == 1.5)
        assert np.all(run_score_rows(np.zeros_like(A), rows, u, -2.0) == -2.0)
        assert np.all(run_score_rows(np.zeros_like(A), rows, u, 0.0) == 0.0)

    def test_ties_for_equal_rows(self) -> None:
        """Identical profiles (and a repeated row) score identically."""
        rng = np.random.default_rng(2200)
        A = np.repeat(f32(rng, (1, 64)), 5, axis=0)
        out = run_score_rows(A, np.array([4, 1, 1, 0, 3], dtype=np.int64), f32(rng, 64), 0.25)
        assert np.all(out == out[0])

    @pytest.mark.parametrize("d", DIMS)
    @pytest.mark.parametrize("scale", [1e-20, 1e8, 1e17])
    def test_large_and_small_magnitudes(self, d: int, scale: float) -> None:
        """Tiny and large (products near 1e34, finite in float32) inputs stay within tolerance."""
        rng = np.random.default_rng(2300 + d)
        A, u = f32(rng, (50, d), scale), f32(rng, d, scale)
        rows = row_selection(rng, 50, 80, "repeats")
        check_score_rows(A, rows, u, np.float32(scale))

    @PROPS
    @given(data=st.data(), n=st.integers(1, 12), d=st.sampled_from(DIMS), k=st.integers(0, 15))
    def test_property_matches_naive(self, data: st.DataObject, n: int, d: int, k: int) -> None:
        """Any bounded float32 inputs and any row selection: scores match the twin."""
        A = data.draw(f32_arrays((n, d), 1e6))
        u = data.draw(f32_arrays(d, 1e6))
        rows = data.draw(hnp.arrays(np.int64, k, elements=st.integers(0, n - 1)))
        c0 = data.draw(st.floats(-1e12, 1e12).map(np.float32))
        check_score_rows(A, rows, u, np.float32(c0))


def run_greedy_keys(A, has_vec, rows, u, c0, dense=False):  # type: ignore[no-untyped-def]
    """The row-by-row kernel, or (``dense``) greedy_keys_dense on every row's
    score computed beforehand by BLAS, as pairing.greedy_keys does for a large share."""
    out = np.full(rows.shape[0], np.nan, dtype=np.float64)
    if dense:
        with np.errstate(invalid="ignore", over="ignore"):  # rows never read may be NaN
            scores = np.ascontiguousarray(A @ u, dtype=np.float32)
        kernels.greedy_keys_dense(scores, has_vec, rows, np.float32(c0), out)
    else:
        kernels.greedy_keys(A, has_vec, rows, u, np.float32(c0), out)
    return out


def check_greedy_keys(A, has_vec, rows, u, c0, dense=False) -> np.ndarray:  # type: ignore[no-untyped-def]
    got = run_greedy_keys(A, has_vec, rows, u, c0, dense)
    want = naive_greedy_keys(A, has_vec, rows, u, c0)
    mag = -np.asarray(naive_greedy_keys(np.abs(A), has_vec, rows, np.abs(u), abs(c0)))
    assert got.shape == (rows.shape[0],)
    assert_scores_close(got, want, mag)
    return got


def has_vec_mask(rng: np.random.Generator, n: int, which: str) -> np.ndarray:
    if which == "all":
        return np.ones(n, dtype=np.bool_)
    if which == "none":
        return np.zeros(n, dtype=np.bool_)
    return rng.random(n) < 0.6


@pytest.mark.parametrize("dense", [False, True], ids=["rowwise", "dense"])
class TestGreedyKeys:
    """Both ways of computing greedy's keys (see pairing.greedy_keys) against the twin."""

    @pytest.mark.parametrize("which", ["all", "none", "some"])
    @pytest.mark.parametrize("kind", ["sorted", "shuffled", "repeats"])
    @pytest.mark.parametrize("d", DIMS)
    @pytest.mark.parametrize("n", SIZES)
    def test_matches_naive(self, dense: bool, n: int, d: int, kind: str, which: str) -> None:
        """Every shape, selection and mix of agents with and without a profile: equals the twin."""
        rng = np.random.default_rng(2500 + n * 7 + d)
        A, u = f32(rng, (n, d)), f32(rng, d)
        has_vec = has_vec_mask(rng, n, which)
        rows = row_selection(rng, n, n if kind != "repeats" else n + 3, kind)
        check_greedy_keys(A, has_vec, rows, u, np.float32(rng.normal()), dense)

    def test_known_rows_are_negated_scores(self, dense: bool) -> None:
        """Agents with a profile get minus their ``score_rows`` score."""
        rng = np.random.default_rng(2600)
        A, u = f32(rng, (30, 64)), f32(rng, 64)
        rows = row_selection(rng, 30, 40, "repeats")
        got = run_greedy_keys(A, np.ones(30, np.bool_), rows, u, 0.75, dense)
        np.testing.assert_allclose(got, -run_score_rows(A, rows, u, 0.75).astype(np.float64),
                                   rtol=1e-6, atol=1e-6)

    def test_unknown_rows_get_mean_key(self, dense: bool) -> None:
        """A row without a profile gets the mean key of the selected rows with one (repeats too)."""
        A = np.array([[1.0], [3.0], [np.nan], [np.nan]], dtype=np.float32)
        has_vec = np.array([True, True, False, False])
        rows = np.array([0, 2, 0, 1, 3], dtype=np.int64)
        got = run_greedy_keys(A, has_vec, rows, np.ones(1, np.float32), 0.0, dense)
        assert got.tolist() == [-1.0, -5.0 / 3.0, -1.0, -3.0, -5.0 / 3.0]

    def test_no_profiles_gives_minus_c0(self, dense: bool) -> None:
        """When no selected row has a profile, every key is ``-c0`` (profiles are not read)."""
        A = np.full((3, 2), np.nan, dtype=np.float32)
        rows = np.array([2, 0, 2], dtype=np.int64)
        got = run_greedy_keys(A, np.zeros(3, np.bool_), rows, np.ones(2, np.float32), -1.5, dense)
        assert got.tolist() == [1.5, 1.5, 1.5]

    def test_unselected_profiles_do_not_count(self, dense: bool) -> None:
        """The mean is over the selected rows only, not every row with a profile."""
        A = np.array([[1.0], [100.0], [0.0]], dtype=np.float32)
        has_vec = np.array([True, True, False])
        got = run_greedy_keys(A, has_vec, np.array([2, 0], np.int64), np.ones(1, np.float32), 0.0,
                              dense)
        assert got.tolist() == [-1.0, -1.0]

    def test_empty_writes_nothing(self, dense: bool) -> None:
        """With no rows the output is left untouched."""
        out = np.full(2, 42.0)
        if dense:
            kernels.greedy_keys_dense(np.ones(2, np.float32), np.ones(2, np.bool_),
                                      np.zeros(0, np.int64), np.float32(1), out)
        else:
            kernels.greedy_keys(np.ones((2, 2), np.float32), np.ones(2, np.bool_),
                                np.zeros(0, np.int64), np.ones(2, np.float32), np.float32(1), out)
        assert np.all(out == 42.0)

    @pytest.mark.parametrize("scale", [1e-20, 1e8, 1e17])
    def test_large_and_small_magnitudes(self, dense: bool, scale: float) -> None:
        """Tiny and large but finite inputs stay within tolerance, the mean included."""
        rng = np.random.default_rng(2700)
        A, u = f32(rng, (50, 64), scale), f32(rng, 64, scale)
        has_vec = has_vec_mask(rng, 50, "some")
        check_greedy_keys(A, has_vec, row_selection(rng, 50, 80, "repeats"), u, np.float32(scale),
                          dense)

    @PROPS
    @given(data=st.data(), n=st.integers(1, 12), d=st.sampled_from(DIMS), k=st.integers(0, 15))
    def test_property_matches_naive(self, dense: bool, data: st.DataObject, n: int, d: int,
                                    k: int) -> None:
        """Any bounded float32 inputs, profile mask and row selection: keys match the twin."""
        A = data.draw(f32_arrays((n, d), 1e6))
        u = data.draw(f32_arrays(d, 1e6))
        has_vec = data.draw(hnp.arrays(np.bool_, n))
        rows = data.draw(hnp.arrays(np.int64, k, elements=st.integers(0, n - 1)))
        c0 = data.draw(st.floats(-1e12, 1e12).map(np.float32))
        check_greedy_keys(A, has_vec, rows, u, np.float32(c0), dense)


class TestGreedyKeysOnAQueue:
    """pairing.greedy_keys picks its way by the queue's size and the share selected;
    either way the keys are the twin's, on a real queue index with agents that come
    and go (rows reused, rows without a profile)."""

    @staticmethod
    def index(n: int, rng: np.random.Generator) -> QueueIndex:
        index = QueueIndex("q", agent_dim=8)
        for i in range(n):
            a = Agent(f"a{i}", AgentStatus.AVAILABLE, {"q": 50}, [1, 0, 0, 0, 0])
            index.sync(a, 50, f32(rng, 8) if i % 7 else None)
        for i in range(0, n, 5):  # leave holes, then fill some of them again
            index.remove(f"a{i}")
        for i in range(0, n, 10):
            a = Agent(f"b{i}", AgentStatus.AVAILABLE, {"q": 50}, [1, 0, 0, 0, 0])
            index.sync(a, 50, f32(rng, 8))
        return index

    @pytest.mark.parametrize(("n", "share", "dense"), [
        (pairing.DENSE_MIN_ROWS + 100, 1.0, True),
        (pairing.DENSE_MIN_ROWS + 100, 0.6, True),
        (pairing.DENSE_MIN_ROWS + 100, 0.3, False),
        (500, 1.0, False),
    ])
    def test_either_way_matches_naive(self, n: int, share: float, dense: bool) -> None:
        rng = np.random.default_rng(2800 + n)
        index = self.index(n, rng)
        live = np.array(sorted(index.row_of.values()), dtype=np.int64)
        rows = np.sort(rng.choice(live, int(len(live) * share), replace=False))
        assert (index.top >= pairing.DENSE_MIN_ROWS
                and rows.size * pairing.DENSE_SHARE >= index.top) is dense
        assert index.top == max(live) + 1
        u, c0 = f32(rng, 8), 0.25
        got = pairing.greedy_keys(index, rows, u, c0)
        want = naive_greedy_keys(index.vec, index.has_vec, rows, u, c0)
        mag = -np.asarray(naive_greedy_keys(np.abs(index.vec), index.has_vec, rows, np.abs(u),
                                            c0))
        assert_scores_close(got, want, mag)


class TestScoreContacts:
    @pytest.mark.parametrize("d", DIMS)
    @pytest.mark.parametrize("m", SIZES)
    def test_matches_naive(self, m: int, d: int) -> None:
        """Random contacts of every shape: scores equal the float64 twin's."""
        rng = np.random.default_rng(3000 + m * 7 + d)
        check_score_contacts(f32(rng, (m, d)), f32(rng, d), np.float32(rng.normal()))

    def test_empty_writes_nothing(self) -> None:
        """With no contacts the output is left untouched."""
        out = np.full(2, 42.0, dtype=np.float32)
        kernels.score_contacts(np.zeros((0, 3), np.float32), np.ones(3, np.float32),
                               np.float32(1), out)
        assert np.all(out == 42.0)

    def test_zeros_and_ties(self) -> None:
        """A zero agent gives ``c0``; identical contacts score identically."""
        rng = np.random.default_rng(3100)
        X = np.repeat(f32(rng, (1, 3)), 4, axis=0)
        assert np.all(run_score_contacts(X, np.zeros(3, np.float32), 3.0) == 3.0)
        out = run_score_contacts(X, f32(rng, 3), 0.0)
        assert np.all(out == out[0])

    @pytest.mark.parametrize("d", DIMS)
    @pytest.mark.parametrize("scale", [1e-20, 1e8, 1e17])
    def test_large_and_small_magnitudes(self, d: int, scale: float) -> None:
        """Tiny and large but finite inputs stay within tolerance."""
        rng = np.random.default_rng(3200 + d)
        check_score_contacts(f32(rng, (40, d), scale), f32(rng, d, scale), np.float32(-scale))

    def test_consistent_with_score_rows(self) -> None:
        """Scoring contacts against a folded agent is the transpose of scoring agents."""
        rng = np.random.default_rng(3300)
        X, a = f32(rng, (20, 5)), f32(rng, (1, 5))
        by_contacts = run_score_contacts(X, a[0], 0.5)
        by_rows = np.array([run_score_rows(a, np.zeros(1, np.int64), x, 0.5)[0] for x in X])
        np.testing.assert_allclose(by_contacts, by_rows, rtol=1e-5, atol=1e-5)

    @PROPS
    @given(data=st.data(), m=st.integers(0, 12), d=st.sampled_from(DIMS))
    def test_property_matches_naive(self, data: st.DataObject, m: int, d: int) -> None:
        """Any bounded float32 inputs: scores match the twin."""
        X = data.draw(f32_arrays((m, d), 1e6))
        v = data.draw(f32_arrays(d, 1e6))
        c0 = data.draw(st.floats(-1e12, 1e12).map(np.float32))
        check_score_contacts(X, v, np.float32(c0))


# --- score_batch ---------------------------------------------------------------------


def run_score_batch(X, W, A, rows, wc, wa, b):  # type: ignore[no-untyped-def]
    out = np.full((X.shape[0], rows.shape[0]), np.nan, dtype=np.float32)
    kernels.score_batch(X, W, A, rows, wc, wa, np.float32(b), out)
    return out


def check_score_batch(X, W, A, rows, wc, wa, b) -> None:  # type: ignore[no-untyped-def]
    got = run_score_batch(X, W, A, rows, wc, wa, b)
    want = naive_score_batch(X, W, A, rows, wc, wa, b)
    mag = naive_score_batch(np.abs(X), np.abs(W), np.abs(A), rows, np.abs(wc), np.abs(wa), abs(b))
    assert got.shape == (X.shape[0], rows.shape[0])
    assert_scores_close(got, want, mag)


def batch_model(rng: np.random.Generator, dx: int, da: int,  # type: ignore[no-untyped-def]
                scale: float = 1.0):
    return (f32(rng, (dx, da), scale), f32(rng, dx, scale), f32(rng, da, scale),
            np.float32(rng.normal() * scale))


# (contacts m, selected rows k, agents n, Dx, Da): every size on each axis, every
# pair of dimensions, kept small enough for the cubic twin.
BATCH_CASES = (
    [(m, 3, 5, 3, 3) for m in SIZES]
    + [(2, k, max(k, 1), 3, 3) for k in SIZES]
    + [(4, 5, 6, dx, da) for dx in DIMS for da in DIMS]
    + [(0, 0, 0, 64, 64), (1, 1, 1, 1, 1), (100, 2, 3, 64, 1), (2, 100, 100, 1, 64)]
)


class TestScoreBatch:
    @pytest.mark.parametrize("kind", ["sorted", "shuffled", "repeats"])
    @pytest.mark.parametrize(("m", "k", "n", "dx", "da"), BATCH_CASES)
    def test_matches_naive(self, m: int, k: int, n: int, dx: int, da: int, kind: str) -> None:
        """Random contacts, agents and model of every shape: scores equal the float64 twin's."""
        rng = np.random.default_rng(4000 + m + 10 * k + 100 * dx + 1000 * da)
        W, wc, wa, b = batch_model(rng, dx, da)
        X, A = f32(rng, (m, dx)), f32(rng, (n, da))
        check_score_batch(X, W, A, row_selection(rng, n, k, kind), wc, wa, b)

    def test_empty_writes_nothing(self) -> None:
        """No contacts or no rows: nothing is written."""
        rng = np.random.default_rng(4100)
        W, wc, wa, b = batch_model(rng, 3, 2)
        A = f32(rng, (4, 2))
        out = np.full((2, 0), 42.0, dtype=np.float32)
        kernels.score_batch(f32(rng, (2, 3)), W, A, np.zeros(0, np.int64), wc, wa, b, out)
        out = np.full((0, 4), 42.0, dtype=np.float32)
        kernels.score_batch(np.zeros((0, 3), np.float32), W, A, np.arange(4, dtype=np.int64),
                            wc, wa, b, out)
        big = np.full((3, 4), 42.0, dtype=np.float32)
        kernels.score_batch(np.zeros((0, 3), np.float32), W, A, np.arange(4, dtype=np.int64),
                            wc, wa, b, big)
        assert np.all(big == 42.0)

    def test_zeros(self) -> None:
        """A zero model gives exactly ``b``; zero contacts and agents give exactly ``b`` too."""
        rng = np.random.default_rng(4200)
        X, A = f32(rng, (3, 4)), f32(rng, (5, 2))
        rows = np.array([4, 0, 0], dtype=np.int64)
        z = np.zeros
        out = run_score_batch(X, z((4, 2), np.float32), A, rows, z(4, np.float32),
                              z(2, np.float32), 1.25)
        assert np.all(out == 1.25)
        W, wc, wa, _ = batch_model(rng, 4, 2)
        out = run_score_batch(z((3, 4), np.float32), W, z((5, 2), np.float32), rows, wc, wa, -0.5)
        assert np.all(out == -0.5)

    def test_ties_for_equal_agents_and_contacts(self) -> None:
        """Identical agents (or a repeated row) and identical contacts score identically."""
        rng = np.random.default_rng(4300)
        W, wc, wa, b = batch_model(rng, 64, 64)
        X = np.repeat(f32(rng, (1, 64)), 3, axis=0)
        A = np.repeat(f32(rng, (1, 64)), 4, axis=0)
        out = run_score_batch(X, W, A, np.array([3, 1, 1, 0], dtype=np.int64), wc, wa, b)
        assert np.all(out == out[0, 0])

    def test_matches_score_rows_per_contact(self) -> None:
        """Each line equals ``score_rows`` with the contact folded as ``x W + wa``, ``b + wc.x``."""
        rng = np.random.default_rng(4400)
        W, wc, wa, b = batch_model(rng, 6, 4)
        X, A = f32(rng, (7, 6)), f32(rng, (9, 4))
        rows = np.array([8, 2, 2, 5, 0], dtype=np.int64)
        out = run_score_batch(X, W, A, rows, wc, wa, b)
        for i, x in enumerate(X):
            u = (x @ W + wa).astype(np.float32)
            c0 = np.float32(b + wc @ x)
            np.testing.assert_allclose(out[i], run_score_rows(A, rows, u, c0), rtol=1e-4, atol=1e-4)

    @pytest.mark.parametrize("scale", [1e-10, 1e4, 1e8])
    def test_large_and_small_magnitudes(self, scale: float) -> None:
        """Tiny and large (terms near 1e26, finite in float32) inputs stay within tolerance."""
        rng = np.random.default_rng(4500)
        W, wc, wa, b = batch_model(rng, 64, 64, scale)
        X, A = f32(rng, (3, 64), scale), f32(rng, (6, 64), scale)
        check_score_batch(X, W, A, row_selection(rng, 6, 8, "repeats"), wc, wa, b)

    @PROPS
    @given(data=st.data(), m=st.integers(0, 5), n=st.integers(1, 6), k=st.integers(0, 7),
           dx=st.sampled_from(DIMS), da=st.sampled_from(DIMS))
    def test_property_matches_naive(self, data: st.DataObject, m: int, n: int, k: int,
                                    dx: int, da: int) -> None:
        """Any bounded float32 inputs and any row selection: scores match the twin."""
        bound = 1e4
        X = data.draw(f32_arrays((m, dx), bound))
        W = data.draw(f32_arrays((dx, da), bound))
        A = data.draw(f32_arrays((n, da), bound))
        wc = data.draw(f32_arrays(dx, bound))
        wa = data.draw(f32_arrays(da, bound))
        rows = data.draw(hnp.arrays(np.int64, k, elements=st.integers(0, n - 1)))
        b = data.draw(st.floats(-1e12, 1e12).map(np.float32))
        check_score_batch(X, W, A, rows, wc, wa, np.float32(b))


# --- percentile_ranks ----------------------------------------------------------------


def run_percentile_ranks(values: np.ndarray) -> np.ndarray:
    out = np.full(values.shape[0], np.nan, dtype=np.float64)
    kernels.percentile_ranks(values, out)
    return out


def check_percentile_ranks(values: np.ndarray) -> np.ndarray:
    values = np.ascontiguousarray(values, dtype=np.float64)
    before = values.copy()
    got = run_percentile_ranks(values)
    assert np.array_equal(values, before), "input modified"
    assert got.tolist() == naive_percentile_ranks(values)
    n = values.shape[0]
    if n:
        assert np.all((got > 0) & (got < 1))
        assert got.mean() == pytest.approx(0.5, rel=1e-12)
    return got


def percentile_values(rng: np.random.Generator, n: int, kind: str) -> np.ndarray:
    if kind == "distinct":
        return rng.permutation(n).astype(np.float64) * 1.5 - 7
    if kind == "normal":
        return rng.standard_normal(n)
    if kind == "ties":
        return rng.integers(0, 4, size=n).astype(np.float64)
    if kind == "zeros":
        return np.where(rng.random(n) < 0.5, 0.0, -0.0)
    if kind == "extremes":
        return rng.choice(np.array([-1e30, -1.0, 0.0, 1e-300, 1.0, 1e30, np.finfo(np.float64).max,
                                    -np.finfo(np.float64).max]), size=n)
    raise AssertionError(kind)


class TestPercentileRanks:
    @pytest.mark.parametrize("kind", ["distinct", "normal", "ties", "zeros", "extremes"])
    @pytest.mark.parametrize("n", SIZES)
    def test_matches_naive(self, n: int, kind: str) -> None:
        """Every size and value pattern: exact mid-rank percentiles, in (0, 1), mean 0.5."""
        rng = np.random.default_rng(5000 + n)
        check_percentile_ranks(percentile_values(rng, n, kind))

    def test_empty_does_nothing(self) -> None:
        """An empty array is accepted and nothing is written."""
        out = np.full(3, 42.0)
        kernels.percentile_ranks(np.zeros(0), out[:0])
        kernels.percentile_ranks(np.zeros(0), out)
        assert np.all(out == 42.0)

    def test_known_values(self) -> None:
        """A hand-checked case: ties share the average of their ranks."""
        got = run_percentile_ranks(np.array([3.0, 1.0, 3.0, 2.0, 3.0, -1e30]))
        # sorted: -1e30 (rank 0), 1 (1), 2 (2), 3 3 3 (ranks 3, 4, 5 -> 4)
        assert got.tolist() == [4.5 / 6, 1.5 / 6, 4.5 / 6, 2.5 / 6, 4.5 / 6, 0.5 / 6]

    def test_single_and_all_equal(self) -> None:
        """One value, or all values equal, gives 0.5 everywhere."""
        assert run_percentile_ranks(np.array([7.0])).tolist() == [0.5]
        assert run_percentile_ranks(np.full(9, -1e30)).tolist() == [0.5] * 9
        assert run_percentile_ranks(np.array([0.0, -0.0, 0.0])).tolist() == [0.5] * 3

    @pytest.mark.parametrize("kind", ["distinct", "ties", "extremes"])
    def test_permutation_invariant(self, kind: str) -> None:
        """Permuting the values permutes the percentiles the same way."""
        rng = np.random.default_rng(5100)
        values = percentile_values(rng, 300, kind)
        base = run_percentile_ranks(values)
        for _ in range(5):
            p = rng.permutation(values.shape[0])
            assert np.array_equal(run_percentile_ranks(np.ascontiguousarray(values[p])), base[p])

    def test_monotone(self) -> None:
        """A larger value never gets a smaller percentile, and equal values get equal ones."""
        rng = np.random.default_rng(5200)
        values = percentile_values(rng, 500, "ties") + rng.integers(0, 2, 500) * 0.5
        got = run_percentile_ranks(values)
        order = np.argsort(values, kind="stable")
        assert np.all(np.diff(got[order]) >= 0)
        for v in np.unique(values):
            assert np.unique(got[values == v]).size == 1

    @PROPS
    @given(values=hnp.arrays(np.float64, st.integers(0, 60), elements=st.one_of(
        st.floats(allow_nan=False, allow_infinity=False),
        st.sampled_from([-1e30, -1.0, -0.0, 0.0, 1.0, 1e30]))))
    def test_property_matches_naive(self, values: np.ndarray) -> None:
        """Any finite values (ties and signed zeros included): exact mid-rank percentiles."""
        check_percentile_ranks(values)


# --- band_distance -------------------------------------------------------------------


def run_band_distance(rows, lo, hi, c):  # type: ignore[no-untyped-def]
    out = np.full(rows.shape[0], np.nan, dtype=np.float64)
    kernels.band_distance(rows, lo, hi, c, out)
    return out


def bands(rng: np.random.Generator, n: int):  # type: ignore[no-untyped-def]
    """Bands partitioning [0, 1], as pairing.refresh_bands makes them, in shuffled row order."""
    w = rng.random(n) + 0.01
    hi = np.cumsum(w / w.sum())
    if n:
        hi[-1] = 1.0
    lo = hi - w / w.sum()
    p = rng.permutation(n)
    return np.ascontiguousarray(lo[p]), np.ascontiguousarray(hi[p])


class TestBandDistance:
    @pytest.mark.parametrize("kind", ["sorted", "shuffled", "repeats"])
    @pytest.mark.parametrize("n", SIZES)
    def test_matches_naive(self, n: int, kind: str) -> None:
        """Every size and selection, percentiles inside, outside and on band edges: as the twin."""
        rng = np.random.default_rng(6000 + n)
        lo, hi = bands(rng, n)
        rows = row_selection(rng, n, n if kind != "repeats" else 2 * n, kind)
        cs = [0.0, 1.0, 0.5, -0.25, 1.75, *rng.random(5).tolist()]
        cs += lo[:3].tolist() + hi[:3].tolist()
        for c in cs:
            got = run_band_distance(rows, lo, hi, c)
            assert got.tolist() == naive_band_distance(rows, lo, hi, c)
            assert np.all(got >= 0)

    def test_exactly_one_band_contains_each_percentile(self) -> None:
        """With bands partitioning [0, 1], a percentile strictly inside one band is 0 only there."""
        rng = np.random.default_rng(6100)
        lo, hi = bands(rng, 50)
        rows = np.arange(50, dtype=np.int64)
        for c in (lo + hi) / 2:
            assert np.count_nonzero(run_band_distance(rows, lo, hi, c) == 0.0) == 1

    def test_edges_and_zero_width(self) -> None:
        """Band edges are inside (distance 0); a zero-width band measures distance to its point."""
        lo = np.array([0.25, 0.5, 0.0])
        hi = np.array([0.5, 0.5, 0.0])
        rows = np.array([0, 1, 2], dtype=np.int64)
        assert run_band_distance(rows, lo, hi, 0.25).tolist() == [0.0, 0.25, 0.25]
        assert run_band_distance(rows, lo, hi, 0.5).tolist() == [0.0, 0.0, 0.5]
        assert run_band_distance(rows, lo, hi, 0.0).tolist() == [0.25, 0.5, 0.0]

    def test_empty_writes_nothing(self) -> None:
        """With no rows the output is left untouched."""
        out = np.full(2, 42.0)
        kernels.band_distance(np.zeros(0, np.int64), np.zeros(2), np.ones(2), 0.5, out)
        assert np.all(out == 42.0)

    def test_extremes(self) -> None:
        """Large but finite percentiles and bands give exact differences."""
        lo = np.array([-1e30, 0.0, 1e30])
        hi = np.array([-1e30, 1e30, 1e30])
        rows = np.array([2, 1, 0, 1], dtype=np.int64)
        for c in (-1e30, 0.0, 1e30, 5.0):
            got = run_band_distance(rows, lo, hi, c)
            assert got.tolist() == naive_band_distance(rows, lo, hi, c)

    @PROPS
    @given(data=st.data(), n=st.integers(1, 20), k=st.integers(0, 25),
           c=st.floats(-1e30, 1e30))
    def test_property_matches_naive(self, data: st.DataObject, n: int, k: int, c: float) -> None:
        """Any bands ``lo <= hi`` and any percentile: equals the twin exactly."""
        ends = data.draw(hnp.arrays(np.float64, (n, 2), elements=st.floats(-1e30, 1e30)))
        lo = np.ascontiguousarray(ends.min(axis=1))
        hi = np.ascontiguousarray(ends.max(axis=1))
        rows = data.draw(hnp.arrays(np.int64, k, elements=st.integers(0, n - 1)))
        assert run_band_distance(rows, lo, hi, c).tolist() == naive_band_distance(rows, lo, hi, c)


# --- pick_min ------------------------------------------------------------------------


def pick_case(rng: np.random.Generator, n: int, k: int, kind: str,  # type: ignore[no-untyped-def]
              tie: str):
    """Per-row ``load`` and ``idle_since`` and per-selection ``keys``; ``tie`` says which
    of them is drawn from a tiny set so that it ties often."""
    rows = row_selection(rng, n, k, kind)
    few = tie in ("keys", "all")
    keys = (rng.integers(0, 3, rows.shape[0]).astype(np.float64) if few
            else rng.standard_normal(rows.shape[0]))
    load = rng.integers(0, 2 if tie in ("load", "all") else 1000, n).astype(np.int32)
    idle = (rng.integers(0, 2, n).astype(np.float64) if tie in ("idle", "all")
            else rng.random(n) * 1e4)
    return keys, rows, load, idle


class TestPickMin:
    @pytest.mark.parametrize("tie", ["none", "keys", "load", "idle", "all"])
    @pytest.mark.parametrize("kind", ["sorted", "shuffled", "repeats"])
    @pytest.mark.parametrize("n", SIZES)
    def test_matches_naive(self, n: int, kind: str, tie: str) -> None:
        """Every size, selection and tie pattern: the chosen index equals the twin's."""
        rng = np.random.default_rng(7000 + n)
        for _ in range(5):
            keys, rows, load, idle = pick_case(rng, n, n, kind, tie)
            got = kernels.pick_min(keys, rows, load, idle)
            assert got == naive_pick_min(keys, rows, load, idle)
            assert (got == -1) == (rows.shape[0] == 0)

    def test_empty_returns_minus_one(self) -> None:
        """No candidates: -1."""
        assert kernels.pick_min(np.zeros(0), np.zeros(0, np.int64), np.zeros(3, np.int32),
                                np.zeros(3)) == -1

    def test_single_candidate(self) -> None:
        """One candidate is chosen whatever its key."""
        assert kernels.pick_min(np.array([1e30]), np.array([2], np.int64),
                                np.zeros(3, np.int32), np.zeros(3)) == 0

    def test_smallest_key_wins_over_tie_breaks(self) -> None:
        """A strictly smaller key wins even against lower load, older idle and lower row."""
        keys = np.array([0.0, -1e-300, 1e30, -1e30])
        rows = np.array([0, 1, 2, 3], dtype=np.int64)
        load = np.array([0, 1, 0, 9], dtype=np.int32)
        idle = np.array([0.0, 5.0, 0.0, 9.0])
        assert kernels.pick_min(keys, rows, load, idle) == 3
        assert kernels.pick_min(keys[:3].copy(), rows[:3].copy(), load, idle) == 1

    def test_tie_goes_to_least_loaded(self) -> None:
        """Equal keys: the candidate with the smaller load wins, whatever its idle time or row."""
        keys = np.zeros(3)
        rows = np.array([0, 1, 2], dtype=np.int64)
        load = np.array([2, 1, 3], dtype=np.int32)
        idle = np.array([0.0, 9.0, 0.0])
        assert kernels.pick_min(keys, rows, load, idle) == 1

    def test_then_longest_idle(self) -> None:
        """Equal keys and loads: the smaller ``idle_since`` (idle longest) wins."""
        keys = np.full(3, 0.5)
        rows = np.array([0, 1, 2], dtype=np.int64)
        load = np.ones(3, dtype=np.int32)
        idle = np.array([3.0, 1.0, 2.0])
        assert kernels.pick_min(keys, rows, load, idle) == 1

    def test_then_lowest_row(self) -> None:
        """Equal keys, loads and idle times: the lower row wins, wherever it sits in ``rows``."""
        keys = np.zeros(4)
        rows = np.array([7, 5, 3, 6], dtype=np.int64)
        load = np.zeros(8, dtype=np.int32)
        idle = np.zeros(8)
        assert kernels.pick_min(keys, rows, load, idle) == 2

    def test_repeated_row_first_index(self) -> None:
        """A row selected twice with the same key: the first occurrence is returned."""
        keys = np.array([1.0, 0.0, 0.0])
        rows = np.array([4, 2, 2], dtype=np.int64)
        assert kernels.pick_min(keys, rows, np.zeros(5, np.int32), np.zeros(5)) == 1

    def test_signed_zero_keys_tie(self) -> None:
        """Keys -0.0 and 0.0 are equal, so the tie-breaks decide."""
        keys = np.array([-0.0, 0.0])
        rows = np.array([1, 0], dtype=np.int64)
        assert kernels.pick_min(keys, rows, np.zeros(2, np.int32), np.zeros(2)) == 1

    @pytest.mark.parametrize("tie", ["none", "load", "idle", "all"])
    def test_order_invariant(self, tie: str) -> None:
        """With distinct rows the chosen row does not depend on the order of the candidates."""
        rng = np.random.default_rng(7100)
        for n in (2, 3, 100, 1000):
            keys, rows, load, idle = pick_case(rng, n, n, "shuffled", tie)
            if tie == "none":
                assert np.unique(keys).size == keys.size
            chosen = rows[kernels.pick_min(keys, rows, load, idle)]
            for _ in range(5):
                p = rng.permutation(rows.shape[0])
                k = kernels.pick_min(np.ascontiguousarray(keys[p]), np.ascontiguousarray(rows[p]),
                                     load, idle)
                assert rows[p][k] == chosen

    @pytest.mark.parametrize("n", [2, 100, 1000])
    def test_extreme_keys(self, n: int) -> None:
        """Keys at ±1e30 and the float64 limits: the twin's choice."""
        rng = np.random.default_rng(7200 + n)
        big = np.finfo(np.float64).max
        keys = rng.choice(np.array([-big, -1e30, -0.0, 0.0, 1e-300, 1e30, big]), size=n)
        rows = row_selection(rng, n, n, "repeats")
        load = rng.integers(0, 2, n).astype(np.int32)
        idle = rng.integers(0, 2, n).astype(np.float64) * 1e30
        assert kernels.pick_min(keys, rows, load, idle) == naive_pick_min(keys, rows, load, idle)

    @PROPS
    @given(data=st.data(), n=st.integers(1, 15), k=st.integers(0, 20))
    def test_property_matches_naive(self, data: st.DataObject, n: int, k: int) -> None:
        """Any keys, loads, idle times and row selection (ties likely): equals the twin."""
        small = st.sampled_from([-1e30, -1.0, -0.0, 0.0, 1.0, 1e30])
        keys = data.draw(hnp.arrays(np.float64, k, elements=st.one_of(
            small, st.floats(allow_nan=False, allow_infinity=False))))
        rows = data.draw(hnp.arrays(np.int64, k, elements=st.integers(0, n - 1)))
        load = data.draw(hnp.arrays(np.int32, n, elements=st.integers(0, 3)))
        idle = data.draw(hnp.arrays(np.float64, n, elements=st.one_of(
            small, st.floats(-1e12, 1e12))))
        assert kernels.pick_min(keys, rows, load, idle) == naive_pick_min(keys, rows, load, idle)


class TestWarm:
    def test_warm_runs(self) -> None:
        """``warm()`` runs every kernel on tiny inputs without error, twice."""
        assert kernels.warm() is None
        kernels.warm()
