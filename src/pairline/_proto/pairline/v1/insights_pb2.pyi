from pairline._proto.pairline.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ExportHistoryRequest(_message.Message):
    __slots__ = ("outcome", "since_ms")
    OUTCOME_FIELD_NUMBER: _ClassVar[int]
    SINCE_MS_FIELD_NUMBER: _ClassVar[int]
    outcome: str
    since_ms: int
    def __init__(self, outcome: _Optional[str] = ..., since_ms: _Optional[int] = ...) -> None: ...

class HistoryRow(_message.Message):
    __slots__ = ("decision_id", "queue", "mode", "decided_at_ms", "outcome", "customer", "agent", "context")
    class ContextEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    DECISION_ID_FIELD_NUMBER: _ClassVar[int]
    QUEUE_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    DECIDED_AT_MS_FIELD_NUMBER: _ClassVar[int]
    OUTCOME_FIELD_NUMBER: _ClassVar[int]
    CUSTOMER_FIELD_NUMBER: _ClassVar[int]
    AGENT_FIELD_NUMBER: _ClassVar[int]
    CONTEXT_FIELD_NUMBER: _ClassVar[int]
    decision_id: str
    queue: str
    mode: _common_pb2.Mode
    decided_at_ms: int
    outcome: float
    customer: _containers.RepeatedScalarFieldContainer[float]
    agent: _containers.RepeatedScalarFieldContainer[float]
    context: _containers.ScalarMap[str, float]
    def __init__(self, decision_id: _Optional[str] = ..., queue: _Optional[str] = ..., mode: _Optional[_Union[_common_pb2.Mode, str]] = ..., decided_at_ms: _Optional[int] = ..., outcome: _Optional[float] = ..., customer: _Optional[_Iterable[float]] = ..., agent: _Optional[_Iterable[float]] = ..., context: _Optional[_Mapping[str, float]] = ...) -> None: ...

class GetBenchmarkReportRequest(_message.Message):
    __slots__ = ("outcome", "queue")
    OUTCOME_FIELD_NUMBER: _ClassVar[int]
    QUEUE_FIELD_NUMBER: _ClassVar[int]
    outcome: str
    queue: str
    def __init__(self, outcome: _Optional[str] = ..., queue: _Optional[str] = ...) -> None: ...

class StratumReport(_message.Message):
    __slots__ = ("queue", "period", "on_count", "off_count", "on_mean", "off_mean", "on_slots", "off_slots", "included")
    QUEUE_FIELD_NUMBER: _ClassVar[int]
    PERIOD_FIELD_NUMBER: _ClassVar[int]
    ON_COUNT_FIELD_NUMBER: _ClassVar[int]
    OFF_COUNT_FIELD_NUMBER: _ClassVar[int]
    ON_MEAN_FIELD_NUMBER: _ClassVar[int]
    OFF_MEAN_FIELD_NUMBER: _ClassVar[int]
    ON_SLOTS_FIELD_NUMBER: _ClassVar[int]
    OFF_SLOTS_FIELD_NUMBER: _ClassVar[int]
    INCLUDED_FIELD_NUMBER: _ClassVar[int]
    queue: str
    period: str
    on_count: int
    off_count: int
    on_mean: float
    off_mean: float
    on_slots: int
    off_slots: int
    included: bool
    def __init__(self, queue: _Optional[str] = ..., period: _Optional[str] = ..., on_count: _Optional[int] = ..., off_count: _Optional[int] = ..., on_mean: _Optional[float] = ..., off_mean: _Optional[float] = ..., on_slots: _Optional[int] = ..., off_slots: _Optional[int] = ..., included: _Optional[bool] = ...) -> None: ...

class BenchmarkReport(_message.Message):
    __slots__ = ("outcome", "strata", "on_mean", "off_mean", "relative_gain", "ci_low", "ci_high", "on_count", "off_count", "on_utilisation_spread", "off_utilisation_spread", "estimable", "reason", "absolute_gain", "absolute_ci_low", "absolute_ci_high", "relative_estimable", "relative_reason", "on_slots", "off_slots", "excluded_on_count", "excluded_off_count")
    OUTCOME_FIELD_NUMBER: _ClassVar[int]
    STRATA_FIELD_NUMBER: _ClassVar[int]
    ON_MEAN_FIELD_NUMBER: _ClassVar[int]
    OFF_MEAN_FIELD_NUMBER: _ClassVar[int]
    RELATIVE_GAIN_FIELD_NUMBER: _ClassVar[int]
    CI_LOW_FIELD_NUMBER: _ClassVar[int]
    CI_HIGH_FIELD_NUMBER: _ClassVar[int]
    ON_COUNT_FIELD_NUMBER: _ClassVar[int]
    OFF_COUNT_FIELD_NUMBER: _ClassVar[int]
    ON_UTILISATION_SPREAD_FIELD_NUMBER: _ClassVar[int]
    OFF_UTILISATION_SPREAD_FIELD_NUMBER: _ClassVar[int]
    ESTIMABLE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    ABSOLUTE_GAIN_FIELD_NUMBER: _ClassVar[int]
    ABSOLUTE_CI_LOW_FIELD_NUMBER: _ClassVar[int]
    ABSOLUTE_CI_HIGH_FIELD_NUMBER: _ClassVar[int]
    RELATIVE_ESTIMABLE_FIELD_NUMBER: _ClassVar[int]
    RELATIVE_REASON_FIELD_NUMBER: _ClassVar[int]
    ON_SLOTS_FIELD_NUMBER: _ClassVar[int]
    OFF_SLOTS_FIELD_NUMBER: _ClassVar[int]
    EXCLUDED_ON_COUNT_FIELD_NUMBER: _ClassVar[int]
    EXCLUDED_OFF_COUNT_FIELD_NUMBER: _ClassVar[int]
    outcome: str
    strata: _containers.RepeatedCompositeFieldContainer[StratumReport]
    on_mean: float
    off_mean: float
    relative_gain: float
    ci_low: float
    ci_high: float
    on_count: int
    off_count: int
    on_utilisation_spread: float
    off_utilisation_spread: float
    estimable: bool
    reason: str
    absolute_gain: float
    absolute_ci_low: float
    absolute_ci_high: float
    relative_estimable: bool
    relative_reason: str
    on_slots: int
    off_slots: int
    excluded_on_count: int
    excluded_off_count: int
    def __init__(self, outcome: _Optional[str] = ..., strata: _Optional[_Iterable[_Union[StratumReport, _Mapping]]] = ..., on_mean: _Optional[float] = ..., off_mean: _Optional[float] = ..., relative_gain: _Optional[float] = ..., ci_low: _Optional[float] = ..., ci_high: _Optional[float] = ..., on_count: _Optional[int] = ..., off_count: _Optional[int] = ..., on_utilisation_spread: _Optional[float] = ..., off_utilisation_spread: _Optional[float] = ..., estimable: _Optional[bool] = ..., reason: _Optional[str] = ..., absolute_gain: _Optional[float] = ..., absolute_ci_low: _Optional[float] = ..., absolute_ci_high: _Optional[float] = ..., relative_estimable: _Optional[bool] = ..., relative_reason: _Optional[str] = ..., on_slots: _Optional[int] = ..., off_slots: _Optional[int] = ..., excluded_on_count: _Optional[int] = ..., excluded_off_count: _Optional[int] = ...) -> None: ...

class GetQueueStatsRequest(_message.Message):
    __slots__ = ("queue",)
    QUEUE_FIELD_NUMBER: _ClassVar[int]
    queue: str
    def __init__(self, queue: _Optional[str] = ...) -> None: ...

class ChannelStats(_message.Message):
    __slots__ = ("channel", "waiting", "oldest_wait_ms")
    CHANNEL_FIELD_NUMBER: _ClassVar[int]
    WAITING_FIELD_NUMBER: _ClassVar[int]
    OLDEST_WAIT_MS_FIELD_NUMBER: _ClassVar[int]
    channel: _common_pb2.Channel
    waiting: int
    oldest_wait_ms: int
    def __init__(self, channel: _Optional[_Union[_common_pb2.Channel, str]] = ..., waiting: _Optional[int] = ..., oldest_wait_ms: _Optional[int] = ...) -> None: ...

class QueueStats(_message.Message):
    __slots__ = ("queue", "waiting", "oldest_wait_ms", "agents_logged_in", "agents_available", "agents_reserved", "contacts_in_service", "channels")
    QUEUE_FIELD_NUMBER: _ClassVar[int]
    WAITING_FIELD_NUMBER: _ClassVar[int]
    OLDEST_WAIT_MS_FIELD_NUMBER: _ClassVar[int]
    AGENTS_LOGGED_IN_FIELD_NUMBER: _ClassVar[int]
    AGENTS_AVAILABLE_FIELD_NUMBER: _ClassVar[int]
    AGENTS_RESERVED_FIELD_NUMBER: _ClassVar[int]
    CONTACTS_IN_SERVICE_FIELD_NUMBER: _ClassVar[int]
    CHANNELS_FIELD_NUMBER: _ClassVar[int]
    queue: str
    waiting: int
    oldest_wait_ms: int
    agents_logged_in: int
    agents_available: int
    agents_reserved: int
    contacts_in_service: int
    channels: _containers.RepeatedCompositeFieldContainer[ChannelStats]
    def __init__(self, queue: _Optional[str] = ..., waiting: _Optional[int] = ..., oldest_wait_ms: _Optional[int] = ..., agents_logged_in: _Optional[int] = ..., agents_available: _Optional[int] = ..., agents_reserved: _Optional[int] = ..., contacts_in_service: _Optional[int] = ..., channels: _Optional[_Iterable[_Union[ChannelStats, _Mapping]]] = ...) -> None: ...

class GetQueueStatsResponse(_message.Message):
    __slots__ = ("queues", "at_ms")
    QUEUES_FIELD_NUMBER: _ClassVar[int]
    AT_MS_FIELD_NUMBER: _ClassVar[int]
    queues: _containers.RepeatedCompositeFieldContainer[QueueStats]
    at_ms: int
    def __init__(self, queues: _Optional[_Iterable[_Union[QueueStats, _Mapping]]] = ..., at_ms: _Optional[int] = ...) -> None: ...
