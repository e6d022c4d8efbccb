"""What the default scenario must show (issue 4): the best pairing policy gains
outcome over the baseline with its 95 % interval above zero, at the baseline's
service level (within 1 percentage point) and agent fairness (occupancy spread
within 5 points), and greedy overloads the strongest agents.

One full default run (40 agents, 85 % occupancy, 48 h, ~18.7k contacts, seed 0),
every policy on the same workload, in process. ``python -m pairline.sim.experiment``
gives the same figures over several seeds.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from pairline.sim.run import simulate
from pairline.sim.scenario import PolicySpec, default_scenario

PRICED_FIFO = PolicySpec("priced", wait_weight=0.2)


@pytest.fixture(scope="module")
def result() -> dict[str, Any]:
    return simulate(default_scenario(), ["baseline", "greedy", "diagonal", "priced", PRICED_FIFO],
                    seed=0, oracle=False)


def rows(result: dict[str, Any]) -> dict[str, dict[str, Any]]:
    by = {r["policy"]: r for r in result["policies"]}
    for r in result["policies"]:
        # The figures, for `pytest -rP`.
        print(f"{r['policy']:26s} gain {r['gain_vs_baseline']:+.2%} "
              f"[{r['gain_ci_low']:+.2%}, {r['gain_ci_high']:+.2%}] "
              f"expected {r['expected_gain_vs_baseline']:+.2%} "
              f"ceiling share {r['ceiling_share']:.0%} SL {r['service_level']:.2%} "
              f"spread {r['occupancy_spread']:.2%} weak/strong "
              f"{r['occupancy_weakest_quarter']:.1%}/{r['occupancy_strongest_quarter']:.1%} "
              f"p99 queue {r['queue_time_p99_s']:.0f} s")
    return by


class TestDefaultScenario:
    def test_priced_gains_at_equal_service_and_fairness(self, result: dict[str, Any]) -> None:
        """priced, with waiting credited (wait_weight 0.2): outcome gain with its 95 %
        interval above 0, service level within 1 point of the baseline's, occupancy
        spread within 5 points, tail waits no longer than the baseline's + 10 %."""
        by = rows(result)
        base, p = by["baseline"], by[PRICED_FIFO.key]
        assert p["gain_ci_low"] > 0
        assert p["expected_gain_vs_baseline"] > 0.05
        assert abs(p["service_level"] - base["service_level"]) <= 0.01
        assert p["occupancy_spread"] <= base["occupancy_spread"] + 0.05
        assert p["queue_time_p99_s"] <= 1.1 * base["queue_time_p99_s"]
        assert p["abandon_rate"] <= base["abandon_rate"] + 0.002

    def test_priced_beats_diagonal(self, result: dict[str, Any]) -> None:
        """priced (both settings) captures a larger share of the fair ceiling's gain
        than diagonal, with a smaller occupancy spread; with no waiting credit it
        raises service level (contact surplus not first-come) and never lowers it."""
        by = rows(result)
        base, diag = by["baseline"], by["diagonal"]
        for key in ("priced", PRICED_FIFO.key):
            p = by[key]
            assert p["gain_ci_low"] > 0
            assert p["ceiling_share"] > diag["ceiling_share"] + 0.15
            assert p["expected_gain_vs_baseline"] > 1.5 * diag["expected_gain_vs_baseline"]
            assert p["occupancy_spread"] < diag["occupancy_spread"]
            assert p["occupancy_spread"] <= base["occupancy_spread"] + 0.05
            assert p["service_level"] >= base["service_level"] - 0.01

    def test_greedy_overloads_the_strongest_agents(self, result: dict[str, Any]) -> None:
        """greedy gains too, but by working the strongest quarter of agents far harder
        than the weakest: its occupancy spread is far beyond the baseline's."""
        by = rows(result)
        base, greedy = by["baseline"], by["greedy"]
        assert greedy["gain_ci_low"] > 0
        assert (greedy["occupancy_strongest_quarter"]
                > greedy["occupancy_weakest_quarter"] + 0.2)
        assert greedy["occupancy_spread"] > base["occupancy_spread"] + 0.2
        assert (abs(base["occupancy_strongest_quarter"] - base["occupancy_weakest_quarter"])
                < 0.02)


class TestGainInterval:
    def test_covers_the_true_ratio_of_independent_samples(self) -> None:
        """For two independent binomial samples the interval of rate / base - 1 covers
        the true relative gain in about 95 % of 2000 seeded draws, and is centred on
        the observed gain."""
        from pairline.sim.run import gain_interval

        rng = np.random.default_rng(4)
        n, base_n, p, q = 5000, 6000, 0.3, 0.27
        covered = 0
        for _ in range(2000):
            rate, base = rng.binomial(n, p) / n, rng.binomial(base_n, q) / base_n
            lo, hi = gain_interval(rate, n, base, base_n)
            assert lo is not None and hi is not None
            assert (lo + hi) / 2 == pytest.approx(rate / base - 1)
            covered += lo <= p / q - 1 <= hi
        assert 0.93 <= covered / 2000 <= 0.97
        assert gain_interval(None, n, base, base_n) == (None, None)
        assert gain_interval(0.3, n, 0.0, base_n) == (None, None)
