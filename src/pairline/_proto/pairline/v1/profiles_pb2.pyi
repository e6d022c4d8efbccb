from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class CustomerProfile(_message.Message):
    __slots__ = ("customer_key", "vector", "version", "source_time_ms")
    CUSTOMER_KEY_FIELD_NUMBER: _ClassVar[int]
    VECTOR_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    SOURCE_TIME_MS_FIELD_NUMBER: _ClassVar[int]
    customer_key: str
    vector: _containers.RepeatedScalarFieldContainer[float]
    version: int
    source_time_ms: int
    def __init__(self, customer_key: _Optional[str] = ..., vector: _Optional[_Iterable[float]] = ..., version: _Optional[int] = ..., source_time_ms: _Optional[int] = ...) -> None: ...

class CustomerProfileBatch(_message.Message):
    __slots__ = ("profiles",)
    PROFILES_FIELD_NUMBER: _ClassVar[int]
    profiles: _containers.RepeatedCompositeFieldContainer[CustomerProfile]
    def __init__(self, profiles: _Optional[_Iterable[_Union[CustomerProfile, _Mapping]]] = ...) -> None: ...

class AgentProfile(_message.Message):
    __slots__ = ("agent_id", "vector", "version", "source_time_ms")
    AGENT_ID_FIELD_NUMBER: _ClassVar[int]
    VECTOR_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    SOURCE_TIME_MS_FIELD_NUMBER: _ClassVar[int]
    agent_id: str
    vector: _containers.RepeatedScalarFieldContainer[float]
    version: int
    source_time_ms: int
    def __init__(self, agent_id: _Optional[str] = ..., vector: _Optional[_Iterable[float]] = ..., version: _Optional[int] = ..., source_time_ms: _Optional[int] = ...) -> None: ...

class AgentProfileBatch(_message.Message):
    __slots__ = ("profiles",)
    PROFILES_FIELD_NUMBER: _ClassVar[int]
    profiles: _containers.RepeatedCompositeFieldContainer[AgentProfile]
    def __init__(self, profiles: _Optional[_Iterable[_Union[AgentProfile, _Mapping]]] = ...) -> None: ...

class UpsertResult(_message.Message):
    __slots__ = ("accepted", "stale", "stale_indexes")
    ACCEPTED_FIELD_NUMBER: _ClassVar[int]
    STALE_FIELD_NUMBER: _ClassVar[int]
    STALE_INDEXES_FIELD_NUMBER: _ClassVar[int]
    accepted: int
    stale: int
    stale_indexes: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, accepted: _Optional[int] = ..., stale: _Optional[int] = ..., stale_indexes: _Optional[_Iterable[int]] = ...) -> None: ...

class UploadModelRequest(_message.Message):
    __slots__ = ("model", "activate")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    ACTIVATE_FIELD_NUMBER: _ClassVar[int]
    model: bytes
    activate: bool
    def __init__(self, model: _Optional[bytes] = ..., activate: _Optional[bool] = ...) -> None: ...

class ActivateModelRequest(_message.Message):
    __slots__ = ("version",)
    VERSION_FIELD_NUMBER: _ClassVar[int]
    version: str
    def __init__(self, version: _Optional[str] = ...) -> None: ...

class GetModelInfoRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ModelInfo(_message.Message):
    __slots__ = ("version", "outcome", "customer_dim", "agent_dim", "context_features", "trained_at_ms", "active", "link")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    OUTCOME_FIELD_NUMBER: _ClassVar[int]
    CUSTOMER_DIM_FIELD_NUMBER: _ClassVar[int]
    AGENT_DIM_FIELD_NUMBER: _ClassVar[int]
    CONTEXT_FEATURES_FIELD_NUMBER: _ClassVar[int]
    TRAINED_AT_MS_FIELD_NUMBER: _ClassVar[int]
    ACTIVE_FIELD_NUMBER: _ClassVar[int]
    LINK_FIELD_NUMBER: _ClassVar[int]
    version: str
    outcome: str
    customer_dim: int
    agent_dim: int
    context_features: _containers.RepeatedScalarFieldContainer[str]
    trained_at_ms: int
    active: bool
    link: str
    def __init__(self, version: _Optional[str] = ..., outcome: _Optional[str] = ..., customer_dim: _Optional[int] = ..., agent_dim: _Optional[int] = ..., context_features: _Optional[_Iterable[str]] = ..., trained_at_ms: _Optional[int] = ..., active: _Optional[bool] = ..., link: _Optional[str] = ...) -> None: ...

class GetModelInfoResponse(_message.Message):
    __slots__ = ("active", "models")
    ACTIVE_FIELD_NUMBER: _ClassVar[int]
    MODELS_FIELD_NUMBER: _ClassVar[int]
    active: ModelInfo
    models: _containers.RepeatedCompositeFieldContainer[ModelInfo]
    def __init__(self, active: _Optional[_Union[ModelInfo, _Mapping]] = ..., models: _Optional[_Iterable[_Union[ModelInfo, _Mapping]]] = ...) -> None: ...
