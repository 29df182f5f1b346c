from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class FleetCommandKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    FLEET_COMMAND_KIND_UNSPECIFIED: _ClassVar[FleetCommandKind]
    FLEET_COMMAND_REFRESH_INVENTORY: _ClassVar[FleetCommandKind]
    FLEET_COMMAND_RENEW_DUE: _ClassVar[FleetCommandKind]
    FLEET_COMMAND_INSTALL_RELEASE: _ClassVar[FleetCommandKind]
    FLEET_COMMAND_COLLECT_LOGS: _ClassVar[FleetCommandKind]

class FleetCommandState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    FLEET_COMMAND_STATE_UNSPECIFIED: _ClassVar[FleetCommandState]
    FLEET_COMMAND_PENDING: _ClassVar[FleetCommandState]
    FLEET_COMMAND_SENT: _ClassVar[FleetCommandState]
    FLEET_COMMAND_ACKED: _ClassVar[FleetCommandState]
    FLEET_COMMAND_RUNNING: _ClassVar[FleetCommandState]
    FLEET_COMMAND_SUCCEEDED: _ClassVar[FleetCommandState]
    FLEET_COMMAND_FAILED: _ClassVar[FleetCommandState]
    FLEET_COMMAND_REJECTED: _ClassVar[FleetCommandState]
    FLEET_COMMAND_TIMED_OUT: _ClassVar[FleetCommandState]
    FLEET_COMMAND_CANCELLED: _ClassVar[FleetCommandState]

class FleetFailureKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    FLEET_FAILURE_KIND_UNSPECIFIED: _ClassVar[FleetFailureKind]
    FLEET_FAILURE_FAILED: _ClassVar[FleetFailureKind]
    FLEET_FAILURE_REJECTED: _ClassVar[FleetFailureKind]
    FLEET_FAILURE_TIMED_OUT: _ClassVar[FleetFailureKind]
    FLEET_FAILURE_ANY: _ClassVar[FleetFailureKind]

class FleetRolloutState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    FLEET_ROLLOUT_STATE_UNSPECIFIED: _ClassVar[FleetRolloutState]
    FLEET_ROLLOUT_RUNNING: _ClassVar[FleetRolloutState]
    FLEET_ROLLOUT_PAUSED: _ClassVar[FleetRolloutState]
    FLEET_ROLLOUT_CANCELLED: _ClassVar[FleetRolloutState]
    FLEET_ROLLOUT_ABORTED: _ClassVar[FleetRolloutState]
    FLEET_ROLLOUT_COMPLETED: _ClassVar[FleetRolloutState]
FLEET_COMMAND_KIND_UNSPECIFIED: FleetCommandKind
FLEET_COMMAND_REFRESH_INVENTORY: FleetCommandKind
FLEET_COMMAND_RENEW_DUE: FleetCommandKind
FLEET_COMMAND_INSTALL_RELEASE: FleetCommandKind
FLEET_COMMAND_COLLECT_LOGS: FleetCommandKind
FLEET_COMMAND_STATE_UNSPECIFIED: FleetCommandState
FLEET_COMMAND_PENDING: FleetCommandState
FLEET_COMMAND_SENT: FleetCommandState
FLEET_COMMAND_ACKED: FleetCommandState
FLEET_COMMAND_RUNNING: FleetCommandState
FLEET_COMMAND_SUCCEEDED: FleetCommandState
FLEET_COMMAND_FAILED: FleetCommandState
FLEET_COMMAND_REJECTED: FleetCommandState
FLEET_COMMAND_TIMED_OUT: FleetCommandState
FLEET_COMMAND_CANCELLED: FleetCommandState
FLEET_FAILURE_KIND_UNSPECIFIED: FleetFailureKind
FLEET_FAILURE_FAILED: FleetFailureKind
FLEET_FAILURE_REJECTED: FleetFailureKind
FLEET_FAILURE_TIMED_OUT: FleetFailureKind
FLEET_FAILURE_ANY: FleetFailureKind
FLEET_ROLLOUT_STATE_UNSPECIFIED: FleetRolloutState
FLEET_ROLLOUT_RUNNING: FleetRolloutState
FLEET_ROLLOUT_PAUSED: FleetRolloutState
FLEET_ROLLOUT_CANCELLED: FleetRolloutState
FLEET_ROLLOUT_ABORTED: FleetRolloutState
FLEET_ROLLOUT_COMPLETED: FleetRolloutState

class FleetKeysetExpiry(_message.Message):
    __slots__ = ("keyset", "not_after")
    KEYSET_FIELD_NUMBER: _ClassVar[int]
    NOT_AFTER_FIELD_NUMBER: _ClassVar[int]
    keyset: str
    not_after: int
    def __init__(self, keyset: _Optional[str] = ..., not_after: _Optional[int] = ...) -> None: ...

class FleetDevice(_message.Message):
    __slots__ = ("kind", "model", "serial", "firmware_version", "partition_version", "token_release", "certificates", "reader")
    KIND_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    SERIAL_FIELD_NUMBER: _ClassVar[int]
    FIRMWARE_VERSION_FIELD_NUMBER: _ClassVar[int]
    PARTITION_VERSION_FIELD_NUMBER: _ClassVar[int]
    TOKEN_RELEASE_FIELD_NUMBER: _ClassVar[int]
    CERTIFICATES_FIELD_NUMBER: _ClassVar[int]
    READER_FIELD_NUMBER: _ClassVar[int]
    kind: str
    model: str
    serial: str
    firmware_version: str
    partition_version: str
    token_release: str
    certificates: _containers.RepeatedCompositeFieldContainer[FleetKeysetExpiry]
    reader: str
    def __init__(self, kind: _Optional[str] = ..., model: _Optional[str] = ..., serial: _Optional[str] = ..., firmware_version: _Optional[str] = ..., partition_version: _Optional[str] = ..., token_release: _Optional[str] = ..., certificates: _Optional[_Iterable[_Union[FleetKeysetExpiry, _Mapping]]] = ..., reader: _Optional[str] = ...) -> None: ...

class FleetHello(_message.Message):
    __slots__ = ("agent_version", "readers", "devices")
    AGENT_VERSION_FIELD_NUMBER: _ClassVar[int]
    READERS_FIELD_NUMBER: _ClassVar[int]
    DEVICES_FIELD_NUMBER: _ClassVar[int]
    agent_version: str
    readers: _containers.RepeatedScalarFieldContainer[str]
    devices: _containers.RepeatedCompositeFieldContainer[FleetDevice]
    def __init__(self, agent_version: _Optional[str] = ..., readers: _Optional[_Iterable[str]] = ..., devices: _Optional[_Iterable[_Union[FleetDevice, _Mapping]]] = ...) -> None: ...

class FleetHeartbeat(_message.Message):
    __slots__ = ("sequence",)
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    sequence: int
    def __init__(self, sequence: _Optional[int] = ...) -> None: ...

class FleetInventoryDelta(_message.Message):
    __slots__ = ("present", "removed_serials", "readers", "readers_changed")
    PRESENT_FIELD_NUMBER: _ClassVar[int]
    REMOVED_SERIALS_FIELD_NUMBER: _ClassVar[int]
    READERS_FIELD_NUMBER: _ClassVar[int]
    READERS_CHANGED_FIELD_NUMBER: _ClassVar[int]
    present: _containers.RepeatedCompositeFieldContainer[FleetDevice]
    removed_serials: _containers.RepeatedScalarFieldContainer[str]
    readers: _containers.RepeatedScalarFieldContainer[str]
    readers_changed: bool
    def __init__(self, present: _Optional[_Iterable[_Union[FleetDevice, _Mapping]]] = ..., removed_serials: _Optional[_Iterable[str]] = ..., readers: _Optional[_Iterable[str]] = ..., readers_changed: _Optional[bool] = ...) -> None: ...

class FleetCommand(_message.Message):
    __slots__ = ("command_id", "kind", "device_serial", "release")
    COMMAND_ID_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    DEVICE_SERIAL_FIELD_NUMBER: _ClassVar[int]
    RELEASE_FIELD_NUMBER: _ClassVar[int]
    command_id: str
    kind: FleetCommandKind
    device_serial: str
    release: str
    def __init__(self, command_id: _Optional[str] = ..., kind: _Optional[_Union[FleetCommandKind, str]] = ..., device_serial: _Optional[str] = ..., release: _Optional[str] = ...) -> None: ...

class FleetCommandAck(_message.Message):
    __slots__ = ("command_id", "accepted", "reason")
    COMMAND_ID_FIELD_NUMBER: _ClassVar[int]
    ACCEPTED_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    command_id: str
    accepted: bool
    reason: str
    def __init__(self, command_id: _Optional[str] = ..., accepted: _Optional[bool] = ..., reason: _Optional[str] = ...) -> None: ...

class FleetCommandProgress(_message.Message):
    __slots__ = ("command_id", "percent", "message")
    COMMAND_ID_FIELD_NUMBER: _ClassVar[int]
    PERCENT_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    command_id: str
    percent: int
    message: str
    def __init__(self, command_id: _Optional[str] = ..., percent: _Optional[int] = ..., message: _Optional[str] = ...) -> None: ...

class FleetCommandResult(_message.Message):
    __slots__ = ("command_id", "success", "message", "attestation")
    COMMAND_ID_FIELD_NUMBER: _ClassVar[int]
    SUCCESS_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    ATTESTATION_FIELD_NUMBER: _ClassVar[int]
    command_id: str
    success: bool
    message: str
    attestation: bytes
    def __init__(self, command_id: _Optional[str] = ..., success: _Optional[bool] = ..., message: _Optional[str] = ..., attestation: _Optional[bytes] = ...) -> None: ...

class FleetInstalledManifest(_message.Message):
    __slots__ = ("command_id", "device_serial", "model", "release", "installed_at")
    COMMAND_ID_FIELD_NUMBER: _ClassVar[int]
    DEVICE_SERIAL_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    RELEASE_FIELD_NUMBER: _ClassVar[int]
    INSTALLED_AT_FIELD_NUMBER: _ClassVar[int]
    command_id: str
    device_serial: str
    model: str
    release: str
    installed_at: int
    def __init__(self, command_id: _Optional[str] = ..., device_serial: _Optional[str] = ..., model: _Optional[str] = ..., release: _Optional[str] = ..., installed_at: _Optional[int] = ...) -> None: ...

class FleetAttestation(_message.Message):
    __slots__ = ("manifest", "signature", "device_certificate")
    MANIFEST_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    DEVICE_CERTIFICATE_FIELD_NUMBER: _ClassVar[int]
    manifest: bytes
    signature: bytes
    device_certificate: bytes
    def __init__(self, manifest: _Optional[bytes] = ..., signature: _Optional[bytes] = ..., device_certificate: _Optional[bytes] = ...) -> None: ...

class FleetAgentMessage(_message.Message):
    __slots__ = ("hello", "heartbeat", "inventory", "ack", "progress", "result")
    HELLO_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_FIELD_NUMBER: _ClassVar[int]
    INVENTORY_FIELD_NUMBER: _ClassVar[int]
    ACK_FIELD_NUMBER: _ClassVar[int]
    PROGRESS_FIELD_NUMBER: _ClassVar[int]
    RESULT_FIELD_NUMBER: _ClassVar[int]
    hello: FleetHello
    heartbeat: FleetHeartbeat
    inventory: FleetInventoryDelta
    ack: FleetCommandAck
    progress: FleetCommandProgress
    result: FleetCommandResult
    def __init__(self, hello: _Optional[_Union[FleetHello, _Mapping]] = ..., heartbeat: _Optional[_Union[FleetHeartbeat, _Mapping]] = ..., inventory: _Optional[_Union[FleetInventoryDelta, _Mapping]] = ..., ack: _Optional[_Union[FleetCommandAck, _Mapping]] = ..., progress: _Optional[_Union[FleetCommandProgress, _Mapping]] = ..., result: _Optional[_Union[FleetCommandResult, _Mapping]] = ...) -> None: ...

class FleetWelcome(_message.Message):
    __slots__ = ("station", "heartbeat_seconds", "poll_seconds")
    STATION_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_SECONDS_FIELD_NUMBER: _ClassVar[int]
    POLL_SECONDS_FIELD_NUMBER: _ClassVar[int]
    station: str
    heartbeat_seconds: int
    poll_seconds: int
    def __init__(self, station: _Optional[str] = ..., heartbeat_seconds: _Optional[int] = ..., poll_seconds: _Optional[int] = ...) -> None: ...

class FleetServerMessage(_message.Message):
    __slots__ = ("welcome", "command")
    WELCOME_FIELD_NUMBER: _ClassVar[int]
    COMMAND_FIELD_NUMBER: _ClassVar[int]
    welcome: FleetWelcome
    command: FleetCommand
    def __init__(self, welcome: _Optional[_Union[FleetWelcome, _Mapping]] = ..., command: _Optional[_Union[FleetCommand, _Mapping]] = ...) -> None: ...

class FleetPollRequest(_message.Message):
    __slots__ = ("messages",)
    MESSAGES_FIELD_NUMBER: _ClassVar[int]
    messages: _containers.RepeatedCompositeFieldContainer[FleetAgentMessage]
    def __init__(self, messages: _Optional[_Iterable[_Union[FleetAgentMessage, _Mapping]]] = ...) -> None: ...

class FleetPollResponse(_message.Message):
    __slots__ = ("welcome", "commands")
    WELCOME_FIELD_NUMBER: _ClassVar[int]
    COMMANDS_FIELD_NUMBER: _ClassVar[int]
    welcome: FleetWelcome
    commands: _containers.RepeatedCompositeFieldContainer[FleetCommand]
    def __init__(self, welcome: _Optional[_Union[FleetWelcome, _Mapping]] = ..., commands: _Optional[_Iterable[_Union[FleetCommand, _Mapping]]] = ...) -> None: ...

class FleetInventoryQuery(_message.Message):
    __slots__ = ("chamber", "model", "firmware_version", "token_release", "agent_version", "last_seen_before", "last_seen_after", "search", "page_size", "page_token")
    CHAMBER_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    FIRMWARE_VERSION_FIELD_NUMBER: _ClassVar[int]
    TOKEN_RELEASE_FIELD_NUMBER: _ClassVar[int]
    AGENT_VERSION_FIELD_NUMBER: _ClassVar[int]
    LAST_SEEN_BEFORE_FIELD_NUMBER: _ClassVar[int]
    LAST_SEEN_AFTER_FIELD_NUMBER: _ClassVar[int]
    SEARCH_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    chamber: str
    model: str
    firmware_version: str
    token_release: str
    agent_version: str
    last_seen_before: int
    last_seen_after: int
    search: str
    page_size: int
    page_token: str
    def __init__(self, chamber: _Optional[str] = ..., model: _Optional[str] = ..., firmware_version: _Optional[str] = ..., token_release: _Optional[str] = ..., agent_version: _Optional[str] = ..., last_seen_before: _Optional[int] = ..., last_seen_after: _Optional[int] = ..., search: _Optional[str] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class FleetStationRecord(_message.Message):
    __slots__ = ("station", "chamber", "station_id", "agent_version", "readers", "last_seen", "connected", "device_count")
    STATION_FIELD_NUMBER: _ClassVar[int]
    CHAMBER_FIELD_NUMBER: _ClassVar[int]
    STATION_ID_FIELD_NUMBER: _ClassVar[int]
    AGENT_VERSION_FIELD_NUMBER: _ClassVar[int]
    READERS_FIELD_NUMBER: _ClassVar[int]
    LAST_SEEN_FIELD_NUMBER: _ClassVar[int]
    CONNECTED_FIELD_NUMBER: _ClassVar[int]
    DEVICE_COUNT_FIELD_NUMBER: _ClassVar[int]
    station: str
    chamber: str
    station_id: str
    agent_version: str
    readers: _containers.RepeatedScalarFieldContainer[str]
    last_seen: int
    connected: bool
    device_count: int
    def __init__(self, station: _Optional[str] = ..., chamber: _Optional[str] = ..., station_id: _Optional[str] = ..., agent_version: _Optional[str] = ..., readers: _Optional[_Iterable[str]] = ..., last_seen: _Optional[int] = ..., connected: _Optional[bool] = ..., device_count: _Optional[int] = ...) -> None: ...

class FleetDeviceRecord(_message.Message):
    __slots__ = ("station", "chamber", "device", "last_seen")
    STATION_FIELD_NUMBER: _ClassVar[int]
    CHAMBER_FIELD_NUMBER: _ClassVar[int]
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    LAST_SEEN_FIELD_NUMBER: _ClassVar[int]
    station: str
    chamber: str
    device: FleetDevice
    last_seen: int
    def __init__(self, station: _Optional[str] = ..., chamber: _Optional[str] = ..., device: _Optional[_Union[FleetDevice, _Mapping]] = ..., last_seen: _Optional[int] = ...) -> None: ...

class FleetListStationsResponse(_message.Message):
    __slots__ = ("stations", "next_page_token", "total")
    STATIONS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    TOTAL_FIELD_NUMBER: _ClassVar[int]
    stations: _containers.RepeatedCompositeFieldContainer[FleetStationRecord]
    next_page_token: str
    total: int
    def __init__(self, stations: _Optional[_Iterable[_Union[FleetStationRecord, _Mapping]]] = ..., next_page_token: _Optional[str] = ..., total: _Optional[int] = ...) -> None: ...

class FleetListDevicesResponse(_message.Message):
    __slots__ = ("devices", "next_page_token", "total")
    DEVICES_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    TOTAL_FIELD_NUMBER: _ClassVar[int]
    devices: _containers.RepeatedCompositeFieldContainer[FleetDeviceRecord]
    next_page_token: str
    total: int
    def __init__(self, devices: _Optional[_Iterable[_Union[FleetDeviceRecord, _Mapping]]] = ..., next_page_token: _Optional[str] = ..., total: _Optional[int] = ...) -> None: ...

class FleetExpiringQuery(_message.Message):
    __slots__ = ("query", "within_days")
    QUERY_FIELD_NUMBER: _ClassVar[int]
    WITHIN_DAYS_FIELD_NUMBER: _ClassVar[int]
    query: FleetInventoryQuery
    within_days: int
    def __init__(self, query: _Optional[_Union[FleetInventoryQuery, _Mapping]] = ..., within_days: _Optional[int] = ...) -> None: ...

class FleetExpiringCertificate(_message.Message):
    __slots__ = ("station", "chamber", "serial", "model", "keyset", "not_after")
    STATION_FIELD_NUMBER: _ClassVar[int]
    CHAMBER_FIELD_NUMBER: _ClassVar[int]
    SERIAL_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    KEYSET_FIELD_NUMBER: _ClassVar[int]
    NOT_AFTER_FIELD_NUMBER: _ClassVar[int]
    station: str
    chamber: str
    serial: str
    model: str
    keyset: str
    not_after: int
    def __init__(self, station: _Optional[str] = ..., chamber: _Optional[str] = ..., serial: _Optional[str] = ..., model: _Optional[str] = ..., keyset: _Optional[str] = ..., not_after: _Optional[int] = ...) -> None: ...

class FleetExpiringResponse(_message.Message):
    __slots__ = ("certificates", "next_page_token", "total")
    CERTIFICATES_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    TOTAL_FIELD_NUMBER: _ClassVar[int]
    certificates: _containers.RepeatedCompositeFieldContainer[FleetExpiringCertificate]
    next_page_token: str
    total: int
    def __init__(self, certificates: _Optional[_Iterable[_Union[FleetExpiringCertificate, _Mapping]]] = ..., next_page_token: _Optional[str] = ..., total: _Optional[int] = ...) -> None: ...

class FleetSendCommandRequest(_message.Message):
    __slots__ = ("station", "kind", "device_serial", "release")
    STATION_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    DEVICE_SERIAL_FIELD_NUMBER: _ClassVar[int]
    RELEASE_FIELD_NUMBER: _ClassVar[int]
    station: str
    kind: FleetCommandKind
    device_serial: str
    release: str
    def __init__(self, station: _Optional[str] = ..., kind: _Optional[_Union[FleetCommandKind, str]] = ..., device_serial: _Optional[str] = ..., release: _Optional[str] = ...) -> None: ...

class FleetBroadcastRequest(_message.Message):
    __slots__ = ("query", "kind", "release")
    QUERY_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    RELEASE_FIELD_NUMBER: _ClassVar[int]
    query: FleetInventoryQuery
    kind: FleetCommandKind
    release: str
    def __init__(self, query: _Optional[_Union[FleetInventoryQuery, _Mapping]] = ..., kind: _Optional[_Union[FleetCommandKind, str]] = ..., release: _Optional[str] = ...) -> None: ...

class FleetBroadcastResponse(_message.Message):
    __slots__ = ("commands",)
    COMMANDS_FIELD_NUMBER: _ClassVar[int]
    commands: int
    def __init__(self, commands: _Optional[int] = ...) -> None: ...

class FleetCommandRef(_message.Message):
    __slots__ = ("command_id",)
    COMMAND_ID_FIELD_NUMBER: _ClassVar[int]
    command_id: str
    def __init__(self, command_id: _Optional[str] = ...) -> None: ...

class FleetCommandStatus(_message.Message):
    __slots__ = ("command_id", "station", "command", "state", "percent", "message", "created", "updated")
    COMMAND_ID_FIELD_NUMBER: _ClassVar[int]
    STATION_FIELD_NUMBER: _ClassVar[int]
    COMMAND_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    PERCENT_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    CREATED_FIELD_NUMBER: _ClassVar[int]
    UPDATED_FIELD_NUMBER: _ClassVar[int]
    command_id: str
    station: str
    command: FleetCommand
    state: FleetCommandState
    percent: int
    message: str
    created: int
    updated: int
    def __init__(self, command_id: _Optional[str] = ..., station: _Optional[str] = ..., command: _Optional[_Union[FleetCommand, _Mapping]] = ..., state: _Optional[_Union[FleetCommandState, str]] = ..., percent: _Optional[int] = ..., message: _Optional[str] = ..., created: _Optional[int] = ..., updated: _Optional[int] = ...) -> None: ...

class FleetAbortCriterion(_message.Message):
    __slots__ = ("kind", "threshold_percent", "min_executed")
    KIND_FIELD_NUMBER: _ClassVar[int]
    THRESHOLD_PERCENT_FIELD_NUMBER: _ClassVar[int]
    MIN_EXECUTED_FIELD_NUMBER: _ClassVar[int]
    kind: FleetFailureKind
    threshold_percent: float
    min_executed: int
    def __init__(self, kind: _Optional[_Union[FleetFailureKind, str]] = ..., threshold_percent: _Optional[float] = ..., min_executed: _Optional[int] = ...) -> None: ...

class FleetDailyWindow(_message.Message):
    __slots__ = ("start_minute", "end_minute")
    START_MINUTE_FIELD_NUMBER: _ClassVar[int]
    END_MINUTE_FIELD_NUMBER: _ClassVar[int]
    start_minute: int
    end_minute: int
    def __init__(self, start_minute: _Optional[int] = ..., end_minute: _Optional[int] = ...) -> None: ...

class FleetRolloutSpec(_message.Message):
    __slots__ = ("name", "release", "chamber", "model", "firmware_version", "token_release", "stations", "group_size", "rate_per_minute", "rate_factor", "grow_after_successes", "abort", "timeout_seconds", "windows")
    NAME_FIELD_NUMBER: _ClassVar[int]
    RELEASE_FIELD_NUMBER: _ClassVar[int]
    CHAMBER_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    FIRMWARE_VERSION_FIELD_NUMBER: _ClassVar[int]
    TOKEN_RELEASE_FIELD_NUMBER: _ClassVar[int]
    STATIONS_FIELD_NUMBER: _ClassVar[int]
    GROUP_SIZE_FIELD_NUMBER: _ClassVar[int]
    RATE_PER_MINUTE_FIELD_NUMBER: _ClassVar[int]
    RATE_FACTOR_FIELD_NUMBER: _ClassVar[int]
    GROW_AFTER_SUCCESSES_FIELD_NUMBER: _ClassVar[int]
    ABORT_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_SECONDS_FIELD_NUMBER: _ClassVar[int]
    WINDOWS_FIELD_NUMBER: _ClassVar[int]
    name: str
    release: str
    chamber: str
    model: str
    firmware_version: str
    token_release: str
    stations: _containers.RepeatedScalarFieldContainer[str]
    group_size: int
    rate_per_minute: float
    rate_factor: float
    grow_after_successes: int
    abort: _containers.RepeatedCompositeFieldContainer[FleetAbortCriterion]
    timeout_seconds: int
    windows: _containers.RepeatedCompositeFieldContainer[FleetDailyWindow]
    def __init__(self, name: _Optional[str] = ..., release: _Optional[str] = ..., chamber: _Optional[str] = ..., model: _Optional[str] = ..., firmware_version: _Optional[str] = ..., token_release: _Optional[str] = ..., stations: _Optional[_Iterable[str]] = ..., group_size: _Optional[int] = ..., rate_per_minute: _Optional[float] = ..., rate_factor: _Optional[float] = ..., grow_after_successes: _Optional[int] = ..., abort: _Optional[_Iterable[_Union[FleetAbortCriterion, _Mapping]]] = ..., timeout_seconds: _Optional[int] = ..., windows: _Optional[_Iterable[_Union[FleetDailyWindow, _Mapping]]] = ...) -> None: ...

class FleetRolloutTarget(_message.Message):
    __slots__ = ("station", "device_serial", "group", "state", "command_id", "message")
    STATION_FIELD_NUMBER: _ClassVar[int]
    DEVICE_SERIAL_FIELD_NUMBER: _ClassVar[int]
    GROUP_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    COMMAND_ID_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    station: str
    device_serial: str
    group: int
    state: str
    command_id: str
    message: str
    def __init__(self, station: _Optional[str] = ..., device_serial: _Optional[str] = ..., group: _Optional[int] = ..., state: _Optional[str] = ..., command_id: _Optional[str] = ..., message: _Optional[str] = ...) -> None: ...

class FleetRolloutStatus(_message.Message):
    __slots__ = ("rollout_id", "spec", "state", "reason", "counts", "total", "current_rate_per_minute", "current_group", "targets", "created", "updated")
    class CountsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    ROLLOUT_ID_FIELD_NUMBER: _ClassVar[int]
    SPEC_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    COUNTS_FIELD_NUMBER: _ClassVar[int]
    TOTAL_FIELD_NUMBER: _ClassVar[int]
    CURRENT_RATE_PER_MINUTE_FIELD_NUMBER: _ClassVar[int]
    CURRENT_GROUP_FIELD_NUMBER: _ClassVar[int]
    TARGETS_FIELD_NUMBER: _ClassVar[int]
    CREATED_FIELD_NUMBER: _ClassVar[int]
    UPDATED_FIELD_NUMBER: _ClassVar[int]
    rollout_id: str
    spec: FleetRolloutSpec
    state: FleetRolloutState
    reason: str
    counts: _containers.ScalarMap[str, int]
    total: int
    current_rate_per_minute: float
    current_group: int
    targets: _containers.RepeatedCompositeFieldContainer[FleetRolloutTarget]
    created: int
    updated: int
    def __init__(self, rollout_id: _Optional[str] = ..., spec: _Optional[_Union[FleetRolloutSpec, _Mapping]] = ..., state: _Optional[_Union[FleetRolloutState, str]] = ..., reason: _Optional[str] = ..., counts: _Optional[_Mapping[str, int]] = ..., total: _Optional[int] = ..., current_rate_per_minute: _Optional[float] = ..., current_group: _Optional[int] = ..., targets: _Optional[_Iterable[_Union[FleetRolloutTarget, _Mapping]]] = ..., created: _Optional[int] = ..., updated: _Optional[int] = ...) -> None: ...

class FleetRolloutRef(_message.Message):
    __slots__ = ("rollout_id",)
    ROLLOUT_ID_FIELD_NUMBER: _ClassVar[int]
    rollout_id: str
    def __init__(self, rollout_id: _Optional[str] = ...) -> None: ...

class FleetListRolloutsRequest(_message.Message):
    __slots__ = ("active_only",)
    ACTIVE_ONLY_FIELD_NUMBER: _ClassVar[int]
    active_only: bool
    def __init__(self, active_only: _Optional[bool] = ...) -> None: ...

class FleetListRolloutsResponse(_message.Message):
    __slots__ = ("rollouts",)
    ROLLOUTS_FIELD_NUMBER: _ClassVar[int]
    rollouts: _containers.RepeatedCompositeFieldContainer[FleetRolloutStatus]
    def __init__(self, rollouts: _Optional[_Iterable[_Union[FleetRolloutStatus, _Mapping]]] = ...) -> None: ...
