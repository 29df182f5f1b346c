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
    REQUEST_STATE_DONE: _ClassVar[RequestState]
    REQUEST_STATE_CANCELLED: _ClassVar[RequestState]

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
REQUEST_STATE_DONE: RequestState
REQUEST_STATE_CANCELLED: RequestState
CERTIFICATE_STATUS_UNSPECIFIED: CertificateStatus
CERTIFICATE_STATUS_ACTIVE: CertificateStatus
CERTIFICATE_STATUS_SUSPENDED: CertificateStatus
CERTIFICATE_STATUS_REVOKED: CertificateStatus
CERTIFICATE_STATUS_EXPIRED: CertificateStatus

class SubmitIssueRequest(_message.Message):
    __slots__ = ("request_id", "profile", "csr_der", "holder", "card", "requester", "ef_dati_personali", "registration_id")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    PROFILE_FIELD_NUMBER: _ClassVar[int]
    CSR_DER_FIELD_NUMBER: _ClassVar[int]
    HOLDER_FIELD_NUMBER: _ClassVar[int]
    CARD_FIELD_NUMBER: _ClassVar[int]
    REQUESTER_FIELD_NUMBER: _ClassVar[int]
    EF_DATI_PERSONALI_FIELD_NUMBER: _ClassVar[int]
    REGISTRATION_ID_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    profile: CAProfile
    csr_der: bytes
    holder: _common_pb2.Holder
    card: _common_pb2.Card
    requester: _common_pb2.Requester
    ef_dati_personali: bytes
    registration_id: str
    def __init__(self, request_id: _Optional[str] = ..., profile: _Optional[_Union[CAProfile, str]] = ..., csr_der: _Optional[bytes] = ..., holder: _Optional[_Union[_common_pb2.Holder, _Mapping]] = ..., card: _Optional[_Union[_common_pb2.Card, _Mapping]] = ..., requester: _Optional[_Union[_common_pb2.Requester, _Mapping]] = ..., ef_dati_personali: _Optional[bytes] = ..., registration_id: _Optional[str] = ...) -> None: ...

class GetRequestRequest(_message.Message):
    __slots__ = ("request_id", "requester")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    REQUESTER_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    requester: _common_pb2.Requester
    def __init__(self, request_id: _Optional[str] = ..., requester: _Optional[_Union[_common_pb2.Requester, _Mapping]] = ...) -> None: ...

class IssueResponse(_message.Message):
    __slots__ = ("request_id", "state", "profile", "certificate_der", "chain_der", "certificate", "error", "created_at", "updated_at", "kind", "attempts", "next_attempt_at", "waiting_reason")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    PROFILE_FIELD_NUMBER: _ClassVar[int]
    CERTIFICATE_DER_FIELD_NUMBER: _ClassVar[int]
    CHAIN_DER_FIELD_NUMBER: _ClassVar[int]
    CERTIFICATE_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    UPDATED_AT_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    ATTEMPTS_FIELD_NUMBER: _ClassVar[int]
    NEXT_ATTEMPT_AT_FIELD_NUMBER: _ClassVar[int]
    WAITING_REASON_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    state: RequestState
    profile: CAProfile
    certificate_der: bytes
    chain_der: _containers.RepeatedScalarFieldContainer[bytes]
    certificate: _common_pb2.CertificateRef
    error: _common_pb2.ErrorDetail
    created_at: int
    updated_at: int
    kind: str
    attempts: int
    next_attempt_at: int
    waiting_reason: str
    def __init__(self, request_id: _Optional[str] = ..., state: _Optional[_Union[RequestState, str]] = ..., profile: _Optional[_Union[CAProfile, str]] = ..., certificate_der: _Optional[bytes] = ..., chain_der: _Optional[_Iterable[bytes]] = ..., certificate: _Optional[_Union[_common_pb2.CertificateRef, _Mapping]] = ..., error: _Optional[_Union[_common_pb2.ErrorDetail, _Mapping]] = ..., created_at: _Optional[int] = ..., updated_at: _Optional[int] = ..., kind: _Optional[str] = ..., attempts: _Optional[int] = ..., next_attempt_at: _Optional[int] = ..., waiting_reason: _Optional[str] = ...) -> None: ...

class GetCertificateStatusRequest(_message.Message):
    __slots__ = ("certificate", "request_id", "requester")
    CERTIFICATE_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    REQUESTER_FIELD_NUMBER: _ClassVar[int]
    certificate: _common_pb2.CertificateRef
    request_id: str
    requester: _common_pb2.Requester
    def __init__(self, certificate: _Optional[_Union[_common_pb2.CertificateRef, _Mapping]] = ..., request_id: _Optional[str] = ..., requester: _Optional[_Union[_common_pb2.Requester, _Mapping]] = ...) -> None: ...

class CertificateStatusResponse(_message.Message):
    __slots__ = ("certificate", "status", "not_before", "not_after", "revocation_reason", "revoked_at", "request_id", "change_request_id", "change_state")
    CERTIFICATE_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    NOT_BEFORE_FIELD_NUMBER: _ClassVar[int]
    NOT_AFTER_FIELD_NUMBER: _ClassVar[int]
    REVOCATION_REASON_FIELD_NUMBER: _ClassVar[int]
    REVOKED_AT_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    CHANGE_REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    CHANGE_STATE_FIELD_NUMBER: _ClassVar[int]
    certificate: _common_pb2.CertificateRef
    status: CertificateStatus
    not_before: int
    not_after: int
    revocation_reason: str
    revoked_at: int
    request_id: str
    change_request_id: str
    change_state: RequestState
    def __init__(self, certificate: _Optional[_Union[_common_pb2.CertificateRef, _Mapping]] = ..., status: _Optional[_Union[CertificateStatus, str]] = ..., not_before: _Optional[int] = ..., not_after: _Optional[int] = ..., revocation_reason: _Optional[str] = ..., revoked_at: _Optional[int] = ..., request_id: _Optional[str] = ..., change_request_id: _Optional[str] = ..., change_state: _Optional[_Union[RequestState, str]] = ...) -> None: ...

class FindCertificatesRequest(_message.Message):
    __slots__ = ("card_id", "codice_fiscale")
    CARD_ID_FIELD_NUMBER: _ClassVar[int]
    CODICE_FISCALE_FIELD_NUMBER: _ClassVar[int]
    card_id: str
    codice_fiscale: str
    def __init__(self, card_id: _Optional[str] = ..., codice_fiscale: _Optional[str] = ...) -> None: ...

class FoundCertificate(_message.Message):
    __slots__ = ("status", "profile", "card_id", "codice_fiscale", "subject", "chamber_code")
    STATUS_FIELD_NUMBER: _ClassVar[int]
    PROFILE_FIELD_NUMBER: _ClassVar[int]
    CARD_ID_FIELD_NUMBER: _ClassVar[int]
    CODICE_FISCALE_FIELD_NUMBER: _ClassVar[int]
    SUBJECT_FIELD_NUMBER: _ClassVar[int]
    CHAMBER_CODE_FIELD_NUMBER: _ClassVar[int]
    status: CertificateStatusResponse
    profile: CAProfile
    card_id: str
    codice_fiscale: str
    subject: str
    chamber_code: str
    def __init__(self, status: _Optional[_Union[CertificateStatusResponse, _Mapping]] = ..., profile: _Optional[_Union[CAProfile, str]] = ..., card_id: _Optional[str] = ..., codice_fiscale: _Optional[str] = ..., subject: _Optional[str] = ..., chamber_code: _Optional[str] = ...) -> None: ...

class FindCertificatesResponse(_message.Message):
    __slots__ = ("certificates",)
    CERTIFICATES_FIELD_NUMBER: _ClassVar[int]
    certificates: _containers.RepeatedCompositeFieldContainer[FoundCertificate]
    def __init__(self, certificates: _Optional[_Iterable[_Union[FoundCertificate, _Mapping]]] = ...) -> None: ...

class GetCAStatusRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class CAStatusResponse(_message.Message):
    __slots__ = ("connector", "operational", "detail", "reactivation_at", "chain_der", "profiles", "issued_last_10_min", "mean_issue_ms_last_10_min", "in_maintenance", "planned_maintenance", "response_times", "requests_last_10_min", "queue_depth", "breaker_state", "service_window_open", "service_window_changes_at")
    CONNECTOR_FIELD_NUMBER: _ClassVar[int]
    OPERATIONAL_FIELD_NUMBER: _ClassVar[int]
    DETAIL_FIELD_NUMBER: _ClassVar[int]
    REACTIVATION_AT_FIELD_NUMBER: _ClassVar[int]
    CHAIN_DER_FIELD_NUMBER: _ClassVar[int]
    PROFILES_FIELD_NUMBER: _ClassVar[int]
    ISSUED_LAST_10_MIN_FIELD_NUMBER: _ClassVar[int]
    MEAN_ISSUE_MS_LAST_10_MIN_FIELD_NUMBER: _ClassVar[int]
    IN_MAINTENANCE_FIELD_NUMBER: _ClassVar[int]
    PLANNED_MAINTENANCE_FIELD_NUMBER: _ClassVar[int]
    RESPONSE_TIMES_FIELD_NUMBER: _ClassVar[int]
    REQUESTS_LAST_10_MIN_FIELD_NUMBER: _ClassVar[int]
    QUEUE_DEPTH_FIELD_NUMBER: _ClassVar[int]
    BREAKER_STATE_FIELD_NUMBER: _ClassVar[int]
    SERVICE_WINDOW_OPEN_FIELD_NUMBER: _ClassVar[int]
    SERVICE_WINDOW_CHANGES_AT_FIELD_NUMBER: _ClassVar[int]
    connector: str
    operational: bool
    detail: str
    reactivation_at: int
    chain_der: _containers.RepeatedScalarFieldContainer[bytes]
    profiles: _containers.RepeatedScalarFieldContainer[CAProfile]
    issued_last_10_min: int
    mean_issue_ms_last_10_min: float
    in_maintenance: bool
    planned_maintenance: _containers.RepeatedCompositeFieldContainer[MaintenanceWindow]
    response_times: _containers.RepeatedCompositeFieldContainer[ResponseTime]
    requests_last_10_min: int
    queue_depth: _containers.RepeatedCompositeFieldContainer[LaneDepth]
    breaker_state: str
    service_window_open: bool
    service_window_changes_at: int
    def __init__(self, connector: _Optional[str] = ..., operational: _Optional[bool] = ..., detail: _Optional[str] = ..., reactivation_at: _Optional[int] = ..., chain_der: _Optional[_Iterable[bytes]] = ..., profiles: _Optional[_Iterable[_Union[CAProfile, str]]] = ..., issued_last_10_min: _Optional[int] = ..., mean_issue_ms_last_10_min: _Optional[float] = ..., in_maintenance: _Optional[bool] = ..., planned_maintenance: _Optional[_Iterable[_Union[MaintenanceWindow, _Mapping]]] = ..., response_times: _Optional[_Iterable[_Union[ResponseTime, _Mapping]]] = ..., requests_last_10_min: _Optional[int] = ..., queue_depth: _Optional[_Iterable[_Union[LaneDepth, _Mapping]]] = ..., breaker_state: _Optional[str] = ..., service_window_open: _Optional[bool] = ..., service_window_changes_at: _Optional[int] = ...) -> None: ...

class MaintenanceWindow(_message.Message):
    __slots__ = ("id", "starts_at", "ends_at", "reason")
    ID_FIELD_NUMBER: _ClassVar[int]
    STARTS_AT_FIELD_NUMBER: _ClassVar[int]
    ENDS_AT_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    id: str
    starts_at: int
    ends_at: int
    reason: str
    def __init__(self, id: _Optional[str] = ..., starts_at: _Optional[int] = ..., ends_at: _Optional[int] = ..., reason: _Optional[str] = ...) -> None: ...

class ResponseTime(_message.Message):
    __slots__ = ("kind", "p50_ms", "p95_ms", "samples")
    KIND_FIELD_NUMBER: _ClassVar[int]
    P50_MS_FIELD_NUMBER: _ClassVar[int]
    P95_MS_FIELD_NUMBER: _ClassVar[int]
    SAMPLES_FIELD_NUMBER: _ClassVar[int]
    kind: str
    p50_ms: float
    p95_ms: float
    samples: int
    def __init__(self, kind: _Optional[str] = ..., p50_ms: _Optional[float] = ..., p95_ms: _Optional[float] = ..., samples: _Optional[int] = ...) -> None: ...

class LaneDepth(_message.Message):
    __slots__ = ("lane", "depth")
    LANE_FIELD_NUMBER: _ClassVar[int]
    DEPTH_FIELD_NUMBER: _ClassVar[int]
    lane: str
    depth: int
    def __init__(self, lane: _Optional[str] = ..., depth: _Optional[int] = ...) -> None: ...

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
