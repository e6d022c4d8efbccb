"""Request validation of the Router and Profiles RPCs through a real server.

Every rejected request must answer the right status code (INVALID_ARGUMENT with a
google.rpc.BadRequest naming the field path, or NOT_FOUND / FAILED_PRECONDITION /
ALREADY_EXISTS), leave the server serving and change nothing: the state read back
afterwards is identical and the next valid call behaves as if the bad one never
happened.
"""

from __future__ import annotations

import math
import re
from collections.abc import Awaitable
from typing import Any

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2
from support import Running, bad_request_field, contact, error_field, login

from pairline._proto.pairline.v1 import common_pb2 as cpb
from pairline._proto.pairline.v1 import insights_pb2 as ipb
from pairline._proto.pairline.v1 import profiles_pb2 as ppb
from pairline._proto.pairline.v1 import router_pb2 as rpb
from pairline.model import dump_model

NAN = math.nan
INF = math.inf
INVALID = grpc.StatusCode.INVALID_ARGUMENT
CUSTOMER_DIM = 4  # support.tenant()
AGENT_DIM = 3


# -------------------------------------------------------------------- helpers
async def rejected(
    call: Awaitable[Any], code: grpc.StatusCode = INVALID
) -> grpc.aio.AioRpcError:
    """Await ``call``, which must fail with ``code``; returns the error."""
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await call
    assert err.value.code() is code, f"{err.value.code()}: {err.value.details()}"
    return err.value


async def invalid(call: Awaitable[Any], field: str) -> None:
    """``call`` fails with INVALID_ARGUMENT whose BadRequest names ``field``."""
    err = await rejected(call, INVALID)
    assert error_field(err) == field, err.details()


async def assert_serving(srv: Running) -> None:
    for service in ("", "pairline.v1.Router", "pairline.v1.Profiles"):
        resp = await srv.acme.health.Check(health_pb2.HealthCheckRequest(service=service))
        assert resp.status == health_pb2.HealthCheckResponse.SERVING


def agent_req(agent_id: str) -> rpb.GetAgentStateRequest:
    return rpb.GetAgentStateRequest(agent_id=agent_id)


class World:
    """acme with agent a1 (sales + support, voice 1, free) and contact w1 waiting in
    billing (nobody serves billing)."""

    def __init__(self, srv: Running) -> None:
        self.srv = srv
        self.r = srv.acme.router

    async def setup(self) -> None:
        await self.r.SetAgentState(login("a1", "sales", "support"))
        self.srv.clock.advance(1)
        q = await self.r.RouteContact(contact("w1", queue="billing"))
        assert q.mode == cpb.MODE_QUEUED
        self.srv.clock.advance(1)

    async def snapshot(self, *agents: str) -> tuple[Any, ...]:
        stats = await self.srv.acme.insights.GetQueueStats(ipb.GetQueueStatsRequest())
        states = [await self.r.GetAgentState(agent_req(a)) for a in ("a1", *agents)]
        return (stats, *states)

    async def assert_unchanged(self, before: tuple[Any, ...], *agents: str) -> None:
        """The server still serves and reads back exactly what it did before."""
        await assert_serving(self.srv)
        assert await self.snapshot(*agents) == before

    async def assert_a1_still_free(self) -> None:
        """The next valid contact in sales gets a1, as if nothing happened before."""
        d = await self.r.RouteContact(contact("next", queue="sales"))
        assert (d.mode, d.agent_id) == (cpb.MODE_BASELINE, "a1")


@pytest.fixture
async def world(srv: Running) -> World:
    w = World(srv)
    await w.setup()
    return w


async def absent(srv: Running, agent_id: str) -> None:
    """``agent_id`` does not exist for acme."""
    await rejected(srv.acme.router.GetAgentState(agent_req(agent_id)), grpc.StatusCode.NOT_FOUND)


# ------------------------------------------------------------- RouteContact
def _many(prefix: str, n: int) -> list[str]:
    return [f"{prefix}{i}" for i in range(n)]


ROUTE_INVALID: list[tuple[str, dict[str, Any], str]] = [
    ("missing-contact-id", {"contact_id": ""}, "contact_id"),
    ("long-contact-id", {"contact_id": "c" * 129}, "contact_id"),
    ("control-contact-id", {"contact_id": "c\n1"}, "contact_id"),
    ("nul-contact-id", {"contact_id": "c\x001"}, "contact_id"),
    ("missing-queue", {"queue": ""}, "queue"),
    ("long-queue", {"queue": "q" * 129}, "queue"),
    ("control-queue", {"queue": "sa\tles"}, "queue"),
    ("unset-channel", {"channel": 0}, "channel"),
    ("unknown-channel", {"channel": 99}, "channel"),
    ("negative-channel", {"channel": -1}, "channel"),
    ("negative-priority", {"priority": -1}, "priority"),
    ("priority-1001", {"priority": 1001}, "priority"),
    ("long-customer-key", {"customer_key": "k" * 257}, "customer_key"),
    ("control-customer-key", {"customer_key": "+1555\x07"}, "customer_key"),
    ("too-many-context", {"context": {f"f{i}": 1.0 for i in range(65)}}, "context"),
    ("nan-context", {"context": {"ok": 1.0, "x": NAN}}, "context[x]"),
    ("inf-context", {"context": {"x": INF}}, "context[x]"),
    ("minus-inf-context", {"context": {"intent": -INF}}, "context[intent]"),
    ("negative-min-proficiency", {"min_proficiency": -1}, "min_proficiency"),
    ("min-proficiency-101", {"min_proficiency": 101}, "min_proficiency"),
    ("too-many-excluded", {"excluded_agent_ids": _many("x", 65)}, "excluded_agent_ids"),
    ("empty-excluded", {"excluded_agent_ids": ["x0", ""]}, "excluded_agent_ids[1]"),
    ("long-excluded", {"excluded_agent_ids": ["a" * 129]}, "excluded_agent_ids[0]"),
    ("control-excluded", {"excluded_agent_ids": ["x0", "x1", "b\rad"]}, "excluded_agent_ids[2]"),
    ("too-many-preferred", {"preferred_agent_ids": _many("p", 65)}, "preferred_agent_ids"),
    ("empty-preferred", {"preferred_agent_ids": ["a1", ""]}, "preferred_agent_ids[1]"),
    ("long-preferred", {"preferred_agent_ids": ["p" * 129]}, "preferred_agent_ids[0]"),
    ("control-preferred", {"preferred_agent_ids": ["a1\x00"]}, "preferred_agent_ids[0]"),
]


class TestRouteContactValidation:
    @pytest.mark.parametrize(
        ("overrides", "field"),
        [pytest.param(o, f, id=i) for i, o, f in ROUTE_INVALID],
    )
    async def test_invalid_request_is_rejected_and_changes_nothing(
        self, world: World, overrides: dict[str, Any], field: str
    ) -> None:
        """A malformed RouteContact is INVALID_ARGUMENT naming the field, and reserves nobody."""
        req = {"contact_id": "bad", "queue": "sales", "channel": cpb.CHANNEL_VOICE, **overrides}
        before = await world.snapshot()
        await invalid(world.r.RouteContact(rpb.RouteContactRequest(**req)), field)
        await world.assert_unchanged(before)
        await world.assert_a1_still_free()

    async def test_rejected_contact_id_is_not_live(self, world: World) -> None:
        """A contact id whose request was rejected can be routed afterwards, in any queue."""
        await invalid(world.r.RouteContact(contact("c9", queue="support", priority=-5)), "priority")
        d = await world.r.RouteContact(contact("c9", queue="sales"))
        assert (d.mode, d.agent_id, d.queue) == (cpb.MODE_BASELINE, "a1", "sales")

    async def test_limits_are_inclusive(self, world: World) -> None:
        """Every limit's maximum itself is accepted (128-char ids, 256-char key, 64 entries...)."""
        d = await world.r.RouteContact(rpb.RouteContactRequest(
            contact_id="c" * 128,
            queue="sales",
            channel=cpb.CHANNEL_VOICE,
            priority=1000,
            customer_key="k" * 256,
            context={f"f{i}": float(i) for i in range(64)},
            min_proficiency=50,
            excluded_agent_ids=[f"x{i}" for i in range(64)],
            preferred_agent_ids=["p" * 128, *(f"p{i}" for i in range(63))],
        ))
        assert (d.mode, d.agent_id, d.contact_id) == (cpb.MODE_BASELINE, "a1", "c" * 128)
        q = await world.r.RouteContact(contact("q" * 128, queue="q" * 128, min_proficiency=100))
        assert q.mode == cpb.MODE_QUEUED and q.queue == "q" * 128

    @pytest.mark.parametrize(
        "name", ["", "f" * 129, "in\ntent"], ids=["empty", "long", "control"]
    )
    async def test_bad_context_name_names_context(self, world: World, name: str) -> None:
        """A context entry with an empty, long or control-char name is INVALID on "context"."""
        before = await world.snapshot()
        await invalid(world.r.RouteContact(contact("bad", context={"ok": 1.0, name: 2.0})),
                      "context")
        await world.assert_unchanged(before)
        await world.assert_a1_still_free()

    async def test_same_contact_in_another_queue_already_exists(self, world: World) -> None:
        """A live contact routed to another queue (or channel) is ALREADY_EXISTS; it stays put."""
        before = await world.snapshot()
        for other in (contact("w1", queue="sales"),
                      contact("w1", queue="billing", channel=cpb.CHANNEL_CHAT)):
            err = await rejected(world.r.RouteContact(other), grpc.StatusCode.ALREADY_EXISTS)
            assert "w1" in (err.details() or "")
        await world.assert_unchanged(before)
        again = await world.r.RouteContact(contact("w1", queue="billing"))
        assert (again.mode, again.queue_position) == (cpb.MODE_QUEUED, 1)
        await world.assert_a1_still_free()

    async def test_reserved_contact_in_another_queue_already_exists(self, world: World) -> None:
        """A reserved contact cannot be re-routed elsewhere; its reservation is kept."""
        d = await world.r.RouteContact(contact("c1", queue="sales"))
        assert d.agent_id == "a1"
        before = await world.snapshot()
        await rejected(world.r.RouteContact(contact("c1", queue="support")),
                       grpc.StatusCode.ALREADY_EXISTS)
        await world.assert_unchanged(before)
        ok = await world.r.ConfirmDecision(rpb.ConfirmDecisionRequest(decision_id=d.decision_id))
        assert (ok.contact_id, ok.agent_id) == ("c1", "a1")


# ------------------------------------------------------------ SetAgentState
def _members(*names: str, prof: int = 50) -> list[rpb.QueueMembership]:
    return [rpb.QueueMembership(queue=n, proficiency=prof) for n in names]


def _caps(*pairs: tuple[int, int]) -> list[rpb.ChannelCapacity]:
    return [rpb.ChannelCapacity(channel=ch, capacity=c) for ch, c in pairs]


VOICE, CHAT = cpb.CHANNEL_VOICE, cpb.CHANNEL_CHAT
DAY_MS = 24 * 3600 * 1000

STATE_INVALID: list[tuple[str, dict[str, Any], str]] = [
    ("missing-agent-id", {"agent_id": ""}, "agent_id"),
    ("long-agent-id", {"agent_id": "a" * 129}, "agent_id"),
    ("control-agent-id", {"agent_id": "a\n1"}, "agent_id"),
    ("unset-status", {"status": 0}, "status"),
    ("reserved-status", {"status": rpb.AGENT_STATUS_RESERVED}, "status"),
    ("unknown-status", {"status": 99}, "status"),
    ("too-many-queues", {"queues": _members(*_many("q", 65))}, "queues"),
    ("empty-queue-name", {"queues": _members("sales", "")}, "queues[1].queue"),
    ("long-queue-name", {"queues": _members("sales", "q" * 129)}, "queues[1].queue"),
    ("control-queue-name", {"queues": _members("sales", "b\x1bill")}, "queues[1].queue"),
    ("duplicate-queue", {"queues": _members("sales", "sales")}, "queues[1].queue"),
    ("negative-proficiency",
     {"queues": [*_members("sales"), rpb.QueueMembership(queue="vip", proficiency=-1)]},
     "queues[1].proficiency"),
    ("proficiency-101",
     {"queues": [*_members("sales"), rpb.QueueMembership(queue="vip", proficiency=101)]},
     "queues[1].proficiency"),
    ("unset-capacity-channel", {"capacities": _caps((0, 1))}, "capacities[0].channel"),
    ("unknown-capacity-channel", {"capacities": _caps((VOICE, 1), (99, 1))},
     "capacities[1].channel"),
    ("duplicate-capacity-channel", {"capacities": _caps((CHAT, 1), (CHAT, 2))},
     "capacities[1].channel"),
    ("negative-capacity", {"capacities": _caps((VOICE, -1))}, "capacities[0].capacity"),
    ("capacity-101", {"capacities": _caps((VOICE, 1), (CHAT, 101))}, "capacities[1].capacity"),
    ("negative-wrap-up", {"status": rpb.AGENT_STATUS_WRAP_UP, "wrap_up_ms": -1}, "wrap_up_ms"),
    ("wrap-up-over-a-day",
     {"status": rpb.AGENT_STATUS_WRAP_UP, "wrap_up_ms": DAY_MS + 1}, "wrap_up_ms"),
    ("wrap-up-without-wrap-up-status",
     {"status": rpb.AGENT_STATUS_AVAILABLE, "wrap_up_ms": 1000}, "wrap_up_ms"),
]


class TestSetAgentStateValidation:
    @pytest.mark.parametrize("target", ["a1", "new"])
    @pytest.mark.parametrize(
        ("overrides", "field"),
        [pytest.param(o, f, id=i) for i, o, f in STATE_INVALID],
    )
    async def test_invalid_request_is_rejected_and_changes_nothing(
        self, world: World, target: str, overrides: dict[str, Any], field: str
    ) -> None:
        """A malformed SetAgentState is INVALID_ARGUMENT naming the field; no agent changes."""
        req: dict[str, Any] = {
            "agent_id": target,
            "status": rpb.AGENT_STATUS_AWAY,
            "queues": _members("sales", "billing"),
            "capacities": _caps((VOICE, 1), (CHAT, 2)),
            **overrides,
        }
        before = await world.snapshot()
        await invalid(world.r.SetAgentState(rpb.SetAgentStateRequest(**req)), field)
        await world.assert_unchanged(before)
        await absent(world.srv, "new")
        await world.assert_a1_still_free()

    async def test_limits_are_inclusive(self, world: World) -> None:
        """64 queues, proficiency 0 and 100, capacity 100 and a one-day wrap-up are accepted."""
        queues = [rpb.QueueMembership(queue=f"q{i}", proficiency=i % 2 * 100) for i in range(64)]
        s = await world.r.SetAgentState(rpb.SetAgentStateRequest(
            agent_id="b" * 128, status=rpb.AGENT_STATUS_WRAP_UP, queues=queues,
            capacities=_caps((VOICE, 0), (CHAT, 100)), wrap_up_ms=DAY_MS))
        assert s.status == rpb.AGENT_STATUS_WRAP_UP
        assert len(s.queues) == 64
        assert list(s.capacities) == _caps((CHAT, 100))
        assert s.wrap_up_until_ms == s.idle_since_ms > 0

    async def test_new_agent_needs_queues(self, world: World) -> None:
        """A new agent set available/away/busy without queues is FAILED_PRECONDITION."""
        before = await world.snapshot()
        for status in (rpb.AGENT_STATUS_AVAILABLE, rpb.AGENT_STATUS_AWAY, rpb.AGENT_STATUS_BUSY):
            await rejected(
                world.r.SetAgentState(rpb.SetAgentStateRequest(agent_id="new", status=status)),
                grpc.StatusCode.FAILED_PRECONDITION,
            )
            await absent(world.srv, "new")
        await world.assert_unchanged(before)
        # A new agent being logged out needs no queues.
        s = await world.r.SetAgentState(
            rpb.SetAgentStateRequest(agent_id="new", status=rpb.AGENT_STATUS_LOGGED_OUT))
        assert s.status == rpb.AGENT_STATUS_LOGGED_OUT

    async def test_logout_with_connected_contact_fails(self, world: World) -> None:
        """Logging out an agent handling a connected contact is FAILED_PRECONDITION; it keeps it."""
        d = await world.r.RouteContact(contact("c1", queue="sales"))
        await world.r.ConfirmDecision(rpb.ConfirmDecisionRequest(decision_id=d.decision_id))
        before = await world.snapshot()
        assert before[1].status == rpb.AGENT_STATUS_BUSY
        await rejected(
            world.r.SetAgentState(rpb.SetAgentStateRequest(
                agent_id="a1", status=rpb.AGENT_STATUS_LOGGED_OUT, queues=_members("other"))),
            grpc.StatusCode.FAILED_PRECONDITION,
        )
        await world.assert_unchanged(before)
        end = await world.r.EndContact(
            rpb.EndContactRequest(contact_id="c1", reason=rpb.END_REASON_HANDLED))
        assert end.agent_id == "a1"
        out = await world.r.SetAgentState(
            rpb.SetAgentStateRequest(agent_id="a1", status=rpb.AGENT_STATUS_LOGGED_OUT))
        assert out.status == rpb.AGENT_STATUS_LOGGED_OUT


# --------------------------------------------------- the other Router RPCs
class TestAgentIdValidation:
    @pytest.mark.parametrize(
        "agent_id", ["", "a" * 129, "a\x00"], ids=["missing", "long", "control"]
    )
    async def test_agent_ready_and_get_state_name_agent_id(
        self, world: World, agent_id: str
    ) -> None:
        """AgentReady and GetAgentState with a bad agent id are INVALID_ARGUMENT on agent_id."""
        before = await world.snapshot()
        await invalid(world.r.AgentReady(rpb.AgentReadyRequest(agent_id=agent_id)), "agent_id")
        await invalid(world.r.GetAgentState(agent_req(agent_id)), "agent_id")
        await world.assert_unchanged(before)

    async def test_unknown_agent_not_found(self, world: World) -> None:
        """AgentReady and GetAgentState of an unknown agent are NOT_FOUND and create nothing."""
        before = await world.snapshot()
        await rejected(world.r.AgentReady(rpb.AgentReadyRequest(agent_id="ghost")),
                       grpc.StatusCode.NOT_FOUND)
        await absent(world.srv, "ghost")
        await world.assert_unchanged(before)

    async def test_agent_ready_logged_out_fails(self, world: World) -> None:
        """AgentReady for a logged-out agent is FAILED_PRECONDITION; it stays logged out."""
        await world.r.SetAgentState(login("b1", "billing", status=rpb.AGENT_STATUS_LOGGED_OUT))
        before = await world.snapshot("b1")
        await rejected(world.r.AgentReady(rpb.AgentReadyRequest(agent_id="b1")),
                       grpc.StatusCode.FAILED_PRECONDITION)
        await world.assert_unchanged(before, "b1")
        assert before[2].status == rpb.AGENT_STATUS_LOGGED_OUT
        # w1 is still waiting for the first billing agent that logs in.
        await world.r.SetAgentState(login("b1", "billing", status=rpb.AGENT_STATUS_AWAY))
        d = await world.r.AgentReady(rpb.AgentReadyRequest(agent_id="b1"))
        assert (d.contact_id, d.agent_id) == ("w1", "b1")


DECISION_IDS = pytest.mark.parametrize(
    ("decision_id", "field"),
    [("", "decision_id"), ("d" * 129, "decision_id"), ("d\n1", "decision_id")],
    ids=["missing", "long", "control"],
)


class TestDecisionValidation:
    @DECISION_IDS
    async def test_confirm_and_release_name_decision_id(
        self, world: World, decision_id: str, field: str
    ) -> None:
        """Confirm/Release/ReportOutcome with a bad decision id are INVALID_ARGUMENT on it."""
        d = await world.r.RouteContact(contact("c1", queue="sales"))
        before = await world.snapshot()
        await invalid(world.r.ConfirmDecision(
            rpb.ConfirmDecisionRequest(decision_id=decision_id)), field)
        await invalid(world.r.ReleaseDecision(
            rpb.ReleaseDecisionRequest(decision_id=decision_id)), field)
        await invalid(world.r.ReportOutcome(
            rpb.ReportOutcomeRequest(decision_id=decision_id, outcomes={"converted": 1})), field)
        await world.assert_unchanged(before)
        ok = await world.r.ConfirmDecision(rpb.ConfirmDecisionRequest(decision_id=d.decision_id))
        assert ok.agent_id == "a1"

    async def test_unknown_decision_not_found(self, world: World) -> None:
        """Confirm/Release/ReportOutcome of an unknown decision id are NOT_FOUND."""
        d = await world.r.RouteContact(contact("c1", queue="sales"))
        before = await world.snapshot()
        ghost = "0" * 32
        await rejected(world.r.ConfirmDecision(rpb.ConfirmDecisionRequest(decision_id=ghost)),
                       grpc.StatusCode.NOT_FOUND)
        await rejected(world.r.ReleaseDecision(rpb.ReleaseDecisionRequest(decision_id=ghost)),
                       grpc.StatusCode.NOT_FOUND)
        await rejected(world.r.ReportOutcome(
            rpb.ReportOutcomeRequest(decision_id=ghost, outcomes={"converted": 1})),
            grpc.StatusCode.NOT_FOUND)
        await world.assert_unchanged(before)
        out = await world.r.ReportOutcome(
            rpb.ReportOutcomeRequest(decision_id=d.decision_id, outcomes={"converted": 1}))
        assert out.decision_id == d.decision_id and out.stored

    @pytest.mark.parametrize("name", ["", "o" * 129, "con\tverted"],
                             ids=["empty", "long", "control"])
    async def test_bad_outcome_name_names_outcomes(self, world: World, name: str) -> None:
        """An outcome with an empty, long or control-char name is INVALID_ARGUMENT on outcomes."""
        d = await world.r.RouteContact(contact("c1", queue="sales"))
        await invalid(world.r.ReportOutcome(
            rpb.ReportOutcomeRequest(decision_id=d.decision_id, outcomes={name: 1.0})),
            "outcomes")

    @pytest.mark.parametrize("reason", [3, 99, -1])
    async def test_unknown_release_reason(self, world: World, reason: int) -> None:
        """An unknown release reason is INVALID_ARGUMENT on reason; the reservation is kept."""
        d = await world.r.RouteContact(contact("c1", queue="sales"))
        before = await world.snapshot()
        assert before[1].status == rpb.AGENT_STATUS_RESERVED
        await invalid(world.r.ReleaseDecision(
            rpb.ReleaseDecisionRequest(decision_id=d.decision_id, reason=reason)), "reason")
        await world.assert_unchanged(before)
        ok = await world.r.ConfirmDecision(rpb.ConfirmDecisionRequest(decision_id=d.decision_id))
        assert (ok.contact_id, ok.agent_id) == ("c1", "a1")

    async def test_unset_release_reason_means_not_connected(self, world: World) -> None:
        """Release reason 0 is NOT_CONNECTED: the agent returns available, not away."""
        d = await world.r.RouteContact(contact("c1", queue="sales"))
        rel = await world.r.ReleaseDecision(rpb.ReleaseDecisionRequest(decision_id=d.decision_id))
        assert (rel.agent_id, rel.agent_status) == ("a1", rpb.AGENT_STATUS_AVAILABLE)

    @pytest.mark.parametrize(
        ("outcomes", "field"),
        [
            pytest.param({}, "outcomes", id="empty"),
            pytest.param({f"o{i}": 1.0 for i in range(33)}, "outcomes", id="33-entries"),
            pytest.param({"converted": NAN}, "outcomes[converted]", id="nan"),
            pytest.param({"revenue": 4.0, "converted": INF}, "outcomes[converted]", id="inf"),
            pytest.param({"aht": -INF}, "outcomes[aht]", id="minus-inf"),
        ],
    )
    async def test_invalid_outcomes(
        self, world: World, outcomes: dict[str, float], field: str
    ) -> None:
        """Empty, over 32 or non-finite outcomes are INVALID_ARGUMENT naming the entry."""
        d = await world.r.RouteContact(contact("c1", queue="sales"))
        before = await world.snapshot()
        await invalid(world.r.ReportOutcome(
            rpb.ReportOutcomeRequest(decision_id=d.decision_id, outcomes=outcomes)), field)
        await world.assert_unchanged(before)
        ok = await world.r.ReportOutcome(rpb.ReportOutcomeRequest(
            decision_id=d.decision_id, outcomes={f"o{i}": 1.0 for i in range(32)}))
        assert ok.stored


class TestEndContactValidation:
    @pytest.mark.parametrize(
        ("overrides", "field"),
        [
            pytest.param({"contact_id": ""}, "contact_id", id="missing-contact-id"),
            pytest.param({"contact_id": "c" * 129}, "contact_id", id="long-contact-id"),
            pytest.param({"contact_id": "w\x7f1"}, "contact_id", id="control-contact-id"),
            pytest.param({"reason": 0}, "reason", id="unset-reason"),
            pytest.param({"reason": 99}, "reason", id="unknown-reason"),
            pytest.param({"wrap_up_ms": -1}, "wrap_up_ms", id="negative-wrap-up"),
            pytest.param({"wrap_up_ms": DAY_MS + 1}, "wrap_up_ms", id="wrap-up-over-a-day"),
        ],
    )
    async def test_invalid_request_keeps_contact(
        self, world: World, overrides: dict[str, Any], field: str
    ) -> None:
        """A malformed EndContact is INVALID_ARGUMENT naming the field; the contact stays."""
        req = {"contact_id": "w1", "reason": rpb.END_REASON_ABANDONED, **overrides}
        before = await world.snapshot()
        await invalid(world.r.EndContact(rpb.EndContactRequest(**req)), field)
        await world.assert_unchanged(before)
        end = await world.r.EndContact(
            rpb.EndContactRequest(contact_id="w1", reason=rpb.END_REASON_ABANDONED))
        assert (end.contact_id, end.agent_id) == ("w1", "")

    async def test_unknown_contact_not_found(self, world: World) -> None:
        """Ending an unknown contact is NOT_FOUND."""
        before = await world.snapshot()
        await rejected(world.r.EndContact(
            rpb.EndContactRequest(contact_id="ghost", reason=rpb.END_REASON_ABANDONED)),
            grpc.StatusCode.NOT_FOUND)
        await world.assert_unchanged(before)

    async def test_handled_end_of_waiting_contact_fails(self, world: World) -> None:
        """A waiting contact cannot end HANDLED (FAILED_PRECONDITION); it keeps waiting."""
        before = await world.snapshot()
        await rejected(world.r.EndContact(
            rpb.EndContactRequest(contact_id="w1", reason=rpb.END_REASON_HANDLED)),
            grpc.StatusCode.FAILED_PRECONDITION)
        await world.assert_unchanged(before)
        assert before[0].queues[0].queue == "billing" and before[0].queues[0].waiting == 1
        await world.r.SetAgentState(login("b1", "billing"))
        d = await world.r.AgentReady(rpb.AgentReadyRequest(agent_id="b1"))
        assert d.contact_id == "w1"


# ------------------------------------------------------------------- Connect
CONNECT_INVALID: list[tuple[str, rpb.SwitchEvent, str]] = [
    ("route-channel", rpb.SwitchEvent(route_contact=contact("bad", channel=0)),
     "route_contact.channel"),
    ("route-context-nan",
     rpb.SwitchEvent(route_contact=contact("bad", context={"x": NAN})), "route_contact.context[x]"),
    ("route-excluded",
     rpb.SwitchEvent(route_contact=contact("bad", excluded_agent_ids=["", "a"])),
     "route_contact.excluded_agent_ids[0]"),
    ("ready-agent-id", rpb.SwitchEvent(agent_ready=rpb.AgentReadyRequest()),
     "agent_ready.agent_id"),
    ("state-reserved", rpb.SwitchEvent(set_agent_state=rpb.SetAgentStateRequest(
        agent_id="a1", status=rpb.AGENT_STATUS_RESERVED)), "set_agent_state.status"),
    ("state-proficiency", rpb.SwitchEvent(set_agent_state=rpb.SetAgentStateRequest(
        agent_id="a1", status=rpb.AGENT_STATUS_AWAY,
        queues=[*_members("sales"), rpb.QueueMembership(queue="x", proficiency=101)])),
     "set_agent_state.queues[1].proficiency"),
    ("confirm-decision-id", rpb.SwitchEvent(confirm_decision=rpb.ConfirmDecisionRequest()),
     "confirm_decision.decision_id"),
    ("release-reason", rpb.SwitchEvent(release_decision=rpb.ReleaseDecisionRequest(
        decision_id="d1", reason=99)), "release_decision.reason"),
    ("end-reason", rpb.SwitchEvent(end_contact=rpb.EndContactRequest(contact_id="w1")),
     "end_contact.reason"),
    ("outcome-inf", rpb.SwitchEvent(report_outcome=rpb.ReportOutcomeRequest(
        decision_id="d1", outcomes={"revenue": INF})), "report_outcome.outcomes[revenue]"),
    ("no-event", rpb.SwitchEvent(), "event"),
]


class TestConnectValidation:
    @pytest.mark.parametrize(
        ("event", "field"), [pytest.param(e, f, id=i) for i, e, f in CONNECT_INVALID]
    )
    async def test_invalid_event_gets_error_reply_and_stream_stays_open(
        self, world: World, event: rpb.SwitchEvent, field: str
    ) -> None:
        """A bad event gets an error reply with a prefixed field; the stream keeps serving."""
        before = await world.snapshot()
        call = world.r.Connect()
        bad = rpb.SwitchEvent()
        bad.CopyFrom(event)
        bad.request_id = "r-bad"
        await call.write(bad)
        reply = await call.read()
        assert reply.request_id == "r-bad"
        assert reply.WhichOneof("reply") == "error"
        assert reply.error.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
        assert bad_request_field(reply.error) == field
        await world.assert_unchanged(before)
        await call.write(rpb.SwitchEvent(request_id="r-ok", route_contact=contact("next")))
        ok = await call.read()
        assert ok.request_id == "r-ok" and ok.WhichOneof("reply") == "decision"
        assert (ok.decision.mode, ok.decision.agent_id) == (cpb.MODE_BASELINE, "a1")
        await call.done_writing()
        assert await call.read() == grpc.aio.EOF
        assert await call.code() is grpc.StatusCode.OK

    async def test_error_replies_carry_unary_codes(self, world: World) -> None:
        """NOT_FOUND, FAILED_PRECONDITION and ALREADY_EXISTS come back as error replies too."""
        await world.r.SetAgentState(login("off", "billing", status=rpb.AGENT_STATUS_LOGGED_OUT))
        before = await world.snapshot("off")
        call = world.r.Connect()
        events = {
            "nf": (rpb.SwitchEvent(agent_ready=rpb.AgentReadyRequest(agent_id="ghost")),
                   grpc.StatusCode.NOT_FOUND),
            "fp": (rpb.SwitchEvent(agent_ready=rpb.AgentReadyRequest(agent_id="off")),
                   grpc.StatusCode.FAILED_PRECONDITION),
            "fp2": (rpb.SwitchEvent(end_contact=rpb.EndContactRequest(
                contact_id="w1", reason=rpb.END_REASON_HANDLED)),
                grpc.StatusCode.FAILED_PRECONDITION),
            "ae": (rpb.SwitchEvent(route_contact=contact("w1", queue="sales")),
                   grpc.StatusCode.ALREADY_EXISTS),
        }
        for rid, (ev, code) in events.items():
            ev.request_id = rid
            await call.write(ev)
            reply = await call.read()
            assert reply.request_id == rid and reply.WhichOneof("reply") == "error"
            assert reply.error.code == code.value[0], reply.error.message
        await world.assert_unchanged(before, "off")
        await call.write(rpb.SwitchEvent(request_id="ok", route_contact=contact("next")))
        assert (await call.read()).decision.agent_id == "a1"
        await call.done_writing()
        assert await call.code() is grpc.StatusCode.OK

    async def test_long_request_id_is_invalid(self, world: World) -> None:
        """A request_id over 128 chars is INVALID_ARGUMENT on request_id and is not acted on."""
        before = await world.snapshot()
        call = world.r.Connect()
        await call.write(rpb.SwitchEvent(request_id="r" * 129, route_contact=contact("c1")))
        reply = await call.read()
        assert reply.WhichOneof("reply") == "error"
        assert bad_request_field(reply.error) == "request_id"
        assert reply.request_id == "r" * 128
        await world.assert_unchanged(before)
        await call.done_writing()
        assert await call.code() is grpc.StatusCode.OK


# ------------------------------------------------------------------ Profiles
def cprof(key: str = "cust-1", vector: list[float] | None = None, *, version: int = 1,
          source_time_ms: int = 1_700_000_000_000) -> ppb.CustomerProfile:
    vec = [0.1, 0.2, 0.3, 0.4] if vector is None else vector
    return ppb.CustomerProfile(customer_key=key, vector=vec, version=version,
                               source_time_ms=source_time_ms)


def aprof(agent_id: str = "a1", vector: list[float] | None = None, *, version: int = 1,
          source_time_ms: int = 1_700_000_000_000) -> ppb.AgentProfile:
    vec = [0.1, 0.2, 0.3] if vector is None else vector
    return ppb.AgentProfile(agent_id=agent_id, vector=vec, version=version,
                            source_time_ms=source_time_ms)


# (overrides for one profile, field relative to that profile)
CUSTOMER_INVALID: list[tuple[str, dict[str, Any], str]] = [
    ("missing-key", {"key": ""}, "customer_key"),
    ("long-key", {"key": "k" * 257}, "customer_key"),
    ("control-key", {"key": "cust\n1"}, "customer_key"),
    ("short-vector", {"vector": [0.1, 0.2, 0.3]}, "vector"),
    ("long-vector", {"vector": [0.1] * 5}, "vector"),
    ("empty-vector", {"vector": []}, "vector"),
    ("nan-vector", {"vector": [0.1, NAN, 0.3, 0.4]}, "vector"),
    ("inf-vector", {"vector": [0.1, 0.2, 0.3, INF]}, "vector"),
    ("minus-inf-vector", {"vector": [-INF, 0.2, 0.3, 0.4]}, "vector"),
    ("float32-overflow", {"vector": [1e39, 0.2, 0.3, 0.4]}, "vector"),
    ("missing-source-time", {"source_time_ms": 0}, "source_time_ms"),
    ("negative-source-time", {"source_time_ms": -5}, "source_time_ms"),
]

AGENT_INVALID: list[tuple[str, dict[str, Any], str]] = [
    ("missing-agent-id", {"agent_id": ""}, "agent_id"),
    ("long-agent-id", {"agent_id": "a" * 129}, "agent_id"),
    ("control-agent-id", {"agent_id": "a\t1"}, "agent_id"),
    ("short-vector", {"vector": [0.1, 0.2]}, "vector"),
    ("customer-sized-vector", {"vector": [0.1, 0.2, 0.3, 0.4]}, "vector"),
    ("nan-vector", {"vector": [NAN, 0.2, 0.3]}, "vector"),
    ("inf-vector", {"vector": [0.1, INF, 0.3]}, "vector"),
    ("missing-source-time", {"source_time_ms": 0}, "source_time_ms"),
]


async def customer_stored(srv: Running, p: ppb.CustomerProfile) -> bool:
    """Whether acme already holds ``p`` (same or newer): re-sending it is then stale.
    (If it was not stored, this call stores it.)"""
    out = await srv.acme.profiles.UpsertCustomerProfile(p)
    assert out.accepted + out.stale == 1
    return out.stale == 1


class TestCustomerProfileValidation:
    @pytest.mark.parametrize(
        ("overrides", "field"), [pytest.param(o, f, id=i) for i, o, f in CUSTOMER_INVALID]
    )
    async def test_single_upsert(self, srv: Running, overrides: dict[str, Any], field: str) -> None:
        """An invalid UpsertCustomerProfile is INVALID_ARGUMENT naming the request's field."""
        bad = cprof(**overrides)
        await invalid(srv.acme.profiles.UpsertCustomerProfile(bad), field)
        await assert_serving(srv)
        if field != "customer_key":
            assert not await customer_stored(srv, cprof(bad.customer_key))

    @pytest.mark.parametrize(
        ("overrides", "field"), [pytest.param(o, f, id=i) for i, o, f in CUSTOMER_INVALID]
    )
    async def test_stream_names_batch_and_keeps_earlier_batches(
        self, srv: Running, overrides: dict[str, Any], field: str
    ) -> None:
        """A bad profile in batch 1 names batches[1].profiles[i]; batch 0 stays, batch 1 not."""
        batches = [
            ppb.CustomerProfileBatch(profiles=[cprof("b0-0"), cprof("b0-1")]),
            ppb.CustomerProfileBatch(profiles=[cprof("b1-0"), cprof("b1-1"), cprof(**overrides)]),
            ppb.CustomerProfileBatch(profiles=[cprof("b2-0")]),
        ]
        err = await rejected(srv.acme.profiles.UpsertCustomerProfiles(iter(batches)))
        assert error_field(err) == f"batches[1].profiles[2].{field}", err.details()
        assert re.search(r"\b1 earlier batch.*\b2 profile", err.details() or ""), err.details()
        await assert_serving(srv)
        assert await customer_stored(srv, cprof("b0-0"))
        assert await customer_stored(srv, cprof("b0-1"))
        assert not await customer_stored(srv, cprof("b1-0"))
        assert not await customer_stored(srv, cprof("b1-1"))
        assert not await customer_stored(srv, cprof("b2-0"))

    async def test_empty_batch(self, srv: Running) -> None:
        """An empty batch is INVALID_ARGUMENT on batches[i].profiles."""
        batches = [ppb.CustomerProfileBatch(profiles=[cprof("b0")]), ppb.CustomerProfileBatch()]
        await invalid(srv.acme.profiles.UpsertCustomerProfiles(iter(batches)),
                      "batches[1].profiles")
        assert await customer_stored(srv, cprof("b0"))

    async def test_batch_over_10000(self, srv: Running) -> None:
        """A batch of 10,001 profiles is INVALID_ARGUMENT, none applied; 10,000 is accepted."""
        too_many = [cprof(f"k{i}") for i in range(10_001)]
        await invalid(
            srv.acme.profiles.UpsertCustomerProfiles(
                iter([ppb.CustomerProfileBatch(profiles=too_many)])),
            "batches[0].profiles",
        )
        await assert_serving(srv)
        assert not await customer_stored(srv, cprof("k0"))
        out = await srv.acme.profiles.UpsertCustomerProfiles(
            iter([ppb.CustomerProfileBatch(profiles=too_many[1:])]))
        assert (out.accepted, out.stale) == (10_000, 0)

    async def test_limits_are_inclusive(self, srv: Running) -> None:
        """A 256-char customer key is accepted, singly and in a batch."""
        out = await srv.acme.profiles.UpsertCustomerProfile(cprof("k" * 256))
        assert (out.accepted, out.stale) == (1, 0)
        out = await srv.acme.profiles.UpsertCustomerProfiles(
            iter([ppb.CustomerProfileBatch(profiles=[cprof("k" * 256, version=2)])]))
        assert (out.accepted, out.stale) == (1, 0)

    async def test_valid_stream_counts_across_batches(self, srv: Running) -> None:
        """Control: valid batches are accepted and stale indexes count across batches."""
        batches = [ppb.CustomerProfileBatch(profiles=[cprof("x"), cprof("y")]),
                   ppb.CustomerProfileBatch(profiles=[cprof("x")])]
        out = await srv.acme.profiles.UpsertCustomerProfiles(iter(batches))
        assert (out.accepted, out.stale, list(out.stale_indexes)) == (2, 1, [2])


class TestAgentProfileValidation:
    @pytest.mark.parametrize(
        ("overrides", "field"), [pytest.param(o, f, id=i) for i, o, f in AGENT_INVALID]
    )
    async def test_invalid_profile_rejects_whole_batch(
        self, srv: Running, overrides: dict[str, Any], field: str
    ) -> None:
        """An invalid agent profile is INVALID_ARGUMENT on profiles[i]; no profile is applied."""
        batch = ppb.AgentProfileBatch(profiles=[aprof("p0"), aprof(**overrides), aprof("p2")])
        await invalid(srv.acme.profiles.UpsertAgentProfiles(batch), f"profiles[1].{field}")
        await assert_serving(srv)
        out = await srv.acme.profiles.UpsertAgentProfiles(
            ppb.AgentProfileBatch(profiles=[aprof("p0"), aprof("p2")]))
        assert (out.accepted, out.stale) == (2, 0)

    async def test_empty_batch(self, srv: Running) -> None:
        """An empty agent profile batch is INVALID_ARGUMENT on profiles."""
        await invalid(srv.acme.profiles.UpsertAgentProfiles(ppb.AgentProfileBatch()), "profiles")

    async def test_batch_over_10000(self, srv: Running) -> None:
        """10,001 agent profiles are INVALID_ARGUMENT on profiles and none is applied."""
        too_many = [aprof(f"p{i}") for i in range(10_001)]
        await invalid(srv.acme.profiles.UpsertAgentProfiles(
            ppb.AgentProfileBatch(profiles=too_many)), "profiles")
        out = await srv.acme.profiles.UpsertAgentProfiles(
            ppb.AgentProfileBatch(profiles=too_many[:10_000]))
        assert (out.accepted, out.stale) == (10_000, 0)


def model_bytes(version: str = "m1", *, customer_dim: int = CUSTOMER_DIM,
                agent_dim: int = AGENT_DIM, nan: bool = False) -> bytes:
    W = np.zeros((customer_dim, agent_dim), dtype=np.float32)
    if nan:
        W[0, 0] = np.nan
    return dump_model(version=version, W=W, wc=np.zeros(customer_dim), wa=np.zeros(agent_dim),
                      b=0.0)


class TestUploadModelValidation:
    @pytest.mark.parametrize(
        "data",
        [
            pytest.param(b"", id="empty"),
            pytest.param(b"not a model file", id="garbage"),
            pytest.param(b"PK\x03\x04" + b"\x00" * 64, id="broken-zip"),
            pytest.param(model_bytes(customer_dim=5), id="wrong-customer-dim"),
            pytest.param(model_bytes(agent_dim=4), id="wrong-agent-dim"),
            pytest.param(model_bytes(nan=True), id="nan-weights"),
            pytest.param(model_bytes()[:-10], id="truncated"),
        ],
    )
    async def test_invalid_model_bytes(self, srv: Running, data: bytes) -> None:
        """Bytes that are no valid model are INVALID_ARGUMENT on model; nothing is stored."""
        before = await srv.acme.profiles.GetModelInfo(ppb.GetModelInfoRequest())
        await invalid(srv.acme.profiles.UploadModel(
            ppb.UploadModelRequest(model=data, activate=True)), "model")
        await assert_serving(srv)
        assert await srv.acme.profiles.GetModelInfo(ppb.GetModelInfoRequest()) == before
        assert not before.models and not before.HasField("active")

    @pytest.mark.parametrize("version", ["m\n1", "v" * 65], ids=["control", "long"])
    async def test_unaddressable_model_version(self, srv: Running, version: str) -> None:
        """A model version ActivateModel could never name (control chars, >64) is refused."""
        await invalid(srv.acme.profiles.UploadModel(
            ppb.UploadModelRequest(model=model_bytes(version))), "model")
        info = await srv.acme.profiles.GetModelInfo(ppb.GetModelInfoRequest())
        assert not info.models

    async def test_model_over_32_mib(self, srv: Running) -> None:
        """A model file over 32 MiB is INVALID_ARGUMENT on model."""
        data = model_bytes() + b"\x00" * (32 * 1024 * 1024)
        await invalid(srv.acme.profiles.UploadModel(ppb.UploadModelRequest(model=data)), "model")
        info = await srv.acme.profiles.GetModelInfo(ppb.GetModelInfoRequest())
        assert not info.models

    async def test_valid_model_is_accepted(self, srv: Running) -> None:
        """Control: a valid model for the tenant's dimensions is stored and activated."""
        info = await srv.acme.profiles.UploadModel(
            ppb.UploadModelRequest(model=model_bytes("m1"), activate=True))
        assert (info.version, info.customer_dim, info.agent_dim, info.active) == ("m1", 4, 3, True)
        got = await srv.acme.profiles.GetModelInfo(ppb.GetModelInfoRequest())
        assert got.active.version == "m1" and [m.version for m in got.models] == ["m1"]

    async def test_same_version_other_content_already_exists(self, srv: Running) -> None:
        """A version re-uploaded with other content is ALREADY_EXISTS; models stay as they were."""
        first = model_bytes("m1")
        await srv.acme.profiles.UploadModel(ppb.UploadModelRequest(model=first, activate=True))
        before = await srv.acme.profiles.GetModelInfo(ppb.GetModelInfoRequest())
        other = dump_model(version="m1", W=np.ones((CUSTOMER_DIM, AGENT_DIM)),
                           wc=np.zeros(CUSTOMER_DIM), wa=np.zeros(AGENT_DIM), b=1.0,
                           outcome="revenue", link="identity")
        await rejected(srv.acme.profiles.UploadModel(
            ppb.UploadModelRequest(model=other, activate=True)), grpc.StatusCode.ALREADY_EXISTS)
        after = await srv.acme.profiles.GetModelInfo(ppb.GetModelInfoRequest())
        assert after == before
        assert (after.active.outcome, after.active.link) == ("converted", "logistic")
        again = await srv.acme.profiles.UploadModel(ppb.UploadModelRequest(model=first))
        assert again.version == "m1" and again.active

    async def test_activate_unknown_or_missing_version(self, srv: Running) -> None:
        """ActivateModel of an unknown version is NOT_FOUND; of an empty one INVALID_ARGUMENT."""
        await srv.acme.profiles.UploadModel(ppb.UploadModelRequest(model=model_bytes("m1")))
        await rejected(srv.acme.profiles.ActivateModel(ppb.ActivateModelRequest(version="m9")),
                       grpc.StatusCode.NOT_FOUND)
        await invalid(srv.acme.profiles.ActivateModel(ppb.ActivateModelRequest()), "version")
        info = await srv.acme.profiles.GetModelInfo(ppb.GetModelInfoRequest())
        assert not info.HasField("active")


class TestRouteContactFastPath:
    """convert.route_contact decodes the common request without building field paths;
    it must accept, refuse and return exactly what the full decoder does."""

    EDGES: dict[str, list[Any]] = {
        "contact_id": ["c1", "", "x" * 128, "x" * 129, "bad\nid", "ünï"],
        "queue": ["sales", "", "q" * 129, "tab\tq"],
        "customer_key": ["", "+15550123456", "k" * 256, "k" * 257, "nul\x00"],
        "channel": [0, 1, 5, 6, -1],
        "priority": [0, 1000, 1001, -1],
        "min_proficiency": [0, 100, 101, -5],
    }

    def test_same_as_the_full_decoder(self) -> None:
        """Seeded random combinations of valid and edge values (and some with context,
        exclusions or preferences): same ContactRequest, or the same error and field."""
        from pairline import convert
        from pairline.errors import InvalidArgument

        rng = np.random.default_rng(7)
        for i in range(3000):
            kw = {k: v[int(rng.integers(len(v)))] if rng.random() < 0.3 else v[0]
                  for k, v in self.EDGES.items()}
            req = rpb.RouteContactRequest(**kw)
            if i % 7 == 0:
                req.context["ivr"] = 1.0
            if i % 11 == 0:
                req.excluded_agent_ids.append("a1")
            if i % 13 == 0:
                req.preferred_agent_ids.append("a2")
            outs = []
            for decode in (convert.route_contact, convert._route_contact):
                try:
                    outs.append(decode(req, "route_contact."))
                except InvalidArgument as exc:
                    outs.append((exc.field, exc.message))
            assert outs[0] == outs[1], req
