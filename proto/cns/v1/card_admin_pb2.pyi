from proto.cns.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class CardOperation(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    CARD_OPERATION_UNSPECIFIED: _ClassVar[CardOperation]
    CARD_OPERATION_PERSONALIZE: _ClassVar[CardOperation]
    CARD_OPERATION_RENEW: _ClassVar[CardOperation]
CARD_OPERATION_UNSPECIFIED: CardOperation
CARD_OPERATION_PERSONALIZE: CardOperation
CARD_OPERATION_RENEW: CardOperation

class CardAuthRequest(_message.Message):
    __slots__ = ("requester", "card_serial", "card_model", "challenge", "operation", "operation_id")
    REQUESTER_FIELD_NUMBER: _ClassVar[int]
    CARD_SERIAL_FIELD_NUMBER: _ClassVar[int]
    CARD_MODEL_FIELD_NUMBER: _ClassVar[int]
    CHALLENGE_FIELD_NUMBER: _ClassVar[int]
    OPERATION_FIELD_NUMBER: _ClassVar[int]
    OPERATION_ID_FIELD_NUMBER: _ClassVar[int]
    requester: _common_pb2.Requester
    card_serial: str
    card_model: str
    challenge: bytes
    operation: CardOperation
    operation_id: str
    def __init__(self, requester: _Optional[_Union[_common_pb2.Requester, _Mapping]] = ..., card_serial: _Optional[str] = ..., card_model: _Optional[str] = ..., challenge: _Optional[bytes] = ..., operation: _Optional[_Union[CardOperation, str]] = ..., operation_id: _Optional[str] = ...) -> None: ...

class CardAuthResponse(_message.Message):
    __slots__ = ("cryptogram",)
    CRYPTOGRAM_FIELD_NUMBER: _ClassVar[int]
    cryptogram: bytes
    def __init__(self, cryptogram: _Optional[bytes] = ...) -> None: ...
