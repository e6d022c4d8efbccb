"""Clocks. The service takes one; tests pass a :class:`pairline.testing.FakeClock`."""

from __future__ import annotations

import time
from typing import Protocol


class Clock(Protocol):
    def now(self) -> float:
        """Unix time in seconds."""


class SystemClock:
    __slots__ = ()

    def now(self) -> float:
        return time.time()
