"""The grpc.aio server: TLS, auth, limits, health, reflection, periodic sweeps, graceful stop."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path
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
from pairline.aio import stop_task
from pairline.clock import Clock, SystemClock
from pairline.config import Settings
from pairline.interceptors import Guard, GuardedServer
from pairline.limits import Limits
from pairline.metered import MeteredRouterServicer
from pairline.metrics import Metrics, MetricsEndpoint, Snapshot, StateCollector
from pairline.security import KeyRing, read_tls
from pairline.service import Service
from pairline.servicers import (
    InsightsServicer,
    PrivacyServicer,
    ProfilesServicer,
)
from pairline.stores import MemoryStore, Store
from pairline.stores.privacy import FileLedger, MemoryLedger, PrivacyLedger
from pairline.stores.redis import RedisStore
from pairline.stores.redis_privacy import RedisLedger
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
        self,
        settings: Settings,
        *,
        store: Store | None = None,
        clock: Clock | None = None,
        ledger: PrivacyLedger | None = None,
    ) -> None:
        self.settings = settings
        shared = None
        if store is None and settings.redis_url:
            store = redis_store(settings)
        if isinstance(store, RedisStore):
            # Slow: a call that took most of its time-out (Redis in trouble).
            shared = SharedRouting(store, outage_routing=settings.outage_routing,
                                   slow_s=0.8 * settings.redis_timeout_s)
        self.store = store or MemoryStore(settings.memory_max_decisions)
        if ledger is None and isinstance(self.store, RedisStore):
            ledger = RedisLedger(self.store)  # shared by the replicas, like the store
        self.ledger = ledger or privacy_ledger(settings)
        self.service = Service(settings, self.store, clock or SystemClock(), shared=shared,
                               ledger=self.ledger)
        self.health = health.aio.HealthServicer()
        self.port = 0
        self._server: grpc.aio.Server | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._stopping = False
        self._degraded = False
        self.keys = KeyRing(settings.api_keys(), [t.name for t in settings.tenants],
                            settings.keys_file or None)
        self.limits = Limits(
            settings.max_concurrent_rpcs,
            ((t.name, t.rate_per_s, t.rate_burst, t.max_concurrent_rpcs)
             for t in settings.tenants),
        )
        self.metrics = Metrics()
        self.metrics.watch_privacy(self.service.privacy)
        self.metrics_endpoint: MetricsEndpoint | None = None
        self.router = MeteredRouterServicer(self.service, self.metrics, self.limits.take,
                                            decision_log_sample=settings.decision_log_sample)
        self.guard = Guard(self.keys, self.limits, self.router.abandon)

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
        rpb_grpc.add_RouterServicer_to_server(self.router, guarded)
        ppb_grpc.add_ProfilesServicer_to_server(ProfilesServicer(self.service), guarded)
        xpb_grpc.add_PrivacyServicer_to_server(PrivacyServicer(self.service.privacy), guarded)
        ipb_grpc.add_InsightsServicer_to_server(InsightsServicer(self.service), guarded)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
        reflection.enable_server_reflection(
            (*SERVICE_NAMES, health.SERVICE_NAME, reflection.SERVICE_NAME), server
        )
        await self._set_health(health_pb2.HealthCheckResponse.NOT_SERVING)
        s = self.settings
        tls = read_tls(s.tls_cert_path, s.tls_key_path, s.tls_client_ca_path)
        try:
            if tls is None:
                self.port = server.add_insecure_port(self.settings.listen)
            else:
                creds = grpc.ssl_server_credentials(
                    [(tls.private_key, tls.cert_chain)],
                    root_certificates=tls.client_ca,
                    require_client_auth=tls.client_ca is not None,
                )
                self.port = server.add_secure_port(self.settings.listen, creds)
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
        if s.keys_file:
            self._tasks.append(asyncio.create_task(self._every(s.keys_reload_s, self._reload)))
        await self._warm()
        # After the privacy records are loaded (in _warm): resumes open tickets.
        if self.settings.deletion_interval_s > 0:
            self._tasks.append(asyncio.create_task(
                self.service.privacy.worker(self.settings.deletion_interval_s)))
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

    def reload_keys(self, *, force: bool = False) -> bool:
        """Re-read the keys file (on change, or always with ``force``: SIGHUP). A bad
        file is logged and refused; the keys in force stay."""
        try:
            changed = self.keys.reload(force=force)
        except Exception as exc:
            log.error("keys_reload_failed", path=self.settings.keys_file, error=str(exc))
            return False
        if changed:
            log.info("keys_reloaded", path=self.settings.keys_file, keys=len(self.keys))
        return changed

    async def _reload(self) -> None:
        self.reload_keys()

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
        self._stopping = True
        for task in self._tasks:
            await stop_task(task)
        await self._server.stop(grace)
        self._server = None
        await self.service.stop()
        if isinstance(self.store, RedisStore):
            await self.store.close()
        await self.ledger.close()
        if self.metrics_endpoint is not None:
            self.metrics_endpoint.close()
            self.metrics_endpoint = None
        log.info("server_stopped")

    async def wait(self) -> None:
        if self._server is not None:
            await self._server.wait_for_termination()


def privacy_ledger(settings: Settings) -> PrivacyLedger:
    """The embedded store's ledger: a file in ``data_dir``, or memory (with a
    warning: not durable) when no directory is configured."""
    if settings.data_dir:
        return FileLedger(Path(settings.data_dir) / "privacy.jsonl")
    log.warning("privacy_records_not_durable", reason="no data_dir configured")
    return MemoryLedger()


async def serve(settings: Settings, *, on_started: object = None) -> None:
    """Run until SIGTERM or SIGINT, then stop gracefully."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):  # before start: no window without them
        loop.add_signal_handler(sig, stop.set)
    server = PairlineServer(settings)
    loop.add_signal_handler(signal.SIGHUP, lambda: server.reload_keys(force=True))
    await server.start()
    if callable(on_started):
        on_started(server)
    await stop.wait()
    await server.stop()
