from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class EnrollRequest(_message.Message):
    __slots__ = ("code", "csr_der", "expect_station_id", "expect_chamber_code")
    CODE_FIELD_NUMBER: _ClassVar[int]
    CSR_DER_FIELD_NUMBER: _ClassVar[int]
    EXPECT_STATION_ID_FIELD_NUMBER: _ClassVar[int]
    EXPECT_CHAMBER_CODE_FIELD_NUMBER: _ClassVar[int]
    code: str
    csr_der: bytes
    expect_station_id: str
    expect_chamber_code: str
    def __init__(self, code: _Optional[str] = ..., csr_der: _Optional[bytes] = ..., expect_station_id: _Optional[str] = ..., expect_chamber_code: _Optional[str] = ...) -> None: ...

class StationCertificate(_message.Message):
    __slots__ = ("station_id", "chamber_code", "certificate_pem", "tls_ca_pem", "not_after", "serial_hex")
    STATION_ID_FIELD_NUMBER: _ClassVar[int]
    CHAMBER_CODE_FIELD_NUMBER: _ClassVar[int]
    CERTIFICATE_PEM_FIELD_NUMBER: _ClassVar[int]
    TLS_CA_PEM_FIELD_NUMBER: _ClassVar[int]
    NOT_AFTER_FIELD_NUMBER: _ClassVar[int]
    SERIAL_HEX_FIELD_NUMBER: _ClassVar[int]
    station_id: str
    chamber_code: str
    certificate_pem: str
    tls_ca_pem: str
    not_after: int
    serial_hex: str
    def __init__(self, station_id: _Optional[str] = ..., chamber_code: _Optional[str] = ..., certificate_pem: _Optional[str] = ..., tls_ca_pem: _Optional[str] = ..., not_after: _Optional[int] = ..., serial_hex: _Optional[str] = ...) -> None: ...

class AddStationRequest(_message.Message):
    __slots__ = ("station_id", "chamber_code", "valid_hours")
    STATION_ID_FIELD_NUMBER: _ClassVar[int]
    CHAMBER_CODE_FIELD_NUMBER: _ClassVar[int]
    VALID_HOURS_FIELD_NUMBER: _ClassVar[int]
    station_id: str
    chamber_code: str
    valid_hours: int
    def __init__(self, station_id: _Optional[str] = ..., chamber_code: _Optional[str] = ..., valid_hours: _Optional[int] = ...) -> None: ...

class AddStationResponse(_message.Message):
    __slots__ = ("code_bundle", "expires_at")
    CODE_BUNDLE_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_AT_FIELD_NUMBER: _ClassVar[int]
    code_bundle: str
    expires_at: int
    def __init__(self, code_bundle: _Optional[str] = ..., expires_at: _Optional[int] = ...) -> None: ...

class RevokeStationRequest(_message.Message):
    __slots__ = ("station_id", "chamber_code", "reason")
    STATION_ID_FIELD_NUMBER: _ClassVar[int]
    CHAMBER_CODE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    station_id: str
    chamber_code: str
    reason: str
    def __init__(self, station_id: _Optional[str] = ..., chamber_code: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class StationRecord(_message.Message):
    __slots__ = ("station_id", "chamber_code", "state", "updated_at", "serial_hex", "not_after", "revoked_certificates")
    STATION_ID_FIELD_NUMBER: _ClassVar[int]
    CHAMBER_CODE_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    UPDATED_AT_FIELD_NUMBER: _ClassVar[int]
    SERIAL_HEX_FIELD_NUMBER: _ClassVar[int]
    NOT_AFTER_FIELD_NUMBER: _ClassVar[int]
    REVOKED_CERTIFICATES_FIELD_NUMBER: _ClassVar[int]
    station_id: str
    chamber_code: str
    state: str
    updated_at: int
    serial_hex: str
    not_after: int
    revoked_certificates: int
    def __init__(self, station_id: _Optional[str] = ..., chamber_code: _Optional[str] = ..., state: _Optional[str] = ..., updated_at: _Optional[int] = ..., serial_hex: _Optional[str] = ..., not_after: _Optional[int] = ..., revoked_certificates: _Optional[int] = ...) -> None: ...

class ListStationsRequest(_message.Message):
    __slots__ = ("chamber_code",)
    CHAMBER_CODE_FIELD_NUMBER: _ClassVar[int]
    chamber_code: str
    def __init__(self, chamber_code: _Optional[str] = ...) -> None: ...

class ListStationsResponse(_message.Message):
    __slots__ = ("stations",)
    STATIONS_FIELD_NUMBER: _ClassVar[int]
    stations: _containers.RepeatedCompositeFieldContainer[StationRecord]
    def __init__(self, stations: _Optional[_Iterable[_Union[StationRecord, _Mapping]]] = ...) -> None: ...

class RenewStationRequest(_message.Message):
    __slots__ = ("csr_der",)
    CSR_DER_FIELD_NUMBER: _ClassVar[int]
    csr_der: bytes
    def __init__(self, csr_der: _Optional[bytes] = ...) -> None: ...
