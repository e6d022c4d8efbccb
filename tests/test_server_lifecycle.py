"""Start, health, reflection, graceful stop, and the ``pairline`` command line as a
real process (serve / try, SIGTERM, configuration from TOML and environment)."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from pathlib import Path

import grpc
import pytest
from google.protobuf import descriptor_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from support import Client, Running, contact, free_port, login, running, settings

from pairline._proto.pairline.v1 import profiles_pb2 as ppb
from pairline._proto.pairline.v1 import router_pb2 as rpb
from pairline.config import DEMO_API_KEY, Settings, hash_api_key, load_settings

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
PAIRLINE_SERVICES = (
    "pairline.v1.Router",
    "pairline.v1.Profiles",
    "pairline.v1.Privacy",
    "pairline.v1.Insights",
)
HEALTH_NAMES = ("", *PAIRLINE_SERVICES)


def profile_batch(prefix: str, n: int, dim: int = 4) -> ppb.CustomerProfileBatch:
    return ppb.CustomerProfileBatch(profiles=[
        ppb.CustomerProfile(customer_key=f"{prefix}-{i}", vector=[0.5] * dim, version=1,
                            source_time_ms=1_700_000_000_000)
        for i in range(n)
    ])


class TestHealth:
    async def test_every_service_is_serving_after_start(self, srv: Running) -> None:
        """Overall and per-service health is SERVING once start() returns, without a key."""
        health = srv.acme.health  # the health stub sends no key
        for name in HEALTH_NAMES:
            resp = await health.Check(health_pb2.HealthCheckRequest(service=name), timeout=5)
            assert resp.status == SERVING, name

    async def test_unknown_service_is_not_found(self, srv: Running) -> None:
        """Health for a service the server does not have answers NOT_FOUND."""
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await srv.acme.health.Check(
                health_pb2.HealthCheckRequest(service="pairline.v1.Nope"), timeout=5)
        assert err.value.code() is grpc.StatusCode.NOT_FOUND

    async def test_watchers_see_not_serving_when_stop_begins(self) -> None:
        """Health watchers of every service see NOT_SERVING as soon as stop() begins."""
        async with running(settings()) as r:
            watches = [r.acme.health.Watch(health_pb2.HealthCheckRequest(service=name))
                       for name in HEALTH_NAMES]
            for w in watches:
                assert (await asyncio.wait_for(w.read(), 5)).status == SERVING
            stop = asyncio.create_task(r.server.stop(2))
            for name, w in zip(HEALTH_NAMES, watches, strict=True):
                update = await asyncio.wait_for(w.read(), 2)
                assert update.status == NOT_SERVING, name
            for w in watches:
                w.cancel()
            await asyncio.wait_for(stop, 5)


class TestGracefulStop:
    async def test_in_flight_call_finishes_during_grace(self) -> None:
        """A client stream open when stop(grace) begins completes OK; new calls are refused."""
        async with running(settings()) as r:
            watch = r.acme.health.Watch(health_pb2.HealthCheckRequest(service=""))
            assert (await watch.read()).status == SERVING
            upsert = r.acme.profiles.UpsertCustomerProfiles(timeout=30)
            await upsert.write(profile_batch("first", 50))

            started = time.monotonic()
            stop = asyncio.create_task(r.server.stop(3))
            assert (await asyncio.wait_for(watch.read(), 2)).status == NOT_SERVING
            watch.cancel()
            await asyncio.sleep(0.2)  # stop() is past health, into the server's own stop

            # New calls are refused, on this channel and on a fresh one.
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await r.acme.router.RouteContact(contact("late"), timeout=2)
            assert err.value.code() is grpc.StatusCode.UNAVAILABLE
            async with grpc.aio.insecure_channel(r.server.address) as fresh:
                with pytest.raises(grpc.aio.AioRpcError) as err:
                    await Client(fresh, r.acme.key).router.GetAgentState(
                        rpb.GetAgentStateRequest(agent_id="a1"), timeout=2)
                assert err.value.code() is grpc.StatusCode.UNAVAILABLE

            # The call in flight goes on: more batches, then close.
            await upsert.write(profile_batch("second", 50))
            await upsert.write(profile_batch("third", 25))
            await upsert.done_writing()
            result = await upsert
            assert (result.accepted, result.stale) == (125, 0)
            assert await upsert.code() is grpc.StatusCode.OK
            await asyncio.wait_for(stop, 5)
            # Nothing else was in flight: the stop did not wait out the whole grace.
            assert time.monotonic() - started < 2.5

    async def test_grace_bounds_calls_that_never_end(self) -> None:
        """Calls still open when the grace period ends are cut off and stop() returns."""
        async with running(settings()) as r:
            upsert = r.acme.profiles.UpsertCustomerProfiles(timeout=30)
            await upsert.write(profile_batch("p", 3))
            conn = r.acme.router.Connect(timeout=30)
            await conn.write(rpb.SwitchEvent(request_id="1", set_agent_state=login("a1", "sales")))
            assert (await conn.read()).agent_state.agent_id == "a1"
            started = time.monotonic()
            await asyncio.wait_for(r.server.stop(0.5), 5)
            assert 0.4 < time.monotonic() - started < 3
            for call in (upsert, conn):
                with pytest.raises(grpc.aio.AioRpcError) as err:
                    await (call if call is upsert else call.read())
                assert err.value.code() is not grpc.StatusCode.OK
            await r.server.stop(0)  # a second stop is harmless

    async def test_stop_without_grace_uses_the_configured_grace(self) -> None:
        """stop() with no argument drains for settings.grace_s, then cuts open calls off."""
        async with running(replace(settings(), grace_s=0.3)) as r:
            conn = r.acme.router.Connect(timeout=30)
            await conn.write(rpb.SwitchEvent(request_id="1", set_agent_state=login("a1", "sales")))
            assert (await conn.read()).agent_state.status == rpb.AGENT_STATUS_AVAILABLE
            started = time.monotonic()
            await asyncio.wait_for(r.server.stop(), 5)
            assert 0.25 < time.monotonic() - started < 2  # 0.3 s, not the harness's 2 s
            with pytest.raises(grpc.aio.AioRpcError):
                await conn.read()


class TestReflection:
    @staticmethod
    async def ask(channel: grpc.aio.Channel,
                  *requests: reflection_pb2.ServerReflectionRequest
                  ) -> list[reflection_pb2.ServerReflectionResponse]:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        call = stub.ServerReflectionInfo(iter(requests), timeout=5)
        return [resp async for resp in call]

    async def test_reflection_lists_the_services(self, srv: Running) -> None:
        """Reflection (no key needed) lists the four pairline services, health and reflection."""
        [resp] = await self.ask(srv.channel, reflection_pb2.ServerReflectionRequest(
            list_services=""))
        names = {s.name for s in resp.list_services_response.service}
        assert set(PAIRLINE_SERVICES) <= names
        assert "grpc.health.v1.Health" in names
        assert "grpc.reflection.v1alpha.ServerReflection" in names

    async def test_reflection_describes_the_router(self, srv: Running) -> None:
        """The Router's file descriptor is served, Connect as a bidirectional stream."""
        [resp] = await self.ask(srv.channel, reflection_pb2.ServerReflectionRequest(
            file_containing_symbol="pairline.v1.Router"))
        files = {}
        for raw in resp.file_descriptor_response.file_descriptor_proto:
            fd = descriptor_pb2.FileDescriptorProto.FromString(raw)
            files[fd.name] = fd
        router = files["pairline/v1/router.proto"]
        [service] = [s for s in router.service if s.name == "Router"]
        methods = {m.name: m for m in service.method}
        assert {"RouteContact", "AgentReady", "SetAgentState", "ConfirmDecision",
                "ReleaseDecision", "EndContact", "ReportOutcome", "Connect", "ConnectBatch",
                "GetAgentState"} == set(methods)
        assert methods["Connect"].client_streaming and methods["Connect"].server_streaming
        assert "pairline/v1/common.proto" in router.dependency


# ---------------------------------------------------------------- command line
def pairline_exe() -> str:
    beside = Path(sys.executable).parent / "pairline"
    found = str(beside) if beside.exists() else shutil.which("pairline")
    assert found, "the pairline console script is not installed"
    return found


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PAIRLINE_")}
    env.update(extra)
    return env


@dataclass
class Process:
    proc: asyncio.subprocess.Process
    banner: list[str]
    stderr_path: Path

    @property
    def address(self) -> str:
        for line in self.banner:
            if line.startswith("pairline is serving on "):
                return line.removeprefix("pairline is serving on ").split()[0]
        raise AssertionError(f"no address in {self.banner}")

    def stderr(self) -> str:
        return self.stderr_path.read_text()

    async def terminate(self, timeout: float = 5.0) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return await asyncio.wait_for(self.proc.wait(), timeout)


@asynccontextmanager
async def serving(tmp_path: Path, *args: str, env: dict[str, str],
                  until: str = "pairline is serving on") -> AsyncIterator[Process]:
    """``pairline serve ARGS`` until its stdout has a line starting with ``until``."""
    err_path = tmp_path / f"stderr-{time.monotonic_ns()}.log"
    with err_path.open("wb") as err:
        proc = await asyncio.create_subprocess_exec(
            pairline_exe(), "serve", *args, env=env,
            stdout=asyncio.subprocess.PIPE, stderr=err)
    p = Process(proc, [], err_path)
    try:
        assert proc.stdout is not None
        while not any(line.startswith(until) for line in p.banner):
            raw = await asyncio.wait_for(proc.stdout.readline(), 30)
            if not raw:
                raise AssertionError(f"serve exited {await proc.wait()}: {p.stderr()}")
            p.banner.append(raw.decode().strip())
        yield p
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def run_cli(*args: str, env: dict[str, str], timeout: float = 30) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        pairline_exe(), *args, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


def write_config(path: Path, port: int | None = None, **top: object) -> dict[str, str]:
    """Two tenants: one with a plain development key, one with a hashed key."""
    keys = {"plain": "plain-key-0123456789", "hashed": "hashed-key-0123456789"}
    lines = [f"listen = \"127.0.0.1:{port}\"" if port else ""]
    lines += [f"{k} = {json.dumps(v)}" for k, v in top.items()]
    lines += [
        "",
        "[[tenants]]",
        'name = "plain"',
        f'api_keys = ["{keys["plain"]}"]',
        'secret = "plain-secret-0123456789"',
        "offer_timeout_s = 7.0",
        "customer_dim = 4",
        "",
        "[[tenants]]",
        'name = "hashed"',
        f'api_key_sha256 = ["{hash_api_key(keys["hashed"])}"]',
        'secret = "hashed-secret-0123456789"',
        "",
    ]
    path.write_text("\n".join(lines))
    return keys


class TestCommandLine:
    async def test_demo_serve_try_and_sigterm(self, tmp_path: Path) -> None:
        """serve --demo prints its address and key, answers `pairline try`, exits 0 on SIGTERM."""
        port = free_port()
        env = clean_env()
        async with serving(tmp_path, "--demo", "--listen", f"127.0.0.1:{port}", env=env,
                           until="Stop with Ctrl-C") as p:
            assert p.address == f"127.0.0.1:{port}"
            assert f"demo tenant API key: {DEMO_API_KEY}" in p.banner

            rc, out, err = await run_cli("try", "--target", p.address, env=env)
            assert rc == 0, err
            answer = json.loads(out)
            decision = answer["decision"]
            assert decision["agentId"] == "agent-1" and decision["contactId"] == "demo-contact-1"
            assert decision["mode"] == "MODE_BASELINE" and decision["decisionId"]
            assert answer["agent"]["agentId"] == "agent-1"
            # Trying again routes the same live contact: the same decision comes back.
            rc, out2, err = await run_cli("try", "--target", p.address, "--key", DEMO_API_KEY,
                                          env=env)
            assert rc == 0, err
            assert json.loads(out2)["decision"]["decisionId"] == decision["decisionId"]
            rc, _, err = await run_cli("try", "--target", p.address, "--key", "wrong-key",
                                       env=env)
            assert rc == 1 and "UNAUTHENTICATED" in err

            started = time.monotonic()
            assert await p.terminate() == 0
            assert time.monotonic() - started < 5
            events = [json.loads(line)["event"] for line in p.stderr().splitlines()
                      if line.startswith("{")]
            assert events[-2:] == ["server_stopping", "server_stopped"]

    async def test_sigterm_drains_an_in_flight_call(self, tmp_path: Path) -> None:
        """On SIGTERM a call already open completes OK before the process exits 0."""
        env = clean_env()
        async with serving(tmp_path, "--demo", "--listen", "127.0.0.1:0", env=env) as p:
            async with grpc.aio.insecure_channel(p.address) as channel:
                client = Client(channel, DEMO_API_KEY)
                health = health_pb2_grpc.HealthStub(channel)
                watch = health.Watch(health_pb2.HealthCheckRequest(service="pairline.v1.Router"))
                assert (await asyncio.wait_for(watch.read(), 5)).status == SERVING
                upsert = client.profiles.UpsertCustomerProfiles(timeout=30)
                await upsert.write(profile_batch("a", 20, dim=16))
                p.proc.send_signal(signal.SIGTERM)
                assert (await asyncio.wait_for(watch.read(), 5)).status == NOT_SERVING
                watch.cancel()
                await upsert.write(profile_batch("b", 20, dim=16))
                await upsert.done_writing()
                assert (await upsert).accepted == 40
            assert await asyncio.wait_for(p.proc.wait(), 8) == 0

    async def test_serve_without_tenants_fails(self, tmp_path: Path) -> None:
        """serve with neither --config nor --demo exits non-zero and says why."""
        rc, out, err = await run_cli("serve", "--listen", "127.0.0.1:0", env=clean_env())
        assert rc != 0
        assert "no tenants configured" in err and "--demo" in err
        assert "serving" not in out

    async def test_toml_config_and_env_listen(self, tmp_path: Path) -> None:
        """--config tenants (plain and hashed keys) are served on PAIRLINE_LISTEN's address."""
        port = free_port()
        cfg = tmp_path / "pairline.toml"
        keys = write_config(cfg)
        env = clean_env(PAIRLINE_LISTEN=f"127.0.0.1:{port}")
        async with serving(tmp_path, "--config", str(cfg), env=env) as p:
            assert p.banner[-1] == f"pairline is serving on 127.0.0.1:{port}"
            assert not any(DEMO_API_KEY in line for line in p.banner)
            async with grpc.aio.insecure_channel(p.address) as channel:
                plain = Client(channel, keys["plain"])
                hashed = Client(channel, keys["hashed"])
                await plain.router.SetAgentState(login("a1", "sales"))
                d = await plain.router.RouteContact(contact("c1"))
                assert d.agent_id == "a1"
                assert d.offer_expires_at_ms - d.decided_at_ms == 7_000  # the tenant's setting
                # The hashed-key tenant is another tenant: it does not see plain's agent.
                with pytest.raises(grpc.aio.AioRpcError) as err:
                    await hashed.router.GetAgentState(rpb.GetAgentStateRequest(agent_id="a1"))
                assert err.value.code() is grpc.StatusCode.NOT_FOUND
                await hashed.router.SetAgentState(login("h1", "sales"))
                d = await hashed.router.RouteContact(contact("c1"))
                assert d.agent_id == "h1"
                assert d.offer_expires_at_ms - d.decided_at_ms == 15_000  # the default
                for key in (DEMO_API_KEY, hash_api_key(keys["hashed"])):
                    with pytest.raises(grpc.aio.AioRpcError) as err:
                        await Client(channel, key).router.RouteContact(contact("x"))
                    assert err.value.code() is grpc.StatusCode.UNAUTHENTICATED
            assert await p.terminate() == 0

    @pytest.mark.parametrize("with_flag", [False, True])
    async def test_listen_precedence(self, tmp_path: Path, with_flag: bool) -> None:
        """The address comes from --listen, else PAIRLINE_LISTEN, else the file's listen."""
        in_file, in_env, in_flag = free_port(), free_port(), free_port()
        cfg = tmp_path / "pairline.toml"
        write_config(cfg, port=in_file, grace_s=1.0)
        env = clean_env(PAIRLINE_CONFIG=str(cfg), PAIRLINE_LISTEN=f"127.0.0.1:{in_env}")
        args = ("--listen", f"127.0.0.1:{in_flag}") if with_flag else ()
        async with serving(tmp_path, *args, env=env) as p:
            assert p.address == f"127.0.0.1:{in_flag if with_flag else in_env}"
            async with grpc.aio.insecure_channel(p.address) as channel:
                resp = await health_pb2_grpc.HealthStub(channel).Check(
                    health_pb2.HealthCheckRequest(service="pairline.v1.Router"), timeout=5)
                assert resp.status == SERVING
            assert await p.terminate() == 0
        stopping = [json.loads(line) for line in p.stderr().splitlines()
                    if '"server_stopping"' in line]
        assert [e["grace_s"] for e in stopping] == [1.0]  # grace_s from the file

    async def test_invalid_config_fails(self, tmp_path: Path) -> None:
        """A config with an unknown setting or a weak tenant secret stops serve with a reason."""
        bad = tmp_path / "unknown.toml"
        write_config(bad, colour="blue")
        rc, out, err = await run_cli("serve", "--config", str(bad), env=clean_env())
        assert rc != 0 and "colour" in err and "serving" not in out
        weak = tmp_path / "weak.toml"
        weak.write_text('[[tenants]]\nname = "w"\napi_keys = ["k-0123456789"]\nsecret = "short"\n')
        rc, out, err = await run_cli("serve", "--config", str(weak), env=clean_env())
        assert rc != 0 and "secret" in err and "serving" not in out


class TestConfigKeys:
    """API keys from a TOML file, loaded as `pairline serve --config` loads them."""

    @staticmethod
    def load(tmp_path: Path, tenant_lines: str) -> Settings:
        path = tmp_path / "keys.toml"
        path.write_text('[[tenants]]\nname = "t"\nsecret = "t-secret-0123456789"\n'
                        + tenant_lines)
        return replace(load_settings(path, {}), listen="127.0.0.1:0")

    @staticmethod
    async def authenticates(r: Running, key: str) -> bool:
        try:
            await r.client(key).router.SetAgentState(login("probe", "sales"))
        except grpc.aio.AioRpcError as err:
            assert err.code() is grpc.StatusCode.UNAUTHENTICATED
            return False
        return True

    async def test_key_forms_authenticate(self, tmp_path: Path) -> None:
        """Plain keys, hashed keys and a lone hashed key (a string) each admit their key."""
        hashed = hash_api_key("hashed-key-0123456789")
        lone = hash_api_key("lone-key-0123456789")
        cfg = self.load(tmp_path, f'api_keys = ["plain-key-0123456789"]\n'
                                  f'api_key_sha256 = ["{hashed}"]\n')
        cfg2 = self.load(tmp_path, f'api_key_sha256 = "{lone}"\n')
        async with running(cfg) as r:
            assert await self.authenticates(r, "plain-key-0123456789")
            assert await self.authenticates(r, "hashed-key-0123456789")
            assert not await self.authenticates(r, hashed)  # the hash is not a key
        async with running(cfg2) as r:
            assert await self.authenticates(r, "lone-key-0123456789")

    async def test_plain_key_given_as_a_string_is_one_key(self, tmp_path: Path) -> None:
        """`api_keys = "KEY"` admits KEY, never its single characters (as api_key_sha256 does)."""
        key = "Zq8-wLm3Rt"  # all characters distinct
        cfg = self.load(tmp_path, f'api_keys = "{key}"\n')
        async with running(cfg) as r:
            admitted = [c for c in key if await self.authenticates(r, c)]
            assert admitted == [], f"one-character keys admitted: {admitted}"
            assert await self.authenticates(r, key)

    async def test_a_hash_that_can_never_match_is_refused(self, tmp_path: Path) -> None:
        """An api_key_sha256 that is not a SHA-256 hex digest is refused at load; an upper-case
        digest is refused or admits its key, never loaded as a key nobody can use."""
        with pytest.raises(ValueError, match="api_key_sha256"):
            self.load(tmp_path, 'api_key_sha256 = ["not-a-hash"]\n')
        upper = hash_api_key("upper-key-0123456789").upper()
        try:
            cfg = self.load(tmp_path, f'api_key_sha256 = ["{upper}"]\n')
        except ValueError as err:
            assert "api_key_sha256" in str(err)
            return
        async with running(cfg) as r:
            assert await self.authenticates(r, "upper-key-0123456789")
