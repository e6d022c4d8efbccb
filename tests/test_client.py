"""pairline.client against a real server: typed wrappers, API key, deadlines,
retries through the service config, fallback, TLS.

Failures are injected on purpose by :class:`Proxy`, a real gRPC server in front
of the real pairline server that can answer UNAVAILABLE or stall a method before
forwarding it unchanged.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
from collections import defaultdict
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2
from support import KEYS, Running, contact, free_port, login

from pairline.client import (
    IDEMPOTENT,
    AsyncClient,
    Client,
    Deadlines,
    RetryPolicy,
    Routed,
    cpb,
    ipb,
    ppb,
    rpb,
    service_config,
    xpb,
)

ROUTE = "/pairline.v1.Router/RouteContact"
READY = "/pairline.v1.Router/AgentReady"
CONFIRM = "/pairline.v1.Router/ConfirmDecision"


class Proxy(grpc.GenericRpcHandler):
    """A real gRPC server that forwards unary calls to ``upstream`` byte for byte,
    after injecting the failures it is told to: ``fail[method] = n`` answers the
    next n calls UNAVAILABLE; ``delay_s[method]`` stalls each call first."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream
        self.fail: dict[str, int] = defaultdict(int)
        self.delay_s: dict[str, float] = defaultdict(float)
        self.attempts: dict[str, list[dict[str, str]]] = defaultdict(list)
        self.address = ""

    async def start(self, credentials: grpc.ServerCredentials | None = None) -> None:
        self._server = grpc.aio.server()
        self._server.add_generic_rpc_handlers((self,))
        listen = "127.0.0.1:0"
        port = (self._server.add_secure_port(listen, credentials) if credentials
                else self._server.add_insecure_port(listen))
        self.address = f"127.0.0.1:{port}"
        self._channel = grpc.aio.insecure_channel(self.upstream)
        await self._server.start()

    async def stop(self) -> None:
        await self._server.stop(0)
        await self._channel.close()

    def service(self, details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler:
        method = details.method

        async def forward(request: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> bytes:
            meta = {k: v for k, v in context.invocation_metadata() or () if isinstance(v, str)}
            self.attempts[method].append(meta)
            if self.fail[method] > 0:
                self.fail[method] -= 1
                await context.abort(grpc.StatusCode.UNAVAILABLE, "injected: unavailable")
            if self.delay_s[method]:
                await asyncio.sleep(self.delay_s[method])
            auth = [(k, v) for k, v in meta.items() if k == "authorization"]
            try:
                out: bytes = await self._channel.unary_unary(method)(
                    request, metadata=auth, timeout=5)
            except grpc.aio.AioRpcError as err:
                await context.abort(err.code(), err.details() or "")
            return out

        return grpc.unary_unary_rpc_method_handler(forward)


@pytest.fixture
async def proxy(srv: Running) -> AsyncIterator[Proxy]:
    p = Proxy(srv.server.address)
    await p.start()
    try:
        yield p
    finally:
        await p.stop()


def switch_baseline(calls: list[tuple[Any, grpc.StatusCode]]) -> Any:
    """A switch's own routing, as a fallback hook: longest-idle agent 'sw-1'."""

    def hook(request: Any, code: grpc.StatusCode) -> cpb.Decision:
        calls.append((request, code))
        return cpb.Decision(contact_id=request.contact_id, agent_id="sw-1",
                            mode=cpb.MODE_BASELINE, policy="switch")

    return hook


class TestServiceConfig:
    def test_retry_policy_covers_the_idempotent_calls_only(self) -> None:
        """The service config names exactly the idempotent methods, retrying UNAVAILABLE."""
        cfg = json.loads(service_config(RetryPolicy(max_attempts=3)))
        (method_config,) = cfg["methodConfig"]
        names = {(n["service"], n["method"]) for n in method_config["name"]}
        assert names == IDEMPOTENT
        assert ("pairline.v1.Router", "RouteContact") in names
        assert ("pairline.v1.Router", "AgentReady") not in names
        assert ("pairline.v1.Router", "ConfirmDecision") not in names
        assert method_config["retryPolicy"]["maxAttempts"] == 3
        assert method_config["retryPolicy"]["retryableStatusCodes"] == ["UNAVAILABLE"]
        assert json.loads(service_config(None)) == {"methodConfig": []}

    def test_bad_policies_are_refused(self) -> None:
        """gRPC caps attempts at 5; codes must be real status codes."""
        with pytest.raises(ValueError, match="max_attempts"):
            RetryPolicy(max_attempts=9)
        with pytest.raises(ValueError, match="status code"):
            RetryPolicy(retryable_codes=("SOMETIMES",))
        with pytest.raises(ValueError, match="API key"):
            AsyncClient("127.0.0.1:1", "")


class TestWrappers:
    async def test_switch_flow_through_every_router_call(self, srv: Running) -> None:
        """Login, route, confirm, outcome, end, state, stats: typed results, key sent."""
        async with AsyncClient(srv.server.address, KEYS["acme"]) as pl:
            state = await pl.set_agent_state(login("a1", "sales"))
            assert state.status == rpb.AGENT_STATUS_AVAILABLE
            routed = await pl.route_contact(contact("c1"))
            assert isinstance(routed, Routed) and not routed.fallback
            d = routed.decision
            assert (d.agent_id, d.mode) == ("a1", cpb.MODE_BASELINE)
            again = await pl.route_contact(contact("c1"))
            assert again.decision.decision_id == d.decision_id
            assert (await pl.get_agent_state(rpb.GetAgentStateRequest(agent_id="a1"))
                    ).status == rpb.AGENT_STATUS_RESERVED
            ok = await pl.confirm_decision(rpb.ConfirmDecisionRequest(decision_id=d.decision_id))
            assert ok.contact_id == "c1"
            out = await pl.report_outcome(rpb.ReportOutcomeRequest(
                decision_id=d.decision_id, outcomes={"converted": 1.0}))
            assert out.stored
            end = await pl.end_contact(rpb.EndContactRequest(
                contact_id="c1", reason=rpb.END_REASON_HANDLED))
            assert end.agent_id == "a1"
            stats = await pl.get_queue_stats()
            assert [q.queue for q in stats.queues] == ["sales"]
            ready = await pl.agent_ready(rpb.AgentReadyRequest(agent_id="a1"))
            assert ready.decision.mode == cpb.MODE_QUEUED
            assert (await pl.get_model_info()).models == []
            assert await pl.health() == health_pb2.HealthCheckResponse.SERVING
            assert await pl.health("pairline.v1.Router") == health_pb2.HealthCheckResponse.SERVING

    async def test_streams_and_release(self, srv: Running) -> None:
        """Connect and ConnectBatch carry the key; ReleaseDecision frees the agent."""
        async with AsyncClient(srv.server.address, KEYS["acme"]) as pl:
            await pl.set_agent_state(login("a1", "sales"))
            call = pl.connect()
            await call.write(rpb.SwitchEvent(request_id="r1", route_contact=contact("c1")))
            reply = await call.read()
            await call.done_writing()
            assert (reply.request_id, reply.decision.agent_id) == ("r1", "a1")
            rel = await pl.release_decision(rpb.ReleaseDecisionRequest(
                decision_id=reply.decision.decision_id))
            assert rel.agent_status == rpb.AGENT_STATUS_AVAILABLE
            batch = pl.connect_batch()
            await batch.write(rpb.SwitchEventBatch(events=[
                rpb.SwitchEvent(request_id="b1", agent_ready=rpb.AgentReadyRequest(agent_id="a1")),
                rpb.SwitchEvent(request_id="b2", route_contact=contact("c2")),
            ]))
            replies = (await batch.read()).replies
            await batch.done_writing()
            assert [r.request_id for r in replies] == ["b1", "b2"]

    async def test_profiles_privacy_and_insights_wrappers(self, srv: Running) -> None:
        """Profile uploads work; privacy answers UNIMPLEMENTED for now (after auth)."""
        async with AsyncClient(srv.server.address, KEYS["acme"]) as pl:
            one = await pl.upsert_customer_profile(ppb.CustomerProfile(
                customer_key="+1555", vector=[0.1, 0.2, 0.3, 0.4], version=1,
                source_time_ms=1))
            assert one.accepted == 1
            many = await pl.upsert_customer_profiles([ppb.CustomerProfileBatch(profiles=[
                ppb.CustomerProfile(customer_key="+1556", vector=[0.0] * 4, version=1,
                                    source_time_ms=1)])])
            assert many.accepted == 1
            agents = await pl.upsert_agent_profiles(ppb.AgentProfileBatch(profiles=[
                ppb.AgentProfile(agent_id="a1", vector=[1.0, 0.0, 0.0], version=1,
                                 source_time_ms=1)]))
            assert agents.accepted == 1
            rows = [r async for r in pl.export_history(ipb.ExportHistoryRequest(outcome="x"))]
            assert rows == []
    async def test_privacy_wrappers(self, srv: Running) -> None:
        """Opt-out (twice: the repeat changes nothing), bulk opt-out, withdrawal,
        deletion, tickets and the audit log."""
        async with AsyncClient(srv.server.address, KEYS["acme"]) as pl:
            first = await pl.opt_out(xpb.OptOutRequest(customer_key="+1555"))
            again = await pl.opt_out(xpb.OptOutRequest(customer_key="+1555"))
            assert (first.changed, again.changed) == (True, False)
            assert first.customer_digest == again.customer_digest
            bulk = await pl.bulk_opt_out([xpb.BulkOptOutRequest(customer_keys=["+1", "+2"])])
            assert (bulk.received, bulk.opted_out) == (2, 2)
            undo = await pl.withdraw_opt_out(xpb.OptOutRequest(customer_key="+1555"))
            assert undo.changed
            ticket = await pl.request_deletion(xpb.RequestDeletionRequest(customer_key="+1666"))
            assert ticket.ticket_id
            got = await pl.get_deletion(xpb.GetDeletionRequest(ticket_id=ticket.ticket_id))
            assert got.ticket_id == ticket.ticket_id
            listed = await pl.list_deletions(xpb.ListDeletionsRequest())
            assert ticket.ticket_id in [t.ticket_id for t in listed.tickets]
            audit = await pl.read_audit(xpb.ReadAuditRequest())
            assert "opt_out" in [e.op for e in audit.entries]

    async def test_wrong_key_is_unauthenticated_not_fallback(self, srv: Running) -> None:
        """An authentication error is the caller's to fix: raised, the hook not called."""
        calls: list[Any] = []
        async with AsyncClient(srv.server.address, "not-a-key",
                               fallback=switch_baseline(calls)) as pl:
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await pl.route_contact(contact("c1"))
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert calls == []

    async def test_blocking_client(self, srv: Running) -> None:
        """The blocking Client does the same calls (run in a thread beside the server)."""

        def flow() -> tuple[Routed, int]:
            with Client(srv.server.address, KEYS["acme"]) as pl:
                pl.set_agent_state(login("a1", "sales"))
                routed = pl.route_contact(contact("c1"))
                (reply,) = pl.connect([rpb.SwitchEvent(request_id="x",
                                                       route_contact=contact("c2"))])
                assert (reply.request_id, reply.decision.mode) == ("x", cpb.MODE_QUEUED)
                return routed, pl.health()

        routed, health = await asyncio.to_thread(flow)
        assert routed.decision.agent_id == "a1" and not routed.fallback
        assert health == health_pb2.HealthCheckResponse.SERVING


class TestRetries:
    async def test_idempotent_call_is_retried_through_brief_unavailability(
        self, srv: Running, proxy: Proxy
    ) -> None:
        """RouteContact answered UNAVAILABLE twice succeeds on the third attempt,
        which gRPC marks with grpc-previous-rpc-attempts."""
        await srv.acme.router.SetAgentState(login("a1", "sales"))
        proxy.fail[ROUTE] = 2
        async with AsyncClient(proxy.address, KEYS["acme"],
                               deadlines=Deadlines(decision_s=5)) as pl:
            routed = await pl.route_contact(contact("c1"))
        assert routed.decision.agent_id == "a1" and not routed.fallback
        attempts = proxy.attempts[ROUTE]
        assert len(attempts) == 3
        assert [a.get("grpc-previous-rpc-attempts") for a in attempts] == [None, "1", "2"]
        assert all(a["authorization"] == f"Bearer {KEYS['acme']}" for a in attempts)

    async def test_retries_stop_at_max_attempts(self, srv: Running, proxy: Proxy) -> None:
        """Past max_attempts the UNAVAILABLE reaches the caller (no hook configured)."""
        proxy.fail[ROUTE] = 10
        async with AsyncClient(proxy.address, KEYS["acme"], retry=RetryPolicy(max_attempts=3),
                               deadlines=Deadlines(decision_s=5)) as pl:
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await pl.route_contact(contact("c1"))
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
        assert len(proxy.attempts[ROUTE]) == 3

    async def test_non_idempotent_calls_are_not_retried(self, srv: Running, proxy: Proxy) -> None:
        """ConfirmDecision and AgentReady see one attempt: the error reaches the caller."""
        proxy.fail[CONFIRM] = 1
        proxy.fail[READY] = 1
        async with AsyncClient(proxy.address, KEYS["acme"]) as pl:
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await pl.confirm_decision(rpb.ConfirmDecisionRequest(decision_id="d1"))
            assert err.value.code() == grpc.StatusCode.UNAVAILABLE
            with pytest.raises(grpc.aio.AioRpcError):
                await pl.agent_ready(rpb.AgentReadyRequest(agent_id="a1"))
        assert len(proxy.attempts[CONFIRM]) == 1
        assert len(proxy.attempts[READY]) == 1

    async def test_retry_can_be_switched_off(self, srv: Running, proxy: Proxy) -> None:
        """retry=None: even RouteContact is tried once."""
        proxy.fail[ROUTE] = 1
        async with AsyncClient(proxy.address, KEYS["acme"], retry=None) as pl:
            with pytest.raises(grpc.aio.AioRpcError):
                await pl.route_contact(contact("c1"))
        assert len(proxy.attempts[ROUTE]) == 1


class TestFallback:
    async def test_deadline_the_server_cannot_meet(self, srv: Running, proxy: Proxy) -> None:
        """A stalled RouteContact past the decision deadline returns the switch's own
        decision, flagged as fallback, within about the deadline."""
        await srv.acme.router.SetAgentState(login("a1", "sales"))
        proxy.delay_s[ROUTE] = 1.0
        calls: list[Any] = []
        async with AsyncClient(proxy.address, KEYS["acme"], deadlines=Deadlines(decision_s=0.1),
                               fallback=switch_baseline(calls)) as pl:
            loop = asyncio.get_running_loop()
            t0 = loop.time()
            routed = await pl.route_contact(contact("c1"))
            took = loop.time() - t0
        assert routed.fallback and routed.code == grpc.StatusCode.DEADLINE_EXCEEDED
        assert (routed.decision.agent_id, routed.decision.policy) == ("sw-1", "switch")
        assert took < 0.6
        assert [(r.contact_id, c) for r, c in calls] == [("c1", grpc.StatusCode.DEADLINE_EXCEEDED)]

    async def test_stopped_server(self) -> None:
        """Nothing listening: UNAVAILABLE, the (async) hook decides."""

        async def hook(request: Any, code: grpc.StatusCode) -> cpb.Decision:
            return cpb.Decision(contact_id="oldest-waiting", agent_id=request.agent_id)

        async with AsyncClient(f"127.0.0.1:{free_port()}", KEYS["acme"], fallback=hook) as pl:
            routed = await pl.agent_ready(rpb.AgentReadyRequest(agent_id="a7"))
        assert routed.fallback and routed.code == grpc.StatusCode.UNAVAILABLE
        assert (routed.decision.agent_id, routed.decision.contact_id) == ("a7", "oldest-waiting")

    async def test_without_hook_the_error_is_raised(self, srv: Running, proxy: Proxy) -> None:
        """No hook: DEADLINE_EXCEEDED reaches the caller."""
        proxy.delay_s[ROUTE] = 1.0
        async with AsyncClient(proxy.address, KEYS["acme"],
                               deadlines=Deadlines(decision_s=0.1)) as pl:
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await pl.route_contact(contact("c1"))
        assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED

    async def test_invalid_request_is_not_a_fallback(self, srv: Running) -> None:
        """INVALID_ARGUMENT is a bug in the caller, not an outage: raised."""
        calls: list[Any] = []
        async with AsyncClient(srv.server.address, KEYS["acme"],
                               fallback=switch_baseline(calls)) as pl:
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await pl.route_contact(rpb.RouteContactRequest(contact_id="c1", queue="sales"))
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert calls == []

    async def test_blocking_client_falls_back(self) -> None:
        """The blocking Client calls a plain hook the same way."""
        calls: list[Any] = []

        def run() -> Routed:
            with Client(f"127.0.0.1:{free_port()}", KEYS["acme"],
                        fallback=switch_baseline(calls)) as pl:
                return pl.route_contact(contact("c1"))

        routed = await asyncio.to_thread(run)
        assert routed.fallback and routed.decision.agent_id == "sw-1"
        assert calls[0][1] == grpc.StatusCode.UNAVAILABLE


@pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl is needed to make a cert")
class TestTls:
    async def test_route_over_tls(self, srv: Running, tmp_path: Path) -> None:
        """tls=True with a private CA: the call goes through a TLS endpoint; a client
        without the CA cannot connect."""
        key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
        subprocess.run(
            ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
             "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost",
             "-keyout", str(key), "-out", str(cert)],
            check=True, capture_output=True,
        )
        creds = grpc.ssl_server_credentials([(key.read_bytes(), cert.read_bytes())])
        p = Proxy(srv.server.address)
        await p.start(creds)
        target = p.address.replace("127.0.0.1", "localhost")
        try:
            await srv.acme.router.SetAgentState(login("a1", "sales"))
            async with AsyncClient(target, KEYS["acme"], tls=True,
                                   root_certificates=cert.read_bytes()) as pl:
                routed = await pl.route_contact(contact("c1"))
            assert routed.decision.agent_id == "a1"
            async with AsyncClient(target, KEYS["acme"], tls=True, retry=None) as pl:
                with pytest.raises(grpc.aio.AioRpcError) as err:
                    await pl.route_contact(contact("c2"))
            assert err.value.code() == grpc.StatusCode.UNAVAILABLE
        finally:
            await p.stop()

    def test_certificates_need_tls(self) -> None:
        """Certificates without tls=True are a mistake, refused."""
        with pytest.raises(ValueError, match="tls=True"):
            Client("127.0.0.1:1", "k", root_certificates=b"x")
