"""Cost of the metrics on the hot path: one ``observe_decision`` per decision, and
RouteContact's handler operation with and without it (in process, no transport),
measured in the same run.

Target: the metrics add < 5 us per decision (the handler is ~100 us, the
loopback round trip ~500 us)."""

from __future__ import annotations

import itertools
from typing import Any

import pytest
from _util import percentiles_us, run_now
from support import settings

from pairline._proto.pairline.v1 import common_pb2 as cpb
from pairline._proto.pairline.v1 import router_pb2 as rpb
from pairline.metered import MeteredRouterServicer
from pairline.metrics import Metrics
from pairline.service import Service
from pairline.servicers import RouterServicer
from pairline.stores import MemoryStore
from pairline.testing import FakeClock


def test_observe_decision(benchmark: Any) -> None:
    """One decision's metric updates (label children cached after the first)."""
    benchmark.group = "metrics"
    m = Metrics()
    benchmark(m.observe_decision, "acme", "RouteContact", cpb.MODE_PAIRED, "diagonal", 0.00012)
    percentiles_us(benchmark)


@pytest.mark.parametrize("metered", [False, True], ids=["plain", "metered"])
def test_route_operation(benchmark: Any, metered: bool) -> None:
    """RouteContact's operation (decode, decide, reserve, encode) with one free agent;
    the contact hangs up between rounds so every round reserves."""
    benchmark.group = "metrics-route"
    svc = Service(settings(), MemoryStore(), FakeClock())
    servicer = MeteredRouterServicer(svc, Metrics()) if metered else RouterServicer(svc)
    run_now(servicer._state(rpb.SetAgentStateRequest(
        agent_id="a1", status=rpb.AGENT_STATUS_AVAILABLE,
        queues=[rpb.QueueMembership(queue="sales", proficiency=50)]), "acme"))
    ids = itertools.count()
    last: list[str] = []

    def setup() -> tuple[tuple[rpb.RouteContactRequest], dict[str, Any]]:
        if last:
            run_now(servicer._end(rpb.EndContactRequest(
                contact_id=last.pop(), reason=rpb.END_REASON_ABANDONED), "acme"))
        cid = f"c{next(ids)}"
        last.append(cid)
        req = rpb.RouteContactRequest(contact_id=cid, queue="sales", channel=cpb.CHANNEL_VOICE)
        return (req,), {}

    def route(req: rpb.RouteContactRequest) -> cpb.Decision:
        return run_now(servicer._route(req, "acme"))

    d = benchmark.pedantic(route, setup=setup, rounds=5_000, warmup_rounds=200)
    assert d.agent_id == "a1"
    percentiles_us(benchmark)
