from proto.cns.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class CancelRegistrationRequest(_message.Message):
    __slots__ = ("registration_id", "reason")
    REGISTRATION_ID_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    registration_id: str
    reason: str
    def __init__(self, registration_id: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class RegisterHolderRequest(_message.Message):
    __slots__ = ("holder", "form", "expires_days", "sex", "birth_town")
    HOLDER_FIELD_NUMBER: _ClassVar[int]
    FORM_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_DAYS_FIELD_NUMBER: _ClassVar[int]
    SEX_FIELD_NUMBER: _ClassVar[int]
    BIRTH_TOWN_FIELD_NUMBER: _ClassVar[int]
    holder: _common_pb2.Holder
    form: bytes
    expires_days: int
    sex: str
    birth_town: str
    def __init__(self, holder: _Optional[_Union[_common_pb2.Holder, _Mapping]] = ..., form: _Optional[bytes] = ..., expires_days: _Optional[int] = ..., sex: _Optional[str] = ..., birth_town: _Optional[str] = ...) -> None: ...

class GetRegistrationRequest(_message.Message):
    __slots__ = ("registration_id",)
    REGISTRATION_ID_FIELD_NUMBER: _ClassVar[int]
    registration_id: str
    def __init__(self, registration_id: _Optional[str] = ...) -> None: ...

class ListRegistrationsRequest(_message.Message):
    __slots__ = ("chamber_code", "include_closed", "limit")
    CHAMBER_CODE_FIELD_NUMBER: _ClassVar[int]
    INCLUDE_CLOSED_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    chamber_code: str
    include_closed: bool
    limit: int
    def __init__(self, chamber_code: _Optional[str] = ..., include_closed: _Optional[bool] = ..., limit: _Optional[int] = ...) -> None: ...

class Registration(_message.Message):
    __slots__ = ("registration_id", "chamber_code", "holder", "form_sha256", "form_type", "form_size", "created_by", "created_at", "expires_at", "used_by", "used_operator_id", "used_at", "request_id", "state", "sex", "birth_town", "card_id", "cancelled_by", "cancelled_at")
    REGISTRATION_ID_FIELD_NUMBER: _ClassVar[int]
    CHAMBER_CODE_FIELD_NUMBER: _ClassVar[int]
    HOLDER_FIELD_NUMBER: _ClassVar[int]
    FORM_SHA256_FIELD_NUMBER: _ClassVar[int]
    FORM_TYPE_FIELD_NUMBER: _ClassVar[int]
    FORM_SIZE_FIELD_NUMBER: _ClassVar[int]
    CREATED_BY_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_AT_FIELD_NUMBER: _ClassVar[int]
    USED_BY_FIELD_NUMBER: _ClassVar[int]
    USED_OPERATOR_ID_FIELD_NUMBER: _ClassVar[int]
    USED_AT_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    SEX_FIELD_NUMBER: _ClassVar[int]
    BIRTH_TOWN_FIELD_NUMBER: _ClassVar[int]
    CARD_ID_FIELD_NUMBER: _ClassVar[int]
    CANCELLED_BY_FIELD_NUMBER: _ClassVar[int]
    CANCELLED_AT_FIELD_NUMBER: _ClassVar[int]
    registration_id: str
    chamber_code: str
    holder: _common_pb2.Holder
    form_sha256: str
    form_type: str
    form_size: int
    created_by: str
    created_at: int
    expires_at: int
    used_by: str
    used_operator_id: str
    used_at: int
    request_id: str
    state: str
    sex: str
    birth_town: str
    card_id: str
    cancelled_by: str
    cancelled_at: int
    def __init__(self, registration_id: _Optional[str] = ..., chamber_code: _Optional[str] = ..., holder: _Optional[_Union[_common_pb2.Holder, _Mapping]] = ..., form_sha256: _Optional[str] = ..., form_type: _Optional[str] = ..., form_size: _Optional[int] = ..., created_by: _Optional[str] = ..., created_at: _Optional[int] = ..., expires_at: _Optional[int] = ..., used_by: _Optional[str] = ..., used_operator_id: _Optional[str] = ..., used_at: _Optional[int] = ..., request_id: _Optional[str] = ..., state: _Optional[str] = ..., sex: _Optional[str] = ..., birth_town: _Optional[str] = ..., card_id: _Optional[str] = ..., cancelled_by: _Optional[str] = ..., cancelled_at: _Optional[int] = ...) -> None: ...

class ListRegistrationsResponse(_message.Message):
    __slots__ = ("registrations",)
    REGISTRATIONS_FIELD_NUMBER: _ClassVar[int]
    registrations: _containers.RepeatedCompositeFieldContainer[Registration]
    def __init__(self, registrations: _Optional[_Iterable[_Union[Registration, _Mapping]]] = ...) -> None: ...
