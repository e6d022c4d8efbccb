"""Privacy domain rules: pseudonymisation (with secret rotation) and deletion
deadlines. Pure Python: no gRPC, no store. The raw key never leaves
:meth:`Pseudonymiser.digest`."""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
from collections.abc import Iterable, Sequence
from zoneinfo import ZoneInfo

from pairline.logs import note_raw_key

BUSINESS_DAYS = 30
DAY_MS = 86_400_000


class Pseudonymiser:
    """HMAC-SHA256 of customer keys under one tenant's secret."""

    __slots__ = ("_mac",)

    def __init__(self, secret: str) -> None:
        self._mac = hmac.new(secret.encode(), digestmod=hashlib.sha256)

    def digest(self, customer_key: str) -> str:
        """Hex digest of ``customer_key``; empty in, empty out."""
        if not customer_key:
            return ""
        note_raw_key(customer_key)  # the log redactor scrubs it from this task's logs
        mac = self._mac.copy()
        mac.update(customer_key.encode())
        return mac.hexdigest()


def secret_id(secret: str) -> str:
    """A short, non-reversible id of a secret, for the audit of rotations."""
    return hmac.new(secret.encode(), b"pairline-secret-id", hashlib.sha256).hexdigest()[:16]


class KeyRing:
    """The tenant's current secret and the previous ones still in their overlap
    window. New data is keyed by :meth:`digest` (current secret); lookups of
    existing data try :meth:`digests` (current first, then each previous secret
    whose window is still open at ``now``)."""

    __slots__ = ("_previous", "current", "current_id")

    def __init__(self, secret: str, previous: Iterable[tuple[str, float]] = ()) -> None:
        """``previous``: (secret, unix seconds until which lookups still try it)."""
        self.current = Pseudonymiser(secret)
        self.current_id = secret_id(secret)
        self._previous = tuple((Pseudonymiser(s), until) for s, until in previous)

    @property
    def rotating(self) -> bool:
        return bool(self._previous)

    def digest(self, customer_key: str) -> str:
        return self.current.digest(customer_key)

    def previous_digests(self, customer_key: str, now: float) -> list[str]:
        """Digests under the previous secrets still valid at ``now``."""
        return [p.digest(customer_key) for p, until in self._previous if now < until]

    def digests(self, customer_key: str, now: float) -> list[str]:
        if not customer_key:
            return []
        return [self.digest(customer_key), *self.previous_digests(customer_key, now)]


def deletion_due_ms(
    received_ms: int,
    *,
    tz: str = "UTC",
    holidays: Sequence[str] = (),
    business_days: int = BUSINESS_DAYS,
    deadline_days: float = 0.0,
) -> int:
    """When a deletion received at ``received_ms`` is due: the end (local
    midnight) of the ``business_days``-th business day after the day of receipt
    in the tenant's time zone, skipping Saturdays, Sundays and ``holidays``
    (ISO dates); or ``deadline_days`` calendar days after receipt if that is
    sooner (a stricter per-tenant deadline; 0 = none)."""
    zone = ZoneInfo(tz)
    off = {dt.date.fromisoformat(h) for h in holidays}
    day = dt.datetime.fromtimestamp(received_ms / 1000, zone).date()
    counted = 0
    while counted < business_days:
        day += dt.timedelta(days=1)
        if day.weekday() < 5 and day not in off:
            counted += 1
    end = dt.datetime.combine(day + dt.timedelta(days=1), dt.time(0), zone)
    due = int(end.timestamp() * 1000) - 1
    if deadline_days > 0:
        due = min(due, received_ms + round(deadline_days * DAY_MS))
    return due
