from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class DeletionStatus(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    DELETION_STATUS_UNSPECIFIED: _ClassVar[DeletionStatus]
    DELETION_STATUS_RECEIVED: _ClassVar[DeletionStatus]
    DELETION_STATUS_IN_PROGRESS: _ClassVar[DeletionStatus]
    DELETION_STATUS_COMPLETED: _ClassVar[DeletionStatus]
DELETION_STATUS_UNSPECIFIED: DeletionStatus
DELETION_STATUS_RECEIVED: DeletionStatus
DELETION_STATUS_IN_PROGRESS: DeletionStatus
DELETION_STATUS_COMPLETED: DeletionStatus

class OptOutRequest(_message.Message):
    __slots__ = ("customer_key",)
    CUSTOMER_KEY_FIELD_NUMBER: _ClassVar[int]
    customer_key: str
    def __init__(self, customer_key: _Optional[str] = ...) -> None: ...

class OptOutResponse(_message.Message):
    __slots__ = ("customer_digest", "effective_at_ms")
    CUSTOMER_DIGEST_FIELD_NUMBER: _ClassVar[int]
    EFFECTIVE_AT_MS_FIELD_NUMBER: _ClassVar[int]
    customer_digest: str
    effective_at_ms: int
    def __init__(self, customer_digest: _Optional[str] = ..., effective_at_ms: _Optional[int] = ...) -> None: ...

class RequestDeletionRequest(_message.Message):
    __slots__ = ("customer_key",)
    CUSTOMER_KEY_FIELD_NUMBER: _ClassVar[int]
    customer_key: str
    def __init__(self, customer_key: _Optional[str] = ...) -> None: ...

class DeletionTicket(_message.Message):
    __slots__ = ("ticket_id", "customer_digest", "status", "received_at_ms", "due_at_ms", "completed_at_ms")
    TICKET_ID_FIELD_NUMBER: _ClassVar[int]
    CUSTOMER_DIGEST_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    RECEIVED_AT_MS_FIELD_NUMBER: _ClassVar[int]
    DUE_AT_MS_FIELD_NUMBER: _ClassVar[int]
    COMPLETED_AT_MS_FIELD_NUMBER: _ClassVar[int]
    ticket_id: str
    customer_digest: str
    status: DeletionStatus
    received_at_ms: int
    due_at_ms: int
    completed_at_ms: int
    def __init__(self, ticket_id: _Optional[str] = ..., customer_digest: _Optional[str] = ..., status: _Optional[_Union[DeletionStatus, str]] = ..., received_at_ms: _Optional[int] = ..., due_at_ms: _Optional[int] = ..., completed_at_ms: _Optional[int] = ...) -> None: ...

class GetDeletionRequest(_message.Message):
    __slots__ = ("ticket_id",)
    TICKET_ID_FIELD_NUMBER: _ClassVar[int]
    ticket_id: str
    def __init__(self, ticket_id: _Optional[str] = ...) -> None: ...

class ListDeletionsRequest(_message.Message):
    __slots__ = ("overdue_only", "page_size", "page_token")
    OVERDUE_ONLY_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    overdue_only: bool
    page_size: int
    page_token: str
    def __init__(self, overdue_only: _Optional[bool] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListDeletionsResponse(_message.Message):
    __slots__ = ("tickets", "next_page_token")
    TICKETS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    tickets: _containers.RepeatedCompositeFieldContainer[DeletionTicket]
    next_page_token: str
    def __init__(self, tickets: _Optional[_Iterable[_Union[DeletionTicket, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...
