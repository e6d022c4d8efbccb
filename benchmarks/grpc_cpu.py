"""Server CPU per call of the gRPC paths (Health/Check, RouteContact unary, over
Connect, over ConnectBatch), the server pinned to one core and this load client
to the other.

    .venv/bin/python benchmarks/grpc_cpu.py [--calls 8000] [--rounds 2] [--threads]
        [--profile out.txt|out.svg|out.perf.data --profile-phase unary]

Wall-clock throughput on a shared 2-core machine is noisy; the server's CPU time
per call (utime + stime of all its threads from /proc/<pid>/stat over a phase,
divided by the calls) is much less so. With the server pinned to one core,
``calls/s`` is what one core serves while the server is the bottleneck (``server
busy`` near 100%). Context switches and minor page faults per call are shown
because on this VM they are a large part of the kernel time. Same set-up as
test_grpc_bench.py: 1,000 agents x 64 dims, greedy, a model, 5,000 customer
profiles. ``PAIRLINE_LAUNCH`` overrides the server command (A/B runs, e.g.
``env PYTHONPATH=/other/src python -m pairline.cli``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parent.parent / "tests"))
import test_grpc_bench as gb
from _util import server_process
from support import free_port

from pairline._proto.pairline.v1 import router_pb2_grpc as rpb_grpc

TICK = os.sysconf("SC_CLK_TCK")


def _stat(path: str) -> tuple[float, float, int]:
    """(user s, system s, minor faults) from a /proc .../stat file."""
    f = Path(path).read_text().rsplit(")", 1)[1].split()
    return int(f[11]) / TICK, int(f[12]) / TICK, int(f[7])


def _switches(status: str) -> int:
    return sum(int(line.split()[1]) for line in Path(status).read_text().splitlines()
               if "ctxt_switches" in line)


def sample(pid: int) -> dict[str, tuple[float, float, int, int]]:
    """Per thread (``tid name``) and for the whole process (``*``): user s,
    system s, minor faults, context switches."""
    out = {}
    total = [0.0, 0.0, 0, 0]
    for task in os.listdir(f"/proc/{pid}/task"):
        base = f"/proc/{pid}/task/{task}"
        try:
            user, system, faults = _stat(f"{base}/stat")
            sw = _switches(f"{base}/status")
            comm = Path(f"{base}/comm").read_text().strip()
        except (FileNotFoundError, ProcessLookupError):
            continue
        out[f"{task} {comm}"] = (user, system, faults, sw)
        total[0] += user
        total[1] += system
        total[3] += sw
    user, system, faults = _stat(f"/proc/{pid}/stat")  # the process's own counts
    out["*"] = (user, system, faults, total[3])
    return out


async def health_calls(address: str, total: int, concurrency: int) -> int:
    async with grpc.aio.insecure_channel(address) as ch:
        check = health_pb2_grpc.HealthStub(ch).Check
        req = health_pb2.HealthCheckRequest()
        left = iter(range(total))

        async def worker() -> None:
            for _ in left:
                await check(req)

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return total


async def unary_calls(address: str, total: int, concurrency: int) -> int:
    async with grpc.aio.insecure_channel(address) as ch:
        route = rpb_grpc.RouterStub(ch).RouteContact
        reqs = iter([gb._route_req() for _ in range(total)])

        async def worker() -> None:
            for req in reqs:
                d = await route(req, metadata=gb.META)
                assert d.agent_id

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return total


def phase(name: str, pid: int, run: Callable[[], int], per_thread: bool) -> None:
    s0, t0, p0 = sample(pid), time.perf_counter(), time.process_time()
    n = run()
    t1, s1, p1 = time.perf_counter(), sample(pid), time.process_time()
    a, b = s0["*"], s1["*"]
    user, system = (b[0] - a[0]) / n * 1e6, (b[1] - a[1]) / n * 1e6
    print(f"{name:8s} server CPU {user + system:4.0f} us/call (user {user:3.0f} sys {system:3.0f})"
          f" {n / (t1 - t0):6.0f} calls/s  {(b[3] - a[3]) / n:4.1f} switches/call "
          f"{(b[2] - a[2]) / n:4.2f} faults/call  (n={n}, server busy "
          f"{100 * (b[0] + b[1] - a[0] - a[1]) / (t1 - t0):3.0f}%; client CPU "
          f"{(p1 - p0) / n * 1e6:3.0f} us/call)", flush=True)
    if per_thread:
        for key, after in s1.items():
            before = s0.get(key, (0.0, 0.0, 0, 0))
            cpu = after[0] + after[1] - before[0] - before[1]
            if key != "*" and (cpu > 0 or after[3] > before[3]):
                print(f"    {key:24s} {cpu / n * 1e6:6.1f} us/call "
                      f"{(after[3] - before[3]) / n:5.2f} switches/call")


def serving(cfg: Path, addr: str) -> contextlib.AbstractContextManager[
        tuple[grpc.Channel, int]]:
    """``pairline serve`` in its own process (``PAIRLINE_LAUNCH`` replaces
    ``python -m pairline.cli``), once SERVING: (channel, pid)."""
    launch = os.environ.get("PAIRLINE_LAUNCH", f"{sys.executable} -m pairline.cli").split()
    return server_process(cfg, addr, launch)


def profiler(out: str, pid: int) -> subprocess.Popen[bytes]:
    """py-spy (``*.txt``: raw stacks; ``*.svg``: flame graph; SPY_NATIVE=1 for C
    frames, which stops the process for each sample) or perf (``*.perf.data``)."""
    log = open(out + ".log", "w")  # noqa: SIM115
    if out.endswith(".perf.data"):
        cmd = ["perf", "record", "-F", "999", "-g", "-p", str(pid), "-o", out]
    else:
        native = bool(os.environ.get("SPY_NATIVE"))
        cmd = [str(Path(sys.executable).parent / "py-spy"), "record", "-p", str(pid), "-o", out,
               "-r", "500", *(["--native"] if native else ["--nonblocking"]),
               *(["-f", "raw"] if out.endswith(".txt") else [])]
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    time.sleep(1.0)
    return proc


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--calls", type=int, default=8000, help="unary calls per phase "
                    "(twice as many events on the streams)")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--only", default="health,unary,connect,batch")
    ap.add_argument("--threads", action="store_true", help="per-thread CPU and switches")
    ap.add_argument("--profile", default="", help="profile the server into this file")
    ap.add_argument("--profile-phase", default="unary")
    ap.add_argument("--no-pin", action="store_true", help="leave both on both cores")
    args = ap.parse_args()
    only = set(args.only.split(","))
    cfg = Path(tempfile.mkdtemp()) / "pairline.toml"
    cfg.write_text(
        'log_level = "warning"\n[[tenants]]\nname = "bench"\n'
        f'api_keys = ["{gb.KEY}"]\nsecret = "bench-secret-0123456789"\n'
        f'customer_dim = {gb.DIM}\nagent_dim = {gb.DIM}\npolicy = "greedy"\n'
        "max_agents = 20000\noffer_timeout_s = 3600.0\n"
    )
    addr = f"127.0.0.1:{free_port()}"
    if not args.no_pin:
        os.sched_setaffinity(0, {0})
    print(f"load average {Path('/proc/loadavg').read_text().split()[:3]}", flush=True)
    with serving(cfg, addr) as (ch, pid):
        if not args.no_pin:
            for task in os.listdir(f"/proc/{pid}/task"):
                os.sched_setaffinity(int(task), {1})
        gb._load(ch)
        n = args.calls
        streams, batch = 4, 32
        phases: dict[str, Callable[[], int]] = {
            "health": lambda: asyncio.run(health_calls(addr, n, 64)),
            "unary": lambda: asyncio.run(unary_calls(addr, n, 64)),
            # _stream_rate / _batch_rate return a rate; the events they send:
            "connect": lambda: (asyncio.run(gb._stream_rate(addr, 2 * n, streams, 128)),
                                2 * n // streams * streams)[1],
            "batch": lambda: (asyncio.run(gb._batch_rate(addr, 2 * n, 2, batch, 4)),
                              2 * n // 2 // batch * batch * 2)[1],
        }
        asyncio.run(unary_calls(addr, 500, 16))  # warm
        asyncio.run(health_calls(addr, 500, 16))
        for r in range(args.rounds):
            for name, run in phases.items():
                if name not in only:
                    continue
                prof = None
                if args.profile and name == args.profile_phase and r == args.rounds - 1:
                    prof = profiler(args.profile, pid)
                phase(name, pid, run, args.threads)
                if prof is not None:
                    prof.send_signal(2)
                    prof.wait(120)
    print(f"load average {Path('/proc/loadavg').read_text().split()[:3]}", flush=True)


if __name__ == "__main__":
    main()
