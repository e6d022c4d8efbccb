"""Transport security, roles and key rotation through a real server.

TLS and mutual TLS come from the configuration (certificates made here with
openssl); keys carry a tenant and roles; the keys file is re-read on change.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from support import (
    KEYS,
    Certs,
    Client,
    contact,
    key_entry,
    login,
    make_certs,
    running,
    settings,
)
from test_auth import RPCS, Call

from pairline._proto.pairline.v1 import insights_pb2 as ipb
from pairline._proto.pairline.v1 import router_pb2 as rpb
from pairline.config import hash_api_key, load_settings
from pairline.security import KeyRing, role_for
from pairline.server import PairlineServer

PERMISSION_DENIED = grpc.StatusCode.PERMISSION_DENIED
UNAUTHENTICATED = grpc.StatusCode.UNAUTHENTICATED


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    return make_certs(str(tmp_path_factory.mktemp("certs")))


@pytest.fixture
async def tls_server(certs: Certs, request: pytest.FixtureRequest) -> AsyncIterator[PairlineServer]:
    """A server with TLS; mutual TLS when the test is parametrized with mtls=True."""
    mtls = getattr(request, "param", False)
    cfg = dataclasses.replace(settings(), tls_cert_path=certs.server_cert,
                              tls_key_path=certs.server_key,
                              tls_client_ca_path=certs.ca if mtls else "")
    server = PairlineServer(cfg)
    await server.start()
    try:
        yield server
    finally:
        await server.stop(0.2)


def secure(server: PairlineServer, certs: Certs, cert: str | None = None) -> grpc.aio.Channel:
    """A TLS channel trusting our CA, presenting ``cert`` ("client" or "rogue") if given."""
    creds = grpc.ssl_channel_credentials(
        root_certificates=certs.read("ca"),
        private_key=certs.read(f"{cert}_key") if cert else None,
        certificate_chain=certs.read(f"{cert}_cert") if cert else None,
    )
    return grpc.aio.secure_channel(f"127.0.0.1:{server.port}", creds)


async def stats(channel: grpc.aio.Channel, timeout: float = 5) -> Any:
    return await Client(channel, KEYS["acme"]).insights.GetQueueStats(
        ipb.GetQueueStatsRequest(), timeout=timeout)


class TestTls:
    async def test_tls_serves_a_trusting_client(self, tls_server: PairlineServer,
                                                certs: Certs) -> None:
        """With cert + key configured, a TLS client that trusts the CA calls normally."""
        async with secure(tls_server, certs) as ch:
            d = await Client(ch, KEYS["acme"]).router.RouteContact(contact("c1"))
            assert d.contact_id == "c1"

    async def test_plaintext_client_cannot_call(self, tls_server: PairlineServer) -> None:
        """A plaintext client gets no answer from a TLS server (UNAVAILABLE)."""
        async with grpc.aio.insecure_channel(f"127.0.0.1:{tls_server.port}") as ch:
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await stats(ch, timeout=2)
            assert err.value.code() is grpc.StatusCode.UNAVAILABLE

    @pytest.mark.parametrize("tls_server", [True], indirect=True, ids=["mtls"])
    async def test_mtls_client_with_valid_certificate_calls(
        self, tls_server: PairlineServer, certs: Certs
    ) -> None:
        """Under mTLS a client certificate signed by the configured CA is accepted."""
        async with secure(tls_server, certs, "client") as ch:
            await Client(ch, KEYS["acme"]).router.SetAgentState(login("a1", "sales"))
            assert [q.queue for q in (await stats(ch)).queues] == ["sales"]

    @pytest.mark.parametrize("cert", [None, "rogue"], ids=["no-cert", "other-ca"])
    @pytest.mark.parametrize("tls_server", [True], indirect=True, ids=["mtls"])
    async def test_mtls_refuses_clients_without_a_valid_certificate(
        self, tls_server: PairlineServer, certs: Certs, cert: str | None
    ) -> None:
        """Under mTLS no certificate, or one from another CA, fails the handshake: the
        call never runs (even with a valid API key) and changes nothing."""
        async with secure(tls_server, certs, cert) as ch:
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await Client(ch, KEYS["acme"]).router.SetAgentState(login("a1", "sales"),
                                                                    timeout=2)
            assert err.value.code() is grpc.StatusCode.UNAVAILABLE
        async with secure(tls_server, certs, "client") as ch:
            assert list((await stats(ch)).queues) == []

    def test_tls_settings_are_checked_at_load(self, tmp_path: Path, certs: Certs) -> None:
        """A cert without a key, a client CA without a cert, or a missing file refuse to load."""
        for kw in ({"tls_cert_path": certs.server_cert},
                   {"tls_client_ca_path": certs.ca},
                   {"tls_cert_path": str(tmp_path / "nope.pem"),
                    "tls_key_path": certs.server_key}):
            with pytest.raises((ValueError, OSError)):
                load_settings(None, {}, demo=True, **kw)
        ok = load_settings(None, {"PAIRLINE_TLS_CERT_PATH": certs.server_cert,
                                  "PAIRLINE_TLS_KEY_PATH": certs.server_key,
                                  "PAIRLINE_TLS_CLIENT_CA_PATH": certs.ca}, demo=True)
        assert ok.tls_client_ca_path == certs.ca


# ------------------------------------------------------------------- roles
ROLE_KEYS = {role: f"acme-{role}-key-0123456789" for role in
             ("switch", "pipeline", "auditor", "admin")}
EXPECTED_ROLE = {"Router": "switch", "Profiles": "pipeline", "Privacy": "pipeline",
                 "Insights": "auditor", "Privacy.ReadAudit": "auditor"}


def role_settings() -> Any:
    keys = tuple(key_entry(k, "acme", role, name=f"acme-{role}") for role, k in ROLE_KEYS.items())
    return dataclasses.replace(settings(), keys=keys)


@pytest.fixture
async def roles_srv() -> AsyncIterator[Any]:
    async with running(role_settings()) as r:
        yield r


class TestRoles:
    def test_every_pairline_method_has_its_role(self) -> None:
        """Router: switch; Profiles, Privacy: pipeline; Insights and the audit log:
        auditor; unknown: admin."""
        for name, _ in RPCS:
            service, method = name.split(".")
            assert role_for(f"/pairline.v1.{service}/{method}") == \
                EXPECTED_ROLE.get(name, EXPECTED_ROLE[service])
        assert role_for("/pairline.v1.Router/Connect") == "switch"
        assert role_for("/pairline.v1.Insights/ExportHistory") == "auditor"
        assert role_for("/pairline.v1.Admin/Anything") == "admin"

    @pytest.mark.parametrize("role", list(ROLE_KEYS))
    @pytest.mark.parametrize("rpc", [pytest.param(f, id=n) for n, f in RPCS])
    async def test_calls_outside_the_role_are_permission_denied(
        self, roles_srv: Any, rpc: Call, role: str
    ) -> None:
        """A key calls the methods of its role (admin: all); any other is PERMISSION_DENIED
        and changes nothing."""
        name = next(n for n, f in RPCS if f is rpc)
        needed = EXPECTED_ROLE.get(name, EXPECTED_ROLE[name.split(".")[0]])
        allowed = role == "admin" or needed == role
        client = roles_srv.client(ROLE_KEYS[role])
        before = await roles_srv.acme.insights.GetQueueStats(ipb.GetQueueStatsRequest())
        try:
            await rpc(client, client.metadata)
            code = grpc.StatusCode.OK
        except grpc.aio.AioRpcError as err:
            code = err.code()
            if code is PERMISSION_DENIED:
                assert f"needs '{needed}'" in err.details()
        assert code not in (grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN, UNAUTHENTICATED)
        assert (code is PERMISSION_DENIED) is (not allowed), (name, role, code)
        if not allowed:
            after = await roles_srv.acme.insights.GetQueueStats(ipb.GetQueueStatsRequest())
            assert after.queues == before.queues

    async def test_connect_needs_the_switch_role(self, roles_srv: Any) -> None:
        """The Connect stream of a pipeline key ends PERMISSION_DENIED; a switch key routes."""
        denied = roles_srv.client(ROLE_KEYS["pipeline"]).router.Connect()
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await denied.write(rpb.SwitchEvent(request_id="1", route_contact=contact("c1")))
            await denied.read()
        assert err.value.code() is PERMISSION_DENIED
        ok = roles_srv.client(ROLE_KEYS["switch"]).router.Connect()
        await ok.write(rpb.SwitchEvent(request_id="1", route_contact=contact("c1")))
        assert (await ok.read()).decision.contact_id == "c1"
        await ok.done_writing()
        assert await ok.code() is grpc.StatusCode.OK

    async def test_tenant_comes_from_the_key_not_the_role(self, roles_srv: Any) -> None:
        """A role key of acme acts on acme's state, the same the admin key sees."""
        await roles_srv.client(ROLE_KEYS["switch"]).router.SetAgentState(login("a1", "sales"))
        seen = await roles_srv.client(ROLE_KEYS["auditor"]).insights.GetQueueStats(
            ipb.GetQueueStatsRequest())
        assert [q.queue for q in seen.queues] == ["sales"]
        theirs = await roles_srv.globex.insights.GetQueueStats(ipb.GetQueueStatsRequest())
        assert list(theirs.queues) == []


class TestKeysConfig:
    def write(self, tmp_path: Path, text: str) -> Path:
        path = tmp_path / "pairline.toml"
        path.write_text(
            '[[tenants]]\nname = "acme"\napi_keys = "acme-admin"\n'
            'secret = "acme-secret-0123456789"\n' + text)
        return path

    def test_keys_entries_load_with_roles(self, tmp_path: Path) -> None:
        """[[keys]] entries give a hashed key a tenant and roles; tenant keys are admin."""
        s = load_settings(self.write(tmp_path, (
            f'[[keys]]\nname = "sw"\nsha256 = "{hash_api_key("k-sw")}"\ntenant = "acme"\n'
            'roles = ["switch", "auditor"]\n')), {})
        ring = KeyRing(s.api_keys(), ["acme"])
        sw, admin = ring.lookup("k-sw"), ring.lookup("acme-admin")
        assert sw is not None and sw.roles == {"switch", "auditor"} and sw.tenant == "acme"
        assert sw.allows("switch") and not sw.allows("pipeline")
        assert admin is not None and admin.allows("pipeline") and admin.tenant == "acme"
        assert ring.lookup("k-other") is None
        assert "k-sw" not in repr(s)

    @pytest.mark.parametrize("entry,why", [
        ('key = "plain"\ntenant = "acme"\nroles = ["switch"]', "sha256"),
        (f'sha256 = "{"a" * 63}"\ntenant = "acme"\nroles = ["switch"]', "64"),
        (f'sha256 = "{"a" * 64}"\ntenant = "nobody"\nroles = ["switch"]', "unknown tenant"),
        (f'sha256 = "{"a" * 64}"\ntenant = "acme"\nroles = ["root"]', "root"),
        (f'sha256 = "{"a" * 64}"\ntenant = "acme"\nroles = []', "non-empty"),
        (f'sha256 = "{hash_api_key("acme-admin")}"\ntenant = "acme"\nroles = ["switch"]',
         "twice"),
    ], ids=["plain-key", "short-hash", "unknown-tenant", "unknown-role", "no-role", "duplicate"])
    def test_bad_keys_are_refused(self, tmp_path: Path, entry: str, why: str) -> None:
        """Plain keys, malformed hashes, unknown tenants or roles, one key twice: refused."""
        with pytest.raises(ValueError, match=why):
            load_settings(self.write(tmp_path, f"[[keys]]\n{entry}\n"), {})


class TestKeyRotation:
    @pytest.fixture
    def keys_file(self, tmp_path: Path) -> Iterator[Path]:
        path = tmp_path / "keys.toml"
        self.put(path, ("rot-1", "switch"))
        yield path

    @staticmethod
    def put(path: Path, *keys: tuple[str, str]) -> None:
        text = "".join(f'[[keys]]\nsha256 = "{hash_api_key(k)}"\ntenant = "acme"\n'
                       f'roles = ["{role}"]\n' for k, role in keys)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(text)
        tmp.replace(path)  # atomic, as an SRE's tooling would do it

    @staticmethod
    async def code_of(client: Client) -> grpc.StatusCode:
        try:
            await client.router.GetAgentState(rpb.GetAgentStateRequest(agent_id="a1"))
        except grpc.aio.AioRpcError as err:
            return err.code()
        return grpc.StatusCode.OK

    async def eventually(self, client: Client, code: grpc.StatusCode) -> None:
        for _ in range(100):
            if await self.code_of(client) is code:
                return
            await asyncio.sleep(0.02)
        assert await self.code_of(client) is code

    async def test_keys_are_added_and_revoked_without_restart(self, keys_file: Path) -> None:
        """Editing the keys file adds and revokes keys within keys_reload_s; the server
        keeps running and the configuration's own keys keep working."""
        cfg = dataclasses.replace(settings(), keys_file=str(keys_file), keys_reload_s=0.05)
        async with running(cfg) as srv:
            await srv.acme.router.SetAgentState(login("a1", "sales"))
            rot1, rot2 = srv.client("rot-1"), srv.client("rot-2")
            assert await self.code_of(rot1) is grpc.StatusCode.OK
            assert await self.code_of(rot2) is UNAUTHENTICATED
            self.put(keys_file, ("rot-1", "switch"), ("rot-2", "switch"))
            await self.eventually(rot2, grpc.StatusCode.OK)
            self.put(keys_file, ("rot-2", "auditor"))  # rot-1 revoked, rot-2 demoted
            await self.eventually(rot1, UNAUTHENTICATED)
            assert await self.code_of(rot2) is PERMISSION_DENIED
            assert await self.code_of(srv.acme) is grpc.StatusCode.OK

    async def test_bad_keys_file_keeps_the_keys_in_force(self, keys_file: Path) -> None:
        """A keys file that does not parse (or names an unknown tenant) is refused as a
        whole and logged; the keys in force stay; a fixed file is taken up again."""
        cfg = dataclasses.replace(settings(), keys_file=str(keys_file), keys_reload_s=0.05)
        async with running(cfg) as srv:
            await srv.acme.router.SetAgentState(login("a1", "sales"))
            rot1 = srv.client("rot-1")
            for bad in ("[[keys]\nnot toml", '[[keys]]\nsha256 = "x"\n',
                        f'[[keys]]\nsha256 = "{hash_api_key("x")}"\ntenant = "nobody"\n'
                        'roles = ["admin"]\n'):
                keys_file.write_text(bad)
                assert srv.server.reload_keys(force=True) is False
                await asyncio.sleep(0.12)
                assert await self.code_of(rot1) is grpc.StatusCode.OK
            self.put(keys_file, ("rot-9", "switch"))
            await self.eventually(srv.client("rot-9"), grpc.StatusCode.OK)
            assert await self.code_of(rot1) is UNAUTHENTICATED

    async def test_sighup_style_reload_is_immediate(self, keys_file: Path) -> None:
        """reload_keys(force=True) (what SIGHUP calls) takes a new file at once."""
        cfg = dataclasses.replace(settings(), keys_file=str(keys_file), keys_reload_s=3600)
        async with running(cfg) as srv:
            self.put(keys_file, ("rot-3", "switch"))
            assert srv.server.reload_keys(force=True) is True
            assert await self.code_of(srv.client("rot-3")) is grpc.StatusCode.NOT_FOUND

    def test_bad_keys_file_at_start_is_refused(self, tmp_path: Path) -> None:
        """At start a bad keys file stops the server from starting (nothing to fall back on)."""
        path = tmp_path / "keys.toml"
        path.write_text('[[keys]]\nsha256 = "nope"\n')
        with pytest.raises(ValueError):
            PairlineServer(dataclasses.replace(settings(), keys_file=str(path)))


class TestServeProcess:
    async def test_sighup_reloads_the_keys_file(self, tmp_path: Path) -> None:
        """`pairline serve` with a keys_file takes a new key on SIGHUP (no restart), and
        a revoked key stops working; the process keeps serving."""
        import signal

        from test_server_lifecycle import clean_env, serving, write_config

        keys_file = tmp_path / "keys.toml"
        TestKeyRotation.put(keys_file, ("old-key-0123456789", "switch"))
        write_config(tmp_path / "pairline.toml", keys_file=str(keys_file), keys_reload_s=3600.0)
        text = (tmp_path / "pairline.toml").read_text().replace('name = "plain"', 'name = "acme"')
        (tmp_path / "pairline.toml").write_text(text)
        async with serving(tmp_path, "--config", str(tmp_path / "pairline.toml"),
                           "--listen", "127.0.0.1:0", env=clean_env()) as p:
            async with grpc.aio.insecure_channel(p.address) as ch:
                old, new = Client(ch, "old-key-0123456789"), Client(ch, "new-key-0123456789")
                assert await TestKeyRotation.code_of(old) is grpc.StatusCode.NOT_FOUND
                assert await TestKeyRotation.code_of(new) is UNAUTHENTICATED
                TestKeyRotation.put(keys_file, ("new-key-0123456789", "switch"))
                p.proc.send_signal(signal.SIGHUP)
                for _ in range(100):
                    if await TestKeyRotation.code_of(new) is grpc.StatusCode.NOT_FOUND:
                        break
                    await asyncio.sleep(0.05)
                assert await TestKeyRotation.code_of(new) is grpc.StatusCode.NOT_FOUND
                assert await TestKeyRotation.code_of(old) is UNAUTHENTICATED
            assert await p.terminate() == 0
