"""One tenant's flood against another tenant's latency.

The server runs in its own process (`pairline serve`), with two tenants:
``flood`` (rate-limited to 100 requests/s, at most 32 calls at once) and
``victim`` (no limits). The victim calls GetAgentState one at a time from this
process; a third process floods with ``flood``'s key, N calls in flight, back
to back. Reported: the victim's p50/p90/p99 alone and during the flood (same
run), their ratios, and the flood's answers (mostly RESOURCE_EXHAUSTED).

Stated bound (2 shared vCPU, Python clients on the same cores): during a flood
of 16 calls in flight the victim's p50 stays under 50 ms and every victim call
is answered (tests/test_limits.py checks the same bound in `make test`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest
from _util import serving_process
from flood import isolation
from support import free_port

VICTIM, FLOODER = "victim-key-0123456789", "flood-key-0123456789"


@pytest.fixture(scope="module")
def address(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    cfg = tmp_path_factory.mktemp("flood") / "pairline.toml"
    cfg.write_text(
        'log_level = "warning"\n'
        "[[tenants]]\n"
        'name = "victim"\n'
        f'api_keys = ["{VICTIM}"]\n'
        'secret = "victim-secret-0123456789"\n'
        "[[tenants]]\n"
        'name = "flood"\n'
        f'api_keys = ["{FLOODER}"]\n'
        'secret = "flood-secret-0123456789"\n'
        "rate_per_s = 100.0\nmax_concurrent_rpcs = 32\n"
    )
    addr = f"127.0.0.1:{free_port()}"
    with serving_process(cfg, addr):
        yield addr


@pytest.mark.benchmark(group="flood-isolation")
@pytest.mark.parametrize("in_flight", [4, 16, 64])
def test_flood_isolation(benchmark: Any, address: str, in_flight: int) -> None:
    """The victim's latency alone and under another tenant's flood of ``in_flight`` calls."""
    out = benchmark.pedantic(
        lambda: asyncio.run(isolation(address, VICTIM, FLOODER, 3.0, in_flight)),
        rounds=1, iterations=1)
    alone, flooded = out["alone"], out["flooded"]
    ratios = {k: round(flooded[k] / alone[k], 1) for k in alone}
    benchmark.extra_info.update(alone=alone, flooded=flooded, ratio=ratios, flood=out["flood"])
    print(f"\nflood x{in_flight}: alone {alone} flooded {flooded} ratio {ratios} "
          f"flood answers {out['flood']}")
    assert set(out["flooded_codes"]) == {"NOT_FOUND"}  # every victim call answered
