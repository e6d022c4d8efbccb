"""The log redactor: no raw customer key survives it, whatever the event holds;
ordinary fields (digests, ids, addresses, timestamps, numbers) pass unchanged."""

from __future__ import annotations

import contextlib
import contextvars
import json
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any

import pytest
import structlog
from support import Running, contact, login, running, settings

from pairline._proto.pairline.v1 import common_pb2 as cpb
from pairline._proto.pairline.v1 import router_pb2 as rpb
from pairline.logs import REDACTED, configure, note_raw_key, redact_raw_keys
from pairline.privacy import Pseudonymiser

DIGEST = Pseudonymiser("acme-secret-0123456789").digest("+15550123456")


def run(**fields: Any) -> dict[str, Any]:
    return dict(redact_raw_keys(None, "info", dict(fields)))


class TestPatterns:
    @pytest.mark.parametrize("raw", [
        "+15550123456", "+1 555 012 3456", "+44 (20) 7946-0958", "15550123456",
        "(555) 012-3456 x", "555.012.3456.78", "0049 30 1234567", "jane.doe+vip@example.co.uk",
    ])
    def test_phone_numbers_and_emails_are_redacted(self, raw: str) -> None:
        """Phone numbers in any usual writing, and e-mail addresses, are replaced in
        messages, nested values and exception text."""
        out = run(event=f"routed {raw} now", nested={"a": [f"x {raw}"]}, exception=f"E: {raw}")
        text = json.dumps(out)
        digits = "".join(ch for ch in raw if ch.isdigit())
        assert raw not in text and (not digits or digits not in text)
        assert REDACTED in out["event"] and REDACTED in out["nested"]["a"][0]

    @pytest.mark.parametrize("value", [
        DIGEST, "d1a2b3c4d5e6-1f", "127.0.0.1:50051", "2027-01-15", "del-0123456789abcdef01234567",
        "agent-12", "sales", "v1",
    ])
    def test_ordinary_values_pass(self, value: str) -> None:
        """Digests, decision and ticket ids, addresses and dates are left alone."""
        assert run(event="e", v=value)["v"] == value

    def test_numbers(self) -> None:
        """Unix-ms ints and small numbers pass; an int shaped like a phone number does not."""
        out = run(event="e", at_ms=1_800_000_000_123, n=42, x=0.5, phone_like=15550123456)
        assert (out["at_ms"], out["n"], out["x"]) == (1_800_000_000_123, 42, 0.5)
        assert out["phone_like"] == REDACTED

    def test_key_fields_are_redacted_whole(self) -> None:
        """Fields named like a raw identifier are replaced whatever they hold."""
        out = run(event="e", customer_key="ACC-7", email="x", nested={"phone": "abc"})
        assert out["customer_key"] == out["email"] == out["nested"]["phone"] == REDACTED


class TestNotedKeys:
    def test_digested_key_is_scrubbed_in_its_task_only(self) -> None:
        """A key the pseudonymiser saw in this context is scrubbed from any field,
        even one that matches no pattern; another context is unaffected."""
        def inside() -> tuple[dict[str, Any], dict[str, Any]]:
            Pseudonymiser("acme-secret-0123456789").digest("ACCOUNT-XYZ-77")
            return run(event="lookup ACCOUNT-XYZ-77 failed"), run(event="ACCOUNT-XYZ-7 ok")

        hit, near = contextvars.copy_context().run(inside)
        assert hit["event"] == f"lookup {REDACTED} failed"
        assert near["event"] == "ACCOUNT-XYZ-7 ok"
        other = contextvars.copy_context().run(lambda: run(event="ACCOUNT-XYZ-77"))
        assert other["event"] == "ACCOUNT-XYZ-77"

    def test_short_keys_are_not_noted(self) -> None:
        """Keys under 6 characters are not noted (they would scrub ordinary words)."""
        def inside() -> dict[str, Any]:
            note_raw_key("a")
            return run(event="a warning about a")

        assert contextvars.copy_context().run(inside)["event"] == "a warning about a"


class TestConfigured:
    def test_rendered_line_has_no_key(self, capsys: pytest.CaptureFixture[str]) -> None:
        """With the server's configuration, a careless log call still writes no key."""
        saved = structlog.get_config()
        configure("debug", json=True, cache=False)
        try:
            structlog.get_logger().info("careless", detail="call from +1 (555) 012-3456",
                                        args=["15550123456"])
        finally:
            structlog.configure(**saved)
        err = capsys.readouterr().err
        line = json.loads(err.strip().splitlines()[-1])
        assert line["event"] == "careless" and "timestamp" in line
        assert "5550123456" not in err and "012-3456" not in err


    async def test_a_log_line_that_cannot_be_written_does_not_fail_the_call(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """stderr closed (a broken pipe, a closed terminal): routing goes on, the lines
        are dropped and counted; the logger writes to stderr as it is at each line."""
        import io
        import sys

        from pairline.logs import StderrLogger

        saved = structlog.get_config()
        configure("info", json=True, cache=False)
        try:
            async with running() as r:
                await r.acme.router.SetAgentState(login("a1", "sales"))
                closed = io.StringIO()
                closed.close()
                monkeypatch.setattr(sys, "stderr", closed)
                before = StderrLogger.dropped
                await r.acme.router.SetAgentState(login("a2", "sales"))  # logs at info
                d = await r.acme.router.RouteContact(contact("c1"))
                assert d.agent_id in ("a1", "a2")
                assert StderrLogger.dropped > before
                fresh = io.StringIO()
                monkeypatch.setattr(sys, "stderr", fresh)
                await r.acme.router.SetAgentState(login("a3", "sales"))
                assert '"agent_state_set"' in fresh.getvalue()
        finally:
            structlog.configure(**saved)


# ------------------------------------------------------------- decision log
def _decision_lines(err: str) -> list[dict[str, Any]]:
    lines = [json.loads(line) for line in err.splitlines() if line.startswith("{")]
    return [line for line in lines if line.get("event") == "decision"]


@contextlib.asynccontextmanager
async def _logged_server(sample: float) -> AsyncIterator[Running]:
    """A real server with decision_log_sample = ``sample``, info-level JSON logs to
    stderr, and two agents of acme on line."""
    configure("info", json=True, cache=False)
    async with running(replace(settings(), decision_log_sample=sample)) as r:
        for agent in ("a1", "a2"):
            await r.acme.router.SetAgentState(login(agent, "sales"))
        yield r


class TestDecisionLog:
    async def test_one_event_per_decision_with_the_callers_request_id(
        self, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """At sample 1 each RouteContact logs one `decision` event with the caller's
        x-request-id, the rpc, tenant, decision id, mode, policy, latency, model."""
        async with _logged_server(1.0) as r:
            capsys.readouterr()
            md = (*r.acme.metadata, ("x-request-id", "req-42"))
            d = await r.acme.router.RouteContact(contact("c1"), metadata=md)
            e = await r.acme.router.RouteContact(contact("c2"))
        (one, two) = _decision_lines(capsys.readouterr().err)
        assert one["request_id"] == "req-42" and one["rpc"] == "RouteContact"
        assert (one["tenant"], one["decision_id"], one["agent"]) == ("acme", d.decision_id,
                                                                      d.agent_id)
        assert one["mode"] == "baseline" and one["policy"] == d.policy
        assert one["latency_ms"] >= 0 and "model_version" in one and one["level"] == "info"
        assert two["decision_id"] == e.decision_id
        assert two["request_id"] and two["request_id"] != "req-42"  # made by the server

    async def test_connect_events_carry_their_own_request_ids(
        self, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """Over Connect each event's decision is logged with that event's request_id."""
        async with _logged_server(1.0) as r:
            capsys.readouterr()
            call = r.acme.router.Connect(timeout=None)
            for rid, cid in (("ev-1", "c1"), ("ev-2", "c2")):
                await call.write(rpb.SwitchEvent(request_id=rid, route_contact=contact(cid)))
                assert (await call.read()).request_id == rid
            await call.done_writing()
        lines = _decision_lines(capsys.readouterr().err)
        assert [(x["request_id"], x["rpc"]) for x in lines] == [("ev-1", "Connect"),
                                                                ("ev-2", "Connect")]

    async def test_sampled_out_logs_nothing(self, capsys: pytest.CaptureFixture[str]) -> None:
        """At sample 0 (the default) no decision is logged."""
        async with _logged_server(0.0) as r:
            for i in range(5):
                await r.acme.router.RouteContact(contact(f"c{i}", channel=cpb.CHANNEL_CHAT))
        assert _decision_lines(capsys.readouterr().err) == []

    @pytest.mark.parametrize("key", ["CUST-secret-4242", "+15550123456"])
    async def test_decision_log_cannot_carry_the_raw_key(
        self, key: str, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """Even when the switch puts the customer's raw key in the contact id and the
        request id, the decision event (and every other line) does not contain it."""
        async with _logged_server(1.0) as r:
            capsys.readouterr()
            md = (*r.acme.metadata, ("x-request-id", f"req-{key}"))
            await r.acme.router.RouteContact(contact(f"call-{key}", customer_key=key),
                                             metadata=md)
            call = r.acme.router.Connect(timeout=None)
            await call.write(rpb.SwitchEvent(request_id=f"ev-{key}", route_contact=contact(
                f"call2-{key}", customer_key=key)))
            await call.read()
            await call.done_writing()
        err = capsys.readouterr().err
        assert len(_decision_lines(err)) == 2
        assert key not in err and key.lstrip("+") not in err
        assert REDACTED in err
