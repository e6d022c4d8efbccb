"""A switch that drives a running pairline server over gRPC (the remote mode).

:class:`GrpcSwitch` implements the :class:`~pairline.sim.switch.Switch` protocol
with the generated synchronous stubs, one call per event, exactly as an ACD
integration would, so the same engine, workload and metrics run against a real
server (``--target HOST:PORT``) as in process.

Time: the server keeps its own clock. ``advance`` is therefore a hook: by
default it paces the run in real time, ``speed`` times faster than the scenario
(``speed=60``: an hour of contacts in a minute); a test that runs the server in
the same process with a fake clock passes a hook that sets that clock instead,
and then gets the very decisions of the in-process run. When paced, what the
server measures by its own clock (``wait_weight`` credit, diagonal band
refreshes, offer timeouts, proficiency relaxation) runs ``speed`` times slower
relative to the contacts than in the scenario, and the pacing's jitter adds to
every time; wrap-ups are ended by the engine's ``ready`` call either way.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import grpc

from pairline._proto.pairline.v1 import common_pb2 as cpb
from pairline._proto.pairline.v1 import profiles_pb2 as ppb
from pairline._proto.pairline.v1 import profiles_pb2_grpc as ppb_grpc
from pairline._proto.pairline.v1 import router_pb2 as rpb
from pairline._proto.pairline.v1 import router_pb2_grpc as rpb_grpc
from pairline.domain import N_CHANNELS, Channel
from pairline.sim.switch import Offer, SwitchSetup

BATCH = 10_000


def _paced(speed: float) -> Callable[[float], None]:
    start = time.monotonic()

    def advance(t: float) -> None:
        delay = start + t / speed - time.monotonic()
        if delay > 0:
            time.sleep(delay)

    return advance


class GrpcSwitch:
    """The switch's calls as RPCs to ``target`` (or over ``channel``), authenticated
    with ``api_key``. The tenant's dimensions must match the scenario's truth."""

    __slots__ = ("_advance", "_channel", "_meta", "_own", "_router", "_timeout_s",
                 "report_outcomes")

    def __init__(
        self,
        setup: SwitchSetup,
        api_key: str,
        *,
        target: str = "",
        channel: grpc.Channel | None = None,
        advance: Callable[[float], None] | None = None,
        speed: float = 1.0,
        timeout_s: float = 10.0,
        report_outcomes: bool = True,
    ) -> None:
        if channel is None and not target:
            raise ValueError("give a target HOST:PORT or a channel")
        self._own = channel is None
        self._channel = channel or grpc.insecure_channel(target)
        self._meta = (("authorization", f"Bearer {api_key}"),)
        self._timeout_s = timeout_s
        self._router = rpb_grpc.RouterStub(self._channel)  # type: ignore[no-untyped-call]
        self._advance = advance or _paced(speed)
        self.report_outcomes = report_outcomes
        self._setup(setup)

    def _call(self, method: Any, request: Any) -> Any:
        return method(request, metadata=self._meta, timeout=self._timeout_s)

    def _setup(self, setup: SwitchSetup) -> None:
        profiles = ppb_grpc.ProfilesStub(self._channel)  # type: ignore[no-untyped-call]
        if setup.model is not None:
            self._call(profiles.UploadModel, ppb.UploadModelRequest(model=setup.model,
                                                                    activate=True))
        if setup.agent_vectors is not None:
            rows = [ppb.AgentProfile(agent_id=a.agent_id, vector=v.tolist(), version=1,
                                     source_time_ms=1)
                    for a, v in zip(setup.agents, setup.agent_vectors, strict=True)]
            for i in range(0, len(rows), BATCH):
                self._call(profiles.UpsertAgentProfiles,
                           ppb.AgentProfileBatch(profiles=rows[i : i + BATCH]))
        if setup.customer_vectors is not None:
            rows_c = [ppb.CustomerProfile(customer_key=k, vector=v.tolist(), version=1,
                                          source_time_ms=1)
                      for k, v in zip(setup.customer_keys, setup.customer_vectors, strict=True)]
            batches = (ppb.CustomerProfileBatch(profiles=rows_c[i : i + BATCH])
                       for i in range(0, len(rows_c), BATCH))
            self._call(profiles.UpsertCustomerProfiles, batches)
        for a in setup.agents:
            self._call(self._router.SetAgentState, rpb.SetAgentStateRequest(
                agent_id=a.agent_id,
                status=rpb.AGENT_STATUS_AVAILABLE,
                queues=[rpb.QueueMembership(queue=q, proficiency=p) for q, p in a.queues],
                capacities=[rpb.ChannelCapacity(channel=cpb.Channel.ValueType(c + 1),
                                                capacity=a.capacities[c])
                            for c in range(N_CHANNELS) if a.capacities[c]],
            ))

    @staticmethod
    def _offer(d: Any) -> Offer | None:
        if d.mode == cpb.MODE_QUEUED:
            return None
        return Offer(d.decision_id, d.contact_id, d.agent_id, int(d.mode), d.predicted_outcome)

    def advance(self, t: float) -> None:
        self._advance(t)

    def route(self, contact_id: str, queue: str, channel: Channel,
              customer_key: str) -> Offer | None:
        return self._offer(self._call(self._router.RouteContact, rpb.RouteContactRequest(
            contact_id=contact_id, queue=queue, channel=cpb.Channel.ValueType(channel),
            customer_key=customer_key)))

    def confirm(self, offer: Offer) -> None:
        self._call(self._router.ConfirmDecision,
                   rpb.ConfirmDecisionRequest(decision_id=offer.decision_id))

    def end(self, contact_id: str, wrap_up_s: float) -> None:
        # 0 would mean the tenant's default: 1 ms stands for "none" (the engine's
        # ready call ends any wrap-up when the scenario's ends).
        self._call(self._router.EndContact, rpb.EndContactRequest(
            contact_id=contact_id, reason=rpb.END_REASON_HANDLED,
            wrap_up_ms=max(1, round(wrap_up_s * 1000))))

    def abandon(self, contact_id: str) -> None:
        self._call(self._router.EndContact, rpb.EndContactRequest(
            contact_id=contact_id, reason=rpb.END_REASON_ABANDONED))

    def ready(self, agent_id: str) -> Offer | None:
        return self._offer(self._call(self._router.AgentReady,
                                      rpb.AgentReadyRequest(agent_id=agent_id)))

    def outcome(self, offer: Offer, success: bool) -> None:
        if self.report_outcomes:
            self._call(self._router.ReportOutcome, rpb.ReportOutcomeRequest(
                decision_id=offer.decision_id, outcomes={"success": 1.0 if success else 0.0}))

    def close(self) -> None:
        if self._own:
            self._channel.close()
