"""Helpers for tests of pairline and of code that integrates with it."""

from __future__ import annotations


class FakeClock:
    """A clock that moves only when told to."""

    __slots__ = ("t",)

    def __init__(self, start: float = 1_800_000_000.0) -> None:
        self.t = start

    def now(self) -> float:
        return self.t

    def advance(self, seconds: float) -> None:
        self.t += seconds
