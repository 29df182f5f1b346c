from proto.cns.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class CAProfile(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    CA_PROFILE_UNSPECIFIED: _ClassVar[CAProfile]
    CA_PROFILE_CNS_AUTH: _ClassVar[CAProfile]
    CA_PROFILE_QUALIFIED_SIGNATURE: _ClassVar[CAProfile]

class RequestState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    REQUEST_STATE_UNSPECIFIED: _ClassVar[RequestState]
    REQUEST_STATE_RECEIVED: _ClassVar[RequestState]
    REQUEST_STATE_PENDING: _ClassVar[RequestState]
    REQUEST_STATE_ISSUED: _ClassVar[RequestState]
    REQUEST_STATE_FAILED: _ClassVar[RequestState]

class CertificateStatus(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    CERTIFICATE_STATUS_UNSPECIFIED: _ClassVar[CertificateStatus]
    CERTIFICATE_STATUS_ACTIVE: _ClassVar[CertificateStatus]
    CERTIFICATE_STATUS_SUSPENDED: _ClassVar[CertificateStatus]
    CERTIFICATE_STATUS_REVOKED: _ClassVar[CertificateStatus]
    CERTIFICATE_STATUS_EXPIRED: _ClassVar[CertificateStatus]
CA_PROFILE_UNSPECIFIED: CAProfile
CA_PROFILE_CNS_AUTH: CAProfile
CA_PROFILE_QUALIFIED_SIGNATURE: CAProfile
REQUEST_STATE_UNSPECIFIED: RequestState
REQUEST_STATE_RECEIVED: RequestState
REQUEST_STATE_PENDING: RequestState
REQUEST_STATE_ISSUED: RequestState
REQUEST_STATE_FAILED: RequestState
CERTIFICATE_STATUS_UNSPECIFIED: CertificateStatus
CERTIFICATE_STATUS_ACTIVE: CertificateStatus
CERTIFICATE_STATUS_SUSPENDED: CertificateStatus
CERTIFICATE_STATUS_REVOKED: CertificateStatus
CERTIFICATE_STATUS_EXPIRED: CertificateStatus

class SubmitIssueRequest(_message.Message):
    __slots__ = ("request_id", "profile", "csr_der", "holder", "card", "requester", "ef_dati_personali")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    PROFILE_FIELD_NUMBER: _ClassVar[int]
    CSR_DER_FIELD_NUMBER: _ClassVar[int]
    HOLDER_FIELD_NUMBER: _ClassVar[int]
    CARD_FIELD_NUMBER: _ClassVar[int]
    REQUESTER_FIELD_NUMBER: _ClassVar[int]
    EF_DATI_PERSONALI_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    profile: CAProfile
    csr_der: bytes
    holder: _common_pb2.Holder
    card: _common_pb2.Card
    requester: _common_pb2.Requester
    ef_dati_personali: bytes
    def __init__(self, request_id: _Optional[str] = ..., profile: _Optional[_Union[CAProfile, str]] = ..., csr_der: _Optional[bytes] = ..., holder: _Optional[_Union[_common_pb2.Holder, _Mapping]] = ..., card: _Optional[_Union[_common_pb2.Card, _Mapping]] = ..., requester: _Optional[_Union[_common_pb2.Requester, _Mapping]] = ..., ef_dati_personali: _Optional[bytes] = ...) -> None: ...

class GetRequestRequest(_message.Message):
    __slots__ = ("request_id",)
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    def __init__(self, request_id: _Optional[str] = ...) -> None: ...

class IssueResponse(_message.Message):
    __slots__ = ("request_id", "state", "profile", "certificate_der", "chain_der", "certificate", "error", "created_at", "updated_at")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    PROFILE_FIELD_NUMBER: _ClassVar[int]
    CERTIFICATE_DER_FIELD_NUMBER: _ClassVar[int]
    CHAIN_DER_FIELD_NUMBER: _ClassVar[int]
    CERTIFICATE_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    UPDATED_AT_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    state: RequestState
    profile: CAProfile
    certificate_der: bytes
    chain_der: _containers.RepeatedScalarFieldContainer[bytes]
    certificate: _common_pb2.CertificateRef
    error: _common_pb2.ErrorDetail
    created_at: int
    updated_at: int
    def __init__(self, request_id: _Optional[str] = ..., state: _Optional[_Union[RequestState, str]] = ..., profile: _Optional[_Union[CAProfile, str]] = ..., certificate_der: _Optional[bytes] = ..., chain_der: _Optional[_Iterable[bytes]] = ..., certificate: _Optional[_Union[_common_pb2.CertificateRef, _Mapping]] = ..., error: _Optional[_Union[_common_pb2.ErrorDetail, _Mapping]] = ..., created_at: _Optional[int] = ..., updated_at: _Optional[int] = ...) -> None: ...

class GetCertificateStatusRequest(_message.Message):
    __slots__ = ("certificate", "request_id")
    CERTIFICATE_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    certificate: _common_pb2.CertificateRef
    request_id: str
    def __init__(self, certificate: _Optional[_Union[_common_pb2.CertificateRef, _Mapping]] = ..., request_id: _Optional[str] = ...) -> None: ...

class CertificateStatusResponse(_message.Message):
    __slots__ = ("certificate", "status", "not_before", "not_after", "revocation_reason", "revoked_at", "request_id")
    CERTIFICATE_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    NOT_BEFORE_FIELD_NUMBER: _ClassVar[int]
    NOT_AFTER_FIELD_NUMBER: _ClassVar[int]
    REVOCATION_REASON_FIELD_NUMBER: _ClassVar[int]
    REVOKED_AT_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    certificate: _common_pb2.CertificateRef
    status: CertificateStatus
    not_before: int
    not_after: int
    revocation_reason: str
    revoked_at: int
    request_id: str
    def __init__(self, certificate: _Optional[_Union[_common_pb2.CertificateRef, _Mapping]] = ..., status: _Optional[_Union[CertificateStatus, str]] = ..., not_before: _Optional[int] = ..., not_after: _Optional[int] = ..., revocation_reason: _Optional[str] = ..., revoked_at: _Optional[int] = ..., request_id: _Optional[str] = ...) -> None: ...

class GetCAStatusRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class CAStatusResponse(_message.Message):
    __slots__ = ("connector", "operational", "detail", "reactivation_at", "chain_der", "profiles", "issued_last_10_min", "mean_issue_ms_last_10_min")
    CONNECTOR_FIELD_NUMBER: _ClassVar[int]
    OPERATIONAL_FIELD_NUMBER: _ClassVar[int]
    DETAIL_FIELD_NUMBER: _ClassVar[int]
    REACTIVATION_AT_FIELD_NUMBER: _ClassVar[int]
    CHAIN_DER_FIELD_NUMBER: _ClassVar[int]
    PROFILES_FIELD_NUMBER: _ClassVar[int]
    ISSUED_LAST_10_MIN_FIELD_NUMBER: _ClassVar[int]
    MEAN_ISSUE_MS_LAST_10_MIN_FIELD_NUMBER: _ClassVar[int]
    connector: str
    operational: bool
    detail: str
    reactivation_at: int
    chain_der: _containers.RepeatedScalarFieldContainer[bytes]
    profiles: _containers.RepeatedScalarFieldContainer[CAProfile]
    issued_last_10_min: int
    mean_issue_ms_last_10_min: float
    def __init__(self, connector: _Optional[str] = ..., operational: _Optional[bool] = ..., detail: _Optional[str] = ..., reactivation_at: _Optional[int] = ..., chain_der: _Optional[_Iterable[bytes]] = ..., profiles: _Optional[_Iterable[_Union[CAProfile, str]]] = ..., issued_last_10_min: _Optional[int] = ..., mean_issue_ms_last_10_min: _Optional[float] = ...) -> None: ...

class RenewRequest(_message.Message):
    __slots__ = ("request_id", "profile", "csr_der", "current_certificate_der", "proof_of_possession", "requester")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    PROFILE_FIELD_NUMBER: _ClassVar[int]
    CSR_DER_FIELD_NUMBER: _ClassVar[int]
    CURRENT_CERTIFICATE_DER_FIELD_NUMBER: _ClassVar[int]
    PROOF_OF_POSSESSION_FIELD_NUMBER: _ClassVar[int]
    REQUESTER_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    profile: CAProfile
    csr_der: bytes
    current_certificate_der: bytes
    proof_of_possession: bytes
    requester: _common_pb2.Requester
    def __init__(self, request_id: _Optional[str] = ..., profile: _Optional[_Union[CAProfile, str]] = ..., csr_der: _Optional[bytes] = ..., current_certificate_der: _Optional[bytes] = ..., proof_of_possession: _Optional[bytes] = ..., requester: _Optional[_Union[_common_pb2.Requester, _Mapping]] = ...) -> None: ...

class ChangeStatusRequest(_message.Message):
    __slots__ = ("request_id", "certificate", "reason", "requester")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    CERTIFICATE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    REQUESTER_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    certificate: _common_pb2.CertificateRef
    reason: str
    requester: _common_pb2.Requester
    def __init__(self, request_id: _Optional[str] = ..., certificate: _Optional[_Union[_common_pb2.CertificateRef, _Mapping]] = ..., reason: _Optional[str] = ..., requester: _Optional[_Union[_common_pb2.Requester, _Mapping]] = ...) -> None: ...
