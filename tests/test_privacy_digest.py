"""Pseudonymisation of customer keys: the digest is HMAC-SHA256 under the tenant's
secret, and the raw key never reaches a log line, whatever path a request takes."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import re
from collections.abc import Iterator
from typing import Any

import grpc
import numpy as np
import pytest
import structlog
from structlog.testing import capture_logs
from support import Running, contact, login, running, settings, tenant

from pairline._proto.pairline.v1 import common_pb2 as cpb
from pairline._proto.pairline.v1 import profiles_pb2 as ppb
from pairline._proto.pairline.v1 import router_pb2 as rpb
from pairline.logs import configure
from pairline.model import dump_model
from pairline.privacy import Pseudonymiser

RAW_KEY = "+15550123456"
DIGITS = "15550123456"  # the key without its '+': must not appear either
SECRET_A = "acme-secret-0123456789"
SECRET_B = "globex-secret-0123456789"


def reference(secret: str, key: str) -> str:
    return hmac.new(secret.encode(), key.encode(), hashlib.sha256).hexdigest()


class TestDigest:
    @pytest.mark.parametrize("key", [RAW_KEY, "a", "customer-42", "k" * 256, "Zoë ☎ 東京"])
    def test_is_hmac_sha256_hex(self, key: str) -> None:
        """digest(key) is the hex HMAC-SHA256 of the UTF-8 key under the UTF-8 secret."""
        got = Pseudonymiser(SECRET_A).digest(key)
        assert got == reference(SECRET_A, key)
        assert re.fullmatch(r"[0-9a-f]{64}", got)

    def test_deterministic_and_independent_of_call_order(self) -> None:
        """The same key always gives the same digest, whatever was digested in between."""
        p = Pseudonymiser(SECRET_A)
        first = p.digest(RAW_KEY)
        others = [p.digest(f"other-{i}") for i in range(5)]
        assert p.digest(RAW_KEY) == first
        assert Pseudonymiser(SECRET_A).digest(RAW_KEY) == first
        assert len(set(others)) == 5 and first not in others

    def test_tenants_secrets_give_different_digests(self) -> None:
        """One key under two tenants' secrets gives two unrelated digests."""
        a = Pseudonymiser(SECRET_A).digest(RAW_KEY)
        b = Pseudonymiser(SECRET_B).digest(RAW_KEY)
        assert a != b
        assert (a, b) == (reference(SECRET_A, RAW_KEY), reference(SECRET_B, RAW_KEY))

    def test_support_tenants_use_their_own_secrets(self) -> None:
        """The test tenants' secrets are the ones used for the reference digests above."""
        assert tenant("acme").secret == SECRET_A and tenant("globex").secret == SECRET_B

    def test_not_a_plain_hash(self) -> None:
        """The digest is keyed: it is not the unkeyed SHA-256 of the key."""
        assert Pseudonymiser(SECRET_A).digest(RAW_KEY) != hashlib.sha256(
            RAW_KEY.encode()).hexdigest()

    def test_empty_key_gives_empty_digest(self) -> None:
        """Empty in, empty out (a contact without a customer key)."""
        assert Pseudonymiser(SECRET_A).digest("") == ""

    @pytest.mark.parametrize("key", [RAW_KEY, DIGITS, "customer-42", "deadbeef"])
    def test_digest_does_not_contain_the_key(self, key: str) -> None:
        """The raw key (even one made of hex digits) is not a substring of its digest."""
        got = Pseudonymiser(SECRET_A).digest(key)
        assert key not in got and DIGITS not in got

    def test_nothing_of_the_key_kept(self) -> None:
        """A Pseudonymiser holds no key it has digested (slots only hold the MAC)."""
        p = Pseudonymiser(SECRET_A)
        p.digest(RAW_KEY)
        assert not hasattr(p, "__dict__")
        state = [getattr(p, s) for s in type(p).__slots__]
        assert all(DIGITS not in repr(v) for v in state)


# ------------------------------------------------------------------ via the RPCs
def model_bytes() -> bytes:
    W = np.zeros((4, 3), np.float32)
    W[0, 0] = 1.0
    return dump_model(version="v1", W=W, wc=np.zeros(4), wa=np.zeros(3), b=0.0)


async def exercise_key_paths(srv: Running) -> list[Any]:
    """Send RAW_KEY down every path that takes a customer key (profiles, routing, the
    Connect stream, rejected requests). Returns the decisions."""
    p, r = srv.acme.profiles, srv.acme.router
    await p.UploadModel(ppb.UploadModelRequest(model=model_bytes(), activate=True))
    await p.UpsertAgentProfiles(ppb.AgentProfileBatch(profiles=[
        ppb.AgentProfile(agent_id="strong", vector=[1, 0, 0], source_time_ms=1),
        ppb.AgentProfile(agent_id="weak", vector=[0, 0, 0], source_time_ms=1)]))
    prof = ppb.CustomerProfile(customer_key=RAW_KEY, vector=[1, 0, 0, 0], source_time_ms=5)
    await p.UpsertCustomerProfile(prof)
    await p.UpsertCustomerProfile(prof)  # stale
    await p.UpsertCustomerProfiles(iter([ppb.CustomerProfileBatch(profiles=[prof, prof])]))
    with pytest.raises(grpc.aio.AioRpcError):  # rejected: wrong dimension
        await p.UpsertCustomerProfile(ppb.CustomerProfile(customer_key=RAW_KEY, vector=[1.0],
                                                          source_time_ms=5))
    with pytest.raises(grpc.aio.AioRpcError):  # rejected: the key has a control character
        await p.UpsertCustomerProfile(ppb.CustomerProfile(customer_key=RAW_KEY + "\n",
                                                          vector=[1, 0, 0, 0], source_time_ms=5))
    with pytest.raises(grpc.aio.AioRpcError):  # rejected in a stream (batch 1)
        await p.UpsertCustomerProfiles(iter([
            ppb.CustomerProfileBatch(profiles=[prof]),
            ppb.CustomerProfileBatch(profiles=[ppb.CustomerProfile(customer_key=RAW_KEY)])]))

    decisions = []
    for a in ("weak", "strong"):
        await r.SetAgentState(login(a, "sales"))
    decisions.append(await r.RouteContact(contact("c1", customer_key=RAW_KEY)))
    decisions.append(await r.RouteContact(contact("c1", customer_key=RAW_KEY)))  # retried
    decisions.append(await r.RouteContact(contact("c2", customer_key=RAW_KEY)))
    decisions.append(await r.RouteContact(contact("c3", customer_key=RAW_KEY)))  # queued
    with pytest.raises(grpc.aio.AioRpcError):  # rejected: live in another queue
        await r.RouteContact(contact("c1", queue="support", customer_key=RAW_KEY))
    with pytest.raises(grpc.aio.AioRpcError):  # rejected: bad channel
        await r.RouteContact(contact("c9", channel=99, customer_key=RAW_KEY))
    call = r.Connect(timeout=None)
    await call.write(rpb.SwitchEvent(request_id="e1", route_contact=contact(
        "c4", customer_key=RAW_KEY)))
    await call.write(rpb.SwitchEvent(request_id="e2", route_contact=contact(
        "c5", customer_key=RAW_KEY + "\x00")))
    replies = [await asyncio.wait_for(call.read(), 10) for _ in range(2)]
    await call.done_writing()
    assert replies[0].WhichOneof("reply") == "decision"
    assert replies[1].WhichOneof("reply") == "error"
    return decisions


@pytest.fixture
def debug_logging() -> Iterator[None]:
    """Log everything (debug and up) for the test, then restore the suite's exact
    structlog configuration (same processors, same output stream)."""
    saved = structlog.get_config()
    configure("debug", json=True, cache=False)
    try:
        yield
    finally:
        structlog.configure(**saved)


class TestRawKeyNeverLogged:
    async def test_structlog_events(self, debug_logging: None) -> None:
        """No structlog event of any level holds the raw customer key (or its digits)."""
        with capture_logs() as events:
            async with running(settings(policy="greedy")) as srv:
                decisions = await exercise_key_paths(srv)
        # The key was used: the profile it names drove the decision.
        assert decisions[0].mode == cpb.MODE_PAIRED and decisions[0].agent_id == "strong"
        assert decisions[1] == decisions[0]
        assert decisions[3].mode == cpb.MODE_QUEUED
        # The capture saw the traffic, debug events included.
        names = [e["event"] for e in events]
        assert "contact_routed" in names and "rpc_rejected" in names
        assert "model_uploaded" in names
        for e in events:
            text = repr(e)
            assert DIGITS not in text, e

    async def test_rendered_output(self, capsys: pytest.CaptureFixture[str],
                                   debug_logging: None) -> None:
        """The JSON lines actually written (stdout and stderr) never hold the raw key."""
        configure("debug", json=True, cache=False)  # write to capsys's stderr
        async with running(settings(policy="greedy")) as srv:
            await exercise_key_paths(srv)
        out = capsys.readouterr()
        written = out.out + out.err
        lines = [json.loads(line) for line in out.err.splitlines() if line.startswith("{")]
        assert any(e.get("event") == "contact_routed" for e in lines)
        assert any(e.get("event") == "rpc_rejected" for e in lines)
        assert DIGITS not in written
