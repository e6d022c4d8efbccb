"""Fault injection under steady load: real ``pairline serve`` replicas on one Redis
(started here), the load harness (:mod:`pairline.loadtest`, spread over the
replicas, failing over on UNAVAILABLE) driving them, and one fault injected in
the middle of the run. :func:`run_fault` returns the figures of issue #7 item 7
for it; :func:`table` prints them. ``python tests/faults.py`` runs all four and
prints the table (``make faults``); ``python tests/faults.py proxy ...`` is the
latency-injecting TCP proxy the slow-Redis fault puts between the replicas and
Redis (a process of its own, so it does not share the harness's event loop)."""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import numpy as np
from redis.exceptions import RedisError

sys.path.insert(0, str(Path(__file__).resolve().parent))

from support import RedisProcess, free_port
from test_server_lifecycle import Process, clean_env, serving

from pairline._proto.pairline.v1 import common_pb2 as cpb
from pairline._proto.pairline.v1 import insights_pb2 as ipb
from pairline._proto.pairline.v1 import insights_pb2_grpc as ipb_grpc
from pairline._proto.pairline.v1 import profiles_pb2 as ppb
from pairline._proto.pairline.v1 import profiles_pb2_grpc as ppb_grpc
from pairline._proto.pairline.v1 import router_pb2 as rpb
from pairline._proto.pairline.v1 import router_pb2_grpc as rpb_grpc
from pairline.loadtest import RACE_CODES, LoadOptions, run_loadtest
from pairline.model import dump_model
from pairline.stores.shared import _load

KEY = "acme-key-0123456789"
AUTH = (("authorization", f"Bearer {KEY}"),)
PREFIX = "f-"
FAULTS = ("redis-restart", "redis-slow", "replica-sigkill", "replica-sigterm")
OFFER_S = 2.0


# ------------------------------------------------------------------ the proxy
class LatencyProxy:
    """A TCP proxy that, while slowed, holds each chunk from upstream (Redis's
    answers) for a random 50..300 ms before passing it on, in order (a chunk is
    never sent before the one ahead of it). SIGUSR1 slows it, SIGUSR2 ends that."""

    def __init__(self, upstream_port: int, lo_s: float, hi_s: float, seed: int) -> None:
        self.upstream_port = upstream_port
        self.lo_s, self.hi_s = lo_s, hi_s
        self.slow = False
        self.rng = random.Random(seed)

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                    delayed: bool) -> None:
        loop = asyncio.get_running_loop()
        q: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

        async def send() -> None:
            while True:
                at, data = await q.get()
                if not data:
                    break
                if (wait := at - loop.time()) > 0:
                    await asyncio.sleep(wait)
                writer.write(data)
                await writer.drain()

        sender = asyncio.create_task(send())
        last = 0.0
        try:
            while data := await reader.read(65536):
                at = loop.time()
                if delayed and self.slow:
                    at += self.rng.uniform(self.lo_s, self.hi_s)
                last = max(last, at)
                q.put_nowait((last, data))
        except OSError:
            pass
        finally:
            q.put_nowait((last, b""))
            try:
                await sender
            except OSError:
                pass
            writer.close()

    async def _client(self, cr: asyncio.StreamReader, cw: asyncio.StreamWriter) -> None:
        try:
            ur, uw = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        except OSError:
            cw.close()
            return
        await asyncio.gather(self._pump(cr, uw, False), self._pump(ur, cw, True),
                             return_exceptions=True)

    async def serve(self, port: int) -> None:
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGUSR1, lambda: setattr(self, "slow", True))
        loop.add_signal_handler(signal.SIGUSR2, lambda: setattr(self, "slow", False))
        stop = asyncio.Event()
        loop.add_signal_handler(signal.SIGTERM, stop.set)
        server = await asyncio.start_server(self._client, "127.0.0.1", port)
        print("proxy ready", flush=True)
        async with server:
            await stop.wait()


class ProxyProcess:
    """:class:`LatencyProxy` in a process of its own on a free port."""

    def __init__(self, upstream_port: int, lo_ms: float = 50, hi_ms: float = 300) -> None:
        self.port = free_port()
        self.proc = subprocess.Popen(
            [sys.executable, __file__, "proxy", "--port", str(self.port),
             "--upstream", str(upstream_port), "--lo-ms", str(lo_ms), "--hi-ms", str(hi_ms)],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        assert self.proc.stdout is not None
        if self.proc.stdout.readline().strip() != "proxy ready":
            raise RuntimeError("the proxy did not start")

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def slow(self, on: bool) -> None:
        self.proc.send_signal(signal.SIGUSR1 if on else signal.SIGUSR2)

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


# ------------------------------------------------------------------ the setup
@dataclass(frozen=True)
class Plan:
    """One fault run: load for ``warm_s``, the fault for ``fault_s`` (for a killed
    replica: the kill at the start of it), then load for ``after_s`` more."""

    fault: str
    replicas: int = 3
    rate: float = 30.0  # contact arrivals per second
    agents: int = 30
    warm_s: float = 3.0
    fault_s: float = 4.0
    after_s: float = 5.0
    deadline_ms: float = 1000.0
    seed: int = 7

    @property
    def duration_s(self) -> float:
        return self.warm_s + self.fault_s + self.after_s


@dataclass
class Figures:
    fault: str
    load: str = ""  # what ran meanwhile
    calls: int = 0  # every call of the run
    fault_calls: int = 0  # answered while the fault lasted
    answered_share: float = 0.0  # OK (or an expected race) of the calls in the fault
    routing_ok_share: float = 0.0  # RouteContact OK of those in the fault
    p99_ms: float = 0.0  # RouteContact latency during the fault
    max_ms: float = 0.0
    degraded: int = 0  # RouteContact / AgentReady decisions in MODE_DEGRADED
    failovers: int = 0
    failed: dict[str, int] = field(default_factory=dict)  # non-race errors, whole run
    lost: int = 0
    double: int = 0
    monitor_violations: int = 0
    monitor_rounds: int = 0
    leftover: int = 0  # contacts or reservations left on the servers after cleanup
    recover_s: float = float("nan")  # fault end -> last degraded / failed / failed-over call
    paired_after: int = 0  # RouteContact decisions in MODE_PAIRED after recovery
    samples: list[str] = field(default_factory=list)
    report: dict[str, Any] = field(default_factory=dict)


def write_config(path: Path, outage_routing: bool) -> None:
    path.write_text("\n".join([
        "sweep_interval_s = 0.1",
        f"outage_routing = {str(outage_routing).lower()}",
        "grace_s = 5.0",
        'log_level = "warning"',
        "[[tenants]]",
        'name = "acme"',
        f'api_keys = ["{KEY}"]',
        'secret = "acme-secret-0123456789"',
        'policy = "greedy"',
        f"offer_timeout_s = {OFFER_S}",
        "wrap_up_s = 0.0",
        "customer_dim = 4",
        "agent_dim = 3",
        "",
    ]))


async def seed_profiles(address: str, agents: int, customers: int) -> None:
    """A model and profiles, so that decisions are PAIRED when nothing is wrong."""
    gen = np.random.default_rng(3)
    async with grpc.aio.insecure_channel(address) as ch:
        prof = ppb_grpc.ProfilesStub(ch)
        model = dump_model(version="v1", W=gen.normal(size=(4, 3)), wc=gen.normal(size=4),
                           wa=gen.normal(size=3), b=0.0)
        await prof.UploadModel(ppb.UploadModelRequest(model=model, activate=True),
                               metadata=AUTH, timeout=10)
        await prof.UpsertAgentProfiles(ppb.AgentProfileBatch(profiles=[
            ppb.AgentProfile(agent_id=f"{PREFIX}a{i}", vector=gen.normal(size=3).tolist(),
                             source_time_ms=1) for i in range(agents)]),
            metadata=AUTH, timeout=10)

        async def batches() -> Any:
            yield ppb.CustomerProfileBatch(profiles=[
                ppb.CustomerProfile(customer_key=f"+{i}", vector=gen.normal(size=4).tolist(),
                                    source_time_ms=1) for i in range(customers)])

        await prof.UpsertCustomerProfiles(batches(), metadata=AUTH, timeout=10)


class Monitor:
    """Reads every agent's snapshot from Redis, the authority, again and again (all
    of them in one MULTI/EXEC, so a contact moving between two agents is never seen
    on both): no agent over capacity on a channel, no contact held twice. While
    Redis is down there is nothing to read (the switch's ledger covers that time)."""

    def __init__(self, addresses: list[str], agents: int, redis_port: int) -> None:
        import redis.asyncio as aioredis

        self.channels = [grpc.aio.insecure_channel(a) for a in addresses]
        self.alive = list(range(len(addresses)))
        self.agents = agents
        self.r = aioredis.Redis(port=redis_port, socket_timeout=1.0,
                                socket_connect_timeout=0.5)
        self.rounds = 0
        self.violations: list[str] = []

    async def run(self, stop: asyncio.Event) -> None:
        keys = [f"pl:{{acme}}:ag:{PREFIX}a{a}" for a in range(self.agents)]
        while not stop.is_set():
            try:
                async with self.r.pipeline(transaction=True) as p:
                    for k in keys:
                        p.get(k)
                    raws = await p.execute()
            except (OSError, RedisError):  # Redis down: nothing to read
                await asyncio.sleep(0.1)
                continue
            held: dict[str, str] = {}
            for key, raw in zip(keys, raws, strict=True):
                snap = _load("a", (raw or b"").partition(b"|")[2])  # "<version>|<snapshot>"
                if snap is None:
                    continue
                agent = key.rsplit(":", 1)[1]
                for ch, (use, cap) in enumerate(zip(snap["use"], snap["cap"], strict=True)):
                    if use > cap:
                        self.violations.append(f"{agent} over capacity on channel {ch + 1}: "
                                               f"{use} > {cap}")
                contacts = [*snap["res"].values(), *snap["con"]]
                if len(contacts) != sum(snap["use"]):
                    self.violations.append(f"{agent} holds {contacts}, in use {snap['use']}")
                for c in contacts:
                    if c in held:
                        self.violations.append(f"{c} held by {held[c]} and {agent}")
                    held[c] = agent
            self.rounds += 1
            await asyncio.sleep(0.1)

    def drop(self, i: int) -> None:
        if i in self.alive:
            self.alive.remove(i)

    async def leftover(self) -> list[str]:
        """What the live replicas still hold after the cleanup: must be nothing."""
        out = []
        for i in self.alive:
            ch = self.channels[i]
            q = await ipb_grpc.InsightsStub(ch).GetQueueStats(
                ipb.GetQueueStatsRequest(), metadata=AUTH, timeout=5)
            for x in q.queues:
                if x.waiting or x.contacts_in_service:
                    out.append(f"replica {i}: {x.queue} waiting {x.waiting} "
                               f"in service {x.contacts_in_service}")
            stub = rpb_grpc.RouterStub(ch)
            for a in range(self.agents):
                try:
                    st = await stub.GetAgentState(rpb.GetAgentStateRequest(
                        agent_id=f"{PREFIX}a{a}"), metadata=AUTH, timeout=5)
                except grpc.aio.AioRpcError as err:
                    out.append(f"replica {i}: {PREFIX}a{a}: {err.code().name} {err.details()}")
                    continue
                if st.contact_ids or any(u.capacity for u in st.in_use):
                    out.append(f"replica {i}: {st.agent_id} holds {list(st.contact_ids)}")
        return out

    async def close(self) -> None:
        for c in self.channels:
            await c.close()
        await self.r.aclose()


async def settle_healthy(addresses: list[str], timeout_s: float = 15.0) -> None:
    """Wait until every replica routes normally (not degraded): a PAIRED-capable
    probe is not needed, health of Profiles says SERVING only when Redis is in reach."""
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    deadline = time.monotonic() + timeout_s
    for a in addresses:
        async with grpc.aio.insecure_channel(a) as ch:
            h = health_pb2_grpc.HealthStub(ch)
            while True:
                r = await h.Check(health_pb2.HealthCheckRequest(service="pairline.v1.Profiles"),
                                  timeout=2)
                if r.status == health_pb2.HealthCheckResponse.SERVING:
                    break
                if time.monotonic() > deadline:
                    raise AssertionError(f"{a} did not become healthy")
                await asyncio.sleep(0.1)


# ------------------------------------------------------------------ one run
async def run_fault(plan: Plan, tmp: Path) -> Figures:
    """Start Redis and the replicas, run the load with ``plan.fault`` in the middle,
    clean up, and measure (see :class:`Figures`)."""
    assert plan.fault in FAULTS, plan.fault
    loop = asyncio.get_running_loop()
    redis = RedisProcess()
    proxy = ProxyProcess(redis.port) if plan.fault == "redis-slow" else None
    # Replica 0 routes alone while Redis is out of reach; the others refuse then
    # (UNAVAILABLE) and the switch goes to it: one authority at any time.
    cfgs = [tmp / f"pairline-{plan.fault}-{i}.toml" for i in range(plan.replicas)]
    for i, cfg in enumerate(cfgs):
        write_config(cfg, outage_routing=i == 0)
    url = proxy.url if proxy is not None else redis.url
    env = clean_env()
    fig = Figures(plan.fault, load=f"{plan.replicas} replicas, open loop {plan.rate:g} "
                                   f"contacts/s, {plan.agents} agents")
    try:
        async with AsyncExitStack() as stack:
            procs: list[Process] = []
            for cfg in cfgs:
                args = ("--config", str(cfg), "--listen", "127.0.0.1:0", "--redis-url", url)
                procs.append(await stack.enter_async_context(serving(tmp, *args, env=env)))
            addresses = [p.address for p in procs]
            customers = 200
            await seed_profiles(addresses[0], plan.agents, customers)
            await settle_healthy(addresses)
            monitor = Monitor(addresses, plan.agents, redis.port)
            stack.push_async_callback(monitor.close)
            opts = LoadOptions(
                target=",".join(addresses), key=KEY, rate=plan.rate, duration_s=plan.duration_s,
                agents=plan.agents, queues=2, queues_per_agent=2, voice_capacity=1,
                chat_capacity=2, customers=customers, handle_ms=400.0, wrap_ms=50.0,
                patience_ms=3000.0, churn_per_s=1.0, away_ms=800.0,
                deadline_ms=plan.deadline_ms, seed=plan.seed, id_prefix=PREFIX)
            timeline: list[tuple[float, str, str, float, int, bool]] = []
            marks: dict[str, float] = {}
            stop = asyncio.Event()
            mon = asyncio.create_task(monitor.run(stop))

            async def inject() -> None:
                while not timeline:  # the harness's setup (logins) is over
                    await asyncio.sleep(0.01)
                await asyncio.sleep(plan.warm_s)
                marks["start"] = loop.time()
                victim = plan.replicas - 1
                if plan.fault == "redis-restart":
                    redis.kill()
                    await asyncio.sleep(plan.fault_s)
                    await asyncio.to_thread(redis.start)  # same port, same append-only file
                elif plan.fault == "redis-slow":
                    assert proxy is not None
                    proxy.slow(True)
                    await asyncio.sleep(plan.fault_s)
                    proxy.slow(False)
                elif plan.fault == "replica-sigkill":
                    monitor.drop(victim)
                    procs[victim].proc.send_signal(signal.SIGKILL)
                else:
                    monitor.drop(victim)
                    procs[victim].proc.send_signal(signal.SIGTERM)
                    marks["exit_code"] = await asyncio.wait_for(procs[victim].proc.wait(),
                                                                plan.fault_s + 10)
                # The fault is over: Redis back, the proxy fast again, or (a replica
                # stopped) at once; its effects are measured over fault_s from its start.
                marks["end"] = loop.time()

            injector = asyncio.create_task(inject())
            report = await run_loadtest(opts, timeline=timeline)
            await injector
            stop.set()
            await mon
            # A replica out of touch at the end (a blip on a busy machine puts one
            # there for a moment) shows its mirror as it was; it is rebuilt from
            # Redis when back. Look once every live one is in touch (one that never
            # comes back fails here).
            await settle_healthy([addresses[i] for i in monitor.alive])
            fig.leftover = len(left := await monitor.leftover())
            fig.samples += left[:5]
            if plan.fault == "replica-sigterm":
                assert marks["exit_code"] == 0, marks
            measure(fig, plan, report, timeline, marks)
            fig.monitor_rounds = monitor.rounds
            fig.monitor_violations = len(monitor.violations)
            fig.samples += monitor.violations[:5]
    finally:
        if proxy is not None:
            proxy.stop()
        redis.stop()
    return fig


def measure(fig: Figures, plan: Plan, report: dict[str, Any],
            timeline: list[tuple[float, str, str, float, int, bool]],
            marks: dict[str, float]) -> None:
    start, end = marks["start"], marks["end"]
    fig.report = report
    fig.calls = len(timeline)
    during = [e for e in timeline if start <= e[0] <= start + plan.fault_s + 0.5]
    fig.fault_calls = len(during)
    if during:
        fig.answered_share = sum(e[2] == "OK" or e[2] in RACE_CODES for e in during) / len(during)
    routing = [e for e in during if e[1] == "RouteContact"]
    if routing:
        fig.routing_ok_share = sum(e[2] == "OK" for e in routing) / len(routing)
        lat = np.asarray([e[3] for e in routing])
        fig.p99_ms = float(np.percentile(lat, 99))
        fig.max_ms = float(lat.max())
    fig.degraded = sum(e[4] == cpb.MODE_DEGRADED for e in timeline)
    fig.failed = {}
    for e in timeline:
        if e[2] != "OK" and e[2] not in RACE_CODES:
            fig.failed[f"{e[1]} {e[2]}"] = fig.failed.get(f"{e[1]} {e[2]}", 0) + 1
    fig.failovers = report.get("spread", {}).get("failovers", 0)
    # Recovered: from the fault's end, the first moment followed by a quiet second
    # (no error other than an expected race, no degraded decision) and by a normal
    # routing answer (PAIRED after a Redis fault). A blip later on (a busy machine
    # can make a Redis call slow) does not count as the fault's.
    bad = sorted(e[0] for e in timeline if e[0] >= end and (
        (e[2] != "OK" and e[2] not in RACE_CODES) or e[4] == cpb.MODE_DEGRADED))
    quiet_from = end
    for b in bad:
        if b - quiet_from > 1.0:
            break
        quiet_from = b
    last_bad = quiet_from
    want = cpb.MODE_PAIRED if plan.fault.startswith("redis") else None
    first_ok = min((e[0] for e in timeline if e[0] >= last_bad and e[1] == "RouteContact"
                    and e[2] == "OK" and (want is None or e[4] == want)), default=math.nan)
    fig.recover_s = math.nan if math.isnan(first_ok) else first_ok - end
    fig.paired_after = sum(1 for e in timeline
                           if e[0] > last_bad and e[1] == "RouteContact"
                           and e[4] == cpb.MODE_PAIRED)
    ledger = report["ledger"]
    fig.lost = ledger["lost"]
    fig.double = ledger["double_assignments"]
    fig.samples += ledger["samples"]


def table(figs: list[Figures]) -> str:
    head = (f"{'fault':<16}{'calls':>7}{'in fault':>9}{'answered':>9}{'route ok':>9}"
            f"{'p99 ms':>8}{'max ms':>8}{'degraded':>9}{'failover':>9}{'lost':>5}"
            f"{'double':>7}{'left':>5}{'recover s':>10}{'paired':>7}")
    lines = [head]
    notes = []
    for f in figs:
        if f.failed:
            notes.append(f"  {f.fault}: calls failed (whole run): "
                         + ", ".join(f"{k} {v}" for k, v in sorted(f.failed.items())))
        lines.append(
            f"{f.fault:<16}{f.calls:>7}{f.fault_calls:>9}{f.answered_share:>9.2%}"
            f"{f.routing_ok_share:>9.2%}{f.p99_ms:>8.1f}{f.max_ms:>8.1f}{f.degraded:>9}"
            f"{f.failovers:>9}{f.lost:>5}{f.double + f.monitor_violations:>7}{f.leftover:>5}"
            f"{f.recover_s:>10.2f}{f.paired_after:>7}")
    return "\n".join(lines + notes)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    sub = ap.add_subparsers(dest="cmd")
    px = sub.add_parser("proxy")
    px.add_argument("--port", type=int, required=True)
    px.add_argument("--upstream", type=int, required=True)
    px.add_argument("--lo-ms", type=float, default=50)
    px.add_argument("--hi-ms", type=float, default=300)
    ap.add_argument("--fault", action="append", choices=FAULTS)
    ap.add_argument("--rate", type=float, default=Plan.rate)
    ap.add_argument("--fault-s", type=float, default=Plan.fault_s)
    ap.add_argument("--json", action="store_true")
    ns = ap.parse_args()
    if ns.cmd == "proxy":
        asyncio.run(LatencyProxy(ns.upstream, ns.lo_ms / 1000, ns.hi_ms / 1000, 1).serve(ns.port))
        return

    async def all_faults() -> list[Figures]:
        out = []
        for name in ns.fault or FAULTS:
            d = Path(tempfile.mkdtemp(prefix=f"pairline-faults-{name}-"))
            out.append(await run_fault(Plan(name, rate=ns.rate, fault_s=ns.fault_s), d))
            print(f"{name}: replica logs in {d}", file=sys.stderr)
        return out

    figs = asyncio.run(all_faults())
    if ns.json:
        print(json.dumps([{k: v for k, v in vars(f).items() if k != "report"} for f in figs],
                         indent=2))
    print(f"load: open loop {ns.rate:g} contacts/s over the replicas; "
          f"load average {os.getloadavg()[0]:.2f}")
    print(table(figs))
    for f in figs:
        for s in f.samples:
            print(f"  {f.fault}: {s}")


if __name__ == "__main__":
    main()
