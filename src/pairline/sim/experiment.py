"""The pairing policies compared on the default scenario over several seeds.

``python -m pairline.sim.experiment --seeds 5 [--json FILE] [--plot FILE.png]
[--sweep]`` runs :func:`~pairline.sim.run.simulate` (every policy on the same
workload, with the unfair oracle and the fair ceiling) once per seed and prints,
per policy, the mean over seeds and a 95 % t-interval across seeds of:

- ``exp.gain``: the relative gain over the baseline in expected outcome (the true
  probabilities of the pairs made; the drawn outcomes' gain is noisier);
- ``ceil.share``: the share of the fair ceiling's gain captured;
- ``dSL``: service level minus the baseline's (percentage points);
- ``spread`` and ``dspread``: agent occupancy max - min, and minus the baseline's;
- ``weak/strong``: mean occupancy of the weakest and strongest quarter of agents;
- ``p99 q``: the 99th percentile of time in queue (abandoned contacts included).

``--sweep`` adds priced's one knob, the worth of idle time
(:data:`pairline.pairing.IDLE_WORTH`), swept on the first seed: 0 leaves every
price at 0, which is greedy on the predictions.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
from scipy import stats

from pairline import pairing
from pairline.sim.run import simulate
from pairline.sim.scenario import PolicySpec, Scenario, default_scenario

POLICIES: tuple[str | PolicySpec, ...] = (
    "baseline", "greedy", "diagonal", "priced", PolicySpec("priced", wait_weight=0.2))
SWEEP = (0.0, 0.01, 0.02, 0.04, 0.08, 0.16)


def run(seeds: Iterable[int], scenario: Scenario | None = None,
        policies: Sequence[str | PolicySpec] = POLICIES) -> list[dict[str, Any]]:
    """One :func:`simulate` result per seed."""
    return [simulate(scenario or default_scenario(), policies, seed=s) for s in seeds]


def _interval(x: np.ndarray) -> tuple[float, float, float]:
    """Mean and 95 % t-interval across seeds (the mean alone with one seed)."""
    m = float(x.mean())
    if x.size < 2:
        return m, math.nan, math.nan
    half = float(stats.t.ppf(0.975, x.size - 1) * x.std(ddof=1) / math.sqrt(x.size))
    return m, m - half, m + half


def summary(results: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per policy (and the unfair oracle), the figures of the module docstring."""
    names = [r["policy"] for r in results[0]["policies"]] + ["unfair_oracle"]
    out = []
    for name in names:
        rows, bases = [], []
        for res in results:
            by = {r["policy"]: r for r in res["policies"]}
            rows.append(by.get(name) or res["unfair_oracle"])
            bases.append(by["baseline"])

        def col(key: str, rows: list[dict[str, Any]] = rows) -> np.ndarray:
            return np.array([r[key] for r in rows], dtype=float)

        base = {k: np.array([b[k] for b in bases], dtype=float)
                for k in ("service_level", "occupancy_spread")}
        gain, lo, hi = _interval(col("expected_gain_vs_baseline"))
        out.append({
            "policy": name,
            "seeds": len(results),
            "expected_gain": gain, "expected_gain_ci": [lo, hi],
            "gain": float(col("gain_vs_baseline").mean()),
            "ceiling_share": float(col("ceiling_share").mean()),
            "service_level": float(col("service_level").mean()),
            "service_level_delta": float((col("service_level") - base["service_level"]).mean()),
            "occupancy_spread": float(col("occupancy_spread").mean()),
            "occupancy_spread_delta": float(
                (col("occupancy_spread") - base["occupancy_spread"]).max()),
            "occupancy_weakest_quarter": float(col("occupancy_weakest_quarter").mean()),
            "occupancy_strongest_quarter": float(col("occupancy_strongest_quarter").mean()),
            "queue_time_p99_s": float(col("queue_time_p99_s").mean()),
            "abandon_rate": float(col("abandon_rate").mean()),
        })
    return out


def sweep(seed: int, values: Iterable[float] = SWEEP,
          scenario: Scenario | None = None) -> list[dict[str, Any]]:
    """priced with each idle worth in ``values`` (per cycle), against the baseline."""
    default = pairing.QueuePairing.idle_worth.__defaults__
    out = []
    try:
        for w in values:
            pairing.QueuePairing.idle_worth.__defaults__ = (w,)
            res = simulate(scenario or default_scenario(), ["baseline", "priced"], seed=seed,
                           oracle=False)
            base, row = res["policies"]
            out.append({"idle_worth": w,
                        "expected_gain": row["expected_gain_vs_baseline"],
                        "ceiling_share": row["ceiling_share"],
                        "service_level_delta": row["service_level"] - base["service_level"],
                        "occupancy_spread": row["occupancy_spread"],
                        "baseline_occupancy_spread": base["occupancy_spread"]})
    finally:
        pairing.QueuePairing.idle_worth.__defaults__ = default
    return out


def render(rows: Sequence[dict[str, Any]]) -> str:
    """The summary as a Markdown table."""
    lines = ["| policy | exp.gain [95% CI over seeds] | drawn gain | ceil.share | SL | dSL (pt) "
             "| spread | max dspread (pt) | occ weak/strong | p99 q (s) |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        lo, hi = r["expected_gain_ci"]
        ci = f"[{lo:+.1%}, {hi:+.1%}]" if not math.isnan(lo) else ""
        lines.append(
            f"| {r['policy']} | {r['expected_gain']:+.1%} {ci} | {r['gain']:+.1%} "
            f"| {r['ceiling_share']:.0%} | {r['service_level']:.1%} "
            f"| {100 * r['service_level_delta']:+.1f} | {r['occupancy_spread']:.1%} "
            f"| {100 * r['occupancy_spread_delta']:+.1f} "
            f"| {r['occupancy_weakest_quarter']:.1%}/{r['occupancy_strongest_quarter']:.1%} "
            f"| {r['queue_time_p99_s']:.0f} |")
    return "\n".join(lines)


def plot(rows: Sequence[dict[str, Any]], sweep_rows: Sequence[dict[str, Any]], path: str) -> None:
    """Gain against occupancy spread per policy, and priced's idle-worth sweep."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2 if sweep_rows else 1, figsize=(12 if sweep_rows else 6, 4.2),
                             squeeze=False)
    ax = axes[0, 0]
    for r in rows:
        lo, hi = r["expected_gain_ci"]
        err = None if math.isnan(lo) else [[r["expected_gain"] - lo], [hi - r["expected_gain"]]]
        ax.errorbar(r["occupancy_spread"], r["expected_gain"], yerr=err, fmt="o", capsize=3)
        ax.annotate(r["policy"], (r["occupancy_spread"], r["expected_gain"]),
                    textcoords="offset points", xytext=(5, 5), fontsize=8)
    ax.set_xlabel("agent occupancy spread (max - min)")
    ax.set_ylabel("expected outcome gain over baseline")
    ax.set_title(f"default scenario, {rows[0]['seeds']} seed(s), 95% CI")
    if sweep_rows:
        ax2 = axes[0, 1]
        w = [s["idle_worth"] for s in sweep_rows]
        ax2.plot(w, [s["expected_gain"] for s in sweep_rows], "o-", label="expected gain")
        ax2.plot(w, [s["occupancy_spread"] for s in sweep_rows], "s--",
                 label="occupancy spread")
        ax2.set_xscale("symlog", linthresh=0.01)
        ax2.set_xlabel("priced: idle worth per cycle (0 = greedy)")
        ax2.legend()
        ax2.set_title("priced's one knob (first seed)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m pairline.sim.experiment", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--hours", type=float, default=48.0)
    ap.add_argument("--sweep", action="store_true", help="sweep priced's idle worth too")
    ap.add_argument("--json", metavar="FILE")
    ap.add_argument("--plot", metavar="FILE.png")
    args = ap.parse_args(argv)
    from pairline.logs import configure

    configure("warning")
    scenario = default_scenario(horizon_s=args.hours * 3600)
    results = run(range(args.seeds), scenario)
    rows = summary(results)
    sweep_rows = sweep(0, scenario=scenario) if args.sweep else []
    print(render(rows))
    ceil = [r["fair_ceiling"] for r in results]
    print(f"\nfair ceiling gain over random equal shares: "
          f"{np.mean([c['gain'] / c['random_rate'] for c in ceil]):+.1%} (mean of seeds)")
    for s in sweep_rows:
        print(f"idle worth {s['idle_worth']:g}: exp.gain {s['expected_gain']:+.1%}, "
              f"ceil.share {s['ceiling_share']:.0%}, dSL {100 * s['service_level_delta']:+.1f} pt, "
              f"spread {s['occupancy_spread']:.1%} (baseline {s['baseline_occupancy_spread']:.1%})")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"summary": rows, "sweep": sweep_rows, "results": results}, f, indent=1)
    if args.plot:
        plot(rows, sweep_rows, args.plot)
    return 0


if __name__ == "__main__":
    sys.exit(main())
