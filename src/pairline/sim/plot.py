"""A picture of a simulation result for people (``pairline simulate --plot FILE.png``)."""

from __future__ import annotations

from typing import Any


def plot_result(result: dict[str, Any], path: str) -> None:
    """Outcome against the references, service level, and per-agent occupancy."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [*result["policies"]]
    if result.get("unfair_oracle"):
        rows.append(result["unfair_oracle"])
    names = [r["policy"] for r in rows]
    fig, (ax1, ax2, ax3) = plt.subplots(1, 3, figsize=(15, 4.2))
    ax1.bar(names, [r["expected_outcome_rate"] for r in rows], color="tab:blue")
    ax1.axhline(result["fair_ceiling_outcome_rate"], color="tab:green", ls="--",
                label="fair ceiling")
    if "fair_random_outcome_rate" in result:
        ax1.axhline(result["fair_random_outcome_rate"], color="grey", ls=":",
                    label="random, equal shares")
    low = min([r["expected_outcome_rate"] for r in rows]
              + [result.get("fair_random_outcome_rate", 1.0)])
    ax1.set_ylim(bottom=0.9 * low)  # the differences matter, not the distance from 0
    ax1.set_ylabel("expected outcome rate (ground truth)")
    ax1.set_title("outcome")
    ax1.legend(fontsize=8)
    ax1.tick_params(axis="x", labelrotation=30)
    xs = range(len(rows))
    ax2.bar([x - 0.2 for x in xs], [100 * r["service_level"] for r in rows], 0.4,
            label="service level %")
    ax2.bar([x + 0.2 for x in xs], [100 * r["abandon_rate"] for r in rows], 0.4,
            label="abandoned %")
    ax2.set_xticks(list(xs), names, rotation=30)
    ax2.set_title(f"service (answered within {result['sl_threshold_s']:.0f} s)")
    ax2.legend(fontsize=8)
    for r in rows:
        occ = sorted(r.get("agent_occupancy") or [])
        ax3.plot(range(len(occ)), [100 * o for o in occ], label=r["policy"])
    ax3.set_xlabel("agents, least to most occupied")
    ax3.set_ylabel("occupancy %")
    ax3.set_title("fairness: spread of work across agents")
    ax3.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
