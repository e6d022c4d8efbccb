"""Prometheus metrics: one registry per server, a /metrics endpoint, cheap hot-path hooks.

Every :class:`~pairline.server.PairlineServer` owns one :class:`Metrics` with its own
``CollectorRegistry`` (never the process-global one), so several servers in one
process (tests, the demo) keep separate numbers.

Five kinds of metric live here:

* **Hot path** (per decision): :meth:`Metrics.observe_decision` does one dict lookup,
  one histogram observation and one counter increment (label children are
  resolved once per label set and cached, and updated without their locks: see
  :func:`observer`); a reservation also observes the contact's wait
  (:mod:`pairline.metered`). See ``benchmarks/test_metrics_bench.py``.
* **Read at scrape time** (queue depths, waits, agents, occupancy): nothing is
  counted on the hot path; :class:`StateCollector` asks the service for queue
  statistics when Prometheus scrapes, on the server's event loop (the routing
  state belongs to that loop).
* **Redis store counters** (claim conflicts, commits, profile-cache hits and
  misses, change-feed lag) are the store's own plain counters, read at scrape
  time too (no samples on the embedded store).
* **Privacy counters** (opt-outs, withdrawals, deletion requests and
  completions, stale writes refused, outcomes withheld): plain per-tenant
  counters of :class:`~pairline.privacy_service.Privacy`, read at scrape time.
  They count what *this process* acknowledged or carried out, so with several
  replicas ``sum`` over them counts each operation once.
* **Deletion tickets** (open, due soon, past due): read from the privacy ledger
  at scrape time (on Redis: the shared ledger, so every replica reports the same
  numbers: aggregate them with ``max``, not ``sum``).

:data:`LIVE` lists every family; :data:`PENDING` the ones registered for work
still in progress (none today).

Names follow the Prometheus conventions: ``pairline_`` prefix, base units in the
name (``_seconds``, ``_ratio``), counters end in ``_total``.
"""

from __future__ import annotations

import asyncio
import math
import threading
from bisect import bisect_left
from collections.abc import Awaitable, Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import structlog
from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import start_http_server
from prometheus_client.registry import Collector
from prometheus_client.values import MutexValue

from pairline.domain import Mode, QueueStats

if TYPE_CHECKING:
    from pairline.privacy_service import Privacy, PrivacyCounts

log = structlog.get_logger()

# Decision latency buckets: the handler is sub-millisecond; the upper buckets
# catch store trouble and event-loop stalls.
LATENCY_BUCKETS_S = (
    0.000025, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
    0.1, 0.25, 1.0,
)
# Mode label values: the domain names in lower case (wire number -> label).
MODE_LABELS = {int(m): m.name.lower() for m in Mode}
# Contact wait buckets: service-level thresholds contact centers use (20 s, 30 s...).
WAIT_BUCKETS_S = (0.0, 1.0, 2.0, 5.0, 10.0, 15.0, 20.0, 30.0, 45.0, 60.0, 90.0, 120.0, 180.0,
                  300.0, 600.0)
SCRAPE_TIMEOUT_S = 2.0

# Metric names fed today, and those registered for work in progress; the
# operations guide lists both. The Redis ones have samples only when the server
# runs on the Redis store.
LIVE = (
    "pairline_decision_seconds",
    "pairline_decisions_total",
    "pairline_contact_wait_seconds",
    "pairline_offers_expired_total",
    "pairline_claim_conflicts_total",
    "pairline_routing_commits_total",
    "pairline_cache_lookups_total",
    "pairline_change_feed_lag_seconds",
    "pairline_redis_degraded",
    "pairline_queue_waiting_contacts",
    "pairline_queue_oldest_wait_seconds",
    "pairline_queue_agents",
    "pairline_queue_contacts_in_service",
    "pairline_agent_occupancy_ratio",
    "pairline_opt_outs_total",
    "pairline_deletion_requests_total",
    "pairline_deletions_completed_total",
    "pairline_stale_writes_refused_total",
    "pairline_outcomes_withheld_total",
    "pairline_deletion_tickets",
)
PENDING: tuple[str, ...] = ()
# A scrape waits this long for the ticket counts (the shared ledger on Redis);
# past it the gauge has no samples in that scrape.
TICKETS_TIMEOUT_S = 1.0

# (tenant, state, count) rows for pairline_deletion_tickets; state is one of
# "open" (every open ticket), "due_soon", "overdue" (parts of the open ones).
TicketRows = Iterable[tuple[str, str, int]]
TicketSource = Callable[[], Awaitable[TicketRows]]
# (tenant, counts) rows; counts has the fields of PrivacyCounts.
CountsSource = Callable[[], Iterable[tuple[str, "PrivacyCounts"]]]


class Metrics:
    """All pairline metrics of one server, in a registry of their own."""

    __slots__ = (
        "_children",
        "contact_wait_seconds",
        "decision_seconds",
        "decisions",
        "deletion_tickets_source",
        "privacy_counts_source",
        "registry",
    )

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        r = self.registry = registry if registry is not None else CollectorRegistry()
        self.decision_seconds = Histogram(
            "pairline_decision_seconds",
            "Time to decide in the handler (decode, decide, reserve, encode), by operation "
            "(RouteContact, AgentReady; unary or on a Connect stream) and mode",
            ["rpc", "mode"], buckets=LATENCY_BUCKETS_S, registry=r,
        )
        self.decisions = Counter(
            "pairline_decisions",
            "Decisions answered, by tenant, operation, mode and pairing policy",
            ["tenant", "rpc", "mode", "policy"], registry=r,
        )
        self.contact_wait_seconds = Histogram(
            "pairline_contact_wait_seconds",
            "Time from a contact's arrival to its reservation for an agent (0 when an agent "
            "was free at once); service level = share under the threshold",
            ["tenant", "queue"], buckets=WAIT_BUCKETS_S, registry=r,
        )
        # Read at scrape time (see watch_privacy): the privacy counters, and
        # pairline_deletion_tickets (awaited on the server's loop).
        self.privacy_counts_source: CountsSource | None = None
        self.deletion_tickets_source: TicketSource | None = None
        self._children: dict[
            tuple[str, str, int, str], tuple[Callable[[float], None], Callable[[], None]]
        ] = {}

    def watch_privacy(self, privacy: Privacy) -> None:
        """Export ``privacy``'s counters and deletion-ticket counts."""
        self.privacy_counts_source = lambda: [
            (name, tp.counts) for name, tp in privacy.tenants.items()]
        self.deletion_tickets_source = privacy.ticket_counts

    def observe_decision(
        self, tenant: str, rpc: str, mode: int, policy: str, seconds: float
    ) -> None:
        """One decision answered (the hot path: keep it to a lookup and two updates)."""
        key = (tenant, rpc, mode, policy)
        pair = self._children.get(key)
        if pair is None:
            label = MODE_LABELS.get(mode, "unspecified")
            pair = self._children[key] = (
                observer(self.decision_seconds.labels(rpc, label)),
                incrementer(self.decisions.labels(tenant, rpc, label, policy or "none")),
            )
        pair[0](seconds)
        pair[1]()


# The hot-path updates below write prometheus_client's values without taking
# their locks (each lock costs as much as the update). Safe because only the
# event loop's thread writes the decision metrics; a scrape reads each value
# once, from its own thread, as it does anyway. Any other value class (the
# multiprocess mode) keeps the library's own methods.
def observer(child: Any) -> Callable[[float], None]:
    """``child.observe`` of a labelled Histogram child, for the event loop's thread."""
    bounds = getattr(child, "_upper_bounds", None)
    buckets = getattr(child, "_buckets", None)
    total = getattr(child, "_sum", None)
    if (bounds is None or buckets is None or len(buckets) != len(bounds) or not bounds
            or bounds[-1] != math.inf or list(bounds) != sorted(bounds)
            or not all(type(v) is MutexValue for v in (total, *buckets))):
        return child.observe  # type: ignore[no-any-return]

    def observe(amount: float) -> None:
        total._value += amount  # type: ignore[union-attr]
        i = bisect_left(bounds, amount)  # the first bucket with amount <= its bound
        if amount <= bounds[i]:  # (not for NaN, as in Histogram.observe)
            buckets[i]._value += 1.0

    return observe


def incrementer(child: Any) -> Callable[[], None]:
    """``child.inc`` (by one) of a labelled Counter child, for the event loop's thread."""
    value = getattr(child, "_value", None)
    if type(value) is not MutexValue:
        return child.inc  # type: ignore[no-any-return]

    def inc() -> None:
        value._value += 1.0

    return inc


@dataclass(slots=True)
class Snapshot:
    """What the service reports at scrape time."""

    queues: list[tuple[str, QueueStats]] = field(default_factory=list)  # (tenant, stats)
    offers_expired: dict[str, int] = field(default_factory=dict)  # tenant -> count since start
    # Redis store only (None on the embedded store): routing commits that lost a
    # race with another replica, and all commits; customer-profile cache hits and
    # misses; age of the newest change-feed event applied.
    claim_conflicts: int | None = None
    commits: int | None = None
    cache_hits: int | None = None
    cache_misses: int | None = None
    feed_lag_s: float | None = None
    degraded: bool | None = None  # a tenant's mirror is out of touch with Redis


class StateCollector(Collector):
    """Queue depths, waits, agents and occupancy, read from the service at scrape time.

    ``snapshot()`` must run on the event loop that owns the routing state: a scrape
    from the HTTP thread hops onto ``loop``; a scrape on the loop itself (tests
    calling ``generate_latest``) runs directly. The deletion-ticket counts are
    awaited in the same hop (at most :data:`TICKETS_TIMEOUT_S`); a scrape on the
    loop cannot await them and reports the last counts read.
    """

    def __init__(
        self,
        snapshot: Callable[[], Snapshot],
        metrics: Metrics,
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        self._snapshot = snapshot
        self._metrics = metrics
        self._loop = loop
        self._loop_thread = threading.get_ident()
        self._tickets: list[tuple[str, str, int]] | None = None  # the last counts read

    async def _read_tickets(self) -> list[tuple[str, str, int]] | None:
        source = self._metrics.deletion_tickets_source
        if source is None:
            return None
        # Shielded: a slow ledger read is left to finish (a Redis call is never
        # cancelled from outside); this scrape just goes without it.
        task: asyncio.Future[TicketRows] | None = None
        try:
            task = asyncio.ensure_future(source())
            rows = list(await asyncio.wait_for(asyncio.shield(task), TICKETS_TIMEOUT_S))
        except Exception as exc:
            if task is not None:  # left to finish; its outcome is not needed
                task.add_done_callback(lambda t: t.cancelled() or t.exception())
            log.warning("metrics_tickets_unavailable", error=type(exc).__name__)
            return None
        self._tickets = rows
        return rows

    def _take(self) -> tuple[Snapshot, list[tuple[str, str, int]] | None]:
        if threading.get_ident() == self._loop_thread:
            return self._snapshot(), self._tickets

        async def on_loop() -> tuple[Snapshot, list[tuple[str, str, int]] | None]:
            snap = self._snapshot()
            return snap, await self._read_tickets()

        return asyncio.run_coroutine_threadsafe(on_loop(), self._loop).result(SCRAPE_TIMEOUT_S)

    def describe(self) -> Iterator[Metric]:
        return iter(())

    def collect(self) -> Iterator[Metric]:
        waiting = GaugeMetricFamily(
            "pairline_queue_waiting_contacts", "Contacts waiting for an agent",
            labels=["tenant", "queue"])
        oldest = GaugeMetricFamily(
            "pairline_queue_oldest_wait_seconds", "How long the oldest waiting contact has waited",
            labels=["tenant", "queue"])
        agents = GaugeMetricFamily(
            "pairline_queue_agents",
            "Agents serving the queue by state (logged_in, available, reserved)",
            labels=["tenant", "queue", "state"])
        in_service = GaugeMetricFamily(
            "pairline_queue_contacts_in_service", "Contacts reserved or connected to an agent",
            labels=["tenant", "queue"])
        occupancy = GaugeMetricFamily(
            "pairline_agent_occupancy_ratio",
            "Share of the queue's logged-in agents that are not available (reserved, busy, "
            "in wrap-up, away) right now",
            labels=["tenant", "queue"])
        snap, ticket_rows = self._take()
        for tenant, s in snap.queues:
            waiting.add_metric([tenant, s.queue], s.waiting)
            oldest.add_metric([tenant, s.queue], s.oldest_wait_s)
            for state in ("logged_in", "available", "reserved"):
                agents.add_metric([tenant, s.queue, state], getattr(s, f"agents_{state}"))
            in_service.add_metric([tenant, s.queue], s.contacts_in_service)
            if s.agents_logged_in:
                busy = s.agents_logged_in - s.agents_available
                occupancy.add_metric([tenant, s.queue], busy / s.agents_logged_in)
        yield from (waiting, oldest, agents, in_service, occupancy)
        expired = CounterMetricFamily(
            "pairline_offers_expired",
            "Reservations neither confirmed nor released before their offer timeout",
            labels=["tenant"])
        for tenant, count in snap.offers_expired.items():
            expired.add_metric([tenant], count)
        yield expired
        yield from self._redis(snap)
        yield from self._privacy(ticket_rows)

    def _privacy(self, ticket_rows: TicketRows | None) -> Iterator[Metric]:
        opt_outs = CounterMetricFamily(
            "pairline_opt_outs",
            "Opt-outs this replica acknowledged that changed the customer's state: "
            "action=opt_out (newly opted out, single or bulk), action=withdraw (lifted)",
            labels=["tenant", "action"])
        requests = CounterMetricFamily(
            "pairline_deletion_requests",
            "Deletion requests this replica acknowledged with a new ticket (stored durably)",
            labels=["tenant"])
        completed = CounterMetricFamily(
            "pairline_deletions_completed",
            "Deletion tickets this replica's worker completed (data purged, tombstone left)",
            labels=["tenant"])
        stale = CounterMetricFamily(
            "pairline_stale_writes_refused",
            "Customer-profile writes refused by this replica: reason=tombstone (source time "
            "not after a deletion), reason=newer_profile_stored (amendment rule)",
            labels=["tenant", "reason"])
        withheld = CounterMetricFamily(
            "pairline_outcomes_withheld",
            "Outcomes reported for opted-out decisions: counted here, never stored",
            labels=["tenant"])
        counts = self._metrics.privacy_counts_source
        for tenant, c in counts() if counts is not None else ():
            opt_outs.add_metric([tenant, "opt_out"], c.opt_outs)
            opt_outs.add_metric([tenant, "withdraw"], c.withdrawals)
            requests.add_metric([tenant], c.deletion_requests)
            completed.add_metric([tenant], c.deletions_completed)
            stale.add_metric([tenant, "tombstone"], c.stale_tombstone)
            stale.add_metric([tenant, "newer_profile_stored"], c.stale_newer)
            withheld.add_metric([tenant], c.outcomes_withheld)
        tickets = GaugeMetricFamily(
            "pairline_deletion_tickets",
            "Deletion tickets not completed (state=open), and of those the ones due within "
            "the tenant's due-soon window (due_soon) and past due (overdue); read from the "
            "ledger, shared on Redis: aggregate replicas with max",
            labels=["tenant", "state"])
        for tenant, state, count in ticket_rows or ():
            tickets.add_metric([tenant, state], count)
        yield from (opt_outs, requests, completed, stale, withheld, tickets)

    @staticmethod
    def _redis(snap: Snapshot) -> Iterator[Metric]:
        conflicts = CounterMetricFamily(
            "pairline_claim_conflicts",
            "Routing commits (claims of agents and contacts) that lost a race with another "
            "replica and were run again (Redis store)")
        commits = CounterMetricFamily(
            "pairline_routing_commits", "Routing changes committed to Redis (Redis store)")
        lookups = CounterMetricFamily(
            "pairline_cache_lookups",
            "Replica-local cache lookups by cache and result (hit, miss); hit ratio = "
            "rate(hit) / rate(all) (Redis store)", labels=["cache", "result"])
        lag = GaugeMetricFamily(
            "pairline_change_feed_lag_seconds",
            "Age of the newest change-feed event when this replica applied it (Redis store)")
        if snap.claim_conflicts is not None:
            conflicts.add_metric([], snap.claim_conflicts)
        if snap.commits is not None:
            commits.add_metric([], snap.commits)
        if snap.cache_hits is not None and snap.cache_misses is not None:
            lookups.add_metric(["customer_profiles", "hit"], snap.cache_hits)
            lookups.add_metric(["customer_profiles", "miss"], snap.cache_misses)
        if snap.feed_lag_s is not None:
            lag.add_metric([], snap.feed_lag_s)
        degraded = GaugeMetricFamily(
            "pairline_redis_degraded",
            "1 while this replica cannot reach Redis and routes from its mirror (mode "
            "DEGRADED), else 0 (Redis store)")
        if snap.degraded is not None:
            degraded.add_metric([], float(snap.degraded))
        yield from (conflicts, commits, lookups, lag, degraded)


class MetricsEndpoint:
    """``GET /metrics`` over HTTP (prometheus-client's server, in a daemon thread)."""

    def __init__(self, registry: CollectorRegistry, listen: str) -> None:
        host, _, port = listen.rpartition(":")
        if not host or not port.isdigit():
            raise ValueError(f"metrics_listen must be HOST:PORT, not {listen!r}")
        try:
            self._httpd, self._thread = start_http_server(
                int(port), addr=host.strip("[]"), registry=registry
            )
        except OSError as exc:
            raise OSError(f"cannot serve metrics on {listen}: {exc}") from None
        self.address = f"{host}:{self._httpd.server_port}"

    def close(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(5)
