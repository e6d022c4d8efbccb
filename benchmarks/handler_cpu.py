"""In-process CPU time of each layer of a RouteContact, without the transport:
the guarded Connect handler per event, the guarded unary handler, the metered
servicer, the plain servicer, the service, and protobuf (de)serialisation. Same
data as test_grpc_bench.py. The difference between two adjacent layers is what
the outer one adds (noisy on a shared machine: run it twice, pin it with taskset;
each line also gives the cheapest and the median batch of 250 calls, the cheapest
being the steadiest figure when other work shares the core).

    taskset -c 1 .venv/bin/python benchmarks/handler_cpu.py [--calls 20000]
        [--only connect] [--sample 0.01 --log-level info 2>/dev/null]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import itertools
import sys
import time
from pathlib import Path
from typing import Any

import grpc

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parent.parent / "tests"))
import test_grpc_bench as gb

from pairline import convert
from pairline._proto.pairline.v1 import router_pb2 as rpb
from pairline.config import Settings, TenantConfig, hash_api_key
from pairline.logs import configure
from pairline.server import PairlineServer

# Calls per batch for the spread: on a shared machine the best batches show what
# the code costs, the mean what the machine let it have.
BATCH = 250


def _spread(marks: list[float]) -> str:
    """``  (batches of 250: min x, median y)`` from the CPU times at batch ends."""
    per = sorted((b - a) / BATCH * 1e6 for a, b in itertools.pairwise(marks))
    if not per:
        return ""
    return f"  (batches of {BATCH}: min {per[0]:6.1f}, median {per[len(per) // 2]:6.1f})"


class Ctx:
    """The parts of a grpc.aio ServicerContext the guard reads."""

    def __init__(self, metadata: tuple[tuple[str, str], ...]) -> None:
        self._md = metadata

    def invocation_metadata(self) -> Any:
        return self._md

    def time_remaining(self) -> float | None:
        return None

    def cancelled(self) -> bool:
        return False


async def main(calls: int, only: str, sample: float, level: str) -> None:
    configure(level)
    t = TenantConfig(name="bench", api_key_sha256=(hash_api_key(gb.KEY),),
                     secret="bench-secret-0123456789", customer_dim=gb.DIM, agent_dim=gb.DIM,
                     policy="greedy", max_agents=20000, offer_timeout_s=3600.0)
    server = PairlineServer(Settings(listen="127.0.0.1:0", tenants=(t,),
                                     decision_log_sample=sample))
    await server.start()
    try:
        with grpc.insecure_channel(server.address) as ch:
            await asyncio.to_thread(gb._load, ch)
        handler = grpc.unary_unary_rpc_method_handler(
            server.router.RouteContact,
            request_deserializer=rpb.RouteContactRequest.FromString,
            response_serializer=lambda m: m.SerializeToString())
        guarded = server.guard.wrap(handler, "/pairline.v1.Router/RouteContact").unary_unary
        ctx = Ctx((("user-agent", "grpc-python/1.85"), ("authorization", f"Bearer {gb.KEY}")))
        svc = server.service
        router = server.router

        async def guarded_call(req: rpb.RouteContactRequest) -> Any:
            return await guarded(req, ctx)

        async def metered(req: rpb.RouteContactRequest) -> Any:
            return await router._route(req, "bench")

        async def plain(req: rpb.RouteContactRequest) -> Any:
            return convert.decision(await svc.route_contact("bench", convert.route_contact(req)))

        async def service(req: rpb.RouteContactRequest) -> Any:
            return await svc.route_contact("bench", convert.route_contact(req))

        data = gb._route_req().SerializeToString()

        async def serde(req: rpb.RouteContactRequest) -> Any:
            rpb.RouteContactRequest.FromString(data)
            return d.SerializeToString()

        d = await guarded_call(gb._route_req())
        connect_h = grpc.stream_stream_rpc_method_handler(
            server.router.Connect, request_deserializer=rpb.SwitchEvent.FromString,
            response_serializer=lambda m: m.SerializeToString())
        connect = server.guard.wrap(connect_h, "/pairline.v1.Router/Connect").stream_stream
        layers: list[tuple[str, Any]] = [
            ("connect", None), ("guarded handler", guarded_call), ("metered servicer", metered),
            ("servicer", plain), ("service", service), ("pb serde", serde)]
        for name, fn in layers:
            if only and not name.startswith(only):
                continue
            if fn is None:  # the guarded Connect handler over `calls` events
                events = [rpb.SwitchEvent(request_id=str(i), route_contact=gb._route_req())
                          for i in range(calls)]

                async def source(events: list[rpb.SwitchEvent] = events) -> Any:
                    for ev in events:
                        yield ev

                c0 = time.process_time()
                n, marks = 0, [c0]
                async for reply in connect(source(), ctx):
                    assert reply.decision.agent_id
                    n += 1
                    if n % BATCH == 0:
                        marks.append(time.process_time())
                us = (time.process_time() - c0) / n * 1e6
                print(f"{name:18s} {us:6.1f} us/event{_spread(marks)}", flush=True)
                continue
            reqs = [gb._route_req() for _ in range(calls)]
            for r in reqs[:200]:
                await fn(r)
            gc.collect()
            c0 = time.process_time()
            marks = [c0]
            for i, r in enumerate(reqs[200:], 1):
                await fn(r)
                if i % BATCH == 0:
                    marks.append(time.process_time())
            us = (time.process_time() - c0) / (calls - 200) * 1e6
            print(f"{name:18s} {us:6.1f} us/call{_spread(marks)}", flush=True)
    finally:
        await server.stop(0)


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--calls", type=int, default=20000)
    ap.add_argument("--only", default="", help="one layer (name prefix)")
    ap.add_argument("--sample", type=float, default=0.0, help="decision_log_sample")
    ap.add_argument("--log-level", default="warning")
    args = ap.parse_args()
    asyncio.run(main(args.calls, args.only, args.sample, args.log_level))
