"""The Store protocol: what the service needs kept, whatever keeps it."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from pairline.domain import Decision
from pairline.model import Model


@dataclass(frozen=True, slots=True)
class ProfileRow:
    """A profile vector (float32[D]) with the version and time of its source data."""

    key: str  # customer digest or agent id
    vector: np.ndarray
    version: int
    source_time_ms: int

    def newer_than(self, other: ProfileRow) -> bool:
        return (self.source_time_ms, self.version) > (other.source_time_ms, other.version)


@dataclass(slots=True)
class DecisionRecord:
    """A decision as kept for outcomes, the benchmark report and training."""

    decision: Decision
    customer_digest: str
    outcomes: dict[str, float] = field(default_factory=dict)
    expires_at: float = 0.0
    context: tuple[tuple[str, float], ...] = ()
    # Source time (ms) of the customer profile the decision was made with; 0: none.
    # Export pairs the decision with the stored profile only while it is that one.
    profile_ms: int = 0


class Store(Protocol):
    async def upsert_customer_profiles(
        self, tenant: str, rows: Sequence[ProfileRow], ttl_s: float, now: float
    ) -> list[int]:
        """Write each row unless the stored one is as new or newer; returns the stale
        indexes. All rows are written or none (validation happens before)."""

    async def get_customer_profile(self, tenant: str, digest: str, now: float) -> ProfileRow | None:
        ...

    async def upsert_agent_profiles(
        self, tenant: str, rows: Sequence[ProfileRow], now: float
    ) -> list[int]:
        ...

    async def get_agent_profile(self, tenant: str, agent_id: str) -> ProfileRow | None:
        ...

    async def put_model(self, tenant: str, model: Model) -> None:
        ...

    async def get_model(self, tenant: str, version: str) -> Model | None:
        ...

    async def list_models(self, tenant: str) -> list[Model]:
        ...

    async def set_active_model(self, tenant: str, version: str) -> None:
        ...

    async def active_model_version(self, tenant: str) -> str:
        ...

    async def record_decision(self, tenant: str, record: DecisionRecord) -> None:
        ...

    async def get_decision(
        self, tenant: str, decision_id: str, now: float
    ) -> DecisionRecord | None:
        ...

    async def record_outcome(
        self, tenant: str, decision_id: str, outcomes: Mapping[str, float], now: float
    ) -> bool:
        """Merge outcomes into a kept decision; False if it is unknown or expired."""

    async def decisions(self, tenant: str, now: float) -> list[DecisionRecord]:
        """Every kept decision of the tenant (for the benchmark report)."""

    async def sweep(self, now: float) -> int:
        """Drop records past their time to live; returns how many."""

    async def purge_customer(self, tenant: str, digest: str) -> int:
        """Erase the customer's profile and every kept decision (with its
        outcomes) linked to ``digest``; returns how many records went.
        Idempotent: the deletion worker may run it again after a crash."""
