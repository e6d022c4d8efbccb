from google.rpc import status_pb2 as _status_pb2
from pairline._proto.pairline.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class AgentStatus(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    AGENT_STATUS_UNSPECIFIED: _ClassVar[AgentStatus]
    AGENT_STATUS_LOGGED_OUT: _ClassVar[AgentStatus]
    AGENT_STATUS_AVAILABLE: _ClassVar[AgentStatus]
    AGENT_STATUS_AWAY: _ClassVar[AgentStatus]
    AGENT_STATUS_BUSY: _ClassVar[AgentStatus]
    AGENT_STATUS_WRAP_UP: _ClassVar[AgentStatus]
    AGENT_STATUS_RESERVED: _ClassVar[AgentStatus]

class ReleaseReason(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    RELEASE_REASON_UNSPECIFIED: _ClassVar[ReleaseReason]
    RELEASE_REASON_NOT_CONNECTED: _ClassVar[ReleaseReason]
    RELEASE_REASON_AGENT_REJECTED: _ClassVar[ReleaseReason]

class EndReason(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    END_REASON_UNSPECIFIED: _ClassVar[EndReason]
    END_REASON_HANDLED: _ClassVar[EndReason]
    END_REASON_ABANDONED: _ClassVar[EndReason]
    END_REASON_TRANSFERRED: _ClassVar[EndReason]
AGENT_STATUS_UNSPECIFIED: AgentStatus
AGENT_STATUS_LOGGED_OUT: AgentStatus
AGENT_STATUS_AVAILABLE: AgentStatus
AGENT_STATUS_AWAY: AgentStatus
AGENT_STATUS_BUSY: AgentStatus
AGENT_STATUS_WRAP_UP: AgentStatus
AGENT_STATUS_RESERVED: AgentStatus
RELEASE_REASON_UNSPECIFIED: ReleaseReason
RELEASE_REASON_NOT_CONNECTED: ReleaseReason
RELEASE_REASON_AGENT_REJECTED: ReleaseReason
END_REASON_UNSPECIFIED: EndReason
END_REASON_HANDLED: EndReason
END_REASON_ABANDONED: EndReason
END_REASON_TRANSFERRED: EndReason

class RouteContactRequest(_message.Message):
    __slots__ = ("contact_id", "queue", "channel", "priority", "customer_key", "context", "min_proficiency", "excluded_agent_ids", "preferred_agent_ids")
    class ContextEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    CONTACT_ID_FIELD_NUMBER: _ClassVar[int]
    QUEUE_FIELD_NUMBER: _ClassVar[int]
    CHANNEL_FIELD_NUMBER: _ClassVar[int]
    PRIORITY_FIELD_NUMBER: _ClassVar[int]
    CUSTOMER_KEY_FIELD_NUMBER: _ClassVar[int]
    CONTEXT_FIELD_NUMBER: _ClassVar[int]
    MIN_PROFICIENCY_FIELD_NUMBER: _ClassVar[int]
    EXCLUDED_AGENT_IDS_FIELD_NUMBER: _ClassVar[int]
    PREFERRED_AGENT_IDS_FIELD_NUMBER: _ClassVar[int]
    contact_id: str
    queue: str
    channel: _common_pb2.Channel
    priority: int
    customer_key: str
    context: _containers.ScalarMap[str, float]
    min_proficiency: int
    excluded_agent_ids: _containers.RepeatedScalarFieldContainer[str]
    preferred_agent_ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, contact_id: _Optional[str] = ..., queue: _Optional[str] = ..., channel: _Optional[_Union[_common_pb2.Channel, str]] = ..., priority: _Optional[int] = ..., customer_key: _Optional[str] = ..., context: _Optional[_Mapping[str, float]] = ..., min_proficiency: _Optional[int] = ..., excluded_agent_ids: _Optional[_Iterable[str]] = ..., preferred_agent_ids: _Optional[_Iterable[str]] = ...) -> None: ...

class AgentReadyRequest(_message.Message):
    __slots__ = ("agent_id",)
    AGENT_ID_FIELD_NUMBER: _ClassVar[int]
    agent_id: str
    def __init__(self, agent_id: _Optional[str] = ...) -> None: ...

class QueueMembership(_message.Message):
    __slots__ = ("queue", "proficiency")
    QUEUE_FIELD_NUMBER: _ClassVar[int]
    PROFICIENCY_FIELD_NUMBER: _ClassVar[int]
    queue: str
    proficiency: int
    def __init__(self, queue: _Optional[str] = ..., proficiency: _Optional[int] = ...) -> None: ...

class ChannelCapacity(_message.Message):
    __slots__ = ("channel", "capacity")
    CHANNEL_FIELD_NUMBER: _ClassVar[int]
    CAPACITY_FIELD_NUMBER: _ClassVar[int]
    channel: _common_pb2.Channel
    capacity: int
    def __init__(self, channel: _Optional[_Union[_common_pb2.Channel, str]] = ..., capacity: _Optional[int] = ...) -> None: ...

class SetAgentStateRequest(_message.Message):
    __slots__ = ("agent_id", "status", "queues", "capacities", "wrap_up_ms")
    AGENT_ID_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    QUEUES_FIELD_NUMBER: _ClassVar[int]
    CAPACITIES_FIELD_NUMBER: _ClassVar[int]
    WRAP_UP_MS_FIELD_NUMBER: _ClassVar[int]
    agent_id: str
    status: AgentStatus
    queues: _containers.RepeatedCompositeFieldContainer[QueueMembership]
    capacities: _containers.RepeatedCompositeFieldContainer[ChannelCapacity]
    wrap_up_ms: int
    def __init__(self, agent_id: _Optional[str] = ..., status: _Optional[_Union[AgentStatus, str]] = ..., queues: _Optional[_Iterable[_Union[QueueMembership, _Mapping]]] = ..., capacities: _Optional[_Iterable[_Union[ChannelCapacity, _Mapping]]] = ..., wrap_up_ms: _Optional[int] = ...) -> None: ...

class AgentState(_message.Message):
    __slots__ = ("agent_id", "status", "queues", "capacities", "in_use", "idle_since_ms", "wrap_up_until_ms", "contact_ids")
    AGENT_ID_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    QUEUES_FIELD_NUMBER: _ClassVar[int]
    CAPACITIES_FIELD_NUMBER: _ClassVar[int]
    IN_USE_FIELD_NUMBER: _ClassVar[int]
    IDLE_SINCE_MS_FIELD_NUMBER: _ClassVar[int]
    WRAP_UP_UNTIL_MS_FIELD_NUMBER: _ClassVar[int]
    CONTACT_IDS_FIELD_NUMBER: _ClassVar[int]
    agent_id: str
    status: AgentStatus
    queues: _containers.RepeatedCompositeFieldContainer[QueueMembership]
    capacities: _containers.RepeatedCompositeFieldContainer[ChannelCapacity]
    in_use: _containers.RepeatedCompositeFieldContainer[ChannelCapacity]
    idle_since_ms: int
    wrap_up_until_ms: int
    contact_ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, agent_id: _Optional[str] = ..., status: _Optional[_Union[AgentStatus, str]] = ..., queues: _Optional[_Iterable[_Union[QueueMembership, _Mapping]]] = ..., capacities: _Optional[_Iterable[_Union[ChannelCapacity, _Mapping]]] = ..., in_use: _Optional[_Iterable[_Union[ChannelCapacity, _Mapping]]] = ..., idle_since_ms: _Optional[int] = ..., wrap_up_until_ms: _Optional[int] = ..., contact_ids: _Optional[_Iterable[str]] = ...) -> None: ...

class GetAgentStateRequest(_message.Message):
    __slots__ = ("agent_id",)
    AGENT_ID_FIELD_NUMBER: _ClassVar[int]
    agent_id: str
    def __init__(self, agent_id: _Optional[str] = ...) -> None: ...

class ConfirmDecisionRequest(_message.Message):
    __slots__ = ("decision_id",)
    DECISION_ID_FIELD_NUMBER: _ClassVar[int]
    decision_id: str
    def __init__(self, decision_id: _Optional[str] = ...) -> None: ...

class ConfirmDecisionResponse(_message.Message):
    __slots__ = ("contact_id", "agent_id")
    CONTACT_ID_FIELD_NUMBER: _ClassVar[int]
    AGENT_ID_FIELD_NUMBER: _ClassVar[int]
    contact_id: str
    agent_id: str
    def __init__(self, contact_id: _Optional[str] = ..., agent_id: _Optional[str] = ...) -> None: ...

class ReleaseDecisionRequest(_message.Message):
    __slots__ = ("decision_id", "reason")
    DECISION_ID_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    decision_id: str
    reason: ReleaseReason
    def __init__(self, decision_id: _Optional[str] = ..., reason: _Optional[_Union[ReleaseReason, str]] = ...) -> None: ...

class ReleaseDecisionResponse(_message.Message):
    __slots__ = ("contact_id", "agent_id", "agent_status")
    CONTACT_ID_FIELD_NUMBER: _ClassVar[int]
    AGENT_ID_FIELD_NUMBER: _ClassVar[int]
    AGENT_STATUS_FIELD_NUMBER: _ClassVar[int]
    contact_id: str
    agent_id: str
    agent_status: AgentStatus
    def __init__(self, contact_id: _Optional[str] = ..., agent_id: _Optional[str] = ..., agent_status: _Optional[_Union[AgentStatus, str]] = ...) -> None: ...

class EndContactRequest(_message.Message):
    __slots__ = ("contact_id", "reason", "wrap_up_ms")
    CONTACT_ID_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    WRAP_UP_MS_FIELD_NUMBER: _ClassVar[int]
    contact_id: str
    reason: EndReason
    wrap_up_ms: int
    def __init__(self, contact_id: _Optional[str] = ..., reason: _Optional[_Union[EndReason, str]] = ..., wrap_up_ms: _Optional[int] = ...) -> None: ...

class EndContactResponse(_message.Message):
    __slots__ = ("contact_id", "agent_id", "wrap_up_until_ms")
    CONTACT_ID_FIELD_NUMBER: _ClassVar[int]
    AGENT_ID_FIELD_NUMBER: _ClassVar[int]
    WRAP_UP_UNTIL_MS_FIELD_NUMBER: _ClassVar[int]
    contact_id: str
    agent_id: str
    wrap_up_until_ms: int
    def __init__(self, contact_id: _Optional[str] = ..., agent_id: _Optional[str] = ..., wrap_up_until_ms: _Optional[int] = ...) -> None: ...

class ReportOutcomeRequest(_message.Message):
    __slots__ = ("decision_id", "outcomes")
    class OutcomesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    DECISION_ID_FIELD_NUMBER: _ClassVar[int]
    OUTCOMES_FIELD_NUMBER: _ClassVar[int]
    decision_id: str
    outcomes: _containers.ScalarMap[str, float]
    def __init__(self, decision_id: _Optional[str] = ..., outcomes: _Optional[_Mapping[str, float]] = ...) -> None: ...

class ReportOutcomeResponse(_message.Message):
    __slots__ = ("decision_id", "stored")
    DECISION_ID_FIELD_NUMBER: _ClassVar[int]
    STORED_FIELD_NUMBER: _ClassVar[int]
    decision_id: str
    stored: bool
    def __init__(self, decision_id: _Optional[str] = ..., stored: _Optional[bool] = ...) -> None: ...

class SwitchEvent(_message.Message):
    __slots__ = ("request_id", "route_contact", "agent_ready", "set_agent_state", "confirm_decision", "release_decision", "end_contact", "report_outcome")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    ROUTE_CONTACT_FIELD_NUMBER: _ClassVar[int]
    AGENT_READY_FIELD_NUMBER: _ClassVar[int]
    SET_AGENT_STATE_FIELD_NUMBER: _ClassVar[int]
    CONFIRM_DECISION_FIELD_NUMBER: _ClassVar[int]
    RELEASE_DECISION_FIELD_NUMBER: _ClassVar[int]
    END_CONTACT_FIELD_NUMBER: _ClassVar[int]
    REPORT_OUTCOME_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    route_contact: RouteContactRequest
    agent_ready: AgentReadyRequest
    set_agent_state: SetAgentStateRequest
    confirm_decision: ConfirmDecisionRequest
    release_decision: ReleaseDecisionRequest
    end_contact: EndContactRequest
    report_outcome: ReportOutcomeRequest
    def __init__(self, request_id: _Optional[str] = ..., route_contact: _Optional[_Union[RouteContactRequest, _Mapping]] = ..., agent_ready: _Optional[_Union[AgentReadyRequest, _Mapping]] = ..., set_agent_state: _Optional[_Union[SetAgentStateRequest, _Mapping]] = ..., confirm_decision: _Optional[_Union[ConfirmDecisionRequest, _Mapping]] = ..., release_decision: _Optional[_Union[ReleaseDecisionRequest, _Mapping]] = ..., end_contact: _Optional[_Union[EndContactRequest, _Mapping]] = ..., report_outcome: _Optional[_Union[ReportOutcomeRequest, _Mapping]] = ...) -> None: ...

class SwitchReply(_message.Message):
    __slots__ = ("request_id", "decision", "agent_state", "confirm_decision", "release_decision", "end_contact", "report_outcome", "error")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    DECISION_FIELD_NUMBER: _ClassVar[int]
    AGENT_STATE_FIELD_NUMBER: _ClassVar[int]
    CONFIRM_DECISION_FIELD_NUMBER: _ClassVar[int]
    RELEASE_DECISION_FIELD_NUMBER: _ClassVar[int]
    END_CONTACT_FIELD_NUMBER: _ClassVar[int]
    REPORT_OUTCOME_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    decision: _common_pb2.Decision
    agent_state: AgentState
    confirm_decision: ConfirmDecisionResponse
    release_decision: ReleaseDecisionResponse
    end_contact: EndContactResponse
    report_outcome: ReportOutcomeResponse
    error: _status_pb2.Status
    def __init__(self, request_id: _Optional[str] = ..., decision: _Optional[_Union[_common_pb2.Decision, _Mapping]] = ..., agent_state: _Optional[_Union[AgentState, _Mapping]] = ..., confirm_decision: _Optional[_Union[ConfirmDecisionResponse, _Mapping]] = ..., release_decision: _Optional[_Union[ReleaseDecisionResponse, _Mapping]] = ..., end_contact: _Optional[_Union[EndContactResponse, _Mapping]] = ..., report_outcome: _Optional[_Union[ReportOutcomeResponse, _Mapping]] = ..., error: _Optional[_Union[_status_pb2.Status, _Mapping]] = ...) -> None: ...

class SwitchEventBatch(_message.Message):
    __slots__ = ("events",)
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    events: _containers.RepeatedCompositeFieldContainer[SwitchEvent]
    def __init__(self, events: _Optional[_Iterable[_Union[SwitchEvent, _Mapping]]] = ...) -> None: ...

class SwitchReplyBatch(_message.Message):
    __slots__ = ("replies",)
    REPLIES_FIELD_NUMBER: _ClassVar[int]
    replies: _containers.RepeatedCompositeFieldContainer[SwitchReply]
    def __init__(self, replies: _Optional[_Iterable[_Union[SwitchReply, _Mapping]]] = ...) -> None: ...
