from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Channel(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    CHANNEL_UNSPECIFIED: _ClassVar[Channel]
    CHANNEL_VOICE: _ClassVar[Channel]
    CHANNEL_CHAT: _ClassVar[Channel]
    CHANNEL_EMAIL: _ClassVar[Channel]
    CHANNEL_VIDEO: _ClassVar[Channel]
    CHANNEL_IN_PERSON: _ClassVar[Channel]

class Mode(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    MODE_UNSPECIFIED: _ClassVar[Mode]
    MODE_PAIRED: _ClassVar[Mode]
    MODE_CONTROL: _ClassVar[Mode]
    MODE_OPTED_OUT: _ClassVar[Mode]
    MODE_NO_PROFILE: _ClassVar[Mode]
    MODE_DEGRADED: _ClassVar[Mode]
    MODE_QUEUED: _ClassVar[Mode]
    MODE_BASELINE: _ClassVar[Mode]
CHANNEL_UNSPECIFIED: Channel
CHANNEL_VOICE: Channel
CHANNEL_CHAT: Channel
CHANNEL_EMAIL: Channel
CHANNEL_VIDEO: Channel
CHANNEL_IN_PERSON: Channel
MODE_UNSPECIFIED: Mode
MODE_PAIRED: Mode
MODE_CONTROL: Mode
MODE_OPTED_OUT: Mode
MODE_NO_PROFILE: Mode
MODE_DEGRADED: Mode
MODE_QUEUED: Mode
MODE_BASELINE: Mode

class Decision(_message.Message):
    __slots__ = ("decision_id", "mode", "contact_id", "agent_id", "queue", "channel", "policy", "model_version", "predicted_outcome", "offer_expires_at_ms", "decided_at_ms", "shadow_agent_id", "shadow_contact_id", "shadow_predicted_outcome", "queue_position")
    DECISION_ID_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    CONTACT_ID_FIELD_NUMBER: _ClassVar[int]
    AGENT_ID_FIELD_NUMBER: _ClassVar[int]
    QUEUE_FIELD_NUMBER: _ClassVar[int]
    CHANNEL_FIELD_NUMBER: _ClassVar[int]
    POLICY_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    PREDICTED_OUTCOME_FIELD_NUMBER: _ClassVar[int]
    OFFER_EXPIRES_AT_MS_FIELD_NUMBER: _ClassVar[int]
    DECIDED_AT_MS_FIELD_NUMBER: _ClassVar[int]
    SHADOW_AGENT_ID_FIELD_NUMBER: _ClassVar[int]
    SHADOW_CONTACT_ID_FIELD_NUMBER: _ClassVar[int]
    SHADOW_PREDICTED_OUTCOME_FIELD_NUMBER: _ClassVar[int]
    QUEUE_POSITION_FIELD_NUMBER: _ClassVar[int]
    decision_id: str
    mode: Mode
    contact_id: str
    agent_id: str
    queue: str
    channel: Channel
    policy: str
    model_version: str
    predicted_outcome: float
    offer_expires_at_ms: int
    decided_at_ms: int
    shadow_agent_id: str
    shadow_contact_id: str
    shadow_predicted_outcome: float
    queue_position: int
    def __init__(self, decision_id: _Optional[str] = ..., mode: _Optional[_Union[Mode, str]] = ..., contact_id: _Optional[str] = ..., agent_id: _Optional[str] = ..., queue: _Optional[str] = ..., channel: _Optional[_Union[Channel, str]] = ..., policy: _Optional[str] = ..., model_version: _Optional[str] = ..., predicted_outcome: _Optional[float] = ..., offer_expires_at_ms: _Optional[int] = ..., decided_at_ms: _Optional[int] = ..., shadow_agent_id: _Optional[str] = ..., shadow_contact_id: _Optional[str] = ..., shadow_predicted_outcome: _Optional[float] = ..., queue_position: _Optional[int] = ...) -> None: ...
