"""Wire <-> domain: decode and validate requests, encode results.

The only module besides the servicers that imports generated code. Every
decode function raises :class:`InvalidArgument` naming the offending field
(with its path, e.g. ``route_contact.context``) before anything is changed.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping

import numpy as np

from pairline._proto.pairline.v1 import common_pb2 as cpb
from pairline._proto.pairline.v1 import insights_pb2 as ipb
from pairline._proto.pairline.v1 import profiles_pb2 as ppb
from pairline._proto.pairline.v1 import router_pb2 as rpb
from pairline.benchmark import Report
from pairline.domain import (
    N_CHANNELS,
    AgentStateRequest,
    AgentStatus,
    AgentView,
    Channel,
    ContactRequest,
    Decision,
    EndReason,
    EndResult,
    QueueStats,
    ReleaseReason,
)
from pairline.errors import InvalidArgument
from pairline.model import Model
from pairline.service import ProfileIn
from pairline.stores.base import DecisionRecord

MAX_ID = 128
MAX_KEY = 256
MAX_CONTEXT = 64
MAX_EXCLUDED = 64
MAX_QUEUES = 64
MAX_OUTCOMES = 32
MAX_PRIORITY = 1000
MAX_PROFICIENCY = 100
MAX_CAPACITY = 100
MAX_WRAP_UP_MS = 24 * 3600 * 1000

_SETTABLE = {s.value for s in AgentStatus if s is not AgentStatus.RESERVED}


def _ms(seconds: float) -> int:
    return round(seconds * 1000)


def text(value: str, field: str, *, required: bool = True, max_len: int = MAX_ID) -> str:
    if not value:
        if required:
            raise InvalidArgument(field, "is required")
        return value
    if len(value) > max_len:
        raise InvalidArgument(field, f"is longer than {max_len} characters")
    if not value.isprintable():
        raise InvalidArgument(field, "has control characters")
    return value


def _int(value: int, field: str, lo: int, hi: int) -> int:
    if not lo <= value <= hi:
        raise InvalidArgument(field, f"must be in {lo}..{hi}, got {value}")
    return value


def _enum(value: int, field: str, allowed: Iterable[int]) -> int:
    if value not in allowed:
        raise InvalidArgument(field, f"unknown or unset value {value}")
    return value


def _channel(value: int, field: str) -> Channel:
    return Channel(_enum(value, field, range(1, N_CHANNELS + 1)))


def _named_values(
    values: Mapping[str, float], field: str, max_entries: int
) -> tuple[tuple[str, float], ...]:
    if len(values) > max_entries:
        raise InvalidArgument(field, f"has more than {max_entries} entries")
    out = []
    for name, value in values.items():
        text(name, field, max_len=MAX_ID)
        if not math.isfinite(value):
            raise InvalidArgument(f"{field}[{name}]", "must be finite")
        out.append((name, value))
    return tuple(sorted(out))


# --------------------------------------------------------------------- router
_CHANNELS = {int(c): c for c in Channel}
_EMPTY: frozenset[str] = frozenset()


def _plain_text(value: str, max_len: int) -> bool:
    """What :func:`text` accepts (when required) of a non-empty value."""
    return 0 < len(value) <= max_len and value.isprintable()


def route_contact(req: rpb.RouteContactRequest, at: str = "") -> ContactRequest:
    # The common request (no context, exclusions or preferences, every field
    # valid) without building a field path per check; anything else, and every
    # error, goes through the full decoder below.
    contact_id, queue, key, channel = req.contact_id, req.queue, req.customer_key, req.channel
    if (
        channel in _CHANNELS
        and _plain_text(contact_id, MAX_ID)
        and _plain_text(queue, MAX_ID)
        and (not key or _plain_text(key, MAX_KEY))
        and 0 <= req.priority <= MAX_PRIORITY
        and 0 <= req.min_proficiency <= MAX_PROFICIENCY
        and not req.context
        and not req.excluded_agent_ids
        and not req.preferred_agent_ids
    ):
        return ContactRequest(
            contact_id=contact_id, queue=queue, channel=_CHANNELS[channel],
            priority=req.priority, customer_key=key, context=(),
            min_proficiency=req.min_proficiency, excluded_agent_ids=_EMPTY,
            preferred_agent_ids=_EMPTY,
        )
    return _route_contact(req, at)


def _route_contact(req: rpb.RouteContactRequest, at: str) -> ContactRequest:
    excluded = req.excluded_agent_ids
    if len(excluded) > MAX_EXCLUDED:
        raise InvalidArgument(f"{at}excluded_agent_ids", f"at most {MAX_EXCLUDED}")
    preferred = req.preferred_agent_ids
    if len(preferred) > MAX_EXCLUDED:
        raise InvalidArgument(f"{at}preferred_agent_ids", f"at most {MAX_EXCLUDED}")
    return ContactRequest(
        contact_id=text(req.contact_id, f"{at}contact_id"),
        queue=text(req.queue, f"{at}queue"),
        channel=_channel(req.channel, f"{at}channel"),
        priority=_int(req.priority, f"{at}priority", 0, MAX_PRIORITY),
        customer_key=text(req.customer_key, f"{at}customer_key", required=False, max_len=MAX_KEY),
        context=_named_values(req.context, f"{at}context", MAX_CONTEXT),
        min_proficiency=_int(req.min_proficiency, f"{at}min_proficiency", 0, MAX_PROFICIENCY),
        excluded_agent_ids=frozenset(
            text(a, f"{at}excluded_agent_ids[{i}]") for i, a in enumerate(excluded)
        ),
        preferred_agent_ids=frozenset(
            text(a, f"{at}preferred_agent_ids[{i}]") for i, a in enumerate(preferred)
        ),
    )


def agent_id(value: str, at: str = "") -> str:
    return text(value, f"{at}agent_id")


def decision_id(value: str, at: str = "") -> str:
    return text(value, f"{at}decision_id")


def set_agent_state(req: rpb.SetAgentStateRequest, at: str = "") -> AgentStateRequest:
    status = AgentStatus(_enum(req.status, f"{at}status", _SETTABLE))
    queues = None
    if req.queues:
        if len(req.queues) > MAX_QUEUES:
            raise InvalidArgument(f"{at}queues", f"at most {MAX_QUEUES}")
        seen: dict[str, int] = {}
        for i, q in enumerate(req.queues):
            name = text(q.queue, f"{at}queues[{i}].queue")
            if name in seen:
                raise InvalidArgument(f"{at}queues[{i}].queue", f"{name!r} is listed twice")
            seen[name] = _int(q.proficiency, f"{at}queues[{i}].proficiency", 0, MAX_PROFICIENCY)
        queues = tuple(seen.items())
    capacities = None
    if req.capacities:
        caps = [0] * N_CHANNELS
        listed: set[int] = set()
        for i, c in enumerate(req.capacities):
            ch = _channel(c.channel, f"{at}capacities[{i}].channel")
            if ch in listed:
                raise InvalidArgument(f"{at}capacities[{i}].channel", "is listed twice")
            listed.add(ch)
            caps[ch - 1] = _int(c.capacity, f"{at}capacities[{i}].capacity", 0, MAX_CAPACITY)
        capacities = tuple(caps)
    wrap_ms = _int(req.wrap_up_ms, f"{at}wrap_up_ms", 0, MAX_WRAP_UP_MS)
    if wrap_ms and status is not AgentStatus.WRAP_UP:
        raise InvalidArgument(f"{at}wrap_up_ms", "is only for AGENT_STATUS_WRAP_UP")
    return AgentStateRequest(
        agent_id=text(req.agent_id, f"{at}agent_id"),
        status=status,
        queues=queues,
        capacities=capacities,
        wrap_up_s=wrap_ms / 1000,
    )


def release_reason(value: int, at: str = "") -> ReleaseReason:
    if value == 0:
        return ReleaseReason.NOT_CONNECTED
    return ReleaseReason(_enum(value, f"{at}reason", {r.value for r in ReleaseReason}))


def end_contact(req: rpb.EndContactRequest, at: str = "") -> tuple[str, EndReason, float]:
    return (
        text(req.contact_id, f"{at}contact_id"),
        EndReason(_enum(req.reason, f"{at}reason", {r.value for r in EndReason})),
        _int(req.wrap_up_ms, f"{at}wrap_up_ms", 0, MAX_WRAP_UP_MS) / 1000,
    )


def report_outcome(req: rpb.ReportOutcomeRequest, at: str = "") -> tuple[str, dict[str, float]]:
    outcomes = _named_values(req.outcomes, f"{at}outcomes", MAX_OUTCOMES)
    if not outcomes:
        raise InvalidArgument(f"{at}outcomes", "at least one outcome is needed")
    return text(req.decision_id, f"{at}decision_id"), dict(outcomes)


def decision(d: Decision) -> cpb.Decision:
    return cpb.Decision(
        decision_id=d.decision_id,
        mode=d.mode,
        contact_id=d.contact_id,
        agent_id=d.agent_id,
        queue=d.queue,
        channel=d.channel,
        policy=d.policy,
        model_version=d.model_version,
        predicted_outcome=d.predicted_outcome,
        offer_expires_at_ms=round(d.expires_at * 1000),  # _ms, inline: once per decision
        decided_at_ms=round(d.decided_at * 1000),
        shadow_agent_id=d.shadow_agent_id,
        shadow_contact_id=d.shadow_contact_id,
        shadow_predicted_outcome=d.shadow_predicted_outcome,
        queue_position=d.queue_position,
    )


def _capacities(values: tuple[int, ...]) -> list[rpb.ChannelCapacity]:
    return [
        rpb.ChannelCapacity(channel=i + 1, capacity=v) for i, v in enumerate(values) if v
    ]


def agent_state(v: AgentView) -> rpb.AgentState:
    return rpb.AgentState(
        agent_id=v.agent_id,
        status=v.status,
        queues=[rpb.QueueMembership(queue=q, proficiency=p) for q, p in v.queues],
        capacities=_capacities(v.capacities),
        in_use=_capacities(v.in_use),
        idle_since_ms=_ms(v.idle_since),
        wrap_up_until_ms=_ms(v.wrap_until),
        contact_ids=v.contact_ids,
    )


def confirmed(d: Decision) -> rpb.ConfirmDecisionResponse:
    return rpb.ConfirmDecisionResponse(contact_id=d.contact_id, agent_id=d.agent_id)


def released(d: Decision, status: AgentStatus) -> rpb.ReleaseDecisionResponse:
    return rpb.ReleaseDecisionResponse(
        contact_id=d.contact_id, agent_id=d.agent_id, agent_status=status
    )


def ended(r: EndResult) -> rpb.EndContactResponse:
    return rpb.EndContactResponse(
        contact_id=r.contact_id, agent_id=r.agent_id, wrap_up_until_ms=_ms(r.wrap_until)
    )


# ------------------------------------------------------------------- profiles
def _profile_time(value: int, field: str) -> int:
    if value <= 0:
        raise InvalidArgument(field, "is required (unix ms of the source data, > 0)")
    return value


def item_path(at: str | None) -> Callable[[int, str], str]:
    """Field paths of a list's items (``profiles[3].vector``), or of a lone
    message's fields when ``at`` is None (``vector``)."""
    if at is None:
        return lambda i, name: name
    return lambda i, name: f"{at}[{i}].{name}"


def customer_profiles(
    profiles: Iterable[ppb.CustomerProfile], at: str | None = "profiles"
) -> list[ProfileIn]:
    path = item_path(at)
    return [
        ProfileIn(
            key=text(p.customer_key, path(i, "customer_key"), max_len=MAX_KEY),
            vector=p.vector,
            version=p.version,
            source_time_ms=_profile_time(p.source_time_ms, path(i, "source_time_ms")),
        )
        for i, p in enumerate(profiles)
    ]


def agent_profiles(profiles: Iterable[ppb.AgentProfile], at: str = "profiles") -> list[ProfileIn]:
    return [
        ProfileIn(
            key=text(p.agent_id, f"{at}[{i}].agent_id"),
            vector=p.vector,
            version=p.version,
            source_time_ms=_profile_time(p.source_time_ms, f"{at}[{i}].source_time_ms"),
        )
        for i, p in enumerate(profiles)
    ]


def upsert_result(accepted: int, stale: list[int]) -> ppb.UpsertResult:
    return ppb.UpsertResult(accepted=accepted, stale=len(stale), stale_indexes=stale[:1000])


def model_info(m: Model, active: bool) -> ppb.ModelInfo:
    return ppb.ModelInfo(
        version=m.version,
        outcome=m.outcome,
        customer_dim=m.customer_dim,
        agent_dim=m.agent_dim,
        context_features=m.context_features,
        trained_at_ms=m.trained_at_ms,
        active=active,
        link=m.link,
    )


# ------------------------------------------------------------------- insights
def history_row(
    r: DecisionRecord, outcome: str, customer: np.ndarray | None, agent: np.ndarray | None
) -> ipb.HistoryRow:
    d = r.decision
    return ipb.HistoryRow(
        decision_id=d.decision_id,
        queue=d.queue,
        mode=d.mode,
        decided_at_ms=_ms(d.decided_at),
        outcome=r.outcomes[outcome],
        customer=customer.tolist() if customer is not None else (),
        agent=agent.tolist() if agent is not None else (),
        context=dict(r.context),
    )


def benchmark_report(outcome: str, r: Report) -> ipb.BenchmarkReport:
    return ipb.BenchmarkReport(
        outcome=outcome,
        strata=[
            ipb.StratumReport(
                queue=s.queue,
                period=s.period,
                on_count=s.on_count,
                off_count=s.off_count,
                on_mean=s.on_mean,
                off_mean=s.off_mean,
                on_slots=s.on_slots,
                off_slots=s.off_slots,
                included=s.included,
            )
            for s in r.strata
        ],
        estimable=r.estimable,
        reason=r.reason,
        on_mean=r.on_mean,
        off_mean=r.off_mean,
        absolute_gain=r.absolute_gain,
        absolute_ci_low=r.absolute_ci_low,
        absolute_ci_high=r.absolute_ci_high,
        relative_estimable=r.relative_estimable,
        relative_reason=r.relative_reason,
        relative_gain=r.relative_gain,
        ci_low=r.ci_low,
        ci_high=r.ci_high,
        on_count=r.on_count,
        off_count=r.off_count,
        on_slots=r.on_slots,
        off_slots=r.off_slots,
        excluded_on_count=r.excluded_on_count,
        excluded_off_count=r.excluded_off_count,
        on_utilisation_spread=r.on_utilisation_spread,
        off_utilisation_spread=r.off_utilisation_spread,
    )


def queue_stats(stats: list[QueueStats], now: float) -> ipb.GetQueueStatsResponse:
    return ipb.GetQueueStatsResponse(
        at_ms=_ms(now),
        queues=[
            ipb.QueueStats(
                queue=s.queue,
                waiting=s.waiting,
                oldest_wait_ms=_ms(s.oldest_wait_s),
                agents_logged_in=s.agents_logged_in,
                agents_available=s.agents_available,
                agents_reserved=s.agents_reserved,
                contacts_in_service=s.contacts_in_service,
                channels=[
                    ipb.ChannelStats(
                        channel=c.channel, waiting=c.waiting, oldest_wait_ms=_ms(c.oldest_wait_s)
                    )
                    for c in s.channels
                ],
            )
            for s in stats
        ],
    )
