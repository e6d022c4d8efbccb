"""Test helpers: a real server on an ephemeral port, stubs with a tenant's key,
and small request builders."""

from __future__ import annotations

import multiprocessing
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Iterable
from concurrent.futures import ProcessPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import grpc
from google.rpc import error_details_pb2, status_pb2
from grpc_health.v1 import health_pb2_grpc
from grpc_status import rpc_status

from pairline._proto.pairline.v1 import common_pb2 as cpb
from pairline._proto.pairline.v1 import insights_pb2_grpc as ipb_grpc
from pairline._proto.pairline.v1 import privacy_pb2_grpc as xpb_grpc
from pairline._proto.pairline.v1 import profiles_pb2_grpc as ppb_grpc
from pairline._proto.pairline.v1 import router_pb2 as rpb
from pairline._proto.pairline.v1 import router_pb2_grpc as rpb_grpc
from pairline.config import Settings, TenantConfig, hash_api_key
from pairline.security import ApiKey
from pairline.server import PairlineServer
from pairline.stores import Store
from pairline.testing import FakeClock

KEYS = {"acme": "acme-key-0123456789", "globex": "globex-key-0123456789"}


def tenant(name: str, **kw: Any) -> TenantConfig:
    base: dict[str, Any] = {
        "name": name,
        "api_key_sha256": (hash_api_key(KEYS[name]),),
        "secret": f"{name}-secret-0123456789",
        "customer_dim": 4,
        "agent_dim": 3,
        "wrap_up_s": 5.0,
        "offer_timeout_s": 10.0,
    }
    base.update(kw)
    return TenantConfig(**base)


def settings(**tenant_kw: Any) -> Settings:
    return Settings(
        listen="127.0.0.1:0",
        grace_s=2.0,
        sweep_interval_s=0.05,
        tenants=(tenant("acme", **tenant_kw), tenant("globex", **tenant_kw)),
    )


@dataclass
class Client:
    """Stubs bound to one tenant's API key."""

    channel: grpc.aio.Channel
    key: str

    @property
    def metadata(self) -> tuple[tuple[str, str], ...]:
        return (("authorization", f"Bearer {self.key}"),) if self.key else ()

    def _wrap(self, stub: Any) -> Any:
        client = self

        class Bound:
            def __getattr__(self, name: str) -> Any:
                method = getattr(stub, name)

                def call(*args: Any, **kw: Any) -> Any:
                    kw.setdefault("metadata", client.metadata)
                    kw.setdefault("timeout", 10)
                    return method(*args, **kw)

                return call

        return Bound()

    @property
    def router(self) -> Any:
        return self._wrap(rpb_grpc.RouterStub(self.channel))

    @property
    def profiles(self) -> Any:
        return self._wrap(ppb_grpc.ProfilesStub(self.channel))

    @property
    def privacy(self) -> Any:
        return self._wrap(xpb_grpc.PrivacyStub(self.channel))

    @property
    def insights(self) -> Any:
        return self._wrap(ipb_grpc.InsightsStub(self.channel))

    @property
    def health(self) -> Any:
        return health_pb2_grpc.HealthStub(self.channel)


@dataclass
class Running:
    server: PairlineServer
    clock: FakeClock
    channel: grpc.aio.Channel
    acme: Client
    globex: Client

    def client(self, key: str) -> Client:
        return Client(self.channel, key)


@asynccontextmanager
async def running(cfg: Settings | None = None, clock: FakeClock | None = None,
                  store: Store | None = None) -> AsyncIterator[Running]:
    clock = clock or FakeClock()
    server = PairlineServer(cfg or settings(), clock=clock, store=store)
    await server.start()
    channel = grpc.aio.insecure_channel(server.address)
    try:
        yield Running(
            server, clock, channel, Client(channel, KEYS["acme"]), Client(channel, KEYS["globex"])
        )
    finally:
        await channel.close()
        await server.stop(0.5)


# ------------------------------------------------------------------- builders
def login(agent_id: str, *queues: str | tuple[str, int], voice: int = 1, chat: int = 0,
          status: int = rpb.AGENT_STATUS_AVAILABLE) -> rpb.SetAgentStateRequest:
    members = [
        rpb.QueueMembership(queue=q, proficiency=50) if isinstance(q, str)
        else rpb.QueueMembership(queue=q[0], proficiency=q[1])
        for q in queues
    ]
    caps = [rpb.ChannelCapacity(channel=cpb.CHANNEL_VOICE, capacity=voice)]
    if chat:
        caps.append(rpb.ChannelCapacity(channel=cpb.CHANNEL_CHAT, capacity=chat))
    return rpb.SetAgentStateRequest(agent_id=agent_id, status=status, queues=members,
                                    capacities=caps)


def contact(contact_id: str, queue: str = "sales", channel: int = cpb.CHANNEL_VOICE,
            **kw: Any) -> rpb.RouteContactRequest:
    return rpb.RouteContactRequest(contact_id=contact_id, queue=queue, channel=channel, **kw)


def error_field(err: grpc.aio.AioRpcError) -> str | None:
    """The field named by an INVALID_ARGUMENT's BadRequest details, if any."""
    status = rpc_status.from_call(err)
    return bad_request_field(status) if status is not None else None


def bad_request_field(status: status_pb2.Status) -> str | None:
    for detail in status.details:
        if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            br = error_details_pb2.BadRequest()
            detail.Unpack(br)
            return br.field_violations[0].field
    return None


# ------------------------------------------------------------------ processes
def on_every_core(fn: Callable[..., Any], args: Iterable[tuple[Any, ...]]) -> list[Any]:
    """``[fn(*a) for a in args]``, in that order, computed by one worker process per
    core: the seeds of a CPU-bound statistical test run side by side. The workers
    are spawned (a fork would copy this process's grpc and event-loop threads), so
    ``fn`` must be a module-level function and its arguments picklable."""
    jobs = list(args)
    workers = min(len(jobs), os.cpu_count() or 1)
    if workers <= 1:
        return [fn(*a) for a in jobs]
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        return list(pool.map(fn, *zip(*jobs, strict=True)))


# ---------------------------------------------------------------------- redis
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class RedisProcess:
    """A redis-server of our own on a free port. Durable like production should be:
    an append-only file synced on every write (``appendfsync always``), so an
    acknowledged write survives SIGKILL of Redis."""

    def __init__(self, *extra: str, port: int | None = None, dir: str | None = None) -> None:
        self.binary = shutil.which("redis-server")
        if self.binary is None:
            raise RuntimeError("redis-server is not installed: run `make test` (it installs it)")
        self.dir = dir or tempfile.mkdtemp(prefix="pairline-redis-")
        self.port = port or free_port()
        self.extra = extra
        self.start()

    def start(self) -> None:
        """Start (again, on the same port and files after :meth:`kill`)."""
        assert self.binary is not None
        self.proc = subprocess.Popen(
            [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "yes", "--appendfsync", "always", "--dir", self.dir,
             *self.extra],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2) as s:
                    s.sendall(b"PING\r\n")
                    if s.recv(16).startswith(b"+PONG"):
                        return
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError("redis-server did not start")

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def kill(self) -> None:
        """SIGKILL, files kept (for a restart with :meth:`start`)."""
        self.proc.kill()
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        shutil.rmtree(self.dir, ignore_errors=True)


def free_cluster_port() -> int:
    """A free port whose cluster bus port (port + 10000) is free and valid too."""
    for _ in range(200):
        port = free_port()
        if port + 10000 > 65535:
            port -= 20000
        try:
            for p in (port, port + 10000):
                with socket.socket() as s:
                    s.bind(("127.0.0.1", p))
        except OSError:
            continue
        return port
    raise RuntimeError("no free port pair for a cluster node")


class RedisClusterProcess:
    """A local Redis Cluster of three masters on free ports, made with
    ``redis-cli --cluster create``; stopped (and its files removed) by :meth:`stop`."""

    def __init__(self, masters: int = 3) -> None:
        self.nodes: list[RedisProcess] = []
        try:
            for _ in range(masters):
                self.nodes.append(RedisProcess(
                    "--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
                    "--cluster-node-timeout", "2000", port=free_cluster_port(),
                ))
            cli = shutil.which("redis-cli")
            if cli is None:
                raise RuntimeError("redis-cli is not installed: run `make test`")
            subprocess.run(
                [cli, "--cluster", "create", *(f"127.0.0.1:{n.port}" for n in self.nodes),
                 "--cluster-replicas", "0", "--cluster-yes"],
                check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=30,
            )
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline:
                states = [
                    subprocess.run([cli, "-p", str(n.port), "cluster", "info"],
                                   capture_output=True, text=True, timeout=5).stdout
                    for n in self.nodes
                ]
                if all("cluster_state:ok" in s for s in states):
                    return
                time.sleep(0.1)
            raise RuntimeError("redis cluster did not become ready")
        except BaseException:
            self.stop()
            raise

    @property
    def url(self) -> str:
        return "redis+cluster://" + ",".join(f"127.0.0.1:{n.port}" for n in self.nodes)

    def stop(self) -> None:
        for n in self.nodes:
            n.stop()


def env_flag(name: str) -> bool:
    return os.environ.get(name, "") not in ("", "0")


# ------------------------------------------------------------------ security
def key_entry(key: str, tenant: str, *roles: str, name: str = "") -> ApiKey:
    """A ``[[keys]]`` entry for the plain ``key`` (stored as its hash)."""
    return ApiKey(hash_api_key(key), tenant, frozenset(roles), name)


@dataclass(frozen=True)
class Certs:
    """PEM files made by :func:`make_certs` (paths as strings)."""

    ca: str
    server_cert: str
    server_key: str
    client_cert: str
    client_key: str
    rogue_cert: str  # signed by another CA
    rogue_key: str

    def read(self, name: str) -> bytes:
        with open(getattr(self, name), "rb") as fh:
            return fh.read()


def make_certs(directory: str) -> Certs:
    """A CA, a server certificate for 127.0.0.1/localhost, a client certificate from
    the same CA and one from a rogue CA, with the openssl command (EC P-256)."""
    def run(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=directory, check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    ext = os.path.join(directory, "san.ext")
    with open(ext, "w") as fh:
        fh.write("subjectAltName=DNS:localhost,IP:127.0.0.1\n")
    for ca in ("ca", "rogue-ca"):
        run("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
            "-keyout", f"{ca}.key", "-out", f"{ca}.pem", "-days", "2", "-subj", f"/CN={ca}")
    for leaf, ca in (("server", "ca"), ("client", "ca"), ("rogue", "rogue-ca")):
        run("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
            "-keyout", f"{leaf}.key", "-out", f"{leaf}.csr", "-subj", f"/CN={leaf}")
        run("x509", "-req", "-in", f"{leaf}.csr", "-CA", f"{ca}.pem", "-CAkey", f"{ca}.key",
            "-CAcreateserial", "-out", f"{leaf}.pem", "-days", "2", "-extfile", ext)
    p = lambda n: os.path.join(directory, n)  # noqa: E731
    return Certs(p("ca.pem"), p("server.pem"), p("server.key"), p("client.pem"), p("client.key"),
                 p("rogue.pem"), p("rogue.key"))
