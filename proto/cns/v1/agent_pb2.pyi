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
    DEVICE_EVENT_KIND_TOKEN_ARRIVED: _ClassVar[DeviceEventKind]
    DEVICE_EVENT_KIND_TOKEN_LEFT: _ClassVar[DeviceEventKind]
    DEVICE_EVENT_KIND_TOKEN_CHANGED: _ClassVar[DeviceEventKind]
    DEVICE_EVENT_KIND_APPROVAL_PENDING: _ClassVar[DeviceEventKind]
    DEVICE_EVENT_KIND_APPROVAL_ANSWERED: _ClassVar[DeviceEventKind]
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
DEVICE_EVENT_KIND_TOKEN_ARRIVED: DeviceEventKind
DEVICE_EVENT_KIND_TOKEN_LEFT: DeviceEventKind
DEVICE_EVENT_KIND_TOKEN_CHANGED: DeviceEventKind
DEVICE_EVENT_KIND_APPROVAL_PENDING: DeviceEventKind
DEVICE_EVENT_KIND_APPROVAL_ANSWERED: DeviceEventKind

class RenewCardRequest(_message.Message):
    __slots__ = ("reader", "pin")
    READER_FIELD_NUMBER: _ClassVar[int]
    PIN_FIELD_NUMBER: _ClassVar[int]
    reader: str
    pin: str
    def __init__(self, reader: _Optional[str] = ..., pin: _Optional[str] = ...) -> None: ...

class CardCertificatesRequest(_message.Message):
    __slots__ = ("reader", "certificate_serials", "card_serial", "codice_fiscale")
    READER_FIELD_NUMBER: _ClassVar[int]
    CERTIFICATE_SERIALS_FIELD_NUMBER: _ClassVar[int]
    CARD_SERIAL_FIELD_NUMBER: _ClassVar[int]
    CODICE_FISCALE_FIELD_NUMBER: _ClassVar[int]
    reader: str
    certificate_serials: _containers.RepeatedScalarFieldContainer[str]
    card_serial: str
    codice_fiscale: str
    def __init__(self, reader: _Optional[str] = ..., certificate_serials: _Optional[_Iterable[str]] = ..., card_serial: _Optional[str] = ..., codice_fiscale: _Optional[str] = ...) -> None: ...

class CardCertificate(_message.Message):
    __slots__ = ("keyset", "serial_hex", "subject", "issuer", "not_before_unix", "not_after_unix", "status", "revocation_reason", "status_changed_unix")
    KEYSET_FIELD_NUMBER: _ClassVar[int]
    SERIAL_HEX_FIELD_NUMBER: _ClassVar[int]
    SUBJECT_FIELD_NUMBER: _ClassVar[int]
    ISSUER_FIELD_NUMBER: _ClassVar[int]
    NOT_BEFORE_UNIX_FIELD_NUMBER: _ClassVar[int]
    NOT_AFTER_UNIX_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    REVOCATION_REASON_FIELD_NUMBER: _ClassVar[int]
    STATUS_CHANGED_UNIX_FIELD_NUMBER: _ClassVar[int]
    keyset: str
    serial_hex: str
    subject: str
    issuer: str
    not_before_unix: int
    not_after_unix: int
    status: str
    revocation_reason: str
    status_changed_unix: int
    def __init__(self, keyset: _Optional[str] = ..., serial_hex: _Optional[str] = ..., subject: _Optional[str] = ..., issuer: _Optional[str] = ..., not_before_unix: _Optional[int] = ..., not_after_unix: _Optional[int] = ..., status: _Optional[str] = ..., revocation_reason: _Optional[str] = ..., status_changed_unix: _Optional[int] = ...) -> None: ...

class CardCertificatesResponse(_message.Message):
    __slots__ = ("card_serial", "certificates", "message")
    CARD_SERIAL_FIELD_NUMBER: _ClassVar[int]
    CERTIFICATES_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    card_serial: str
    certificates: _containers.RepeatedCompositeFieldContainer[CardCertificate]
    message: str
    def __init__(self, card_serial: _Optional[str] = ..., certificates: _Optional[_Iterable[_Union[CardCertificate, _Mapping]]] = ..., message: _Optional[str] = ...) -> None: ...

class ChangeCertificateStatusRequest(_message.Message):
    __slots__ = ("action", "reason", "reader", "certificate_serials", "card_serial", "codice_fiscale")
    ACTION_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    READER_FIELD_NUMBER: _ClassVar[int]
    CERTIFICATE_SERIALS_FIELD_NUMBER: _ClassVar[int]
    CARD_SERIAL_FIELD_NUMBER: _ClassVar[int]
    CODICE_FISCALE_FIELD_NUMBER: _ClassVar[int]
    action: str
    reason: str
    reader: str
    certificate_serials: _containers.RepeatedScalarFieldContainer[str]
    card_serial: str
    codice_fiscale: str
    def __init__(self, action: _Optional[str] = ..., reason: _Optional[str] = ..., reader: _Optional[str] = ..., certificate_serials: _Optional[_Iterable[str]] = ..., card_serial: _Optional[str] = ..., codice_fiscale: _Optional[str] = ...) -> None: ...

class PinStatusRequest(_message.Message):
    __slots__ = ("reader",)
    READER_FIELD_NUMBER: _ClassVar[int]
    reader: str
    def __init__(self, reader: _Optional[str] = ...) -> None: ...

class PinStatus(_message.Message):
    __slots__ = ("card_serial", "pin_tries_left", "pin_tries_max", "puk_tries_left", "puk_tries_max", "pin_blocked", "puk_blocked", "message")
    CARD_SERIAL_FIELD_NUMBER: _ClassVar[int]
    PIN_TRIES_LEFT_FIELD_NUMBER: _ClassVar[int]
    PIN_TRIES_MAX_FIELD_NUMBER: _ClassVar[int]
    PUK_TRIES_LEFT_FIELD_NUMBER: _ClassVar[int]
    PUK_TRIES_MAX_FIELD_NUMBER: _ClassVar[int]
    PIN_BLOCKED_FIELD_NUMBER: _ClassVar[int]
    PUK_BLOCKED_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    card_serial: str
    pin_tries_left: int
    pin_tries_max: int
    puk_tries_left: int
    puk_tries_max: int
    pin_blocked: bool
    puk_blocked: bool
    message: str
    def __init__(self, card_serial: _Optional[str] = ..., pin_tries_left: _Optional[int] = ..., pin_tries_max: _Optional[int] = ..., puk_tries_left: _Optional[int] = ..., puk_tries_max: _Optional[int] = ..., pin_blocked: _Optional[bool] = ..., puk_blocked: _Optional[bool] = ..., message: _Optional[str] = ...) -> None: ...

class ChangePinRequest(_message.Message):
    __slots__ = ("reader", "old_pin", "new_pin")
    READER_FIELD_NUMBER: _ClassVar[int]
    OLD_PIN_FIELD_NUMBER: _ClassVar[int]
    NEW_PIN_FIELD_NUMBER: _ClassVar[int]
    reader: str
    old_pin: str
    new_pin: str
    def __init__(self, reader: _Optional[str] = ..., old_pin: _Optional[str] = ..., new_pin: _Optional[str] = ...) -> None: ...

class UnblockPinRequest(_message.Message):
    __slots__ = ("reader", "puk", "new_pin")
    READER_FIELD_NUMBER: _ClassVar[int]
    PUK_FIELD_NUMBER: _ClassVar[int]
    NEW_PIN_FIELD_NUMBER: _ClassVar[int]
    reader: str
    puk: str
    new_pin: str
    def __init__(self, reader: _Optional[str] = ..., puk: _Optional[str] = ..., new_pin: _Optional[str] = ...) -> None: ...

class HolderData(_message.Message):
    __slots__ = ("codice_fiscale", "given_name", "surname", "birth_date", "sex", "birth_town", "issuer")
    CODICE_FISCALE_FIELD_NUMBER: _ClassVar[int]
    GIVEN_NAME_FIELD_NUMBER: _ClassVar[int]
    SURNAME_FIELD_NUMBER: _ClassVar[int]
    BIRTH_DATE_FIELD_NUMBER: _ClassVar[int]
    SEX_FIELD_NUMBER: _ClassVar[int]
    BIRTH_TOWN_FIELD_NUMBER: _ClassVar[int]
    ISSUER_FIELD_NUMBER: _ClassVar[int]
    codice_fiscale: str
    given_name: str
    surname: str
    birth_date: str
    sex: str
    birth_town: str
    issuer: str
    def __init__(self, codice_fiscale: _Optional[str] = ..., given_name: _Optional[str] = ..., surname: _Optional[str] = ..., birth_date: _Optional[str] = ..., sex: _Optional[str] = ..., birth_town: _Optional[str] = ..., issuer: _Optional[str] = ...) -> None: ...

class PersonalizeRequest(_message.Message):
    __slots__ = ("reader", "holder", "pin", "puk", "registration_id")
    READER_FIELD_NUMBER: _ClassVar[int]
    HOLDER_FIELD_NUMBER: _ClassVar[int]
    PIN_FIELD_NUMBER: _ClassVar[int]
    PUK_FIELD_NUMBER: _ClassVar[int]
    REGISTRATION_ID_FIELD_NUMBER: _ClassVar[int]
    reader: str
    holder: HolderData
    pin: str
    puk: str
    registration_id: str
    def __init__(self, reader: _Optional[str] = ..., holder: _Optional[_Union[HolderData, _Mapping]] = ..., pin: _Optional[str] = ..., puk: _Optional[str] = ..., registration_id: _Optional[str] = ...) -> None: ...

class OperationResult(_message.Message):
    __slots__ = ("op_id", "card_serial", "state", "holder_label", "certificate_subjects", "test_signatures", "message", "stage_seconds", "pkcs11")
    class CertificateSubjectsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    class StageSecondsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    OP_ID_FIELD_NUMBER: _ClassVar[int]
    CARD_SERIAL_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    HOLDER_LABEL_FIELD_NUMBER: _ClassVar[int]
    CERTIFICATE_SUBJECTS_FIELD_NUMBER: _ClassVar[int]
    TEST_SIGNATURES_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    STAGE_SECONDS_FIELD_NUMBER: _ClassVar[int]
    PKCS11_FIELD_NUMBER: _ClassVar[int]
    op_id: str
    card_serial: str
    state: str
    holder_label: str
    certificate_subjects: _containers.ScalarMap[str, str]
    test_signatures: bool
    message: str
    stage_seconds: _containers.ScalarMap[str, float]
    pkcs11: str
    def __init__(self, op_id: _Optional[str] = ..., card_serial: _Optional[str] = ..., state: _Optional[str] = ..., holder_label: _Optional[str] = ..., certificate_subjects: _Optional[_Mapping[str, str]] = ..., test_signatures: _Optional[bool] = ..., message: _Optional[str] = ..., stage_seconds: _Optional[_Mapping[str, float]] = ..., pkcs11: _Optional[str] = ...) -> None: ...

class OperationProgress(_message.Message):
    __slots__ = ("step", "message", "result")
    STEP_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    RESULT_FIELD_NUMBER: _ClassVar[int]
    step: str
    message: str
    result: OperationResult
    def __init__(self, step: _Optional[str] = ..., message: _Optional[str] = ..., result: _Optional[_Union[OperationResult, _Mapping]] = ...) -> None: ...

class ListOperationsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class OpenOperation(_message.Message):
    __slots__ = ("op_id", "kind", "card_serial", "reader", "step", "step_phase", "holder_label", "created_unix", "updated_unix", "journal", "note")
    OP_ID_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    CARD_SERIAL_FIELD_NUMBER: _ClassVar[int]
    READER_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    STEP_PHASE_FIELD_NUMBER: _ClassVar[int]
    HOLDER_LABEL_FIELD_NUMBER: _ClassVar[int]
    CREATED_UNIX_FIELD_NUMBER: _ClassVar[int]
    UPDATED_UNIX_FIELD_NUMBER: _ClassVar[int]
    JOURNAL_FIELD_NUMBER: _ClassVar[int]
    NOTE_FIELD_NUMBER: _ClassVar[int]
    op_id: str
    kind: str
    card_serial: str
    reader: str
    step: str
    step_phase: str
    holder_label: str
    created_unix: int
    updated_unix: int
    journal: str
    note: str
    def __init__(self, op_id: _Optional[str] = ..., kind: _Optional[str] = ..., card_serial: _Optional[str] = ..., reader: _Optional[str] = ..., step: _Optional[str] = ..., step_phase: _Optional[str] = ..., holder_label: _Optional[str] = ..., created_unix: _Optional[int] = ..., updated_unix: _Optional[int] = ..., journal: _Optional[str] = ..., note: _Optional[str] = ...) -> None: ...

class StopOperationRequest(_message.Message):
    __slots__ = ("reader", "op_id")
    READER_FIELD_NUMBER: _ClassVar[int]
    OP_ID_FIELD_NUMBER: _ClassVar[int]
    reader: str
    op_id: str
    def __init__(self, reader: _Optional[str] = ..., op_id: _Optional[str] = ...) -> None: ...

class StopOperationResponse(_message.Message):
    __slots__ = ("stopping", "message")
    STOPPING_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    stopping: bool
    message: str
    def __init__(self, stopping: _Optional[bool] = ..., message: _Optional[str] = ...) -> None: ...

class ResolveOperationRequest(_message.Message):
    __slots__ = ("op_id", "action", "pin", "new_pin", "puk")
    OP_ID_FIELD_NUMBER: _ClassVar[int]
    ACTION_FIELD_NUMBER: _ClassVar[int]
    PIN_FIELD_NUMBER: _ClassVar[int]
    NEW_PIN_FIELD_NUMBER: _ClassVar[int]
    PUK_FIELD_NUMBER: _ClassVar[int]
    op_id: str
    action: str
    pin: str
    new_pin: str
    puk: str
    def __init__(self, op_id: _Optional[str] = ..., action: _Optional[str] = ..., pin: _Optional[str] = ..., new_pin: _Optional[str] = ..., puk: _Optional[str] = ...) -> None: ...

class ListOperationsResponse(_message.Message):
    __slots__ = ("operations",)
    OPERATIONS_FIELD_NUMBER: _ClassVar[int]
    operations: _containers.RepeatedCompositeFieldContainer[OpenOperation]
    def __init__(self, operations: _Optional[_Iterable[_Union[OpenOperation, _Mapping]]] = ...) -> None: ...

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
    __slots__ = ("readers", "sequence", "tokens")
    READERS_FIELD_NUMBER: _ClassVar[int]
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    TOKENS_FIELD_NUMBER: _ClassVar[int]
    readers: _containers.RepeatedCompositeFieldContainer[DeviceReader]
    sequence: int
    tokens: _containers.RepeatedCompositeFieldContainer[DeviceToken]
    def __init__(self, readers: _Optional[_Iterable[_Union[DeviceReader, _Mapping]]] = ..., sequence: _Optional[int] = ..., tokens: _Optional[_Iterable[_Union[DeviceToken, _Mapping]]] = ...) -> None: ...

class TokenPartition(_message.Message):
    __slots__ = ("version", "length", "sha256", "region")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    LENGTH_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    REGION_FIELD_NUMBER: _ClassVar[int]
    version: str
    length: int
    sha256: str
    region: str
    def __init__(self, version: _Optional[str] = ..., length: _Optional[int] = ..., sha256: _Optional[str] = ..., region: _Optional[str] = ...) -> None: ...

class DeviceToken(_message.Message):
    __slots__ = ("serial", "usb_id", "mode", "model_id", "model_name", "firmware", "bootloader", "partitions", "release", "chip_serial", "error", "reader", "chip_holder")
    class PartitionsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: TokenPartition
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[TokenPartition, _Mapping]] = ...) -> None: ...
    SERIAL_FIELD_NUMBER: _ClassVar[int]
    USB_ID_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    FIRMWARE_FIELD_NUMBER: _ClassVar[int]
    BOOTLOADER_FIELD_NUMBER: _ClassVar[int]
    PARTITIONS_FIELD_NUMBER: _ClassVar[int]
    RELEASE_FIELD_NUMBER: _ClassVar[int]
    CHIP_SERIAL_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    READER_FIELD_NUMBER: _ClassVar[int]
    CHIP_HOLDER_FIELD_NUMBER: _ClassVar[int]
    serial: str
    usb_id: str
    mode: str
    model_id: str
    model_name: str
    firmware: str
    bootloader: str
    partitions: _containers.MessageMap[str, TokenPartition]
    release: str
    chip_serial: str
    error: str
    reader: str
    chip_holder: str
    def __init__(self, serial: _Optional[str] = ..., usb_id: _Optional[str] = ..., mode: _Optional[str] = ..., model_id: _Optional[str] = ..., model_name: _Optional[str] = ..., firmware: _Optional[str] = ..., bootloader: _Optional[str] = ..., partitions: _Optional[_Mapping[str, TokenPartition]] = ..., release: _Optional[str] = ..., chip_serial: _Optional[str] = ..., error: _Optional[str] = ..., reader: _Optional[str] = ..., chip_holder: _Optional[str] = ...) -> None: ...

class WatchDevicesRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class DeviceEvent(_message.Message):
    __slots__ = ("sequence", "kind", "reader_name", "reader", "interrupted", "time_unix_ms", "snapshot", "token", "tokens", "approval")
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    READER_NAME_FIELD_NUMBER: _ClassVar[int]
    READER_FIELD_NUMBER: _ClassVar[int]
    INTERRUPTED_FIELD_NUMBER: _ClassVar[int]
    TIME_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    SNAPSHOT_FIELD_NUMBER: _ClassVar[int]
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    TOKENS_FIELD_NUMBER: _ClassVar[int]
    APPROVAL_FIELD_NUMBER: _ClassVar[int]
    sequence: int
    kind: DeviceEventKind
    reader_name: str
    reader: DeviceReader
    interrupted: bool
    time_unix_ms: int
    snapshot: _containers.RepeatedCompositeFieldContainer[DeviceReader]
    token: DeviceToken
    tokens: _containers.RepeatedCompositeFieldContainer[DeviceToken]
    approval: PendingApproval
    def __init__(self, sequence: _Optional[int] = ..., kind: _Optional[_Union[DeviceEventKind, str]] = ..., reader_name: _Optional[str] = ..., reader: _Optional[_Union[DeviceReader, _Mapping]] = ..., interrupted: _Optional[bool] = ..., time_unix_ms: _Optional[int] = ..., snapshot: _Optional[_Iterable[_Union[DeviceReader, _Mapping]]] = ..., token: _Optional[_Union[DeviceToken, _Mapping]] = ..., tokens: _Optional[_Iterable[_Union[DeviceToken, _Mapping]]] = ..., approval: _Optional[_Union[PendingApproval, _Mapping]] = ...) -> None: ...

class ConformanceRequest(_message.Message):
    __slots__ = ("reader", "pin", "puk", "samples")
    READER_FIELD_NUMBER: _ClassVar[int]
    PIN_FIELD_NUMBER: _ClassVar[int]
    PUK_FIELD_NUMBER: _ClassVar[int]
    SAMPLES_FIELD_NUMBER: _ClassVar[int]
    reader: str
    pin: str
    puk: str
    samples: int
    def __init__(self, reader: _Optional[str] = ..., pin: _Optional[str] = ..., puk: _Optional[str] = ..., samples: _Optional[int] = ...) -> None: ...

class ConformanceCheck(_message.Message):
    __slots__ = ("id", "clause", "requirement", "status", "detail", "figures")
    class FiguresEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    ID_FIELD_NUMBER: _ClassVar[int]
    CLAUSE_FIELD_NUMBER: _ClassVar[int]
    REQUIREMENT_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    DETAIL_FIELD_NUMBER: _ClassVar[int]
    FIGURES_FIELD_NUMBER: _ClassVar[int]
    id: str
    clause: str
    requirement: str
    status: str
    detail: str
    figures: _containers.ScalarMap[str, float]
    def __init__(self, id: _Optional[str] = ..., clause: _Optional[str] = ..., requirement: _Optional[str] = ..., status: _Optional[str] = ..., detail: _Optional[str] = ..., figures: _Optional[_Mapping[str, float]] = ...) -> None: ...

class ConformanceReport(_message.Message):
    __slots__ = ("reader", "card_serial", "model_id", "mode", "conforming", "checks", "seconds", "left_on_card")
    READER_FIELD_NUMBER: _ClassVar[int]
    CARD_SERIAL_FIELD_NUMBER: _ClassVar[int]
    MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    CONFORMING_FIELD_NUMBER: _ClassVar[int]
    CHECKS_FIELD_NUMBER: _ClassVar[int]
    SECONDS_FIELD_NUMBER: _ClassVar[int]
    LEFT_ON_CARD_FIELD_NUMBER: _ClassVar[int]
    reader: str
    card_serial: str
    model_id: str
    mode: str
    conforming: bool
    checks: _containers.RepeatedCompositeFieldContainer[ConformanceCheck]
    seconds: float
    left_on_card: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, reader: _Optional[str] = ..., card_serial: _Optional[str] = ..., model_id: _Optional[str] = ..., mode: _Optional[str] = ..., conforming: _Optional[bool] = ..., checks: _Optional[_Iterable[_Union[ConformanceCheck, _Mapping]]] = ..., seconds: _Optional[float] = ..., left_on_card: _Optional[_Iterable[str]] = ...) -> None: ...

class ConformanceProgress(_message.Message):
    __slots__ = ("step", "message", "report")
    STEP_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    REPORT_FIELD_NUMBER: _ClassVar[int]
    step: str
    message: str
    report: ConformanceReport
    def __init__(self, step: _Optional[str] = ..., message: _Optional[str] = ..., report: _Optional[_Union[ConformanceReport, _Mapping]] = ...) -> None: ...

class UpdateTokenRequest(_message.Message):
    __slots__ = ("serial", "target", "image_path")
    SERIAL_FIELD_NUMBER: _ClassVar[int]
    TARGET_FIELD_NUMBER: _ClassVar[int]
    IMAGE_PATH_FIELD_NUMBER: _ClassVar[int]
    serial: str
    target: str
    image_path: str
    def __init__(self, serial: _Optional[str] = ..., target: _Optional[str] = ..., image_path: _Optional[str] = ...) -> None: ...

class TokenResult(_message.Message):
    __slots__ = ("serial", "state", "target", "version", "message", "sent_bytes")
    SERIAL_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    TARGET_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    SENT_BYTES_FIELD_NUMBER: _ClassVar[int]
    serial: str
    state: str
    target: str
    version: str
    message: str
    sent_bytes: int
    def __init__(self, serial: _Optional[str] = ..., state: _Optional[str] = ..., target: _Optional[str] = ..., version: _Optional[str] = ..., message: _Optional[str] = ..., sent_bytes: _Optional[int] = ...) -> None: ...

class TokenProgress(_message.Message):
    __slots__ = ("step", "done", "total", "result")
    STEP_FIELD_NUMBER: _ClassVar[int]
    DONE_FIELD_NUMBER: _ClassVar[int]
    TOTAL_FIELD_NUMBER: _ClassVar[int]
    RESULT_FIELD_NUMBER: _ClassVar[int]
    step: str
    done: int
    total: int
    result: TokenResult
    def __init__(self, step: _Optional[str] = ..., done: _Optional[int] = ..., total: _Optional[int] = ..., result: _Optional[_Union[TokenResult, _Mapping]] = ...) -> None: ...

class PendingApproval(_message.Message):
    __slots__ = ("token_serial", "model_id", "release", "current_release", "size_bytes", "offered_unix_ms", "state", "postponed_until_unix_ms")
    TOKEN_SERIAL_FIELD_NUMBER: _ClassVar[int]
    MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    RELEASE_FIELD_NUMBER: _ClassVar[int]
    CURRENT_RELEASE_FIELD_NUMBER: _ClassVar[int]
    SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    OFFERED_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    POSTPONED_UNTIL_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    token_serial: str
    model_id: str
    release: str
    current_release: str
    size_bytes: int
    offered_unix_ms: int
    state: str
    postponed_until_unix_ms: int
    def __init__(self, token_serial: _Optional[str] = ..., model_id: _Optional[str] = ..., release: _Optional[str] = ..., current_release: _Optional[str] = ..., size_bytes: _Optional[int] = ..., offered_unix_ms: _Optional[int] = ..., state: _Optional[str] = ..., postponed_until_unix_ms: _Optional[int] = ...) -> None: ...

class ListApprovalsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListApprovalsResponse(_message.Message):
    __slots__ = ("approvals",)
    APPROVALS_FIELD_NUMBER: _ClassVar[int]
    approvals: _containers.RepeatedCompositeFieldContainer[PendingApproval]
    def __init__(self, approvals: _Optional[_Iterable[_Union[PendingApproval, _Mapping]]] = ...) -> None: ...

class AnswerApprovalRequest(_message.Message):
    __slots__ = ("token_serial", "release", "approve")
    TOKEN_SERIAL_FIELD_NUMBER: _ClassVar[int]
    RELEASE_FIELD_NUMBER: _ClassVar[int]
    APPROVE_FIELD_NUMBER: _ClassVar[int]
    token_serial: str
    release: str
    approve: bool
    def __init__(self, token_serial: _Optional[str] = ..., release: _Optional[str] = ..., approve: _Optional[bool] = ...) -> None: ...
