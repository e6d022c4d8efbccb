"""Shared benchmark helpers: ``run_now`` (from the service) and percentiles from
pytest-benchmark's raw timings."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

import numpy as np

from pairline.service import run_now

__all__ = ["percentiles_us", "run_now", "serving_process"]


def percentiles_us(benchmark: Any) -> dict[str, float]:
    """p50/p90/p99 of the rounds in microseconds, stored in extra_info too (nan when
    timing is off, as under ``--benchmark-disable``)."""
    if benchmark.stats is None:
        return {f"p{q}_us": float("nan") for q in (50, 90, 99)}
    data = np.asarray(benchmark.stats.stats.data) * 1e6
    out = {f"p{q}_us": round(float(np.percentile(data, q)), 2) for q in (50, 90, 99)}
    benchmark.extra_info.update(out)
    return out


@contextmanager
def serving_process(cfg: Path, addr: str) -> Iterator[grpc.Channel]:
    """``pairline serve --config cfg`` in a process of its own, once health says
    SERVING; yields a channel to it, and stops the process after."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "pairline.cli", "serve", "--config", str(cfg), "--listen", addr],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env={**os.environ},
    )
    try:
        with grpc.insecure_channel(addr) as ch:
            health = health_pb2_grpc.HealthStub(ch)
            deadline = time.monotonic() + 60
            while True:
                try:
                    if health.Check(health_pb2.HealthCheckRequest(), timeout=1).status == 1:
                        break
                except grpc.RpcError:
                    pass
                if time.monotonic() > deadline:
                    raise RuntimeError("server did not become SERVING")
                time.sleep(0.1)
            yield ch
    finally:
        proc.terminate()
        proc.wait(20)
