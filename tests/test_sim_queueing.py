"""The simulator's baseline reproduces queueing theory: Erlang C (M/M/n) and
Erlang A (M/M/n+M, exponential patience).

Simulated service level and ASA near saturation average out slowly (the queue
drifts for thousands of arrivals), so each comparison uses many seeded runs of
the plain-Python baseline switch and regression control variates: statistics of
a fast single server and of an infinite-server system driven by the same
arrivals, handle times and patience, whose exact means are known (see
:mod:`pairline.sim.queueing`). The raw means are checked too, against their own
(wider) standard errors, and a smaller test checks that the service-driven
baseline gives the very same figures as the pure one.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
from support import on_every_core

from pairline.sim import erlang_scenario, simulate
from pairline.sim.queueing import (
    controlled_mean,
    erlang_a_figures,
    erlang_b,
    erlang_c,
    erlang_c_figures,
    fast_server,
    infinite_server_counts,
    poisson_excess,
    queue_controls,
)
from pairline.sim.scenario import Scenario
from pairline.sim.workload import Workload

AGENTS = 12
HANDLE_S = 120.0
THRESHOLD_S = 20.0


class TestFormulas:
    def test_erlang_b_and_c_table_values(self) -> None:
        """Erlang B and C agree with published tables and the worked example
        (4.2 calls/min, 2 min handle, 12 agents: SL@20s ~0.90, ASA ~0.10 min)."""
        assert erlang_b(10, 10.0) == pytest.approx(0.2146, abs=5e-5)
        assert erlang_b(1, 1.0) == pytest.approx(0.5)
        assert erlang_c(1, 0.5) == pytest.approx(0.5)  # M/M/1: P(wait) = rho
        f = erlang_c_figures(AGENTS, 4.2 / 60, HANDLE_S, THRESHOLD_S)
        assert f.service_level == pytest.approx(0.899, abs=0.001)
        assert f.asa_s / 60 == pytest.approx(0.102, abs=0.001)
        assert f.occupancy == pytest.approx(0.7)
        mm1 = erlang_c_figures(1, 0.5, 1.0, 2.0)  # rho 0.5: W ~ 0.5 Exp(rate 0.5)
        assert mm1.asa_s == pytest.approx(1.0)
        assert mm1.service_level == pytest.approx(1 - 0.5 * math.exp(-1.0))

    @pytest.mark.parametrize("per_min", [4.2, 5.1, 5.7])
    def test_erlang_a_without_abandonment_is_erlang_c(self, per_min: float) -> None:
        """The birth-death chain with infinite patience gives Erlang C's closed forms."""
        c = erlang_c_figures(AGENTS, per_min / 60, HANDLE_S, THRESHOLD_S)
        a = erlang_a_figures(AGENTS, per_min / 60, HANDLE_S, math.inf, THRESHOLD_S)
        for name in ("p_wait", "service_level", "asa_s", "occupancy", "mean_queue"):
            assert getattr(a, name) == pytest.approx(getattr(c, name), rel=1e-9), name
        assert a.p_abandon == pytest.approx(0.0, abs=1e-12)
        nearly = erlang_a_figures(AGENTS, per_min / 60, HANDLE_S, 1e9, THRESHOLD_S)
        assert nearly.asa_s == pytest.approx(c.asa_s, rel=1e-4)

    @pytest.mark.parametrize(("per_min", "patience_s"), [(5.7, 120.0), (6.6, 60.0), (9.0, 300.0)])
    def test_erlang_a_identities(self, per_min: float, patience_s: float) -> None:
        """Erlang A's tagged-contact quantities agree with the chain's own identities:
        abandonment = theta E[queue] / lambda, occupancy = answered load / agents,
        SL(0) = P(no wait), SL(large t) = P(answered); overload stays finite."""
        lam, theta = per_min / 60, 1 / patience_s
        f = erlang_a_figures(AGENTS, lam, HANDLE_S, patience_s, THRESHOLD_S)
        assert f.p_abandon == pytest.approx(theta * f.mean_queue / lam, rel=1e-9)
        assert f.occupancy == pytest.approx(lam * (1 - f.p_abandon) * HANDLE_S / AGENTS, rel=1e-9)
        zero = erlang_a_figures(AGENTS, lam, HANDLE_S, patience_s, 0.0)
        assert zero.service_level == pytest.approx(1 - f.p_wait, rel=1e-9)
        late = erlang_a_figures(AGENTS, lam, HANDLE_S, patience_s, 60 * patience_s)
        assert late.service_level == pytest.approx(1 - f.p_abandon, rel=1e-7)
        assert 0 < f.p_abandon < f.p_wait < 1 and f.asa_s > 0

    def test_control_helpers(self) -> None:
        """The fast server follows Lindley's recursion (abandoning contacts bring no
        work), the infinite-server count is the contacts still in service, and the
        Poisson excess matches a direct sum."""
        waits, served = fast_server(np.array([0.0, 1, 2]), np.array([2.0, 2, 2]))
        assert waits.tolist() == [0, 1, 2] and served.all()
        waits, served = fast_server(np.array([0.0, 1, 2]), np.array([2.0, 2, 2]),
                                    np.array([math.inf, 0.5, math.inf]))
        assert waits.tolist() == [0, 1, 0] and served.tolist() == [True, False, True]
        counts = infinite_server_counts(np.array([0.0, 1, 2]), np.array([1.5, 5, 0.5]))
        assert counts.tolist() == [0, 1, 1]
        from scipy.stats import poisson

        p, excess = poisson_excess(8.0, 10)
        k = np.arange(0, 200)
        assert p == pytest.approx(float(poisson.pmf(k, 8.0)[k >= 10].sum()))
        assert excess == pytest.approx(float((poisson.pmf(k, 8.0) * np.maximum(k - 9, 0)).sum()))

    def test_controlled_mean(self) -> None:
        """The regression estimate removes the part of the noise the controls explain."""
        rng = np.random.default_rng(0)
        runs = 40
        c = rng.normal(size=(runs, 2)) * [3.0, 1.0] + [10.0, -2.0]
        y = 5.0 + 2.0 * (c[:, 0] - 10.0) - 1.0 * (c[:, 1] + 2.0) + rng.normal(0, 0.01, runs)
        est, se = controlled_mean(y, c, np.array([10.0, -2.0]))
        assert abs(est - 5.0) < 5 * se and se < 0.01
        assert abs(y.mean() - 5.0) > 10 * se  # the raw mean is far noisier


def replicate(per_min: float, runs: int, hours: float,
              patience_min: float | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``runs`` seeded runs of the pure baseline on M/M/12(+M): per run the
    simulated (SL, ASA, abandonment, occupancy), the control statistics, and the
    controls' exact means. The runs are independent: a worker process per core."""
    scenario = erlang_scenario(agents=AGENTS, arrivals_per_min=per_min,
                               handle_min=HANDLE_S / 60, patience_min=patience_min,
                               horizon_s=hours * 3600)
    patience_s = math.inf if patience_min is None else patience_min * 60
    got = on_every_core(one_run, [(scenario, seed, per_min, patience_s) for seed in range(runs)])
    ys, cs, means = zip(*got, strict=True)
    return np.asarray(ys), np.asarray(cs), means[-1]


def one_run(scenario: Scenario, seed: int, per_min: float,
            patience_s: float) -> tuple[tuple[float, ...], np.ndarray, np.ndarray]:
    """One seed of :func:`replicate`: (SL, ASA, abandonment, occupancy), the control
    statistics and their exact means."""
    row = simulate(scenario, ["baseline"], seed=seed, switch="pure", oracle=False,
                   ceiling=False)["policies"][0]
    y = (row["service_level"], row["asa_s"], row["abandon_rate"], row["occupancy_mean"])
    wl = Workload.draw(scenario, seed)
    measured = (wl.arrival_s >= scenario.warmup_s) & (wl.arrival_s < scenario.horizon_s)
    controls = queue_controls(wl.arrival_s, wl.handle_s, wl.patience_s, measured,
                              agents=AGENTS, arrival_rate=per_min / 60,
                              handle_mean_s=HANDLE_S, patience_mean_s=patience_s,
                              threshold_s=THRESHOLD_S)
    return y, controls.values, controls.means


def check(name: str, y: np.ndarray, controls: np.ndarray, means: np.ndarray, ref: float,
          rel_tol: float) -> dict[str, Any]:
    """Controlled estimate within ``rel_tol`` of theory, and the raw mean within 4.5 of
    its standard errors (plus 0.5 % for the start from an empty center)."""
    est, se = controlled_mean(y, controls, means)
    raw, raw_se = float(y.mean()), float(y.std(ddof=1) / math.sqrt(y.size))
    print(f"{name:>14}: theory {ref:.5f}  controlled {est:.5f} ({est / ref - 1:+.2%}, "
          f"se {se / ref:.2%})  raw {raw:.5f} ({raw / ref - 1:+.2%}, se {raw_se / ref:.2%})")
    assert abs(est / ref - 1) < rel_tol, name
    assert abs(raw - ref) < 4.5 * raw_se + 0.005 * ref, name
    return {"theory": ref, "controlled": est, "se": se, "raw": raw, "raw_se": raw_se}


def check_controls(controls: np.ndarray, means: np.ndarray) -> None:
    """The controls themselves average to their known means (else the estimate would
    inherit their bias)."""
    se = controls.std(axis=0, ddof=1) / math.sqrt(controls.shape[0])
    assert np.all(np.abs(controls.mean(axis=0) - means) < 4.5 * se + 0.01 * np.abs(means))


class TestErlangC:
    @pytest.mark.parametrize(
        ("load", "per_min", "runs", "hours"),
        [(0.70, 4.2, 40, 200.0), (0.85, 5.1, 30, 120.0), (0.95, 5.7, 30, 120.0)],
    )
    def test_baseline_matches_erlang_c(self, load: float, per_min: float, runs: int,
                                       hours: float) -> None:
        """One queue, exponential times, no abandonment, longest-idle / first-come:
        service level at 20 s and ASA within 2 % of Erlang C, occupancy within 1 %."""
        theory = erlang_c_figures(AGENTS, per_min / 60, HANDLE_S, THRESHOLD_S)
        assert theory.occupancy == pytest.approx(load)
        y, c, means = replicate(per_min, runs, hours, None)
        check_controls(c, means)
        assert np.all(y[:, 2] == 0)
        check(f"SL {load:.0%}", y[:, 0], c, means, theory.service_level, 0.02)
        check(f"ASA {load:.0%}", y[:, 1], c, means, theory.asa_s, 0.02)
        assert y[:, 3].mean() == pytest.approx(theory.occupancy, rel=0.01)


class TestErlangA:
    @pytest.mark.parametrize(("per_min", "runs", "hours"), [(5.7, 30, 60.0), (6.6, 30, 60.0)])
    def test_baseline_matches_erlang_a(self, per_min: float, runs: int, hours: float) -> None:
        """Exponential patience (mean 2 min) at 95 % and 110 % offered load:
        service level within 2 %, ASA and abandonment within 3 % of Erlang A,
        occupancy within 1 %."""
        theory = erlang_a_figures(AGENTS, per_min / 60, HANDLE_S, 120.0, THRESHOLD_S)
        y, c, means = replicate(per_min, runs, hours, 2.0)
        check_controls(c, means)
        check(f"SL {per_min}/min", y[:, 0], c, means, theory.service_level, 0.02)
        check(f"ASA {per_min}/min", y[:, 1], c, means, theory.asa_s, 0.03)
        check(f"aband {per_min}/min", y[:, 2], c, means, theory.p_abandon, 0.03)
        assert y[:, 3].mean() == pytest.approx(theory.occupancy, rel=0.01)


class TestServiceAgreesWithPure:
    @pytest.mark.parametrize("patience_min", [None, 2.0])
    def test_same_figures_on_the_same_seed(self, patience_min: float | None) -> None:
        """The baseline driven through the real service gives exactly the pure switch's
        figures on the same seed (95 % load, about 7k contacts)."""
        s = erlang_scenario(arrivals_per_min=5.7, patience_min=patience_min,
                            horizon_s=20 * 3600)
        rows = [simulate(s, ["baseline"], seed=9, switch=kind, oracle=False,
                         ceiling=False)["policies"][0] for kind in ("service", "pure")]
        for row in rows:
            row.pop("run_time_s")
        assert rows[0] == rows[1]
        assert rows[0]["contacts"] > 6000 and rows[0]["asa_s"] > 5
