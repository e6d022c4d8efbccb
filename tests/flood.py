"""A flood client for overload tests and benchmarks, run as its own process:

    python tests/flood.py ADDRESS KEY SECONDS CONCURRENCY

``CONCURRENCY`` workers call GetAgentState back to back for ``SECONDS`` and the
process prints one JSON line: calls per status code and calls per second.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections import Counter

import grpc

from pairline._proto.pairline.v1 import router_pb2 as rpb
from pairline._proto.pairline.v1 import router_pb2_grpc as rpb_grpc


async def flood(address: str, key: str, seconds: float, concurrency: int) -> dict[str, object]:
    codes: Counter[str] = Counter()
    md = (("authorization", f"Bearer {key}"),)
    async with grpc.aio.insecure_channel(address) as ch:
        stub = rpb_grpc.RouterStub(ch)
        req = rpb.GetAgentStateRequest(agent_id="flood")
        end = time.monotonic() + seconds

        async def worker() -> None:
            while time.monotonic() < end:
                try:
                    await stub.GetAgentState(req, metadata=md, timeout=5)
                    codes["OK"] += 1
                except grpc.aio.AioRpcError as err:
                    codes[err.code().name] += 1

        print("started", flush=True)
        t0 = time.monotonic()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.monotonic() - t0
    return {"codes": dict(codes), "per_s": round(sum(codes.values()) / elapsed, 1)}


async def victim_latencies_ms(stub: rpb_grpc.RouterStub, key: str, seconds: float,
                              pause_s: float = 0.002) -> tuple[list[float], Counter[str]]:
    """One call at a time for ``seconds``: latencies of the successful ones and codes."""
    md = (("authorization", f"Bearer {key}"),)
    req = rpb.GetAgentStateRequest(agent_id="v1")
    lat: list[float] = []
    codes: Counter[str] = Counter()
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        t = time.perf_counter()
        try:
            await stub.GetAgentState(req, metadata=md, timeout=5)
            codes["OK"] += 1
        except grpc.aio.AioRpcError as err:
            codes[err.code().name] += 1
            if err.code() is grpc.StatusCode.NOT_FOUND:  # fine: the victim has no agent
                lat.append((time.perf_counter() - t) * 1e3)
        else:
            lat.append((time.perf_counter() - t) * 1e3)
        await asyncio.sleep(pause_s)
    return lat, codes


async def isolation(address: str, victim_key: str, flood_key: str, seconds: float,
                    concurrency: int) -> dict[str, object]:
    """The victim's latency alone, then while another process floods with ``flood_key``
    (the server runs in the caller's event loop)."""
    import numpy as np

    def pct(xs: list[float]) -> dict[str, float]:
        return {f"p{q}_ms": round(float(np.percentile(xs, q)), 3) for q in (50, 90, 99)}

    async with grpc.aio.insecure_channel(address) as ch:
        stub = rpb_grpc.RouterStub(ch)
        await victim_latencies_ms(stub, victim_key, 0.3)  # warm
        alone, alone_codes = await victim_latencies_ms(stub, victim_key, seconds)
        proc = await asyncio.create_subprocess_exec(
            sys.executable, __file__, address, flood_key, str(seconds + 1.0), str(concurrency),
            stdout=asyncio.subprocess.PIPE,
        )
        assert proc.stdout is not None
        await proc.stdout.readline()  # "started"
        await asyncio.sleep(0.5)  # the flood ramps up
        flooded, flooded_codes = await victim_latencies_ms(stub, victim_key, seconds)
        out, _ = await proc.communicate()
    return {
        "alone": pct(alone), "alone_codes": dict(alone_codes),
        "flooded": pct(flooded), "flooded_codes": dict(flooded_codes),
        "flood": json.loads(out.decode().strip().splitlines()[-1]),
    }


if __name__ == "__main__":
    address, key, seconds, concurrency = sys.argv[1:5]
    print(json.dumps(asyncio.run(flood(address, key, float(seconds), int(concurrency)))))
