from proto.cns.v1 import personalizer_pb2 as _personalizer_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class MaintenanceWindowRequest(_message.Message):
    __slots__ = ("id",)
    ID_FIELD_NUMBER: _ClassVar[int]
    id: str
    def __init__(self, id: _Optional[str] = ...) -> None: ...

class ListQueueRequest(_message.Message):
    __slots__ = ("limit",)
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    limit: int
    def __init__(self, limit: _Optional[int] = ...) -> None: ...

class QueueItem(_message.Message):
    __slots__ = ("request_id", "kind", "lane", "state", "attempts", "next_attempt_at", "last_error", "created_at", "updated_at", "chamber_code", "station_id")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    LANE_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    ATTEMPTS_FIELD_NUMBER: _ClassVar[int]
    NEXT_ATTEMPT_AT_FIELD_NUMBER: _ClassVar[int]
    LAST_ERROR_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    UPDATED_AT_FIELD_NUMBER: _ClassVar[int]
    CHAMBER_CODE_FIELD_NUMBER: _ClassVar[int]
    STATION_ID_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    kind: str
    lane: str
    state: _personalizer_pb2.RequestState
    attempts: int
    next_attempt_at: int
    last_error: str
    created_at: int
    updated_at: int
    chamber_code: str
    station_id: str
    def __init__(self, request_id: _Optional[str] = ..., kind: _Optional[str] = ..., lane: _Optional[str] = ..., state: _Optional[_Union[_personalizer_pb2.RequestState, str]] = ..., attempts: _Optional[int] = ..., next_attempt_at: _Optional[int] = ..., last_error: _Optional[str] = ..., created_at: _Optional[int] = ..., updated_at: _Optional[int] = ..., chamber_code: _Optional[str] = ..., station_id: _Optional[str] = ...) -> None: ...

class ListQueueResponse(_message.Message):
    __slots__ = ("items",)
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    items: _containers.RepeatedCompositeFieldContainer[QueueItem]
    def __init__(self, items: _Optional[_Iterable[_Union[QueueItem, _Mapping]]] = ...) -> None: ...

class QueueItemRequest(_message.Message):
    __slots__ = ("request_id",)
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    def __init__(self, request_id: _Optional[str] = ...) -> None: ...

class ListMaintenanceRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListMaintenanceResponse(_message.Message):
    __slots__ = ("windows",)
    WINDOWS_FIELD_NUMBER: _ClassVar[int]
    windows: _containers.RepeatedCompositeFieldContainer[_personalizer_pb2.MaintenanceWindow]
    def __init__(self, windows: _Optional[_Iterable[_Union[_personalizer_pb2.MaintenanceWindow, _Mapping]]] = ...) -> None: ...

class AddStockRequest(_message.Message):
    __slots__ = ("chamber_code", "quantity", "note", "device_model")
    CHAMBER_CODE_FIELD_NUMBER: _ClassVar[int]
    QUANTITY_FIELD_NUMBER: _ClassVar[int]
    NOTE_FIELD_NUMBER: _ClassVar[int]
    DEVICE_MODEL_FIELD_NUMBER: _ClassVar[int]
    chamber_code: str
    quantity: int
    note: str
    device_model: str
    def __init__(self, chamber_code: _Optional[str] = ..., quantity: _Optional[int] = ..., note: _Optional[str] = ..., device_model: _Optional[str] = ...) -> None: ...

class StockEntry(_message.Message):
    __slots__ = ("seq", "at", "chamber_code", "quantity", "actor", "note", "device_model")
    SEQ_FIELD_NUMBER: _ClassVar[int]
    AT_FIELD_NUMBER: _ClassVar[int]
    CHAMBER_CODE_FIELD_NUMBER: _ClassVar[int]
    QUANTITY_FIELD_NUMBER: _ClassVar[int]
    ACTOR_FIELD_NUMBER: _ClassVar[int]
    NOTE_FIELD_NUMBER: _ClassVar[int]
    DEVICE_MODEL_FIELD_NUMBER: _ClassVar[int]
    seq: int
    at: int
    chamber_code: str
    quantity: int
    actor: str
    note: str
    device_model: str
    def __init__(self, seq: _Optional[int] = ..., at: _Optional[int] = ..., chamber_code: _Optional[str] = ..., quantity: _Optional[int] = ..., actor: _Optional[str] = ..., note: _Optional[str] = ..., device_model: _Optional[str] = ...) -> None: ...

class ListStockRequest(_message.Message):
    __slots__ = ("chamber_code",)
    CHAMBER_CODE_FIELD_NUMBER: _ClassVar[int]
    chamber_code: str
    def __init__(self, chamber_code: _Optional[str] = ...) -> None: ...

class StockBalance(_message.Message):
    __slots__ = ("chamber_code", "sent", "used", "left", "device_model")
    CHAMBER_CODE_FIELD_NUMBER: _ClassVar[int]
    SENT_FIELD_NUMBER: _ClassVar[int]
    USED_FIELD_NUMBER: _ClassVar[int]
    LEFT_FIELD_NUMBER: _ClassVar[int]
    DEVICE_MODEL_FIELD_NUMBER: _ClassVar[int]
    chamber_code: str
    sent: int
    used: int
    left: int
    device_model: str
    def __init__(self, chamber_code: _Optional[str] = ..., sent: _Optional[int] = ..., used: _Optional[int] = ..., left: _Optional[int] = ..., device_model: _Optional[str] = ...) -> None: ...

class ListStockResponse(_message.Message):
    __slots__ = ("entries", "balances")
    ENTRIES_FIELD_NUMBER: _ClassVar[int]
    BALANCES_FIELD_NUMBER: _ClassVar[int]
    entries: _containers.RepeatedCompositeFieldContainer[StockEntry]
    balances: _containers.RepeatedCompositeFieldContainer[StockBalance]
    def __init__(self, entries: _Optional[_Iterable[_Union[StockEntry, _Mapping]]] = ..., balances: _Optional[_Iterable[_Union[StockBalance, _Mapping]]] = ...) -> None: ...
