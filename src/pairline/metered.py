"""The Router servicer with decision metrics and the sampled decision log: the
only place the hot path is timed.

A subclass rather than edits in :mod:`pairline.servicers`: the servicer stays
decode / call / encode, and the two decision operations (used by the unary
calls and by both Connect streams) are timed once, here. A share
(``decision_log_sample``) of the decisions is logged as one ``decision`` event
each; the call's ``rpc`` and ``request_id`` come from :mod:`pairline.logs`,
and the event never names the customer (no key, no digest).
"""

from __future__ import annotations

from random import random
from time import perf_counter
from typing import Any

import structlog

from pairline._proto.pairline.v1 import common_pb2 as cpb
from pairline._proto.pairline.v1 import router_pb2 as rpb
from pairline.limits import made_here
from pairline.metrics import MODE_LABELS, Metrics, observer
from pairline.service import Service
from pairline.servicers import RouterServicer

log = structlog.get_logger()


class MeteredRouterServicer(RouterServicer):
    def __init__(
        self, service: Service, metrics: Metrics, *args: Any, decision_log_sample: float = 0.0
    ) -> None:
        """``args`` go to :class:`RouterServicer` (its admission hook);
        ``decision_log_sample`` is the share of decisions logged (0..1)."""
        super().__init__(service, *args)
        self._sample = decision_log_sample
        self._observe = metrics.observe_decision
        self._wait = metrics.contact_wait_seconds
        self._waits: dict[tuple[str, str], Any] = {}

    async def _route(self, req: rpb.RouteContactRequest, tenant: str, at: str = "") -> cpb.Decision:
        t0 = perf_counter()
        d = await super()._route(req, tenant, at)
        seconds = perf_counter() - t0
        self._observe(tenant, "RouteContact", d.mode, d.policy, seconds)
        did = d.decision_id
        if did and made_here(did):  # not a retry's earlier decision
            contacts = self._contacts(tenant)
            if contacts is not None:
                self._waited(tenant, contacts, d.contact_id, did)
        if self._sample and (self._sample >= 1.0 or random() < self._sample):
            _log_decision(tenant, "RouteContact", d, seconds)
        return d

    async def _ready(self, req: rpb.AgentReadyRequest, tenant: str, at: str = "") -> cpb.Decision:
        t0 = perf_counter()
        d = await super()._ready(req, tenant, at)
        seconds = perf_counter() - t0
        self._observe(tenant, "AgentReady", d.mode, d.policy, seconds)
        did = d.decision_id
        if did:
            contacts = self._contacts(tenant)
            if contacts is not None:
                self._waited(tenant, contacts, d.contact_id, did)
        if self._sample and (self._sample >= 1.0 or random() < self._sample):
            _log_decision(tenant, "AgentReady", d, seconds)
        return d

    def _waited(self, tenant: str, contacts: Any, contact_id: str, decision_id: str) -> None:
        """Observe the wait of the contact this call reserved."""
        contact = contacts.get(contact_id)
        decision = contact.decision if contact is not None else None
        if decision is None or decision.decision_id != decision_id:
            return
        key = (tenant, contact.queue)
        child = self._waits.get(key)
        if child is None:
            child = self._waits[key] = observer(self._wait.labels(tenant, contact.queue))
        child(max(0.0, decision.decided_at - contact.arrival))


def _log_decision(tenant: str, op: str, d: cpb.Decision, seconds: float) -> None:
    """One ``decision`` event (rpc and request_id are added from the call)."""
    log.info(
        "decision",
        tenant=tenant,
        op=op,
        decision_id=d.decision_id,
        mode=MODE_LABELS.get(d.mode, "unspecified"),
        policy=d.policy,
        latency_ms=round(seconds * 1000.0, 3),
        model_version=d.model_version,
        queue=d.queue,
        agent=d.agent_id,
        contact=d.contact_id,
    )
