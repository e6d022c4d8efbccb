"""Model training: history files, fitting, held-out evaluation, mode selection, the
model file and the ``train`` command. Data is drawn from known bilinear truths
(seeded), so recovery and the interaction/no-interaction comparison are checked
against the truth, not against a previous run."""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.stats import mannwhitneyu

from pairline.model import load_model
from pairline.pairing import Scorer
from pairline.train import (
    History,
    _fit_identity,
    _fit_logistic,
    add_train_parser,
    auc,
    fit,
    log_loss,
    main,
    predict,
    raw_scores,
    read_history,
    write_history,
)

DC = DA = 4
N = 20_000


@dataclass(frozen=True)
class Truth:
    b: float
    wc: np.ndarray  # [DC + DX]
    wa: np.ndarray  # [DA]
    W: np.ndarray  # [DC + DX, DA]

    def raw(self, x: np.ndarray, a: np.ndarray) -> np.ndarray:
        return self.b + x @ self.wc + a @ self.wa + np.einsum("nj,nj->n", x @ self.W, a)

    def theta(self) -> np.ndarray:
        return np.concatenate([[self.b], self.wc, self.wa, self.W.ravel()])


def make_truth(seed: int, *, dx: int = DC, da: int = DA, w_sd: float = 0.5) -> Truth:
    rng = np.random.default_rng(seed)
    return Truth(
        b=-0.5,
        wc=rng.normal(0.0, 0.3, dx),
        wa=rng.normal(0.0, 0.3, da),
        W=rng.normal(0.0, w_sd, (dx, da)) if w_sd else np.zeros((dx, da)),
    )


def draw(truth: Truth, n: int, seed: int, *, link: str = "logistic",
         noise_sd: float = 0.5) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Inputs x [n, DX], agents a [n, DA] (standard normal) and outcomes."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, truth.W.shape[0]))
    a = rng.standard_normal((n, truth.W.shape[1]))
    z = truth.raw(x, a)
    if link == "logistic":
        y = (rng.random(n) < 1.0 / (1.0 + np.exp(-z))).astype(np.float64)
    else:
        y = z + rng.normal(0.0, noise_sd, n)
    return x, a, y


def history(x: np.ndarray, a: np.ndarray, y: np.ndarray, modes: object = "CONTROL",
            features: tuple[str, ...] = (), **kw: object) -> History:
    dx = len(features)
    dc = x.shape[1] - dx
    return History(outcome=y, mode=np.broadcast_to(np.asarray(modes), y.shape), customer=x[:, :dc],
                   agent=a, context=x[:, dc:], context_features=features, **kw)  # type: ignore[arg-type]


def badly_scaled(x: np.ndarray, a: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The same rows with inputs on other scales: an hour of day, a tenure in days, an
    agent score around 50 (outcomes drawn before, so still plausible)."""
    x, a = x.copy(), a.copy()
    x[:, 0] = np.clip(np.round(12 + 6 * x[:, 0]), 0, 23)
    x[:, 1] = 1000 + 300 * x[:, 1]
    a[:, 0] = 50 + 10 * a[:, 0]
    return x, a


def dense_design(x: np.ndarray, a: np.ndarray) -> np.ndarray:
    n = x.shape[0]
    return np.hstack([np.ones((n, 1)), x, a, (x[:, :, None] * a[:, None, :]).reshape(n, -1)])


def theta_of(model: object) -> np.ndarray:
    m = model
    return np.concatenate([[m.b], m.wc, m.wa, m.W.ravel()]).astype(np.float64)  # type: ignore[attr-defined]


def write_csv(path: Path, header: list[str], rows: list[list[object]]) -> Path:
    lines = [",".join(header)] + [",".join(str(v) for v in r) for r in rows]
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture(scope="module")
def interaction_truth() -> Truth:
    return make_truth(11)


@pytest.fixture(scope="module")
def interaction_fit(interaction_truth: Truth) -> tuple[object, dict[str, object], History]:
    x, a, y = draw(interaction_truth, N, seed=12)
    h = history(x, a, y)
    model, metrics = fit(h, version="t-int", trained_at_ms=1_700_000_000_000)
    return model, metrics, h


@pytest.fixture(scope="module")
def plain_fit() -> tuple[object, dict[str, object], Truth]:
    truth = make_truth(21, w_sd=0.0)
    x, a, y = draw(truth, N, seed=22)
    model, metrics = fit(history(x, a, y), version="t-plain", trained_at_ms=1)
    return model, metrics, truth


class TestRecovery:
    def test_logistic_recovers_bilinear_truth(self, interaction_fit, interaction_truth) -> None:
        """On 16k training rows of a bilinear logistic truth, every fitted weight is within 0.15
        of the truth and the whole parameter vector within 10% (relative; ~5% is the sampling
        error of 25 parameters on 16k rows)."""
        model, metrics, _ = interaction_fit
        truth = interaction_truth
        err = theta_of(model) - truth.theta()
        assert metrics["rows_train"] == 16_000 and metrics["rows_heldout"] == 4_000
        assert np.abs(model.W - truth.W).max() < 0.15
        assert np.abs(model.wc - truth.wc).max() < 0.1
        assert np.abs(model.wa - truth.wa).max() < 0.1
        assert abs(model.b - truth.b) < 0.1
        assert np.linalg.norm(err) / np.linalg.norm(truth.theta()) < 0.10
        assert metrics["optimizer"]["interaction"]["converged"]

    @pytest.mark.parametrize("scaled", [False, True], ids=["standard", "badly_scaled"])
    def test_lbfgs_matches_dense_newton_twin(self, scaled: bool) -> None:
        """The L-BFGS fit (never building the outer-product design) equals an obviously-correct
        Newton fit over the raw dense design [1, x, a, vec(x a')] with the same penalty, also
        when inputs are far from standard (hour of day, tenure in days)."""
        truth = make_truth(31)
        x, a, y = draw(truth, 3000, seed=32)
        if scaled:
            x, a = badly_scaled(x, a)
        l2 = 1e-2
        f = _fit_logistic(x, a, y, l2, True)
        Z = dense_design(x, a)
        P = np.eye(Z.shape[1]) * l2
        P[0, 0] = 0.0
        th = np.zeros(Z.shape[1])
        for _ in range(50):
            p = 1.0 / (1.0 + np.exp(-Z @ th))
            g = Z.T @ (p - y) / 3000 + P @ th
            H = (Z * (p * (1 - p))[:, None]).T @ Z / 3000 + P
            th -= np.linalg.solve(H, g)
        got = np.concatenate([[f.b], f.wc, f.wa, f.W.ravel()])
        np.testing.assert_allclose(got, th, rtol=1e-4, atol=1e-6)
        assert f.converged and f.iterations < 200

    @pytest.mark.parametrize("scaled", [False, True], ids=["standard", "badly_scaled"])
    def test_identity_matches_dense_least_squares_twin(self, scaled: bool) -> None:
        """The chunked ridge normal equations equal least squares on the raw dense design
        augmented with the penalty rows."""
        truth = make_truth(41)
        x, a, y = draw(truth, 20_000, seed=42, link="identity")  # > one 8192-row chunk
        if scaled:
            x, a = badly_scaled(x, a)
        l2 = 1e-2
        f = _fit_identity(x, a, y, l2, True)
        n = y.size
        Z = dense_design(x, a)
        # min |y - Z th|^2 / (2n) + l2/2 |th[1:]|^2  ==  least squares on augmented rows
        R = np.sqrt(n * l2) * np.eye(Z.shape[1])[1:]
        th = np.linalg.lstsq(np.vstack([Z, R]), np.concatenate([y, np.zeros(R.shape[0])]),
                             rcond=None)[0]
        got = np.concatenate([[f.b], f.wc, f.wa, f.W.ravel()])
        np.testing.assert_allclose(got, th, rtol=1e-6, atol=1e-8)

    def test_identity_link_fits_linear_truth(self) -> None:
        """With the identity link a bilinear truth plus N(0, 0.5^2) noise is recovered to 0.03
        and the held-out RMSE is the noise level."""
        truth = make_truth(51)
        x, a, y = draw(truth, N, seed=52, link="identity", noise_sd=0.5)
        model, metrics = fit(history(x, a, y), version="rev", outcome="revenue", link="identity",
                             trained_at_ms=1)
        assert model.link == "identity" and model.outcome == "revenue"
        assert np.abs(theta_of(model) - truth.theta()).max() < 0.03
        held = metrics["heldout"]
        assert abs(held["interaction"]["rmse"] - 0.5) < 0.02
        assert held["no_interaction"]["rmse"] > 1.0  # the interaction carries most of the signal
        assert held["interaction"]["r2"] > 0.9 > held["no_interaction"]["r2"]
        assert metrics["interaction_gain"]["rmse"] > 0.5
        assert "log_loss" not in held["interaction"]


class TestEvaluation:
    def test_interaction_beats_no_interaction_when_truth_has_interaction(
        self, interaction_fit
    ) -> None:
        """Held out, the interaction model has lower log loss and higher AUC than the same model
        without W, which in turn beats a constant."""
        _, metrics, _ = interaction_fit
        held = metrics["heldout"]
        inter, plain, const = held["interaction"], held["no_interaction"], held["constant"]
        assert inter["log_loss"] < plain["log_loss"] - 0.1
        assert inter["auc"] > plain["auc"] + 0.1
        assert plain["log_loss"] < const["log_loss"]
        assert const["auc"] == 0.5
        assert metrics["interaction_gain"]["log_loss"] == pytest.approx(
            plain["log_loss"] - inter["log_loss"])
        assert metrics["warning"] is None

    def test_no_meaningful_gain_without_interaction_in_truth(self, plain_fit) -> None:
        """When the truth has no interaction, W fits near 0 and the interaction model is no
        better held out than the model without it (within 0.002 log loss, 0.003 AUC)."""
        model, metrics, truth = plain_fit
        gain = metrics["interaction_gain"]
        assert np.abs(model.W).max() < 0.06
        assert gain["log_loss"] < 0.002
        assert gain["auc"] < 0.003
        assert np.abs(model.wc - truth.wc).max() < 0.1

    @settings(max_examples=200, deadline=None)
    @given(st.lists(st.tuples(st.integers(0, 1), st.integers(-3, 3)), min_size=1, max_size=40))
    def test_auc_equals_naive_pairwise_count(self, rows: list[tuple[int, int]]) -> None:
        """auc equals the share of (positive, negative) pairs ordered right, ties counting half,
        and is None when a class is missing."""
        y = np.array([r[0] for r in rows])
        s = np.array([r[1] for r in rows], dtype=np.float64)
        pos, neg = s[y == 1], s[y == 0]
        got = auc(y, s)
        if pos.size == 0 or neg.size == 0:
            assert got is None
            return
        naive = sum((p > q) + 0.5 * (p == q) for p in pos for q in neg) / (pos.size * neg.size)
        assert got == pytest.approx(naive)

    def test_auc_agrees_with_mann_whitney(self) -> None:
        """auc is scipy's Mann-Whitney U over n1 * n0, ties included."""
        rng = np.random.default_rng(3)
        y = rng.integers(0, 2, 500)
        s = np.round(rng.normal(size=500) + y, 1)  # rounded: many ties
        u = mannwhitneyu(s[y == 1], s[y == 0]).statistic
        assert auc(y, s) == pytest.approx(u / ((y == 1).sum() * (y == 0).sum()))

    def test_log_loss(self) -> None:
        """log_loss is the mean negative log likelihood, clipped away from log(0)."""
        y = np.array([1.0, 0.0, 1.0])
        p = np.array([0.9, 0.2, 0.5])
        assert log_loss(y, p) == pytest.approx(-(np.log(0.9) + np.log(0.8) + np.log(0.5)) / 3)
        assert np.isfinite(log_loss(np.array([1.0]), np.array([0.0])))


class TestModelFile:
    def test_written_file_loads_and_predicts_as_fitted(self, interaction_fit, tmp_path) -> None:
        """The model bytes pass load_model with the tenant's dims, and the server's Scorer
        predicts what train.predict does with the fitted model."""
        model, _, h = interaction_fit
        path = tmp_path / "m.npz"
        path.write_bytes(model.raw)
        loaded = load_model(path.read_bytes(), customer_dim=DC, agent_dim=DA)
        assert (loaded.version, loaded.outcome, loaded.link, loaded.trained_at_ms) == (
            "t-int", "converted", "logistic", 1_700_000_000_000)
        np.testing.assert_array_equal(loaded.W, model.W)
        np.testing.assert_array_equal(loaded.wc, model.wc)
        assert loaded.b == model.b
        scorer = Scorer(loaded)
        x, a = h.x[:200], h.agent[:200]
        served = []
        for i in range(200):
            u, c0 = scorer.fold_contact(scorer.x_of(h.customer[i].astype(np.float32), ()))
            served.append(scorer.predict(float(c0 + u @ a[i].astype(np.float32))))
        np.testing.assert_allclose(served, predict(model, x, a), atol=2e-5)
        np.testing.assert_allclose(predict(loaded, x, a), predict(model, x, a), rtol=0, atol=0)

    def test_no_interaction_model_has_zero_w(self, interaction_truth) -> None:
        """interaction=False writes W = 0 exactly, and the metrics still show both models."""
        x, a, y = draw(interaction_truth, 5000, seed=13)
        model, metrics = fit(history(x, a, y), version="t-main", interaction=False, trained_at_ms=1)
        assert not np.any(model.W)
        assert np.any(model.wa)
        assert metrics["interaction"] is False and metrics["parameters"] == 1 + DC + DA
        assert set(metrics["heldout"]) == {"interaction", "no_interaction", "constant"}

    def test_metrics_describe_the_written_file(self, interaction_fit) -> None:
        """The held-out figures recompute exactly from the model file and the held-out rows."""
        model, metrics, h = interaction_fit
        test_rows = np.sort(np.random.default_rng(0).permutation(N)[N - 4000 :])
        loaded = load_model(model.raw, customer_dim=DC, agent_dim=DA)
        z = raw_scores(loaded, h.x[test_rows], h.agent[test_rows])
        y = h.outcome[test_rows]
        assert auc(y, z) == pytest.approx(metrics["heldout"]["interaction"]["auc"], abs=1e-12)
        assert log_loss(y, 1 / (1 + np.exp(-z))) == pytest.approx(
            metrics["heldout"]["interaction"]["log_loss"], abs=1e-9)

    def test_bad_version_is_refused(self, interaction_fit) -> None:
        """A version the server would refuse fails before fitting."""
        _, _, h = interaction_fit
        with pytest.raises(ValueError, match="version"):
            fit(h, version="x" * 65)


class TestModes:
    def test_paired_rows_excluded_by_default(self, interaction_truth) -> None:
        """With enough off-policy rows, PAIRED and OPTED_OUT rows are left out: their (here
        poisoned, all-1) outcomes do not move the intercept, and the metrics say what was used."""
        x, a, y = draw(interaction_truth, N, seed=14)
        modes = np.array(["CONTROL"] * 6000 + ["BASELINE"] * 1000 + ["NO_PROFILE"] * 1000
                         + ["DEGRADED"] * 200 + ["OPTED_OUT"] * 500 + ["PAIRED"] * 11_300)
        y = y.copy()
        y[modes == "PAIRED"] = 1.0
        y[modes == "OPTED_OUT"] = 1.0
        model, metrics = fit(history(x, a, y, modes), version="m", trained_at_ms=1)
        assert metrics["modes_used"] == ["BASELINE", "CONTROL", "DEGRADED", "NO_PROFILE"]
        assert metrics["rows_used"] == 8200
        assert metrics["off_policy_only"] is True
        assert metrics["warning"] is None
        assert metrics["rows_by_mode"]["PAIRED"] == 11_300
        assert abs(model.b - interaction_truth.b) < 0.15

    def test_falls_back_to_all_rows_with_warning(self, interaction_truth) -> None:
        """Below the threshold (1000 rows for 4x4) every row but OPTED_OUT is used and the
        warning says so."""
        x, a, y = draw(interaction_truth, N, seed=15)
        modes = np.array(["CONTROL"] * 999 + ["OPTED_OUT"] * 500 + ["PAIRED"] * (N - 1499))
        _, metrics = fit(history(x, a, y, modes), version="m", trained_at_ms=1)
        assert metrics["min_off_policy_rows"] == 1000
        assert metrics["modes_used"] == ["CONTROL", "PAIRED"]
        assert metrics["rows_used"] == N - 500
        assert metrics["off_policy_only"] is False
        assert "999" in metrics["warning"] and "PAIRED" in metrics["warning"]

    def test_threshold_grows_with_parameters_and_can_be_set(self) -> None:
        """The threshold is max(1000, 10 x parameters), and min_off_policy_rows overrides it."""
        truth = make_truth(16, dx=12, da=10)  # 1 + 12 + 10 + 120 = 143 parameters
        x, a, y = draw(truth, 3000, seed=17)
        modes = np.array(["CONTROL"] * 1200 + ["PAIRED"] * 1800)
        _, metrics = fit(history(x, a, y, modes), version="m", trained_at_ms=1)
        assert metrics["min_off_policy_rows"] == 1430
        assert metrics["modes_used"] == ["CONTROL", "PAIRED"] and metrics["warning"]
        _, metrics = fit(history(x, a, y, modes), version="m", trained_at_ms=1,
                         min_off_policy_rows=1000)
        assert metrics["modes_used"] == ["CONTROL"] and metrics["rows_used"] == 1200

    def test_explicit_modes(self, interaction_truth) -> None:
        """use_modes selects exactly those rows (names case-insensitive); PAIRED among them is
        flagged; an unknown mode is an error."""
        x, a, y = draw(interaction_truth, 4000, seed=18)
        modes = np.array(["CONTROL"] * 2000 + ["PAIRED"] * 2000)
        _, metrics = fit(history(x, a, y, modes), version="m", use_modes=["paired"],
                         trained_at_ms=1)
        assert metrics["modes_used"] == ["PAIRED"] and metrics["rows_used"] == 2000
        assert "PAIRED" in metrics["warning"]
        with pytest.raises(ValueError, match="PAIRD"):
            fit(history(x, a, y, modes), version="m", use_modes=["PAIRD"])

    def test_time_split_holds_out_the_latest_rows(self, interaction_truth) -> None:
        """split='time' holds out the latest 20% by decided_at_ms (not by file position)."""
        x, a, y = draw(interaction_truth, 5000, seed=19)
        at = np.random.default_rng(20).permutation(5000).astype(np.int64) * 1000
        y = y.copy()
        y[at >= 4000 * 1000] = 1.0  # the latest 1000 decisions all converted
        h = history(x, a, y, decided_at_ms=at)
        _, metrics = fit(h, version="m", split="time", trained_at_ms=1)
        assert metrics["rows_heldout"] == 1000
        assert metrics["heldout"]["interaction"]["auc"] is None
        assert "AUC is undefined" in metrics["warning"]
        _, metrics = fit(h, version="m", trained_at_ms=1)  # random split: both classes held out
        assert metrics["heldout"]["interaction"]["auc"] is not None
        with pytest.raises(ValueError, match="decided_at_ms"):
            fit(history(x, a, y), version="m", split="time")


class TestReadHistory:
    def test_round_trip_with_context_and_extra_columns(self, tmp_path) -> None:
        """write_history then read_history gives the same arrays; extra columns are ignored
        and listed; mode spellings are normalised."""
        rng = np.random.default_rng(5)
        x, a = rng.standard_normal((50, 6)), rng.standard_normal((50, 3))
        y = rng.integers(0, 2, 50).astype(np.float64)
        h = history(x, a, y, "CONTROL", features=("tenure", "intent"),
                    decided_at_ms=np.arange(50) * 7)
        path = tmp_path / "h.csv"
        write_history(path, h)
        back = read_history(path)
        np.testing.assert_array_equal(back.customer, h.customer)
        np.testing.assert_array_equal(back.context, h.context)
        np.testing.assert_array_equal(back.agent, h.agent)
        np.testing.assert_array_equal(back.decided_at_ms, h.decided_at_ms)
        assert back.context_features == ("tenure", "intent")
        rows = [[1, m, 0.5, 0.1, 0.2, "q-sales"] for m in ("paired", "MODE_CONTROL", "7")]
        p2 = write_csv(tmp_path / "m.csv", ["outcome", "mode", "c_0", "a_0", "a_1", "queue"], rows)
        back = read_history(p2)
        assert list(back.mode) == ["PAIRED", "CONTROL", "BASELINE"]
        assert back.ignored_columns == ("queue",)
        assert (back.customer_dim, back.agent_dim) == (1, 2)

    def test_rows_without_profile_are_skipped_and_counted(self, tmp_path) -> None:
        """A NO_PROFILE row with every customer cell empty is skipped and counted; one that
        has a profile is kept."""
        rows = [[1, "NO_PROFILE", "", "", 0.3], [0, "NO_PROFILE", 0.1, 0.2, 0.3],
                [1, "CONTROL", 0.4, 0.5, 0.6]]
        h = read_history(write_csv(tmp_path / "h.csv", ["outcome", "mode", "c_0", "c_1", "a_0"],
                                   rows))
        assert len(h) == 2 and h.rows_without_profile == 1
        assert list(h.mode) == ["NO_PROFILE", "CONTROL"]
        assert list(h.lines) == [3, 4]

    @pytest.mark.parametrize(
        ("header", "row", "match"),
        [
            (["outcome", "c_0", "a_0"], [1, 0.1, 0.2], "missing column 'mode'"),
            (["mode", "c_0", "a_0"], ["CONTROL", 0.1, 0.2], "missing column 'outcome'"),
            (["outcome", "mode", "c_0", "c_2", "a_0"], [1, "CONTROL", 0, 0, 0],
             "missing column 'c_1'"),
            (["outcome", "mode", "c_0"], [1, "CONTROL", 0], "missing column 'a_0'"),
            (["outcome", "mode", "c_0", "c_1", "a_0"], [1, "CONTROL", 0.1, "abc", 0],
             r"column 'c_1', line 3: 'abc' is not a number"),
            (["outcome", "mode", "c_0", "a_0", "a_1"], [1, "CONTROL", 0.1, 0.2, "NaN"],
             r"column 'a_1', line 3: 'NaN' is not a finite number"),
            (["outcome", "mode", "c_0", "a_0"], [1, "CONTROL", "inf", 0.2],
             r"column 'c_0', line 3: 'inf'"),
            (["outcome", "mode", "c_0", "a_0"], ["", "CONTROL", 0.1, 0.2],
             r"column 'outcome', line 3: empty"),
            (["outcome", "mode", "c_0", "c_1", "a_0"], [1, "CONTROL", 0.1, "", 0.2],
             r"column 'c_1', line 3: empty, but the row has other customer"),
            (["outcome", "mode", "c_0", "a_0"], [1, "ROUTED", 0.1, 0.2],
             r"column 'mode', line 3: unknown mode 'ROUTED'"),
            (["outcome", "mode", "c_0", "a_0", "ctx_x"], [1, "CONTROL", 0, 0, "1,2"],
             r"line 3: 6 fields, the header has 5"),
            (["outcome", "mode", "c_0", "a_0", "decided_at_ms"], [1, "CONTROL", 0, 0, 1.5],
             r"column 'decided_at_ms', line 3"),
            (["outcome", "mode", "c_0", "c_01", "a_0"], [1, "CONTROL", 0, 0, 0],
             r"column 'c_01'"),
        ],
    )
    def test_bad_files_name_the_column_and_line(self, tmp_path, header, row, match) -> None:
        """Each malformed file is a ValueError naming the file, the column and the line."""
        good = [1, "CONTROL"] + [0.0] * (len(header) - 2)
        path = write_csv(tmp_path / "bad.csv", header, [good if "mode" in header else row, row])
        with pytest.raises(ValueError, match=match) as info:
            read_history(path)
        assert "bad.csv" in str(info.value)

    def test_logistic_outcome_must_be_zero_or_one(self, tmp_path) -> None:
        """A logistic fit of an outcome that is not 0/1 names the line."""
        rng = np.random.default_rng(6)
        rows = [[int(rng.integers(0, 2)), "CONTROL", rng.normal(), rng.normal()] for _ in range(40)]
        rows[7][0] = 2
        path = write_csv(tmp_path / "h.csv", ["outcome", "mode", "c_0", "a_0"], rows)
        with pytest.raises(ValueError, match=r"h.csv, line 9: outcome 2.0 is not 0 or 1"):
            fit(path, version="v")

    def test_parquet_without_pyarrow_is_a_clear_error(self, tmp_path, monkeypatch) -> None:
        """A .parquet history without pyarrow says to install it or use CSV."""
        monkeypatch.setitem(sys.modules, "pyarrow", None)
        monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)
        path = tmp_path / "h.parquet"
        path.write_bytes(b"PAR1")
        with pytest.raises(ValueError, match=r"needs pyarrow.*CSV"):
            read_history(path)

    def test_parquet_round_trip(self, tmp_path) -> None:
        """With pyarrow, a Parquet history reads like the CSV one; nulls are empty cells."""
        pa = pytest.importorskip("pyarrow")
        pq = pytest.importorskip("pyarrow.parquet")
        table = pa.table({
            "outcome": [1, 0, 1],
            "mode": ["CONTROL", "NO_PROFILE", "paired"],
            "c_0": [0.5, None, 1.5],
            "a_0": [0.25, 0.5, 0.75],
            "ctx_intent": [1.0, 2.0, None],
        })
        pq.write_table(table, tmp_path / "h.parquet")
        h = read_history(tmp_path / "h.parquet")
        assert list(h.mode) == ["CONTROL", "PAIRED"] and h.rows_without_profile == 1
        np.testing.assert_array_equal(h.x, [[0.5, 1.0], [1.5, 0.0]])
        pq.write_table(table.set_column(2, "c_0", pa.array([0.5, float("nan"), 1.0])),
                       tmp_path / "nan.parquet")
        with pytest.raises(ValueError, match=r"column 'c_0', row 2"):
            read_history(tmp_path / "nan.parquet")


class TestContext:
    def test_context_columns_become_context_features_in_order(self, tmp_path) -> None:
        """ctx_ columns become the model's context_features in file order, their interaction
        with the agent is learnt, and the server scores them by name."""
        rng = np.random.default_rng(7)
        truth = make_truth(8, dx=DC + 2)
        W = truth.W.copy()
        W[DC:] = 0.0
        W[DC + 1, 2] = 1.5  # intent x a_2
        truth = Truth(truth.b, truth.wc, truth.wa, W)
        x, a, y = draw(truth, N, seed=9)
        x[:, DC] = rng.integers(0, 20, N) / 10  # tenure in [0, 2)
        y = (rng.random(N) < 1 / (1 + np.exp(-truth.raw(x, a)))).astype(np.float64)
        path = tmp_path / "h.csv"
        write_history(path, history(x, a, y, features=("tenure", "intent")))
        model, metrics = fit(path, version="ctx", trained_at_ms=1)
        assert model.context_features == ("tenure", "intent")
        assert metrics["context_features"] == ["tenure", "intent"]
        assert model.W.shape == (DC + 2, DA)
        assert abs(model.W[DC + 1, 2] - 1.5) < 0.15
        loaded = load_model(model.raw, customer_dim=DC, agent_dim=DA)
        scorer = Scorer(loaded)
        ctx = (("intent", float(x[0, DC + 1])), ("tenure", float(x[0, DC])))
        u, c0 = scorer.fold_contact(scorer.x_of(x[0, :DC].astype(np.float32), ctx))
        served = scorer.predict(float(c0 + u @ a[0].astype(np.float32)))
        assert served == pytest.approx(float(predict(model, x[:1], a[:1])[0]), abs=2e-5)


@pytest.fixture(scope="module")
def csv_path(tmp_path_factory, interaction_truth) -> Path:
    """A CSV history of 2500 CONTROL and 2500 PAIRED rows."""
    x, a, y = draw(interaction_truth, 5000, seed=23)
    modes = np.array(["CONTROL"] * 2500 + ["PAIRED"] * 2500)
    path = tmp_path_factory.mktemp("cli") / "history.csv"
    write_history(path, history(x, a, y, modes))
    return path


class TestCli:
    @staticmethod
    def parser() -> argparse.ArgumentParser:
        parser = argparse.ArgumentParser(prog="pairline")
        add_train_parser(parser.add_subparsers(dest="command", required=True))
        return parser

    def test_json_output_and_model_file(self, csv_path, tmp_path, capsys) -> None:
        """`pairline train HISTORY --out M --version V --json` writes a loadable model and
        prints the metrics as JSON."""
        out = tmp_path / "model.npz"
        ns = self.parser().parse_args(
            ["train", str(csv_path), "--out", str(out), "--version", "v9", "--json"])
        assert ns.run(ns) == 0
        report = json.loads(capsys.readouterr().out)
        for key in ("heldout", "modes_used", "rows_used", "warning", "interaction_gain",
                    "min_off_policy_rows", "out"):
            assert key in report
        assert report["modes_used"] == ["CONTROL"] and report["rows_used"] == 2500
        assert set(report["heldout"]["interaction"]) == {"log_loss", "auc"}
        model = load_model(out.read_bytes(), customer_dim=DC, agent_dim=DA)
        assert model.version == "v9" and np.any(model.W)
        assert report["model_bytes"] == out.stat().st_size

    def test_table_output_and_options(self, csv_path, tmp_path, capsys) -> None:
        """The default output is a table of both models; --no-interaction, --outcome and --l2
        reach the model file."""
        out = tmp_path / "model.npz"
        code = main([str(csv_path), "--out", str(out), "--version", "v10", "--no-interaction",
                     "--outcome", "sale", "--l2", "0.01"])
        assert code == 0
        text = capsys.readouterr().out
        assert "log loss" in text and "AUC" in text and "no interaction *" in text
        model = load_model(out.read_bytes(), customer_dim=DC, agent_dim=DA)
        assert model.outcome == "sale" and not np.any(model.W)

    def test_bad_history_exits_2_naming_the_column(self, tmp_path, capsys) -> None:
        """A malformed history exits with 2 and the message, without writing the model."""
        path = write_csv(tmp_path / "h.csv", ["outcome", "mode", "c_0", "a_0"],
                         [[1, "CONTROL", "x", 0]])
        out = tmp_path / "m.npz"
        assert main([str(path), "--out", str(out), "--version", "v"]) == 2
        assert "'c_0'" in capsys.readouterr().err
        assert not out.exists()
        assert main([str(tmp_path / "nope.csv"), "--out", str(out), "--version", "v"]) == 1
