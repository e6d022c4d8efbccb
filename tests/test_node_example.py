"""examples/node (a switch in Node.js, @grpc/grpc-js) against a real server.

Skipped, with the reason in the summary, when Node.js is not installed; the
example's packages are installed with `npm ci` from its committed lock file.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
from pathlib import Path

import pytest
from support import KEYS, running

from pairline._proto.pairline.v1 import insights_pb2 as ipb

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "node"
NODE = shutil.which("node")
NPM = shutil.which("npm")

pytestmark = pytest.mark.skipif(
    NODE is None or NPM is None,
    reason="Node.js (node and npm) not found: examples/node was NOT run; install Node.js 18+",
)


def install() -> None:
    """`npm ci` unless node_modules already matches package-lock.json."""
    stamp = EXAMPLE / "node_modules" / ".package-lock.json"
    lock = EXAMPLE / "package-lock.json"
    if stamp.exists() and stamp.stat().st_mtime >= lock.stat().st_mtime:
        return
    assert NPM is not None
    subprocess.run([NPM, "ci", "--no-audit", "--no-fund", "--loglevel=error"], cwd=EXAMPLE,
                   check=True, timeout=600, capture_output=True)


async def test_node_client_reads_health_and_routes_a_contact() -> None:
    """The Node.js example sees SERVING, logs an agent in and gets it for its contact."""
    await asyncio.to_thread(install)
    assert NODE is not None
    async with running() as r:
        proc = await asyncio.create_subprocess_exec(
            NODE, "route.js", cwd=EXAMPLE,
            env={"PATH": str(Path(NODE).parent), "PAIRLINE_TARGET": r.server.address,
                 "PAIRLINE_API_KEY": KEYS["acme"], "PAIRLINE_DEADLINE_MS": "5000"},
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )
        out, err = await asyncio.wait_for(proc.communicate(), 60)
        stats = await r.acme.insights.GetQueueStats(ipb.GetQueueStatsRequest())
    assert proc.returncode == 0, err.decode()
    got = json.loads(out)
    assert got["health"] == "SERVING"
    assert got["agent"]["status"] == "AGENT_STATUS_AVAILABLE"
    decision = got["routed"]["decision"]
    assert got["routed"]["fallback"] is False
    assert (decision["agent_id"], decision["mode"]) == ("node-agent-1", "MODE_BASELINE")
    assert got["confirmed"]["agent_id"] == "node-agent-1"
    (sales,) = stats.queues
    assert (sales.queue, sales.contacts_in_service) == ("sales", 1)


async def test_node_client_with_a_wrong_key_fails_cleanly() -> None:
    """A wrong API key: exit 1 with the status on stderr (health needs no key)."""
    await asyncio.to_thread(install)
    assert NODE is not None
    async with running() as r:
        proc = await asyncio.create_subprocess_exec(
            NODE, "route.js", cwd=EXAMPLE,
            env={"PATH": str(Path(NODE).parent), "PAIRLINE_TARGET": r.server.address,
                 "PAIRLINE_API_KEY": "wrong"},
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )
        _, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 1
    assert err.decode().startswith("UNAUTHENTICATED")
