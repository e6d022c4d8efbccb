"""Overload protection and deadlines. Imports no gRPC.

* Concurrency: at most ``max_concurrent_rpcs`` calls in the server at once (a
  stream counts for its whole life), and optionally at most a number per tenant.
* Rate: a token bucket per tenant (``rate_per_s``, ``rate_burst``); a unary
  call costs one token, and so does each event on a ``Connect``/``ConnectBatch``
  stream (an event without a token gets an error reply; the stream stays open).
* Deadlines: the guard binds the caller's deadline to the call
  (:func:`bind_deadline`); the service calls :func:`check_deadline` right before
  it claims an agent, so nothing is claimed for a caller who has given up.

Each refusal is :class:`ResourceExhausted` with a message that says which limit
and what to do.
"""

from __future__ import annotations

import contextvars
import time
from collections.abc import Callable, Iterable

from pairline.errors import DeadlineExceeded, ResourceExhausted

_deadline: contextvars.ContextVar[float | None] = contextvars.ContextVar(
    "pairline_deadline", default=None
)


class Made:
    """What the current call made (a unary call; on a stream, the current event or
    batch): the ids of the decisions it reserved and of the contacts it created.
    The service notes them as it makes them; the guard undoes exactly these when
    the caller is gone before the answer reaches it, never what an earlier call
    made (a retry answers with the decision an earlier call made)."""

    __slots__ = ("contacts", "decisions")

    def __init__(self) -> None:
        self.decisions: set[str] = set()
        self.contacts: set[str] = set()


_made: contextvars.ContextVar[Made | None] = contextvars.ContextVar("pairline_made", default=None)


def begin_call() -> Made:
    """Start noting what the current call (or stream event) makes."""
    made = Made()
    _made.set(made)
    return made


def made_now() -> Made | None:
    """What the current call has made so far (None outside a call that noted it)."""
    return _made.get()


def made_here(decision_id: str) -> bool:
    """Whether the current call made ``decision_id``."""
    made = _made.get()
    return made is not None and decision_id in made.decisions


def note_decision(decision_id: str) -> None:
    made = _made.get()
    if made is not None:
        made.decisions.add(decision_id)


def note_contact(contact_id: str, created: bool = True) -> None:
    """Note whether the current call created ``contact_id`` (an operation run again
    after a conflict says so again: its last run is the one that counts)."""
    made = _made.get()
    if made is not None:
        if created:
            made.contacts.add(contact_id)
        else:
            made.contacts.discard(contact_id)


def bind_deadline(time_remaining_s: float | None) -> None:
    """Record the current call's deadline (None: the caller set none)."""
    _deadline.set(None if time_remaining_s is None else time.monotonic() + time_remaining_s)


def deadline_passed() -> bool:
    d = _deadline.get()
    return d is not None and time.monotonic() >= d


def check_deadline(what: str = "the request") -> None:
    """Refuse to go on with ``what`` once the caller's deadline has passed."""
    if deadline_passed():
        raise DeadlineExceeded(f"the caller's deadline passed before {what}; nothing was done")


class TokenBucket:
    """``rate`` tokens per second, at most ``burst`` banked."""

    __slots__ = ("_clock", "_t", "burst", "rate", "tokens")

    def __init__(
        self, rate: float, burst: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.rate = rate
        self.burst = burst
        self.tokens = burst
        self._clock = clock
        self._t = clock()

    def take(self, n: float = 1.0) -> bool:
        now = self._clock()
        self.tokens = min(self.burst, self.tokens + (now - self._t) * self.rate)
        self._t = now
        if self.tokens >= n:
            self.tokens -= n
            return True
        return False


class Limits:
    """The server's concurrency counters and the tenants' buckets (one event loop)."""

    __slots__ = ("_buckets", "_in_flight", "_tenant_caps", "_tenant_in_flight", "max_in_flight")

    def __init__(
        self,
        max_in_flight: int,
        tenants: Iterable[tuple[str, float, float, int]],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """``tenants``: (name, rate_per_s, burst, max_concurrent_rpcs); rate 0 and
        cap 0 mean unlimited."""
        self.max_in_flight = max_in_flight
        self._in_flight = 0
        self._buckets: dict[str, TokenBucket] = {}
        self._tenant_caps: dict[str, int] = {}
        self._tenant_in_flight: dict[str, int] = {}
        for name, rate, burst, cap in tenants:
            if rate > 0:
                self._buckets[name] = TokenBucket(rate, burst or max(1.0, rate), clock)
            if cap > 0:
                self._tenant_caps[name] = cap
            self._tenant_in_flight[name] = 0

    @property
    def in_flight(self) -> int:
        return self._in_flight

    def take(self, tenant: str, n: float = 1.0) -> None:
        """One request's (or event's) token of ``tenant``'s rate limit."""
        bucket = self._buckets.get(tenant)
        if bucket is not None and not bucket.take(n):
            raise ResourceExhausted(
                f"tenant rate limit of {bucket.rate:g} requests/s (burst {bucket.burst:g}) "
                "exceeded; retry with backoff"
            )

    def enter(self, tenant: str) -> None:
        """Admit one call (pair with :meth:`leave`)."""
        if self._in_flight >= self.max_in_flight:
            raise ResourceExhausted(
                f"server is at its limit of {self.max_in_flight} concurrent calls; "
                "retry with backoff"
            )
        cap = self._tenant_caps.get(tenant)
        n = self._tenant_in_flight.get(tenant, 0)
        if cap is not None and n >= cap:
            raise ResourceExhausted(
                f"tenant is at its limit of {cap} concurrent calls; retry with backoff"
            )
        self._in_flight += 1
        self._tenant_in_flight[tenant] = n + 1

    def leave(self, tenant: str) -> None:
        self._in_flight -= 1
        self._tenant_in_flight[tenant] -= 1
