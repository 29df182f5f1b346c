from proto.cns.v1 import common_pb2 as _common_pb2
from proto.cns.v1 import personalizer_pb2 as _personalizer_pb2
from proto.cns.v1 import card_admin_pb2 as _card_admin_pb2
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class SelfCardNonceRequest(_message.Message):
    __slots__ = ("current_certificate_der", "card_serial")
    CURRENT_CERTIFICATE_DER_FIELD_NUMBER: _ClassVar[int]
    CARD_SERIAL_FIELD_NUMBER: _ClassVar[int]
    current_certificate_der: bytes
    card_serial: str
    def __init__(self, current_certificate_der: _Optional[bytes] = ..., card_serial: _Optional[str] = ...) -> None: ...

class SelfCardNonce(_message.Message):
    __slots__ = ("nonce", "expires_in_s")
    NONCE_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_IN_S_FIELD_NUMBER: _ClassVar[int]
    nonce: bytes
    expires_in_s: int
    def __init__(self, nonce: _Optional[bytes] = ..., expires_in_s: _Optional[int] = ...) -> None: ...

class SelfCardAuthRequest(_message.Message):
    __slots__ = ("current_certificate_der", "card_serial", "card_model", "challenge", "operation_id", "nonce", "proof")
    CURRENT_CERTIFICATE_DER_FIELD_NUMBER: _ClassVar[int]
    CARD_SERIAL_FIELD_NUMBER: _ClassVar[int]
    CARD_MODEL_FIELD_NUMBER: _ClassVar[int]
    CHALLENGE_FIELD_NUMBER: _ClassVar[int]
    OPERATION_ID_FIELD_NUMBER: _ClassVar[int]
    NONCE_FIELD_NUMBER: _ClassVar[int]
    PROOF_FIELD_NUMBER: _ClassVar[int]
    current_certificate_der: bytes
    card_serial: str
    card_model: str
    challenge: bytes
    operation_id: str
    nonce: bytes
    proof: bytes
    def __init__(self, current_certificate_der: _Optional[bytes] = ..., card_serial: _Optional[str] = ..., card_model: _Optional[str] = ..., challenge: _Optional[bytes] = ..., operation_id: _Optional[str] = ..., nonce: _Optional[bytes] = ..., proof: _Optional[bytes] = ...) -> None: ...

class SelfRenewRequest(_message.Message):
    __slots__ = ("request_id", "profile", "csr_der", "current_certificate_der", "proof_of_possession")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    PROFILE_FIELD_NUMBER: _ClassVar[int]
    CSR_DER_FIELD_NUMBER: _ClassVar[int]
    CURRENT_CERTIFICATE_DER_FIELD_NUMBER: _ClassVar[int]
    PROOF_OF_POSSESSION_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    profile: _personalizer_pb2.CAProfile
    csr_der: bytes
    current_certificate_der: bytes
    proof_of_possession: bytes
    def __init__(self, request_id: _Optional[str] = ..., profile: _Optional[_Union[_personalizer_pb2.CAProfile, str]] = ..., csr_der: _Optional[bytes] = ..., current_certificate_der: _Optional[bytes] = ..., proof_of_possession: _Optional[bytes] = ...) -> None: ...

class SelfRequestRef(_message.Message):
    __slots__ = ("request_id", "current_certificate_der")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    CURRENT_CERTIFICATE_DER_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    current_certificate_der: bytes
    def __init__(self, request_id: _Optional[str] = ..., current_certificate_der: _Optional[bytes] = ...) -> None: ...

class SelfRevokeRequest(_message.Message):
    __slots__ = ("request_id", "certificate", "reason")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    CERTIFICATE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    certificate: _common_pb2.CertificateRef
    reason: str
    def __init__(self, request_id: _Optional[str] = ..., certificate: _Optional[_Union[_common_pb2.CertificateRef, _Mapping]] = ..., reason: _Optional[str] = ...) -> None: ...
