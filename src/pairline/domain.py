"""Plain domain types shared by the layers. No gRPC, no Redis.

Enum numbers equal the wire numbers of the v1 contract, so conversion is a cast.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import IntEnum

N_CHANNELS = 5


class Channel(IntEnum):
    VOICE = 1
    CHAT = 2
    EMAIL = 3
    VIDEO = 4
    IN_PERSON = 5


class Mode(IntEnum):
    PAIRED = 1
    CONTROL = 2
    OPTED_OUT = 3
    NO_PROFILE = 4
    DEGRADED = 5
    QUEUED = 6
    BASELINE = 7


class AgentStatus(IntEnum):
    LOGGED_OUT = 1
    AVAILABLE = 2
    AWAY = 3
    BUSY = 4
    WRAP_UP = 5
    RESERVED = 6


class EndReason(IntEnum):
    HANDLED = 1
    ABANDONED = 2
    TRANSFERRED = 3


class ReleaseReason(IntEnum):
    NOT_CONNECTED = 1
    AGENT_REJECTED = 2


@dataclass(frozen=True, slots=True)
class ContactRequest:
    """A validated RouteContact."""

    contact_id: str
    queue: str
    channel: Channel
    priority: int = 0
    customer_key: str = ""
    context: tuple[tuple[str, float], ...] = ()
    min_proficiency: int = 0
    excluded_agent_ids: frozenset[str] = frozenset()
    preferred_agent_ids: frozenset[str] = frozenset()


@dataclass(frozen=True, slots=True)
class AgentStateRequest:
    """A validated SetAgentState. ``None`` keeps the current value."""

    agent_id: str
    status: AgentStatus
    queues: tuple[tuple[str, int], ...] | None = None
    capacities: tuple[int, ...] | None = None  # per channel, index = Channel - 1
    wrap_up_s: float = 0.0


@dataclass(slots=True)
class Decision:
    """A decision handed to the switch (and the reservation it made)."""

    decision_id: str
    mode: Mode
    contact_id: str
    agent_id: str
    queue: str
    channel: int  # a Channel, or 0 when an agent joins the free pool
    policy: str
    decided_at: float
    expires_at: float = 0.0
    model_version: str = ""
    predicted_outcome: float = 0.0
    shadow_agent_id: str = ""
    shadow_contact_id: str = ""
    shadow_predicted_outcome: float = 0.0
    queue_position: int = 0
    # ON/OFF benchmarking: None when the queue is not benchmarked; else whether
    # the slot was ON, and whether the decision counts in the comparison.
    slot_on: bool | None = None
    compared: bool = False

    def as_dict(self) -> dict[str, object]:
        """Plain JSON-able fields (stores, replica snapshots)."""
        return {f: getattr(self, f) for f in self.__slots__} | {"mode": int(self.mode)}

    @classmethod
    def of(cls, d: dict[str, object]) -> Decision:
        return cls(**{**d, "mode": Mode(d["mode"])})  # type: ignore[arg-type]


@dataclass(slots=True)
class AgentView:
    """An agent's state as reported to the switch."""

    agent_id: str
    status: AgentStatus
    queues: tuple[tuple[str, int], ...]
    capacities: tuple[int, ...]
    in_use: tuple[int, ...]
    idle_since: float
    wrap_until: float
    contact_ids: tuple[str, ...]


@dataclass(slots=True)
class EndResult:
    contact_id: str
    agent_id: str
    wrap_until: float


@dataclass(slots=True)
class ChannelStats:
    channel: Channel
    waiting: int
    oldest_wait_s: float


@dataclass(slots=True)
class QueueStats:
    queue: str
    waiting: int = 0
    oldest_wait_s: float = 0.0
    agents_logged_in: int = 0
    agents_available: int = 0
    agents_reserved: int = 0
    contacts_in_service: int = 0
    channels: list[ChannelStats] = field(default_factory=list)
