from proto.cns.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
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
    __slots__ = ("requester", "card_serial", "card_model", "challenge", "operation", "operation_id", "transport_key")
    REQUESTER_FIELD_NUMBER: _ClassVar[int]
    CARD_SERIAL_FIELD_NUMBER: _ClassVar[int]
    CARD_MODEL_FIELD_NUMBER: _ClassVar[int]
    CHALLENGE_FIELD_NUMBER: _ClassVar[int]
    OPERATION_FIELD_NUMBER: _ClassVar[int]
    OPERATION_ID_FIELD_NUMBER: _ClassVar[int]
    TRANSPORT_KEY_FIELD_NUMBER: _ClassVar[int]
    requester: _common_pb2.Requester
    card_serial: str
    card_model: str
    challenge: bytes
    operation: CardOperation
    operation_id: str
    transport_key: bool
    def __init__(self, requester: _Optional[_Union[_common_pb2.Requester, _Mapping]] = ..., card_serial: _Optional[str] = ..., card_model: _Optional[str] = ..., challenge: _Optional[bytes] = ..., operation: _Optional[_Union[CardOperation, str]] = ..., operation_id: _Optional[str] = ..., transport_key: _Optional[bool] = ...) -> None: ...

class CardKeyChangeRequest(_message.Message):
    __slots__ = ("requester", "card_serial", "card_model", "operation_id")
    REQUESTER_FIELD_NUMBER: _ClassVar[int]
    CARD_SERIAL_FIELD_NUMBER: _ClassVar[int]
    CARD_MODEL_FIELD_NUMBER: _ClassVar[int]
    OPERATION_ID_FIELD_NUMBER: _ClassVar[int]
    requester: _common_pb2.Requester
    card_serial: str
    card_model: str
    operation_id: str
    def __init__(self, requester: _Optional[_Union[_common_pb2.Requester, _Mapping]] = ..., card_serial: _Optional[str] = ..., card_model: _Optional[str] = ..., operation_id: _Optional[str] = ...) -> None: ...

class CardKeyChangeResponse(_message.Message):
    __slots__ = ("wrapped_key",)
    WRAPPED_KEY_FIELD_NUMBER: _ClassVar[int]
    wrapped_key: bytes
    def __init__(self, wrapped_key: _Optional[bytes] = ...) -> None: ...

class LoadBatchRequest(_message.Message):
    __slots__ = ("batch_id", "chamber_code", "card_model", "first_serial", "last_serial", "transport_key")
    BATCH_ID_FIELD_NUMBER: _ClassVar[int]
    CHAMBER_CODE_FIELD_NUMBER: _ClassVar[int]
    CARD_MODEL_FIELD_NUMBER: _ClassVar[int]
    FIRST_SERIAL_FIELD_NUMBER: _ClassVar[int]
    LAST_SERIAL_FIELD_NUMBER: _ClassVar[int]
    TRANSPORT_KEY_FIELD_NUMBER: _ClassVar[int]
    batch_id: str
    chamber_code: str
    card_model: str
    first_serial: str
    last_serial: str
    transport_key: bytes
    def __init__(self, batch_id: _Optional[str] = ..., chamber_code: _Optional[str] = ..., card_model: _Optional[str] = ..., first_serial: _Optional[str] = ..., last_serial: _Optional[str] = ..., transport_key: _Optional[bytes] = ...) -> None: ...

class CardBatch(_message.Message):
    __slots__ = ("batch_id", "chamber_code", "card_model", "first_serial", "last_serial")
    BATCH_ID_FIELD_NUMBER: _ClassVar[int]
    CHAMBER_CODE_FIELD_NUMBER: _ClassVar[int]
    CARD_MODEL_FIELD_NUMBER: _ClassVar[int]
    FIRST_SERIAL_FIELD_NUMBER: _ClassVar[int]
    LAST_SERIAL_FIELD_NUMBER: _ClassVar[int]
    batch_id: str
    chamber_code: str
    card_model: str
    first_serial: str
    last_serial: str
    def __init__(self, batch_id: _Optional[str] = ..., chamber_code: _Optional[str] = ..., card_model: _Optional[str] = ..., first_serial: _Optional[str] = ..., last_serial: _Optional[str] = ...) -> None: ...

class ListBatchesRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListBatchesResponse(_message.Message):
    __slots__ = ("batches",)
    BATCHES_FIELD_NUMBER: _ClassVar[int]
    batches: _containers.RepeatedCompositeFieldContainer[CardBatch]
    def __init__(self, batches: _Optional[_Iterable[_Union[CardBatch, _Mapping]]] = ...) -> None: ...

class CardAuthResponse(_message.Message):
    __slots__ = ("cryptogram",)
    CRYPTOGRAM_FIELD_NUMBER: _ClassVar[int]
    cryptogram: bytes
    def __init__(self, cryptogram: _Optional[bytes] = ...) -> None: ...
