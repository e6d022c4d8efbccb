"""Shared benchmark helpers: run a non-suspending coroutine without an event
loop, and percentiles from pytest-benchmark's raw timings."""

from __future__ import annotations

from collections.abc import Coroutine
from typing import Any, TypeVar

import numpy as np

T = TypeVar("T")


def run_now(coro: Coroutine[Any, Any, T]) -> T:
    """Drive a coroutine that never suspends (the embedded store's path) to its
    result, with no event-loop overhead in the measurement."""
    try:
        coro.send(None)
    except StopIteration as done:
        return done.value  # type: ignore[no-any-return]
    coro.close()
    raise RuntimeError("the coroutine suspended: it is not on the embedded path")


def percentiles_us(benchmark: Any) -> dict[str, float]:
    """p50/p90/p99 of the rounds in microseconds, stored in extra_info too."""
    data = np.asarray(benchmark.stats.stats.data) * 1e6
    out = {f"p{q}_us": round(float(np.percentile(data, q)), 2) for q in (50, 90, 99)}
    benchmark.extra_info.update(out)
    return out
