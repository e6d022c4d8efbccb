"""The Router servicer with decision metrics: the only place the hot path is timed.

A subclass rather than edits in :mod:`pairline.servicers`: the servicer stays
decode / call / encode, and the two decision operations (used by the unary
calls and by both Connect streams) are timed once, here.
"""

from __future__ import annotations

from time import perf_counter

from pairline._proto.pairline.v1 import common_pb2 as cpb
from pairline._proto.pairline.v1 import router_pb2 as rpb
from pairline.metrics import Metrics
from pairline.service import Service
from pairline.servicers import RouterServicer


class MeteredRouterServicer(RouterServicer):
    def __init__(self, service: Service, metrics: Metrics) -> None:
        super().__init__(service)
        self._observe = metrics.observe_decision

    async def _route(self, req: rpb.RouteContactRequest, tenant: str, at: str = "") -> cpb.Decision:
        t0 = perf_counter()
        d = await super()._route(req, tenant, at)
        self._observe(tenant, "RouteContact", d.mode, d.policy, perf_counter() - t0)
        return d

    async def _ready(self, req: rpb.AgentReadyRequest, tenant: str, at: str = "") -> cpb.Decision:
        t0 = perf_counter()
        d = await super()._ready(req, tenant, at)
        self._observe(tenant, "AgentReady", d.mode, d.policy, perf_counter() - t0)
        return d
