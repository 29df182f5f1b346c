from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class DeviceCardState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    DEVICE_CARD_STATE_UNSPECIFIED: _ClassVar[DeviceCardState]
    DEVICE_CARD_STATE_READING: _ClassVar[DeviceCardState]
    DEVICE_CARD_STATE_READY: _ClassVar[DeviceCardState]
    DEVICE_CARD_STATE_UNSUPPORTED: _ClassVar[DeviceCardState]
    DEVICE_CARD_STATE_ERROR: _ClassVar[DeviceCardState]

class DeviceEventKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    DEVICE_EVENT_KIND_UNSPECIFIED: _ClassVar[DeviceEventKind]
    DEVICE_EVENT_KIND_SNAPSHOT: _ClassVar[DeviceEventKind]
    DEVICE_EVENT_KIND_READER_ADDED: _ClassVar[DeviceEventKind]
    DEVICE_EVENT_KIND_READER_REMOVED: _ClassVar[DeviceEventKind]
    DEVICE_EVENT_KIND_CARD_INSERTED: _ClassVar[DeviceEventKind]
    DEVICE_EVENT_KIND_CARD_READ: _ClassVar[DeviceEventKind]
    DEVICE_EVENT_KIND_CARD_REMOVED: _ClassVar[DeviceEventKind]
    DEVICE_EVENT_KIND_CARD_ERROR: _ClassVar[DeviceEventKind]
DEVICE_CARD_STATE_UNSPECIFIED: DeviceCardState
DEVICE_CARD_STATE_READING: DeviceCardState
DEVICE_CARD_STATE_READY: DeviceCardState
DEVICE_CARD_STATE_UNSUPPORTED: DeviceCardState
DEVICE_CARD_STATE_ERROR: DeviceCardState
DEVICE_EVENT_KIND_UNSPECIFIED: DeviceEventKind
DEVICE_EVENT_KIND_SNAPSHOT: DeviceEventKind
DEVICE_EVENT_KIND_READER_ADDED: DeviceEventKind
DEVICE_EVENT_KIND_READER_REMOVED: DeviceEventKind
DEVICE_EVENT_KIND_CARD_INSERTED: DeviceEventKind
DEVICE_EVENT_KIND_CARD_READ: DeviceEventKind
DEVICE_EVENT_KIND_CARD_REMOVED: DeviceEventKind
DEVICE_EVENT_KIND_CARD_ERROR: DeviceEventKind

class GetAgentInfoRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class AgentInfo(_message.Message):
    __slots__ = ("version", "pid", "uid", "socket_path", "pcsc_status", "model_ids", "profiles_dir", "started_unix_ms")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    PID_FIELD_NUMBER: _ClassVar[int]
    UID_FIELD_NUMBER: _ClassVar[int]
    SOCKET_PATH_FIELD_NUMBER: _ClassVar[int]
    PCSC_STATUS_FIELD_NUMBER: _ClassVar[int]
    MODEL_IDS_FIELD_NUMBER: _ClassVar[int]
    PROFILES_DIR_FIELD_NUMBER: _ClassVar[int]
    STARTED_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    version: str
    pid: int
    uid: int
    socket_path: str
    pcsc_status: str
    model_ids: _containers.RepeatedScalarFieldContainer[str]
    profiles_dir: str
    started_unix_ms: int
    def __init__(self, version: _Optional[str] = ..., pid: _Optional[int] = ..., uid: _Optional[int] = ..., socket_path: _Optional[str] = ..., pcsc_status: _Optional[str] = ..., model_ids: _Optional[_Iterable[str]] = ..., profiles_dir: _Optional[str] = ..., started_unix_ms: _Optional[int] = ...) -> None: ...

class DeviceCard(_message.Message):
    __slots__ = ("atr_hex", "state", "supported", "model_id", "model_name", "serial", "holder_label", "blank", "error")
    ATR_HEX_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    SUPPORTED_FIELD_NUMBER: _ClassVar[int]
    MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    SERIAL_FIELD_NUMBER: _ClassVar[int]
    HOLDER_LABEL_FIELD_NUMBER: _ClassVar[int]
    BLANK_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    atr_hex: str
    state: DeviceCardState
    supported: bool
    model_id: str
    model_name: str
    serial: str
    holder_label: str
    blank: bool
    error: str
    def __init__(self, atr_hex: _Optional[str] = ..., state: _Optional[_Union[DeviceCardState, str]] = ..., supported: _Optional[bool] = ..., model_id: _Optional[str] = ..., model_name: _Optional[str] = ..., serial: _Optional[str] = ..., holder_label: _Optional[str] = ..., blank: _Optional[bool] = ..., error: _Optional[str] = ...) -> None: ...

class DeviceReader(_message.Message):
    __slots__ = ("name", "card_present", "card")
    NAME_FIELD_NUMBER: _ClassVar[int]
    CARD_PRESENT_FIELD_NUMBER: _ClassVar[int]
    CARD_FIELD_NUMBER: _ClassVar[int]
    name: str
    card_present: bool
    card: DeviceCard
    def __init__(self, name: _Optional[str] = ..., card_present: _Optional[bool] = ..., card: _Optional[_Union[DeviceCard, _Mapping]] = ...) -> None: ...

class ListDevicesRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListDevicesResponse(_message.Message):
    __slots__ = ("readers", "sequence")
    READERS_FIELD_NUMBER: _ClassVar[int]
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    readers: _containers.RepeatedCompositeFieldContainer[DeviceReader]
    sequence: int
    def __init__(self, readers: _Optional[_Iterable[_Union[DeviceReader, _Mapping]]] = ..., sequence: _Optional[int] = ...) -> None: ...

class WatchDevicesRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class DeviceEvent(_message.Message):
    __slots__ = ("sequence", "kind", "reader_name", "reader", "interrupted", "time_unix_ms", "snapshot")
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    READER_NAME_FIELD_NUMBER: _ClassVar[int]
    READER_FIELD_NUMBER: _ClassVar[int]
    INTERRUPTED_FIELD_NUMBER: _ClassVar[int]
    TIME_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    SNAPSHOT_FIELD_NUMBER: _ClassVar[int]
    sequence: int
    kind: DeviceEventKind
    reader_name: str
    reader: DeviceReader
    interrupted: bool
    time_unix_ms: int
    snapshot: _containers.RepeatedCompositeFieldContainer[DeviceReader]
    def __init__(self, sequence: _Optional[int] = ..., kind: _Optional[_Union[DeviceEventKind, str]] = ..., reader_name: _Optional[str] = ..., reader: _Optional[_Union[DeviceReader, _Mapping]] = ..., interrupted: _Optional[bool] = ..., time_unix_ms: _Optional[int] = ..., snapshot: _Optional[_Iterable[_Union[DeviceReader, _Mapping]]] = ...) -> None: ...
