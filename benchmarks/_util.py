"""Shared benchmark helpers: ``run_now`` (from the service) and percentiles from
pytest-benchmark's raw timings."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import grpc
import numpy as np
from grpc_health.v1 import health_pb2, health_pb2_grpc

from pairline.service import run_now

__all__ = ["command_serving", "floor_process", "percentiles_us", "run_now", "server_process",
           "serving_process"]


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
    with server_process(cfg, addr) as (ch, _pid):
        yield ch


@contextmanager
def server_process(cfg: Path, addr: str, launch: Sequence[str] = (),
                   timeout_s: float = 120) -> Iterator[tuple[grpc.Channel, int]]:
    """As :func:`serving_process`, yielding (channel, pid); ``launch`` replaces
    ``python -m pairline.cli`` (say, with ``taskset -c 0`` in front)."""
    launch = list(launch) or [sys.executable, "-m", "pairline.cli"]
    with command_serving([*launch, "serve", "--config", str(cfg), "--listen", addr], addr,
                         timeout_s) as out:
        yield out


@contextmanager
def floor_process(addr: str) -> Iterator[grpc.Channel]:
    """``floor_server.py`` (a bare grpc.aio server on pairline's protos that does
    nothing) in a process of its own, like :func:`serving_process`."""
    with command_serving([sys.executable, str(Path(__file__).parent / "floor_server.py"), addr],
                         addr) as (ch, _pid):
        yield ch


@contextmanager
def command_serving(argv: Sequence[str], addr: str,
                    timeout_s: float = 120) -> Iterator[tuple[grpc.Channel, int]]:
    """Run ``argv`` until health at ``addr`` says SERVING; yield (channel, pid), stop
    the process after."""
    proc = subprocess.Popen(
        list(argv), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env={**os.environ},
    )
    try:
        with grpc.insecure_channel(addr) as ch:
            health = health_pb2_grpc.HealthStub(ch)
            deadline = time.monotonic() + timeout_s
            while True:
                try:
                    if health.Check(health_pb2.HealthCheckRequest(), timeout=1).status == 1:
                        break
                except grpc.RpcError:
                    pass
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise RuntimeError(f"{' '.join(argv)} did not become SERVING")
                time.sleep(0.1)
            yield ch, proc.pid
    finally:
        proc.terminate()
        proc.wait(20)
