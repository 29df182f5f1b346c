from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from typing import ClassVar as _ClassVar, Optional as _Optional

DESCRIPTOR: _descriptor.FileDescriptor

class Holder(_message.Message):
    __slots__ = ("codice_fiscale", "given_name", "surname", "birth_date")
    CODICE_FISCALE_FIELD_NUMBER: _ClassVar[int]
    GIVEN_NAME_FIELD_NUMBER: _ClassVar[int]
    SURNAME_FIELD_NUMBER: _ClassVar[int]
    BIRTH_DATE_FIELD_NUMBER: _ClassVar[int]
    codice_fiscale: str
    given_name: str
    surname: str
    birth_date: str
    def __init__(self, codice_fiscale: _Optional[str] = ..., given_name: _Optional[str] = ..., surname: _Optional[str] = ..., birth_date: _Optional[str] = ...) -> None: ...

class Card(_message.Message):
    __slots__ = ("card_id", "model")
    CARD_ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    card_id: str
    model: str
    def __init__(self, card_id: _Optional[str] = ..., model: _Optional[str] = ...) -> None: ...

class Requester(_message.Message):
    __slots__ = ("station_id", "chamber_code", "operator_id")
    STATION_ID_FIELD_NUMBER: _ClassVar[int]
    CHAMBER_CODE_FIELD_NUMBER: _ClassVar[int]
    OPERATOR_ID_FIELD_NUMBER: _ClassVar[int]
    station_id: str
    chamber_code: str
    operator_id: str
    def __init__(self, station_id: _Optional[str] = ..., chamber_code: _Optional[str] = ..., operator_id: _Optional[str] = ...) -> None: ...

class CertificateRef(_message.Message):
    __slots__ = ("issuer_dn", "serial_hex")
    ISSUER_DN_FIELD_NUMBER: _ClassVar[int]
    SERIAL_HEX_FIELD_NUMBER: _ClassVar[int]
    issuer_dn: str
    serial_hex: str
    def __init__(self, issuer_dn: _Optional[str] = ..., serial_hex: _Optional[str] = ...) -> None: ...

class ErrorDetail(_message.Message):
    __slots__ = ("code", "field", "message")
    CODE_FIELD_NUMBER: _ClassVar[int]
    FIELD_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    code: str
    field: str
    message: str
    def __init__(self, code: _Optional[str] = ..., field: _Optional[str] = ..., message: _Optional[str] = ...) -> None: ...
