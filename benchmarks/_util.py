"""Shared benchmark helpers: ``run_now`` (from the service) and percentiles from
pytest-benchmark's raw timings."""

from __future__ import annotations

from typing import Any

import numpy as np

from pairline.service import run_now

__all__ = ["percentiles_us", "run_now"]


def percentiles_us(benchmark: Any) -> dict[str, float]:
    """p50/p90/p99 of the rounds in microseconds, stored in extra_info too (nan when
    timing is off, as under ``--benchmark-disable``)."""
    if benchmark.stats is None:
        return {f"p{q}_us": float("nan") for q in (50, 90, 99)}
    data = np.asarray(benchmark.stats.stats.data) * 1e6
    out = {f"p{q}_us": round(float(np.percentile(data, q)), 2) for q in (50, 90, 99)}
    benchmark.extra_info.update(out)
    return out
