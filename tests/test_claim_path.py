"""The claim path's own pieces, against the suite's Redis: the lane's one timer for
every call in flight, and decision records as the commit writes them (the decision
as a JSON array, shared with the contact snapshot) next to records written before
(the decision as an object)."""

from __future__ import annotations

import asyncio
import json
import time

import pytest
from redis.exceptions import TimeoutError as RedisTimeoutError
from support import RedisProcess

from pairline.domain import Channel, Decision, Mode
from pairline.routing import TenantRouting
from pairline.stores.base import DecisionRecord
from pairline.stores.lane import Lane
from pairline.stores.redis import _record_of, record_json


class TestLaneTimer:
    async def test_a_call_past_its_timeout_fails_the_connection(
        self, redis_server: RedisProcess
    ) -> None:
        """A reply that does not come within the call's timeout raises TimeoutError
        and drops the connection (the next call reconnects)."""
        lane = Lane(port=redis_server.port, timeout_s=2.0)
        try:
            start = time.monotonic()
            with pytest.raises(RedisTimeoutError):
                await lane.call("BLPOP", "claim-path:never", 5, timeout_s=0.2)
            assert time.monotonic() - start < 1.5
            assert await lane.call("PING") == b"PONG"
        finally:
            lane.close()

    async def test_a_shorter_timeout_behind_a_longer_one_is_kept(
        self, redis_server: RedisProcess
    ) -> None:
        """A call sent after one with a longer timeout still fails at its own
        (the one timer is moved earlier), and fails the call before it too."""
        lane = Lane(port=redis_server.port, timeout_s=5.0)
        try:
            await lane.call("PING")
            start = time.monotonic()
            slow = asyncio.ensure_future(lane.call("BLPOP", "claim-path:never", 3))
            await asyncio.sleep(0)
            with pytest.raises(RedisTimeoutError):
                await lane.call("PING", timeout_s=0.2)
            assert time.monotonic() - start < 1.5
            with pytest.raises(RedisTimeoutError):
                await slow
        finally:
            lane.close()

    async def test_answered_calls_leave_the_connection_alone(
        self, redis_server: RedisProcess
    ) -> None:
        """Once the replies are in, the timer firing later changes nothing: the same
        connection serves the next calls."""
        lane = Lane(port=redis_server.port, timeout_s=0.1)
        try:
            assert await lane.call("SET", "claim-path:k", "v") == b"OK"
            proto = lane._proto
            await asyncio.sleep(0.3)  # (past every deadline of those calls)
            assert await lane.call("GET", "claim-path:k") == b"v"
            assert proto is not None and lane._proto is proto and not proto.closed
        finally:
            lane.close()


def _decision(**kw: object) -> Decision:
    base: dict[str, object] = {
        "decision_id": "d1-2a", "mode": Mode.PAIRED, "contact_id": "c1", "agent_id": "a1",
        "queue": "q", "channel": int(Channel.CHAT), "policy": "diagonal",
        "decided_at": 1_764_432_000.123456, "expires_at": 1_764_432_010.123456,
        "model_version": "m1", "predicted_outcome": 0.4321, "slot_on": None,
        "compared": False,
    }
    base.update(kw)
    return Decision(**base)  # type: ignore[arg-type]


class TestDecisionRecord:
    def test_record_reads_back_as_written(self) -> None:
        """A record (decision as an array) reads back to the same decision, digest,
        outcomes, expiry and context."""
        d = _decision(slot_on=True, compared=True)
        rec = DecisionRecord(d, "ab" * 32, outcomes={"sale": 1.0}, expires_at=1_800_000_000.5,
                             context=(("tier", 2.0),))
        raw = record_json(rec)
        assert isinstance(json.loads(raw)["d"], list)
        back = _record_of(raw)
        assert back.decision == d
        assert (back.customer_digest, back.outcomes, back.expires_at, back.context) == (
            rec.customer_digest, rec.outcomes, rec.expires_at, rec.context)

    def test_record_with_the_decision_as_an_object_still_reads(self) -> None:
        """Records written before the array layout (the decision as an object) read
        the same."""
        d = _decision()
        old = json.dumps({"d": d.as_dict(), "c": "", "x": 1_800_000_000_000, "ctx": [],
                          "o": {"": 0}}).encode()
        assert _record_of(old).decision == d

    def test_snapshot_and_record_share_the_staged_decision_unless_it_changed(self) -> None:
        """The contact snapshot carries the array staged with the record; a decision
        changed after staging is encoded afresh (never a stale copy)."""
        routing = TenantRouting(max_waiting=10, max_agents=10)
        c = routing.new_contact("c1", "q", Channel.CHAT, 0, "", (), 0, frozenset(), 5.0)
        routing.contacts["c1"] = c
        d = _decision()
        c.decision = d
        staged = routing.stage_decision(d)
        assert json.loads(routing.contact_wire("c1"))[11] == json.loads(staged)
        d.mode, d.predicted_outcome = Mode.DEGRADED, 0.0
        fresh = json.loads(routing.contact_wire("c1"))[11]
        assert fresh[DECISION_MODE] == int(Mode.DEGRADED) and fresh[DECISION_PREDICTED] == 0.0


DECISION_MODE = 1  # positions in DECISION_FIELDS (checked below)
DECISION_PREDICTED = 10


def test_field_positions() -> None:
    """The positions the tests above read are those of DECISION_FIELDS."""
    from pairline.routing import DECISION_FIELDS

    assert DECISION_FIELDS[DECISION_MODE] == "mode"
    assert DECISION_FIELDS[DECISION_PREDICTED] == "predicted_outcome"
