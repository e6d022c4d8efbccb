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
    __slots__ = ("customer_digest", "effective_at_ms", "changed")
    CUSTOMER_DIGEST_FIELD_NUMBER: _ClassVar[int]
    EFFECTIVE_AT_MS_FIELD_NUMBER: _ClassVar[int]
    CHANGED_FIELD_NUMBER: _ClassVar[int]
    customer_digest: str
    effective_at_ms: int
    changed: bool
    def __init__(self, customer_digest: _Optional[str] = ..., effective_at_ms: _Optional[int] = ..., changed: _Optional[bool] = ...) -> None: ...

class BulkOptOutRequest(_message.Message):
    __slots__ = ("customer_keys", "replace")
    CUSTOMER_KEYS_FIELD_NUMBER: _ClassVar[int]
    REPLACE_FIELD_NUMBER: _ClassVar[int]
    customer_keys: _containers.RepeatedScalarFieldContainer[str]
    replace: bool
    def __init__(self, customer_keys: _Optional[_Iterable[str]] = ..., replace: _Optional[bool] = ...) -> None: ...

class BulkOptOutResponse(_message.Message):
    __slots__ = ("received", "opted_out", "already_opted_out", "withdrawn", "effective_at_ms")
    RECEIVED_FIELD_NUMBER: _ClassVar[int]
    OPTED_OUT_FIELD_NUMBER: _ClassVar[int]
    ALREADY_OPTED_OUT_FIELD_NUMBER: _ClassVar[int]
    WITHDRAWN_FIELD_NUMBER: _ClassVar[int]
    EFFECTIVE_AT_MS_FIELD_NUMBER: _ClassVar[int]
    received: int
    opted_out: int
    already_opted_out: int
    withdrawn: int
    effective_at_ms: int
    def __init__(self, received: _Optional[int] = ..., opted_out: _Optional[int] = ..., already_opted_out: _Optional[int] = ..., withdrawn: _Optional[int] = ..., effective_at_ms: _Optional[int] = ...) -> None: ...

class RequestDeletionRequest(_message.Message):
    __slots__ = ("customer_key",)
    CUSTOMER_KEY_FIELD_NUMBER: _ClassVar[int]
    customer_key: str
    def __init__(self, customer_key: _Optional[str] = ...) -> None: ...

class DeletionTicket(_message.Message):
    __slots__ = ("ticket_id", "customer_digest", "status", "received_at_ms", "due_at_ms", "completed_at_ms", "overdue", "step")
    TICKET_ID_FIELD_NUMBER: _ClassVar[int]
    CUSTOMER_DIGEST_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    RECEIVED_AT_MS_FIELD_NUMBER: _ClassVar[int]
    DUE_AT_MS_FIELD_NUMBER: _ClassVar[int]
    COMPLETED_AT_MS_FIELD_NUMBER: _ClassVar[int]
    OVERDUE_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    ticket_id: str
    customer_digest: str
    status: DeletionStatus
    received_at_ms: int
    due_at_ms: int
    completed_at_ms: int
    overdue: bool
    step: str
    def __init__(self, ticket_id: _Optional[str] = ..., customer_digest: _Optional[str] = ..., status: _Optional[_Union[DeletionStatus, str]] = ..., received_at_ms: _Optional[int] = ..., due_at_ms: _Optional[int] = ..., completed_at_ms: _Optional[int] = ..., overdue: _Optional[bool] = ..., step: _Optional[str] = ...) -> None: ...

class GetDeletionRequest(_message.Message):
    __slots__ = ("ticket_id",)
    TICKET_ID_FIELD_NUMBER: _ClassVar[int]
    ticket_id: str
    def __init__(self, ticket_id: _Optional[str] = ...) -> None: ...

class ListDeletionsRequest(_message.Message):
    __slots__ = ("overdue_only", "page_size", "page_token", "due_within_days")
    OVERDUE_ONLY_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    DUE_WITHIN_DAYS_FIELD_NUMBER: _ClassVar[int]
    overdue_only: bool
    page_size: int
    page_token: str
    due_within_days: int
    def __init__(self, overdue_only: _Optional[bool] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ..., due_within_days: _Optional[int] = ...) -> None: ...

class ListDeletionsResponse(_message.Message):
    __slots__ = ("tickets", "next_page_token", "open", "overdue")
    TICKETS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    OPEN_FIELD_NUMBER: _ClassVar[int]
    OVERDUE_FIELD_NUMBER: _ClassVar[int]
    tickets: _containers.RepeatedCompositeFieldContainer[DeletionTicket]
    next_page_token: str
    open: int
    overdue: int
    def __init__(self, tickets: _Optional[_Iterable[_Union[DeletionTicket, _Mapping]]] = ..., next_page_token: _Optional[str] = ..., open: _Optional[int] = ..., overdue: _Optional[int] = ...) -> None: ...

class ReadAuditRequest(_message.Message):
    __slots__ = ("after_seq", "page_size")
    AFTER_SEQ_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    after_seq: int
    page_size: int
    def __init__(self, after_seq: _Optional[int] = ..., page_size: _Optional[int] = ...) -> None: ...

class AuditEntry(_message.Message):
    __slots__ = ("seq", "at_ms", "op", "customer_digest", "ticket_id", "detail")
    SEQ_FIELD_NUMBER: _ClassVar[int]
    AT_MS_FIELD_NUMBER: _ClassVar[int]
    OP_FIELD_NUMBER: _ClassVar[int]
    CUSTOMER_DIGEST_FIELD_NUMBER: _ClassVar[int]
    TICKET_ID_FIELD_NUMBER: _ClassVar[int]
    DETAIL_FIELD_NUMBER: _ClassVar[int]
    seq: int
    at_ms: int
    op: str
    customer_digest: str
    ticket_id: str
    detail: str
    def __init__(self, seq: _Optional[int] = ..., at_ms: _Optional[int] = ..., op: _Optional[str] = ..., customer_digest: _Optional[str] = ..., ticket_id: _Optional[str] = ..., detail: _Optional[str] = ...) -> None: ...

class ReadAuditResponse(_message.Message):
    __slots__ = ("entries", "next_after_seq")
    ENTRIES_FIELD_NUMBER: _ClassVar[int]
    NEXT_AFTER_SEQ_FIELD_NUMBER: _ClassVar[int]
    entries: _containers.RepeatedCompositeFieldContainer[AuditEntry]
    next_after_seq: int
    def __init__(self, entries: _Optional[_Iterable[_Union[AuditEntry, _Mapping]]] = ..., next_after_seq: _Optional[int] = ...) -> None: ...
