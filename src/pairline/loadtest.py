"""``pairline loadtest``: drive a running server as a busy switch would, and report.

The harness is a switch in miniature. It first logs in ``agents`` agents (each
serving ``queues_per_agent`` of ``queues`` queues, with a proficiency each, a
voice capacity and a chat capacity), then, for the measured run:

- **contacts arrive** (``RouteContact``): in a *closed loop* ``concurrency``
  workers each send the next arrival when the previous one was answered; in an
  *open loop* arrivals follow a fixed schedule at ``rate`` per second (Poisson
  or evenly spaced), whatever the server does;
- a contact given an agent **rings** and is **confirmed** (``ConfirmDecision``;
  a share ``reject_share`` is rejected instead, ``ReleaseDecision``, which sets
  the agent away until it comes back), is **handled** for an exponential
  ``handle_ms`` and **ended** (``EndContact`` HANDLED with ``wrap_ms`` of
  wrap-up), some with an outcome (``ReportOutcome``);
- after wrap-up the agent asks for the next waiting contact (``AgentReady``),
  and keeps going while it gets one;
- a queued contact the server could not place **abandons** after ``patience_ms``
  (``EndContact`` ABANDONED), unless an agent picked it up first;
- **churn**: ``churn_per_s`` times a second (Poisson) an agent goes away or logs
  out (``SetAgentState``): at once if it has no contact (it may be in wrap-up),
  else once its contacts end, as an agent's "aux pending" does; it comes back or
  logs back in after an exponential ``away_ms`` (``AgentReady``, or
  ``SetAgentState`` then ``AgentReady``).

``target`` may name several replicas (``host:port,host:port``, unary only): each
call then goes to one picked at random among those not marked down, and one
that answers UNAVAILABLE (gone, stopping, contended) is marked down for
:data:`DOWN_S` while the call goes to another within the same deadline, as a
switch in front of several replicas does (``failovers`` in the report).

A **ledger** keeps the switch's view of every confirmed offer: a contact
connected to two decisions at once, or an agent given more connected contacts
on a channel than its capacity, is a *double assignment*; a contact whose
creation was acknowledged and that the server later no longer knows (an
``EndContact`` answered NOT_FOUND) while nothing the harness did can explain it
(no earlier call about it went unanswered or failed over, and no other end of
it was sent: a hang-up racing a pick-up) is *lost*.

Every call goes over unary RPCs (``mode="unary"``) or as events on ``streams``
``Connect`` streams (``mode="connect"``) with at most ``window`` unanswered
events each, matched to their replies by ``request_id``. Every call has a
deadline of ``deadline_ms`` (on a stream the harness enforces it itself, time
spent waiting for a window slot included).

Latency of the routing calls (``RouteContact``, the arrivals the loops drive)
is measured from the **scheduled** send time: in an open loop, an arrival that
could not be sent on time (a saturated client, a full window, a stalled loop)
is charged for the wait, so coordinated omission does not hide queueing
(arrivals leave within about a millisecond of their time, the event loop's
timer granularity; one that left early is timed from its send). The time from
the actual send is reported beside it (``service_*``). Other calls are timed
from their send. Every answered call counts, whatever its status.

The run ends after ``duration_s`` or ``requests`` routing calls, whichever comes
first; the calls in flight then finish (within their deadline), and a cleanup
ends the contacts still live and logs the agents out, so the server is left as
it was found. Setup and cleanup calls are reported apart from the run.

Under churn some calls lose a race that a real switch loses too: an offer
expires or is released by a logout before its confirmation (``NOT_FOUND``), a
contact abandons while ringing, a logout meets a contact just connected
(``FAILED_PRECONDITION``). :data:`RACE_CODES` are the codes expected for that.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import heapq
import itertools
import json
import math
import random
import secrets
import sys
import traceback
from array import array
from collections import Counter
from collections.abc import Callable, Coroutine, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import grpc
import numpy as np

from pairline._proto.pairline.v1 import common_pb2 as cpb
from pairline._proto.pairline.v1 import router_pb2 as rpb
from pairline._proto.pairline.v1 import router_pb2_grpc as rpb_grpc
from pairline.config import DEMO_API_KEY

# ---------------------------------------------------------------- constants
#: The RPC whose calls are the arrivals the loops drive: headline figures, bounds.
ROUTING_RPC = "RouteContact"
#: Unary method name -> field of the event on the Connect stream.
EVENT_FIELD: Mapping[str, str] = {
    "RouteContact": "route_contact",
    "AgentReady": "agent_ready",
    "SetAgentState": "set_agent_state",
    "ConfirmDecision": "confirm_decision",
    "ReleaseDecision": "release_decision",
    "EndContact": "end_contact",
    "ReportOutcome": "report_outcome",
}
#: Codes a run with churn produces by itself (races every switch meets, see above).
RACE_CODES = frozenset({"NOT_FOUND", "FAILED_PRECONDITION"})
#: Codes after which the server certainly did not create the contact.
_NOT_CREATED = frozenset({
    "UNAUTHENTICATED", "PERMISSION_DENIED", "INVALID_ARGUMENT", "ALREADY_EXISTS",
    "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION", "UNIMPLEMENTED",
})
_CODE_NAME = {c.value[0]: c.name for c in grpc.StatusCode}
PERCENTILES = (50.0, 90.0, 99.0, 99.9)
_PCT_KEYS = ("p50_ms", "p90_ms", "p99_ms", "p999_ms")
DEFAULT_DURATION_S = 10.0
#: With only ``requests`` given, a run still ends after this long.
MAX_DURATION_S = 3600.0
CLEANUP_S = 10.0
_SETUP_IN_FLIGHT = 64
_SWEEP_S = 0.02
# The event loop's timers fire up to ~1 ms late (epoll waits in whole ms): arrivals
# are woken this much early, so that they leave within about 1 ms of their time
# either way instead of ~0.5 ms late on average (a bias, not queueing).
_TIMER_SLACK_S = 0.001
#: With several targets: a replica that answered UNAVAILABLE is left alone this long.
DOWN_S = 0.25
#: Codes after which a call may or may not have been carried out.
_AMBIGUOUS = frozenset({"UNAVAILABLE", "DEADLINE_EXCEEDED", "CANCELLED", "UNKNOWN", "INTERNAL"})


@dataclass(frozen=True, slots=True)
class LoadOptions:
    """What to run. Field names are the command-line options (``--duration-s``...)."""

    target: str = "127.0.0.1:50051"
    key: str = DEMO_API_KEY
    duration_s: float | None = None  # default 10 s (1 h cap when only requests is given)
    requests: int | None = None  # routing calls at most
    concurrency: int = 16  # closed loop: workers
    rate: float | None = None  # open loop: arrivals per second (closed loop when None)
    arrival: str = "poisson"  # open loop spacing: poisson | fixed
    max_in_flight: int = 10_000  # open loop: arrivals unanswered at most (later ones wait)
    mode: str = "unary"  # unary | connect
    streams: int = 1
    window: int = 64  # unanswered events per stream
    agents: int = 100
    queues: int = 4
    queues_per_agent: int = 2
    voice_capacity: int = 1
    chat_capacity: int = 2
    chat_share: float = 0.2  # share of contacts on chat (when agents take chat)
    customers: int = 5_000  # customer keys "+0".."+N-1" (0: none sent)
    handle_ms: float = 100.0  # mean handle time
    wrap_ms: float = 50.0  # wrap-up after each handled contact
    patience_ms: float = 2_000.0  # a queued contact abandons after this
    reject_share: float = 0.02  # offers the agent rejects
    outcome_share: float = 0.2  # handled contacts reported with an outcome
    churn_per_s: float = 2.0  # agent away / log-out events per second
    away_ms: float = 1_000.0  # mean time away or logged out
    deadline_ms: float = 1_000.0  # per call
    seed: int = 0
    id_prefix: str = ""  # agent, contact and queue ids start with it (default random)
    cleanup: bool = True
    json: bool = False

    def __post_init__(self) -> None:
        problems = []
        if not self.target:
            problems.append("target is required (HOST:PORT)")
        if self.duration_s is not None and not 0 < self.duration_s <= MAX_DURATION_S:
            problems.append(f"duration_s must be in (0, {MAX_DURATION_S:g}]")
        if self.requests is not None and self.requests < 1:
            problems.append("requests must be >= 1")
        if self.concurrency < 1:
            problems.append("concurrency must be >= 1")
        if self.rate is not None and not 0 < self.rate <= 1e6:
            problems.append("rate must be in (0, 1e6]")
        if self.arrival not in ("poisson", "fixed"):
            problems.append("arrival is poisson or fixed")
        if self.mode not in ("unary", "connect"):
            problems.append("mode is unary or connect")
        if len(self.targets) > 1 and self.mode != "unary":
            problems.append("several targets need mode unary")
        if self.streams < 1 or self.window < 1 or self.max_in_flight < 1:
            problems.append("streams, window and max_in_flight must be >= 1")
        if not 0 <= self.agents <= 50_000:
            problems.append("agents must be in 0..50000")
        if not 1 <= self.queues <= 10_000 or not 1 <= self.queues_per_agent <= 64:
            problems.append("queues must be in 1..10000, queues_per_agent in 1..64")
        if not (0 <= self.voice_capacity <= 100 and 0 <= self.chat_capacity <= 100):
            problems.append("capacities must be in 0..100")
        if self.voice_capacity == 0 and self.chat_capacity == 0 and self.agents:
            problems.append("agents need a voice or a chat capacity")
        for name in ("chat_share", "reject_share", "outcome_share"):
            if not 0 <= getattr(self, name) <= 1:
                problems.append(f"{name} must be in [0, 1]")
        for name in ("handle_ms", "wrap_ms", "patience_ms", "away_ms", "churn_per_s"):
            if not 0 <= getattr(self, name) < 1e9:
                problems.append(f"{name} must be >= 0")
        if not 0 < self.deadline_ms <= 600_000:
            problems.append("deadline_ms must be in (0, 600000]")
        if self.customers < 0:
            problems.append("customers must be >= 0")
        if len(self.id_prefix) > 64:
            problems.append("id_prefix is at most 64 chars")
        if problems:
            raise ValueError("; ".join(problems))

    @classmethod
    def of(cls, options: LoadOptions | argparse.Namespace | Mapping[str, Any]) -> LoadOptions:
        """Options from themselves, a parsed namespace or a dict (unknown keys ignored)."""
        if isinstance(options, LoadOptions):
            return options
        raw = vars(options) if isinstance(options, argparse.Namespace) else dict(options)
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in raw.items() if k in names and v is not None})

    @property
    def run_s(self) -> float:
        """How long arrivals go on at most."""
        if self.duration_s is not None:
            return self.duration_s
        return DEFAULT_DURATION_S if self.requests is None else MAX_DURATION_S

    @property
    def loop(self) -> str:
        return "closed" if self.rate is None else "open"

    @property
    def targets(self) -> list[str]:
        """The replicas named by ``target`` (comma separated)."""
        return [t.strip() for t in self.target.split(",") if t.strip()]


# ---------------------------------------------------------------- transports
class Transport(Protocol):
    async def call(self, rpc: str, request: Any, timeout_s: float) -> tuple[str, Any]:
        """Send one request; the status code name and the response (None on error)."""

    async def close(self) -> None: ...


def _metadata(key: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {key}"),)


class UnaryTransport:
    """One unary RPC per call, on one channel."""

    __slots__ = ("_channel", "_meta", "_methods")

    def __init__(self, target: str, key: str) -> None:
        self._channel = grpc.aio.insecure_channel(target)
        self._meta = _metadata(key)
        stub = rpb_grpc.RouterStub(self._channel)
        self._methods = {name: getattr(stub, name) for name in EVENT_FIELD}

    async def call(self, rpc: str, request: Any, timeout_s: float) -> tuple[str, Any]:
        try:
            return "OK", await self._methods[rpc](request, metadata=self._meta, timeout=timeout_s)
        except grpc.aio.AioRpcError as err:
            return err.code().name, None

    async def close(self) -> None:
        await self._channel.close()


class SpreadTransport:
    """Unary calls spread over several replicas, failing over on UNAVAILABLE (see
    the module docstring). :meth:`call_ex` also says whether the call failed over
    (its first attempt may have been carried out by the replica that went away)."""

    __slots__ = ("_down_until", "_rng", "_transports", "calls", "failovers")

    def __init__(self, targets: list[str], key: str, seed: int) -> None:
        self._transports = [UnaryTransport(t, key) for t in targets]
        self._down_until = [0.0] * len(targets)
        self._rng = random.Random(f"{seed}-spread")
        self.failovers = 0
        self.calls = [0] * len(targets)

    async def call(self, rpc: str, request: Any, timeout_s: float) -> tuple[str, Any]:
        code, response, _ = await self.call_ex(rpc, request, timeout_s)
        return code, response

    async def call_ex(self, rpc: str, request: Any, timeout_s: float
                      ) -> tuple[str, Any, bool]:
        loop = asyncio.get_running_loop()
        end = loop.time() + timeout_s
        n = len(self._transports)
        last = -1
        failed_over = False
        while True:
            now = loop.time()
            left = end - now
            if left <= 0:
                return "DEADLINE_EXCEEDED", None, failed_over
            up = [i for i in range(n) if self._down_until[i] <= now and i != last]
            if not up:  # every other one is marked down: try the one down the longest
                await asyncio.sleep(min(0.01, left))
                up = [min((i for i in range(n) if i != last or n == 1),
                          key=self._down_until.__getitem__)]
            i = up[0] if len(up) == 1 else self._rng.choice(up)
            self.calls[i] += 1
            code, response = await self._transports[i].call(rpc, request, end - loop.time())
            if code != "UNAVAILABLE":
                return code, response, failed_over
            self._down_until[i] = loop.time() + DOWN_S
            self.failovers += 1
            failed_over = True
            last = i

    async def close(self) -> None:
        await asyncio.gather(*(t.close() for t in self._transports))


class StreamCounters:
    __slots__ = ("late", "matched", "opened", "sent", "unmatched")

    def __init__(self) -> None:
        self.sent = 0  # events written
        self.matched = 0  # replies matched to a waiting event
        self.late = 0  # replies matched after the event's deadline had passed
        self.unmatched = 0  # replies with an unknown request_id
        self.opened = 0  # streams opened (more than ``streams`` after stream failures)

    def as_dict(self) -> dict[str, int]:
        return {name: getattr(self, name) for name in self.__slots__}


class _StreamCall:
    """One opened Connect call: its outbox, its unanswered events, its writer and reader.

    The writer sends the first event alone and the rest only once a reply has come:
    when the server refuses a stream (a wrong key), a write that meets the closing
    stream makes grpc.aio report INTERNAL instead of the server's status
    (grpc/grpc#36066); one event in flight never does."""

    __slots__ = ("accepted", "call", "dead", "late", "outbox", "pending", "reader", "writer")

    def __init__(self) -> None:
        self.outbox: asyncio.Queue[rpb.SwitchEvent | None] = asyncio.Queue()
        self.pending: dict[str, asyncio.Future[tuple[str, Any]]] = {}
        self.late: set[str] = set()
        self.accepted = asyncio.Event()  # a first reply came: the server took the stream
        self.dead = False
        self.call: Any = None
        self.reader: asyncio.Task[None] | None = None
        self.writer: asyncio.Task[None] | None = None

    async def write_all(self) -> None:
        try:
            while True:
                event = await self.outbox.get()
                if event is None:
                    await self.call.done_writing()
                    return
                await self.call.write(event)
                if not self.accepted.is_set():
                    await self.accepted.wait()
        except asyncio.CancelledError:
            raise
        except Exception:  # the stream failed: the reader reports its status
            return


class _Stream:
    """A Connect stream with a window of unanswered events; reopened after a failure."""

    __slots__ = ("_counters", "_ids", "_life_s", "_meta", "_stub", "_window", "current")

    def __init__(self, stub: rpb_grpc.RouterStub, meta: Any, window: int, life_s: float,
                 counters: StreamCounters) -> None:
        self._stub = stub
        self._meta = meta
        self._window = asyncio.Semaphore(window)
        self._life_s = life_s
        self._counters = counters
        self._ids = itertools.count()
        self.current: _StreamCall | None = None

    def _open(self) -> _StreamCall:
        sc = _StreamCall()
        sc.call = self._stub.Connect(metadata=self._meta, timeout=self._life_s)
        sc.writer = asyncio.create_task(sc.write_all())
        sc.reader = asyncio.create_task(self._read(sc))
        self._counters.opened += 1
        self.current = sc
        return sc

    async def _read(self, sc: _StreamCall) -> None:
        code = "UNAVAILABLE"  # the stream ended with events unanswered
        try:
            while (reply := await sc.call.read()) is not grpc.aio.EOF:
                sc.accepted.set()
                fut = sc.pending.pop(reply.request_id, None)
                if fut is None:
                    self._counters.unmatched += 1
                    continue
                self._window.release()
                if reply.request_id in sc.late:
                    sc.late.discard(reply.request_id)
                    self._counters.late += 1
                    continue
                self._counters.matched += 1
                kind = reply.WhichOneof("reply")
                if kind == "error":
                    fut.set_result((_CODE_NAME.get(reply.error.code, "UNKNOWN"), None))
                else:
                    fut.set_result(("OK", getattr(reply, kind) if kind else None))
        except grpc.aio.AioRpcError as err:
            code = err.code().name
        except asyncio.CancelledError:
            code = "CANCELLED"
            raise
        finally:
            sc.dead = True
            if sc.writer is not None and not sc.writer.done():
                sc.writer.cancel()
            for fut in sc.pending.values():
                self._window.release()
                if not fut.done():
                    fut.set_result((code, None))
            sc.pending.clear()

    async def ask(self, field: str, request: Any, timeout_s: float) -> tuple[str, Any]:
        loop = asyncio.get_running_loop()
        end = loop.time() + timeout_s
        try:
            await asyncio.wait_for(self._window.acquire(), timeout_s)
        except TimeoutError:
            return "DEADLINE_EXCEEDED", None
        sc = self.current
        if sc is None or sc.dead:
            sc = self._open()
        rid = f"{next(self._ids):x}"
        fut: asyncio.Future[tuple[str, Any]] = loop.create_future()
        sc.pending[rid] = fut
        sc.outbox.put_nowait(rpb.SwitchEvent(request_id=rid, **{field: request}))
        self._counters.sent += 1
        try:
            return await asyncio.wait_for(asyncio.shield(fut), max(end - loop.time(), 0.0))
        except TimeoutError:
            if rid in sc.pending:
                sc.late.add(rid)  # its window slot is freed when the reply comes
            return "DEADLINE_EXCEEDED", None

    async def close(self) -> None:
        sc = self.current
        if sc is None or sc.reader is None:
            return
        sc.outbox.put_nowait(None)  # half-close: the server answers what it has, then ends
        try:
            await asyncio.wait_for(asyncio.shield(sc.reader), 2.0)
        except TimeoutError:
            sc.call.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sc.reader
        if sc.writer is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await sc.writer


class ConnectTransport:
    """Calls as events on ``streams`` Connect streams, round robin."""

    __slots__ = ("_channel", "_next", "_streams", "counters")

    def __init__(self, target: str, key: str, streams: int, window: int, life_s: float) -> None:
        self._channel = grpc.aio.insecure_channel(target)
        stub = rpb_grpc.RouterStub(self._channel)
        self.counters = StreamCounters()
        meta = _metadata(key)
        self._streams = [_Stream(stub, meta, window, life_s, self.counters)
                         for _ in range(streams)]
        self._next = itertools.cycle(self._streams)

    async def call(self, rpc: str, request: Any, timeout_s: float) -> tuple[str, Any]:
        return await next(self._next).ask(EVENT_FIELD[rpc], request, timeout_s)

    async def close(self) -> None:
        await asyncio.gather(*(s.close() for s in self._streams))
        await self._channel.close()


# ---------------------------------------------------------------- statistics
class _Samples:
    __slots__ = ("codes", "lat_ms", "svc_ms")

    def __init__(self) -> None:
        self.codes: Counter[str] = Counter()
        self.lat_ms = array("d")  # from the scheduled send time
        self.svc_ms = array("d")  # from the actual send time


class Recorder:
    """Answered calls of one phase (setup, run, cleanup), by RPC."""

    __slots__ = ("by_rpc",)

    def __init__(self) -> None:
        self.by_rpc: dict[str, _Samples] = {}

    def record(self, rpc: str, code: str, lat_s: float, svc_s: float) -> None:
        s = self.by_rpc.get(rpc)
        if s is None:
            s = self.by_rpc[rpc] = _Samples()
        s.codes[code] += 1
        s.lat_ms.append(lat_s * 1000.0)
        s.svc_ms.append(svc_s * 1000.0)

    def codes(self) -> Counter[str]:
        total: Counter[str] = Counter()
        for s in self.by_rpc.values():
            total.update(s.codes)
        return total


def latency_summary(ms: array[float] | list[float], prefix: str = "") -> dict[str, float | None]:
    """p50/p90/p99/p99.9, mean and max in ms (None without samples)."""
    keys = [*_PCT_KEYS, "mean_ms", "max_ms"]
    if len(ms) == 0:
        return {prefix + k: None for k in keys}
    a = np.asarray(ms, dtype=np.float64)
    values = [*np.percentile(a, PERCENTILES).tolist(), float(a.mean()), float(a.max())]
    return {prefix + k: round(v, 4) for k, v in zip(keys, values, strict=True)}


def _status_part(codes: Mapping[str, int]) -> dict[str, Any]:
    return {
        "ok": int(codes.get("OK", 0)),
        "errors": {k: int(v) for k, v in sorted(codes.items()) if k != "OK"},
    }


def _phase_summary(rec: Recorder, seconds: float) -> dict[str, Any]:
    codes = rec.codes()
    return {"calls": sum(codes.values()), **_status_part(codes), "seconds": round(seconds, 4)}


# ---------------------------------------------------------------- the ledger
class Ledger:
    """The switch's view of offers and connected contacts: double assignments and
    lost contacts (see the module docstring). Fed by every call of the harness."""

    __slots__ = ("_capacity", "connected", "counts", "created", "ended", "load", "offers",
                 "samples", "unsure")

    def __init__(self, capacity: Callable[[str, int], int]) -> None:
        self._capacity = capacity  # (agent id, channel) -> capacity
        self.offers: dict[str, tuple[str, str, int]] = {}  # decision -> contact, agent, channel
        self.connected: dict[str, tuple[str, str, int]] = {}  # contact -> decision, agent, ch
        self.load: Counter[tuple[str, int]] = Counter()  # (agent, channel) -> connected
        self.created: set[str] = set()  # contacts the server acknowledged
        self.unsure: set[str] = set()  # a call about it went unanswered or failed over
        self.ended: Counter[str] = Counter()  # EndContact calls sent per contact
        self.counts: Counter[str] = Counter()
        self.samples: list[str] = []

    def _bad(self, kind: str, what: str) -> None:
        self.counts[kind] += 1
        if len(self.samples) < 20:
            self.samples.append(f"{kind}: {what}")

    def hang_up(self, contact_id: str) -> None:
        """The switch ends the contact: its agent's place is free from now on."""
        self.ended[contact_id] += 1
        held = self.connected.pop(contact_id, None)
        if held is not None:
            self.load[held[1], held[2]] -= 1

    def answered(self, rpc: str, request: Any, code: str, response: Any,
                 failed_over: bool) -> None:
        contact_id = getattr(request, "contact_id", "")
        if failed_over or code in _AMBIGUOUS:
            if contact_id:
                self.unsure.add(contact_id)
            elif rpc == "ConfirmDecision":
                offer = self.offers.get(request.decision_id)
                if offer is not None:
                    self.unsure.add(offer[0])
        if code == "OK":
            if rpc == "RouteContact":
                self.created.add(contact_id)
            if rpc in ("RouteContact", "AgentReady") and response.decision_id \
                    and response.agent_id and response.contact_id:
                self.offers[response.decision_id] = (
                    response.contact_id, response.agent_id, response.channel)
            elif rpc == "ConfirmDecision":
                self._connect(request.decision_id)
        elif rpc == "EndContact" and not failed_over:
            if code == "NOT_FOUND" and contact_id in self.created \
                    and contact_id not in self.unsure and self.ended[contact_id] == 1:
                self._bad("lost", f"{contact_id} (acknowledged, never ended, now unknown)")
            elif code == "FAILED_PRECONDITION" and request.reason == rpb.END_REASON_HANDLED:
                # The server has it waiting again although its confirm was answered OK.
                self._bad("lost", f"{contact_id} (confirmed, then waiting again)")

    def _connect(self, decision_id: str) -> None:
        offer = self.offers.get(decision_id)
        if offer is None:
            return
        contact_id, agent_id, channel = offer
        self.counts["confirmed"] += 1
        if contact_id in self.ended:
            return  # hung up while its confirm was on the way
        held = self.connected.get(contact_id)
        if held is not None and held[0] != decision_id:
            self._bad("double", f"{contact_id} connected by {held[0]} to {held[1]} and by "
                                f"{decision_id} to {agent_id}")
            self.hang_up(contact_id)
        elif held is not None:
            return  # the same confirm again (a retry)
        self.connected[contact_id] = (decision_id, agent_id, channel)
        self.load[agent_id, channel] += 1
        cap = self._capacity(agent_id, channel)
        if self.load[agent_id, channel] > cap:
            self._bad("double", f"{agent_id} holds {self.load[agent_id, channel]} contacts "
                                f"on channel {channel}, capacity {cap}")

    def summary(self) -> dict[str, Any]:
        return {
            "confirmed": self.counts["confirmed"],
            "double_assignments": self.counts["double"],
            "lost": self.counts["lost"],
            "unsure_contacts": len(self.unsure),
            "samples": self.samples[:5],
        }


# ---------------------------------------------------------------- the switch
_OUT, _IN, _AWAY = "logged_out", "in", "away"
_WAITING, _RESERVED, _CONNECTED, _LEAVING = "waiting", "reserved", "connected", "leaving"


class _Agent:
    __slots__ = ("busy", "changing", "id", "leave", "login", "status")

    def __init__(self, agent_id: str, login: rpb.SetAgentStateRequest) -> None:
        self.id = agent_id
        self.login = login
        self.status = _OUT
        self.busy = 0  # local contacts reserved or connected, and AgentReady in flight
        self.changing = False  # away or logged out by churn / a rejection, back later
        self.leave = ""  # "away" or "logout" once its contacts end (an agent's "aux pending")


class _Contact:
    __slots__ = ("abandon_at", "agent_id", "channel", "decision_id", "id", "queue", "state")

    def __init__(self, contact_id: str, queue: str, channel: int) -> None:
        self.id = contact_id
        self.queue = queue
        self.channel = channel
        self.state = _WAITING
        self.decision_id = ""
        self.agent_id = ""
        self.abandon_at = math.inf


class _Harness:
    """One load test run against one transport. Single event loop: the local state
    changes only between awaits."""

    def __init__(self, o: LoadOptions, transport: Transport,
                 timeline: list[tuple[float, str, str, float, int, bool]] | None = None
                 ) -> None:
        self.o = o
        self.t = transport
        self._call_ex = getattr(transport, "call_ex", None)
        # Every call of the run: (answered at, loop time; rpc; code; latency ms;
        # decision mode or -1; failed over).
        self.timeline = timeline
        self.ledger = Ledger(self._capacity)
        self.loop = asyncio.get_running_loop()
        # Arrival times and contacts each draw from their own generator, so that a seed
        # gives the same schedule and the same contacts whatever the answers; the
        # lives of contacts and agents (handle times, churn) depend on the answers.
        self.rng = random.Random(f"{o.seed}-lives")
        self.schedule_rng = random.Random(f"{o.seed}-schedule")
        self.contact_rng = random.Random(f"{o.seed}-contacts")
        self.deadline_s = o.deadline_ms / 1000.0
        self.prefix = o.id_prefix or f"lt-{secrets.token_hex(3)}-"
        self.queues = [f"{self.prefix}q{j}" for j in range(o.queues)]
        self.agents = {a.id: a for a in self._agents()}
        self.agent_list = list(self.agents.values())
        self.live: dict[str, _Contact] = {}
        self.patience: list[tuple[float, str]] = []  # (abandon at, contact id)
        self.recorders = {"setup": Recorder(), "run": Recorder(), "cleanup": Recorder()}
        self.phase_s: dict[str, float] = {}
        self.counts: Counter[str] = Counter()
        self.modes: dict[str, Counter[str]] = {"RouteContact": Counter(), "AgentReady": Counter()}
        self.tasks: set[asyncio.Task[Any]] = set()
        self.in_call: set[asyncio.Task[Any]] = set()
        self.harness_errors: list[str] = []
        self.stopping = False
        self.sent = 0  # routing calls sent
        self._contact_ids = itertools.count()

    # ------------------------------------------------------------ plumbing
    def _agents(self) -> list[_Agent]:
        o = self.o
        rng = random.Random(f"{o.seed}-agents")
        caps = [rpb.ChannelCapacity(channel=cpb.CHANNEL_VOICE, capacity=o.voice_capacity),
                rpb.ChannelCapacity(channel=cpb.CHANNEL_CHAT, capacity=o.chat_capacity)]
        out = []
        per = min(o.queues_per_agent, o.queues)
        for i in range(o.agents):
            members = [rpb.QueueMembership(queue=self.queues[(i + k) % o.queues],
                                           proficiency=rng.randint(20, 100)) for k in range(per)]
            agent_id = f"{self.prefix}a{i}"
            out.append(_Agent(agent_id, rpb.SetAgentStateRequest(
                agent_id=agent_id, status=rpb.AGENT_STATUS_AVAILABLE, queues=members,
                capacities=caps)))
        return out

    def _capacity(self, agent_id: str, channel: int) -> int:
        o = self.o
        return o.voice_capacity if channel == cpb.CHANNEL_VOICE else o.chat_capacity

    async def call(self, rec: Recorder, rpc: str, request: Any,
                   scheduled: float | None = None) -> tuple[str, Any]:
        task = asyncio.current_task()
        if task is not None:
            self.in_call.add(task)
        if rpc == "EndContact":
            self.ledger.hang_up(request.contact_id)
        sent = self.loop.time()
        failed_over = False
        try:
            if self._call_ex is not None:
                code, response, failed_over = await self._call_ex(rpc, request, self.deadline_s)
            else:
                code, response = await self.t.call(rpc, request, self.deadline_s)
        finally:
            if task is not None:
                self.in_call.discard(task)
        done = self.loop.time()
        # From the scheduled time when the call left late (the wait is the caller's);
        # from the send when it left (at most _TIMER_SLACK_S) early.
        start = sent if scheduled is None else min(scheduled, sent)
        rec.record(rpc, code, done - start, done - sent)
        self.ledger.answered(rpc, request, code, response, failed_over)
        if self.timeline is not None and rec is self.recorders["run"]:
            mode = response.mode if code == "OK" and hasattr(response, "mode") else -1
            self.timeline.append((done, rpc, code, (done - start) * 1000.0, mode, failed_over))
        return code, response

    async def run_call(self, rpc: str, request: Any) -> tuple[str, Any]:
        return await self.call(self.recorders["run"], rpc, request)

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> None:
        task = asyncio.create_task(self._guard(coro))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _guard(self, coro: Coroutine[Any, Any, Any]) -> None:
        try:
            await coro
        except asyncio.CancelledError:
            raise
        except Exception:
            if len(self.harness_errors) < 10:
                self.harness_errors.append(traceback.format_exc(limit=5))
            else:
                self.harness_errors.append("...")

    async def sleep(self, seconds: float) -> bool:
        """Sleep unless the run is over; False when it is (the caller stops)."""
        if self.stopping:
            return False
        if seconds > 0:
            await asyncio.sleep(seconds)
        return not self.stopping

    def _exp_s(self, mean_ms: float) -> float:
        return self.rng.expovariate(1000.0 / mean_ms) if mean_ms > 0 else 0.0

    # ------------------------------------------------------------ setup
    async def setup(self) -> None:
        rec = self.recorders["setup"]
        gate = asyncio.Semaphore(_SETUP_IN_FLIGHT)

        async def one(agent: _Agent) -> None:
            async with gate:
                code, _ = await self.call(rec, "SetAgentState", agent.login)
            if code == "OK":
                agent.status = _IN

        t0 = self.loop.time()
        await asyncio.gather(*(one(a) for a in self.agent_list))
        self.phase_s["setup"] = self.loop.time() - t0

    # ------------------------------------------------------------ contacts
    def _new_contact(self) -> tuple[_Contact, rpb.RouteContactRequest]:
        o, rng = self.o, self.contact_rng
        queue = self.queues[rng.randrange(len(self.queues))]
        chat = o.chat_capacity > 0 and rng.random() < o.chat_share
        channel = cpb.CHANNEL_CHAT if chat else cpb.CHANNEL_VOICE
        if o.voice_capacity == 0 and o.agents:
            channel = cpb.CHANNEL_CHAT
        c = _Contact(f"{self.prefix}c{next(self._contact_ids)}", queue, channel)
        req = rpb.RouteContactRequest(
            contact_id=c.id, queue=queue, channel=channel,
            priority=0 if rng.random() < 0.9 else rng.randint(1, 10),
            customer_key=f"+{rng.randrange(o.customers)}" if o.customers else "",
        )
        return c, req

    def _wait(self, c: _Contact) -> None:
        """``c`` waits in the pool (again): it abandons at its patience's end."""
        c.state = _WAITING
        c.decision_id = c.agent_id = ""
        if c.abandon_at == math.inf:
            c.abandon_at = self.loop.time() + self.o.patience_ms / 1000.0
        heapq.heappush(self.patience, (c.abandon_at, c.id))

    async def arrive(self, scheduled: float) -> None:
        """One arrival: RouteContact, then the contact's life in the background."""
        c, req = self._new_contact()
        self.live[c.id] = c
        self.counts["arrived"] += 1
        code, d = await self.call(self.recorders["run"], ROUTING_RPC, req, scheduled)
        if code != "OK":
            if code in _NOT_CREATED:
                self.live.pop(c.id, None)
            return
        self.modes["RouteContact"][cpb.Mode.Name(d.mode)] += 1
        if d.mode == cpb.MODE_QUEUED or not d.agent_id:
            self.counts["queued"] += 1
            self._wait(c)
            return
        self.counts["routed_on_arrival"] += 1
        self.spawn(self.handle(c, d))

    async def handle(self, c: _Contact, d: Any) -> None:
        """An offer through its life, then the agent's next ones while it gets some."""
        nxt: tuple[_Contact, Any] | None = (c, d)
        while nxt is not None and not self.stopping:
            nxt = await self._offer(*nxt)

    async def _offer(self, c: _Contact, d: Any) -> tuple[_Contact, Any] | None:
        agent = self.agents.get(d.agent_id)
        if agent is None:  # not one of ours: give it back
            await self.run_call("ReleaseDecision", rpb.ReleaseDecisionRequest(
                decision_id=d.decision_id, reason=rpb.RELEASE_REASON_NOT_CONNECTED))
            return None
        c.state, c.decision_id, c.agent_id = _RESERVED, d.decision_id, d.agent_id
        agent.busy += 1
        try:
            if not agent.changing and self.rng.random() < self.o.reject_share:
                await self._reject(c, agent)
                return None
            code, _ = await self.run_call(
                "ConfirmDecision", rpb.ConfirmDecisionRequest(decision_id=d.decision_id))
            if code != "OK":
                # Expired, released by a logout, or the customer left while it rang.
                self.counts["offers_lost"] += 1
                if c.state == _RESERVED and c.id in self.live:
                    self._wait(c)  # back in the pool, as the server put it
                return None
            if c.state != _RESERVED:
                return None  # abandoning while ringing: its EndContact is on the way
            c.state = _CONNECTED
            handle_s = self._exp_s(self.o.handle_ms)
            if not await self.sleep(handle_s):
                return None
            code, _ = await self.run_call("EndContact", rpb.EndContactRequest(
                contact_id=c.id, reason=rpb.END_REASON_HANDLED,
                wrap_up_ms=max(1, round(self.o.wrap_ms))))
            if code in ("OK", "NOT_FOUND"):
                self.live.pop(c.id, None)
            if code == "OK":
                self.counts["handled"] += 1
        finally:
            agent.busy -= 1
        if code == "OK" and self.rng.random() < self.o.outcome_share:
            await self.run_call("ReportOutcome", rpb.ReportOutcomeRequest(
                decision_id=d.decision_id,
                outcomes={"converted": float(self.rng.random() < 0.3), "handle_s": handle_s}))
        if not await self.sleep(self.o.wrap_ms / 1000.0):
            return None
        return await self._next_for(agent)

    async def _reject(self, c: _Contact, agent: _Agent) -> None:
        code, _ = await self.run_call("ReleaseDecision", rpb.ReleaseDecisionRequest(
            decision_id=c.decision_id, reason=rpb.RELEASE_REASON_AGENT_REJECTED))
        if c.state == _RESERVED and c.id in self.live:
            self._wait(c)
        if code == "OK" and not agent.changing:
            self.counts["rejected"] += 1
            agent.status, agent.changing = _AWAY, True  # the server set it away
            agent.leave = ""
            self.spawn(self._come_back(agent))

    async def _next_for(self, agent: _Agent) -> tuple[_Contact, Any] | None:
        """The agent is free: AgentReady, and the waiting contact it gets, if any;
        or, when it asked to leave and its last contact is over, it leaves."""
        if agent.status != _IN or agent.changing or self.stopping:
            return None
        if agent.leave:
            if agent.busy == 0:
                logout, agent.leave, agent.changing = agent.leave == "logout", "", True
                await self._leave(agent, logout)
            return None
        agent.busy += 1
        try:
            code, d = await self.run_call("AgentReady",
                                          rpb.AgentReadyRequest(agent_id=agent.id))
        finally:
            agent.busy -= 1
        if code != "OK":
            return None
        return self._picked(d)

    def _picked(self, d: Any) -> tuple[_Contact, Any] | None:
        self.modes["AgentReady"][cpb.Mode.Name(d.mode)] += 1
        if d.mode == cpb.MODE_QUEUED or not d.contact_id:
            return None
        c = self.live.get(d.contact_id)
        if c is None:  # not known here any more (an abandon that failed): track it again
            c = self.live[d.contact_id] = _Contact(d.contact_id, d.queue, d.channel)
        self.counts["picked_up"] += 1
        return c, d

    async def abandon_sweeper(self) -> None:
        """Queued contacts whose patience ran out hang up (EndContact ABANDONED)."""
        while not self.stopping:
            now = self.loop.time()
            while self.patience and self.patience[0][0] <= now:
                at, contact_id = heapq.heappop(self.patience)
                c = self.live.get(contact_id)
                if c is not None and c.state == _WAITING and c.abandon_at == at:
                    c.state = _LEAVING
                    self.spawn(self._abandon(c))
            await asyncio.sleep(_SWEEP_S)

    async def _abandon(self, c: _Contact) -> None:
        code, _ = await self.run_call("EndContact", rpb.EndContactRequest(
            contact_id=c.id, reason=rpb.END_REASON_ABANDONED))
        if code in ("OK", "NOT_FOUND"):
            self.live.pop(c.id, None)
        if code == "OK":
            self.counts["abandoned"] += 1

    # ------------------------------------------------------------ churn
    async def churn(self) -> None:
        """Agents go away or log out, Poisson at churn_per_s, and come back later."""
        if self.o.churn_per_s <= 0 or not self.agent_list:
            return
        while await self.sleep(self.rng.expovariate(self.o.churn_per_s)):
            sample = self.rng.sample(self.agent_list, min(8, len(self.agent_list)))
            here = [a for a in sample if a.status == _IN and not a.changing and not a.leave]
            if not here:
                self.counts["churn_skipped"] += 1  # everyone sampled is away already
                continue
            agent = here[0]
            logout = self.rng.random() < 0.5
            if agent.busy:
                agent.leave = "logout" if logout else "away"  # after its contacts
                continue
            agent.changing = True
            self.spawn(self._leave(agent, logout))

    async def _leave(self, agent: _Agent, logout: bool) -> None:
        status = rpb.AGENT_STATUS_LOGGED_OUT if logout else rpb.AGENT_STATUS_AWAY
        code, _ = await self.run_call(
            "SetAgentState", rpb.SetAgentStateRequest(agent_id=agent.id, status=status))
        if code != "OK":
            agent.changing = False
            return
        agent.status = _OUT if logout else _AWAY
        self.counts["logouts" if logout else "aways"] += 1
        await self._come_back(agent)

    async def _come_back(self, agent: _Agent) -> None:
        if not await self.sleep(self._exp_s(self.o.away_ms)):
            return  # the cleanup logs it out
        if agent.status == _OUT:
            code, _ = await self.run_call("SetAgentState", agent.login)
            if code != "OK":
                agent.changing = False  # stays out; churn leaves it alone
                return
            self.counts["logins"] += 1
        code, d = await self.run_call("AgentReady", rpb.AgentReadyRequest(agent_id=agent.id))
        agent.changing, agent.leave = False, ""
        if code != "OK":
            return
        if agent.status == _AWAY:
            self.counts["backs"] += 1
        agent.status = _IN
        nxt = self._picked(d)
        if nxt is not None:
            await self.handle(*nxt)

    # ------------------------------------------------------------ loops
    def _take(self) -> bool:
        if self.stopping or (self.o.requests is not None and self.sent >= self.o.requests):
            return False
        self.sent += 1
        return True

    async def closed_loop(self) -> None:
        async def worker() -> None:
            while self._take():
                await self._guard(self.arrive(self.loop.time()))

        await asyncio.gather(*(worker() for _ in range(self.o.concurrency)))

    async def open_loop(self, start: float, stop_at: float) -> None:
        o = self.o
        assert o.rate is not None
        gap = 1.0 / o.rate
        arrivals: set[asyncio.Task[None]] = set()
        at = start
        while True:
            at += self.schedule_rng.expovariate(o.rate) if o.arrival == "poisson" else gap
            if at >= stop_at:
                break
            delay = at - self.loop.time() - _TIMER_SLACK_S
            if delay > 0:
                await asyncio.sleep(delay)
            while len(arrivals) >= o.max_in_flight:  # charged to the schedule, not dropped
                await asyncio.wait(arrivals, return_when=asyncio.FIRST_COMPLETED)
            if not self._take():
                break
            task = asyncio.create_task(self._guard(self.arrive(at)))
            arrivals.add(task)
            task.add_done_callback(arrivals.discard)
        if arrivals:
            await asyncio.wait(arrivals)

    async def measure(self) -> float:
        """The measured run; its length in seconds (until the last routing answer)."""
        start = self.loop.time()
        stop_at = start + self.o.run_s
        timer = self.loop.call_at(stop_at, self._stop)
        self.spawn(self.abandon_sweeper())
        self.spawn(self.churn())
        try:
            if self.o.rate is None:
                await self.closed_loop()
            else:
                await self.open_loop(start, stop_at)
        finally:
            timer.cancel()
            self._stop()
        elapsed = self.loop.time() - start
        await self._drain()
        return elapsed

    def _stop(self) -> None:
        self.stopping = True

    async def _drain(self) -> None:
        """Calls in flight finish (within their deadline); sleeping lives end now."""
        for task in list(self.tasks):
            if task not in self.in_call:
                task.cancel()
        pending = set(self.tasks)
        if pending:
            _, pending = await asyncio.wait(pending, timeout=self.deadline_s + 0.5)
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.wait(pending, timeout=1.0)

    # ------------------------------------------------------------ cleanup
    def accepted_any(self) -> bool:
        """Whether the server took any call (else there is nothing to clean up)."""
        return any(self.recorders[p].codes()["OK"] for p in ("setup", "run"))

    async def cleanup(self) -> None:
        """End the contacts still live, log our agents out: the server as it was."""
        rec = self.recorders["cleanup"]
        gate = asyncio.Semaphore(_SETUP_IN_FLIGHT)
        t0 = self.loop.time()

        async def end(c: _Contact) -> None:
            reason = rpb.END_REASON_HANDLED if c.state == _CONNECTED else rpb.END_REASON_ABANDONED
            async with gate:
                await self.call(rec, "EndContact", rpb.EndContactRequest(
                    contact_id=c.id, reason=reason, wrap_up_ms=1))

        async def logout(a: _Agent) -> None:
            async with gate:
                code, _ = await self.call(rec, "SetAgentState", rpb.SetAgentStateRequest(
                    agent_id=a.id, status=rpb.AGENT_STATUS_LOGGED_OUT))
            if code == "OK":
                a.status = _OUT

        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(CLEANUP_S):
                await asyncio.gather(*(end(c) for c in list(self.live.values())))
                await asyncio.gather(*(logout(a) for a in self.agent_list if a.status != _OUT))
        self.phase_s["cleanup"] = self.loop.time() - t0

    # ------------------------------------------------------------ report
    def report(self, elapsed_s: float) -> dict[str, Any]:
        o = self.o
        run = self.recorders["run"]
        routing = run.by_rpc.get(ROUTING_RPC, _Samples())
        per_rpc: dict[str, Any] = {}
        for name in EVENT_FIELD:
            s = run.by_rpc.get(name)
            if s is None:
                continue
            entry: dict[str, Any] = {
                "calls": len(s.lat_ms),
                "rps": round(len(s.lat_ms) / elapsed_s, 2) if elapsed_s > 0 else 0.0,
                **_status_part(s.codes),
                **latency_summary(s.lat_ms),
            }
            if name in self.modes:
                entry["modes"] = dict(sorted(self.modes[name].items()))
            per_rpc[name] = entry
        codes = run.codes()
        total = sum(codes.values())
        out: dict[str, Any] = {
            "target": o.target,
            "mode": o.mode,
            "loop": o.loop,
            "concurrency": o.concurrency if o.rate is None else None,
            "rate": o.rate,
            "arrival": o.arrival if o.rate is not None else None,
            "streams": o.streams if o.mode == "connect" else None,
            "window": o.window if o.mode == "connect" else None,
            "agents": o.agents,
            "queues": o.queues,
            "seed": o.seed,
            "id_prefix": self.prefix,
            "elapsed_s": round(elapsed_s, 4),
            "requests": len(routing.lat_ms),
            "rps": round(len(routing.lat_ms) / elapsed_s, 2) if elapsed_s > 0 else 0.0,
            "total_rps": round(total / elapsed_s, 2) if elapsed_s > 0 else 0.0,
            **latency_summary(routing.lat_ms),
            **latency_summary(routing.svc_ms, prefix="service_"),
            **_status_part(codes),
            "calls": total,
            "per_rpc": per_rpc,
            "contacts": {k: self.counts[k] for k in (
                "arrived", "routed_on_arrival", "queued", "picked_up", "handled", "abandoned",
                "rejected", "offers_lost")},
            "churn": {k: self.counts[k] for k in (
                "aways", "backs", "logouts", "logins", "churn_skipped")},
            "setup": _phase_summary(self.recorders["setup"], self.phase_s.get("setup", 0.0)),
            "cleanup": _phase_summary(self.recorders["cleanup"],
                                      self.phase_s.get("cleanup", 0.0)),
            "harness_errors": len(self.harness_errors),
        }
        out["ledger"] = self.ledger.summary()
        if isinstance(self.t, ConnectTransport):
            out["connect"] = self.t.counters.as_dict()
        if isinstance(self.t, SpreadTransport):
            out["spread"] = {"targets": len(self.t.calls), "calls": list(self.t.calls),
                             "failovers": self.t.failovers}
        if self.harness_errors:
            out["harness_error_samples"] = self.harness_errors[:3]
        return out


# ---------------------------------------------------------------- entry points
async def run_loadtest(
    options: LoadOptions | argparse.Namespace | Mapping[str, Any],
    *,
    timeline: list[tuple[float, str, str, float, int, bool]] | None = None,
) -> dict[str, Any]:
    """Run a load test and return its report (see the module docstring; keys:
    ``rps``, ``p50_ms``, ``p90_ms``, ``p99_ms``, ``p999_ms`` of the routing calls,
    ``ok`` and ``errors`` (status code name -> count) over every call of the run,
    ``per_rpc`` with the same per RPC, ``ledger`` (double assignments, lost
    contacts), and more). ``timeline``, when given, receives every call of the
    run as (answered at in loop time, rpc, code, latency ms, decision mode or -1,
    failed over). Raises ValueError on bad options."""
    o = LoadOptions.of(options)
    life_s = o.run_s + 2 * o.deadline_ms / 1000.0 + CLEANUP_S + 60.0
    t: Transport
    if o.mode == "connect":
        t = ConnectTransport(o.target, o.key, o.streams, o.window, life_s)
    elif len(o.targets) > 1:
        t = SpreadTransport(o.targets, o.key, o.seed)
    else:
        t = UnaryTransport(o.target, o.key)
    h = _Harness(o, t, timeline)
    elapsed = 0.0
    try:
        async with asyncio.timeout(life_s + 30.0):  # a hard stop on top of the bounds
            await h.setup()
            elapsed = await h.measure()
            if o.cleanup and h.accepted_any():
                await h.cleanup()
    finally:
        await t.close()
    return h.report(elapsed)


def format_report(r: Mapping[str, Any]) -> str:
    """The report as a readable table."""

    def ms(v: float | None) -> str:
        return "-" if v is None else f"{v:.3f}"

    def codes(ok: int, errors: Mapping[str, int]) -> str:
        parts = [f"OK {ok}"] + [f"{k} {v}" for k, v in errors.items()]
        return ", ".join(parts)

    shape = (f"closed loop, {r['concurrency']} workers" if r["loop"] == "closed"
             else f"open loop, {r['rate']:g}/s {r['arrival']}")
    if r["mode"] == "connect":
        shape += f", Connect x{r['streams']} (window {r['window']})"
    else:
        shape += ", unary"
    lines = [
        f"pairline loadtest -> {r['target']}: {shape}, {r['agents']} agents, "
        f"{r['queues']} queues, seed {r['seed']}",
        f"routing calls (RouteContact): {r['requests']} in {r['elapsed_s']:.2f} s = "
        f"{r['rps']:.1f}/s; all calls {r['calls']} = {r['total_rps']:.1f}/s",
        f"latency from schedule (ms): p50 {ms(r['p50_ms'])}  p90 {ms(r['p90_ms'])}  "
        f"p99 {ms(r['p99_ms'])}  p99.9 {ms(r['p999_ms'])}  max {ms(r['max_ms'])}",
        f"latency from send (ms):     p50 {ms(r['service_p50_ms'])}  "
        f"p90 {ms(r['service_p90_ms'])}  p99 {ms(r['service_p99_ms'])}  "
        f"p99.9 {ms(r['service_p999_ms'])}  max {ms(r['service_max_ms'])}",
        "",
        f"{'rpc':<16}{'calls':>8}{'rps':>10}{'ok':>8}{'errors':>8}"
        f"{'p50':>9}{'p90':>9}{'p99':>9}{'p99.9':>9}{'max':>9}  (ms)",
    ]
    for name, e in r["per_rpc"].items():
        lines.append(
            f"{name:<16}{e['calls']:>8}{e['rps']:>10.1f}{e['ok']:>8}"
            f"{sum(e['errors'].values()):>8}{ms(e['p50_ms']):>9}{ms(e['p90_ms']):>9}"
            f"{ms(e['p99_ms']):>9}{ms(e['p999_ms']):>9}{ms(e['max_ms']):>9}"
        )
    lines += [
        "",
        f"status codes: {codes(r['ok'], r['errors'])}",
    ]
    for name, e in r["per_rpc"].items():
        if "modes" in e:
            modes = ", ".join(f"{k.removeprefix('MODE_')} {v}" for k, v in e["modes"].items())
            lines.append(f"{name} decisions: {modes or '-'}")
    lines.append("contacts: " + ", ".join(f"{k} {v}" for k, v in r["contacts"].items()))
    lines.append("agents: " + ", ".join(f"{k} {v}" for k, v in r["churn"].items()))
    if "connect" in r:
        lines.append("streams: " + ", ".join(f"{k} {v}" for k, v in r["connect"].items()))
    if "spread" in r:
        sp = r["spread"]
        lines.append(f"replicas: {sp['targets']}, calls per replica {sp['calls']}, "
                     f"failovers {sp['failovers']}")
    if "ledger" in r:
        lg = r["ledger"]
        lines.append(f"ledger: confirmed {lg['confirmed']}, double assignments "
                     f"{lg['double_assignments']}, lost {lg['lost']}, "
                     f"unsure {lg['unsure_contacts']}")
    for phase in ("setup", "cleanup"):
        p = r[phase]
        lines.append(f"{phase}: {p['calls']} calls in {p['seconds']:.2f} s "
                     f"({codes(p['ok'], p['errors'])})")
    if r["harness_errors"]:
        lines.append(f"harness errors: {r['harness_errors']} (see --json)")
    return "\n".join(lines)


def add_loadtest_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``loadtest`` to an argparse sub-command set; it runs with ``ns.run(ns)``."""
    d = LoadOptions()
    p: argparse.ArgumentParser = subparsers.add_parser(
        "loadtest", help="drive a running server with a switch's call mix and report",
        description="Closed or open loop load over unary RPCs or Connect streams, with "
                    "agent churn; reports throughput, latency percentiles and status codes.")
    a = p.add_argument
    a("--target", default=d.target,
      help="HOST:PORT of the server, or several comma separated (replicas: calls are "
           "spread over them and fail over on UNAVAILABLE; unary only) "
           "(default %(default)s)")
    a("--key", default=d.key, help="API key (sent as authorization: Bearer KEY)")
    a("--duration-s", type=float, help=f"run length (default {DEFAULT_DURATION_S:g} s)")
    a("--requests", type=int, help="routing calls (RouteContact) at most")
    a("--concurrency", type=int, default=d.concurrency, help="closed loop workers")
    a("--rate", type=float, help="open loop: contact arrivals per second")
    a("--arrival", choices=("poisson", "fixed"), default=d.arrival,
      help="open loop spacing (default %(default)s)")
    a("--max-in-flight", type=int, default=d.max_in_flight,
      help="open loop: unanswered arrivals at most (later ones wait, charged to latency)")
    a("--mode", choices=("unary", "connect"), default=d.mode)
    a("--streams", type=int, default=d.streams, help="Connect streams")
    a("--window", type=int, default=d.window, help="unanswered events per stream")
    a("--agents", type=int, default=d.agents, help="agents logged in first")
    a("--queues", type=int, default=d.queues)
    a("--queues-per-agent", type=int, default=d.queues_per_agent)
    a("--voice-capacity", type=int, default=d.voice_capacity)
    a("--chat-capacity", type=int, default=d.chat_capacity)
    a("--chat-share", type=float, default=d.chat_share, help="share of contacts on chat")
    a("--customers", type=int, default=d.customers, help="distinct customer keys (+0..+N-1)")
    a("--handle-ms", type=float, default=d.handle_ms, help="mean handle time")
    a("--wrap-ms", type=float, default=d.wrap_ms, help="wrap-up after a handled contact")
    a("--patience-ms", type=float, default=d.patience_ms,
      help="a queued contact abandons after this")
    a("--reject-share", type=float, default=d.reject_share, help="offers rejected by the agent")
    a("--outcome-share", type=float, default=d.outcome_share,
      help="handled contacts reported with an outcome")
    a("--churn-per-s", type=float, default=d.churn_per_s,
      help="agents going away or logging out per second")
    a("--away-ms", type=float, default=d.away_ms, help="mean time away / logged out")
    a("--deadline-ms", type=float, default=d.deadline_ms, help="per-call deadline")
    a("--seed", type=int, default=d.seed)
    a("--id-prefix", default=d.id_prefix, help="prefix of agent, contact and queue ids")
    a("--no-cleanup", dest="cleanup", action="store_false",
      help="leave contacts and agents as they are at the end")
    a("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(run=main)
    return p


def main(ns: argparse.Namespace) -> int:
    """``pairline loadtest``: 0 when some routing call succeeded, 1 if none, 2 on bad options."""
    try:
        options = LoadOptions.of(ns)
    except (TypeError, ValueError) as err:
        print(f"loadtest: {err}", file=sys.stderr)
        return 2
    try:
        report = asyncio.run(run_loadtest(options))
    except KeyboardInterrupt:
        return 130
    print(json.dumps(report, indent=2) if options.json else format_report(report), flush=True)
    return 0 if report["per_rpc"].get(ROUTING_RPC, {}).get("ok", 0) > 0 else 1

