"""The grpc.aio server: auth, health, reflection, periodic sweeps, graceful stop."""

from __future__ import annotations

import asyncio
import contextlib
import signal
from typing import Any

import grpc
import structlog
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from pairline import kernels
from pairline._proto.pairline.v1 import insights_pb2, privacy_pb2, profiles_pb2, router_pb2
from pairline._proto.pairline.v1 import insights_pb2_grpc as ipb_grpc
from pairline._proto.pairline.v1 import privacy_pb2_grpc as xpb_grpc
from pairline._proto.pairline.v1 import profiles_pb2_grpc as ppb_grpc
from pairline._proto.pairline.v1 import router_pb2_grpc as rpb_grpc
from pairline.clock import Clock, SystemClock
from pairline.config import Settings
from pairline.interceptors import Guard, GuardedServer
from pairline.metered import MeteredRouterServicer
from pairline.metrics import Metrics, MetricsEndpoint, Snapshot, StateCollector
from pairline.service import Service
from pairline.servicers import (
    InsightsServicer,
    PrivacyServicer,
    ProfilesServicer,
)
from pairline.stores import MemoryStore, Store
from pairline.stores.redis import RedisStore
from pairline.stores.shared import SharedRouting

log = structlog.get_logger()

SERVICE_NAMES = tuple(
    pb.DESCRIPTOR.services_by_name[name].full_name
    for pb, name in (
        (router_pb2, "Router"),
        (profiles_pb2, "Profiles"),
        (privacy_pb2, "Privacy"),
        (insights_pb2, "Insights"),
    )
)
RETENTION_SWEEP_S = 60.0
DAY_S = 86_400.0


def redis_store(settings: Settings) -> RedisStore:
    return RedisStore.from_url(
        settings.redis_url,
        {t.name: (t.customer_dim, t.agent_dim) for t in settings.tenants},
        cache_size=settings.profile_cache_size,
        timeout_s=settings.redis_timeout_s,
        profile_ttl_s={t.name: t.profile_ttl_days * DAY_S for t in settings.tenants},
    )


class PairlineServer:
    """One server process. ``await start()``, then ``await stop()``."""

    def __init__(
        self, settings: Settings, *, store: Store | None = None, clock: Clock | None = None
    ) -> None:
        self.settings = settings
        shared = None
        if store is None and settings.redis_url:
            store = redis_store(settings)
        if isinstance(store, RedisStore):
            shared = SharedRouting(store)
        self.store = store or MemoryStore(settings.memory_max_decisions)
        self.service = Service(settings, self.store, clock or SystemClock(), shared=shared)
        self.health = health.aio.HealthServicer()
        self.port = 0
        self._server: grpc.aio.Server | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._degraded = False
        keys = {h: t.name for t in settings.tenants for h in t.api_key_sha256}
        self.guard = Guard(lambda: keys)
        self.metrics = Metrics()
        self.metrics_endpoint: MetricsEndpoint | None = None

    @property
    def address(self) -> str:
        host = self.settings.listen.rsplit(":", 1)[0]
        return f"{host}:{self.port}"

    async def _set_health(self, status: health_pb2.HealthCheckResponse.ServingStatus) -> None:
        for name in ("", *SERVICE_NAMES):
            await self.health.set(name, status)

    async def start(self) -> int:
        limit = self.settings.max_message_bytes
        server = grpc.aio.server(
            options=[
                ("grpc.max_receive_message_length", limit),
                ("grpc.max_send_message_length", limit),
                ("grpc.so_reuseport", 0),
            ],
        )
        guarded: Any = GuardedServer(server, self.guard)
        router = MeteredRouterServicer(self.service, self.metrics)
        rpb_grpc.add_RouterServicer_to_server(router, guarded)
        ppb_grpc.add_ProfilesServicer_to_server(ProfilesServicer(self.service), guarded)
        xpb_grpc.add_PrivacyServicer_to_server(PrivacyServicer(), guarded)
        ipb_grpc.add_InsightsServicer_to_server(InsightsServicer(self.service), guarded)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
        reflection.enable_server_reflection(
            (*SERVICE_NAMES, health.SERVICE_NAME, reflection.SERVICE_NAME), server
        )
        await self._set_health(health_pb2.HealthCheckResponse.NOT_SERVING)
        try:
            self.port = server.add_insecure_port(self.settings.listen)
        except RuntimeError as exc:  # grpc's way of saying the bind failed
            raise OSError(f"cannot listen on {self.settings.listen}: {exc}") from None
        if self.port == 0:
            raise OSError(f"cannot listen on {self.settings.listen}")
        await server.start()
        self._server = server
        self._start_metrics()
        self._tasks = [
            asyncio.create_task(self._every(self.settings.sweep_interval_s, self._expire)),
            asyncio.create_task(self._every(RETENTION_SWEEP_S, self.service.sweep_retention)),
        ]
        await self._warm()
        await self._set_health(health_pb2.HealthCheckResponse.SERVING)
        log.info("server_started", address=self.address, tenants=len(self.settings.tenants))
        return self.port

    def _start_metrics(self) -> None:
        service, store = self.service, self.store

        def snapshot() -> Snapshot:
            snap = Snapshot(
                queues=[(t, s) for t in service.tenants for s in service.queue_stats(t, "")],
                offers_expired={t: rt.routing.expired_total for t, rt in service.tenants.items()},
            )
            if service.shared is not None:
                snap.claim_conflicts = service.shared.conflicts
                snap.commits = service.shared.commits
                snap.degraded = service.shared.degraded
            if isinstance(store, RedisStore):
                snap.cache_hits, snap.cache_misses = store.hits, store.misses
            feed = getattr(service, "_feed", None)
            if feed is not None:
                snap.feed_lag_s = feed.lag_s
            return snap

        self.metrics.registry.register(
            StateCollector(snapshot, self.metrics, asyncio.get_running_loop())
        )
        if self.settings.metrics_listen:
            self.metrics_endpoint = MetricsEndpoint(
                self.metrics.registry, self.settings.metrics_listen
            )
            log.info("metrics_serving", address=self.metrics_endpoint.address)

    async def _warm(self) -> None:
        """Everything a first call would otherwise pay for is done before SERVING:
        the kernels compiled (or loaded from the cache), configured models loaded."""
        kernels.warm()
        await self.service.start()

    async def _expire(self) -> int:
        n = await self.service.expire_all()
        await self._redis_health()
        return n

    async def _redis_health(self) -> None:
        """With shared state: while Redis is out of reach, Router stays SERVING
        (decisions go on, DEGRADED) and the services that need Redis to answer
        truthfully (Profiles, Privacy, Insights) say NOT_SERVING."""
        shared = self.service.shared
        if shared is None or shared.degraded == self._degraded or self._server is None:
            return
        self._degraded = shared.degraded
        status = (health_pb2.HealthCheckResponse.NOT_SERVING if self._degraded
                  else health_pb2.HealthCheckResponse.SERVING)
        for name in SERVICE_NAMES[1:]:
            await self.health.set(name, status)

    @staticmethod
    async def _every(period_s: float, job: object) -> None:
        while True:
            await asyncio.sleep(period_s)
            try:
                await job()  # type: ignore[operator]
            except Exception:
                log.exception("periodic_job_failed")

    async def stop(self, grace_s: float | None = None) -> None:
        """NOT_SERVING first (so balancers stop sending), then drain in-flight calls."""
        if self._server is None:
            return
        grace = self.settings.grace_s if grace_s is None else grace_s
        log.info("server_stopping", grace_s=grace)
        await self.health.enter_graceful_shutdown()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self._server.stop(grace)
        self._server = None
        await self.service.stop()
        if isinstance(self.store, RedisStore):
            await self.store.close()
        if self.metrics_endpoint is not None:
            self.metrics_endpoint.close()
            self.metrics_endpoint = None
        log.info("server_stopped")

    async def wait(self) -> None:
        if self._server is not None:
            await self._server.wait_for_termination()


async def serve(settings: Settings, *, on_started: object = None) -> None:
    """Run until SIGTERM or SIGINT, then stop gracefully."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):  # before start: no window without them
        loop.add_signal_handler(sig, stop.set)
    server = PairlineServer(settings)
    await server.start()
    if callable(on_started):
        on_started(server)
    await stop.wait()
    await server.stop()
