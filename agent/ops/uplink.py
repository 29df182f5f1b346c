"""The ``Uplink``: what device operations need from the personalizer, as a protocol (no grpc, no proto).

Operations receive an ``Uplink`` (``agent.app`` builds it once: the gRPC uplink
``agent.uplink.client.PersonalizerClient`` with one long-lived channel, or an
in-memory uplink over a real broker in tests, ``tests/support/uplink.py``) and
never build one. Method names are the ones the operations call.

Answers are the domain records below (frozen dataclasses: ``RequestRecord``,
``CAStatusRecord``, ``RegistrationRecord``, ``CertificateStatusRecord``,
``FoundCertificates``), never protobuf messages: the gRPC uplinks convert their
messages in ``agent.uplink.records``, the in-memory uplink builds the same
records from the broker's.

Errors are classified once, by the uplink, with ``is_refusal(code)``:
``UplinkError`` with ``code`` when the personalizer refused (a code of
``REFUSED_CODES``: ``INVALID_ARGUMENT``, ``FAILED_PRECONDITION``, ...), else
``UplinkUnavailable`` with ``code`` (unreachable, too slow, an internal error:
not now; the journaled operation stays resumable). ``refused(exc)`` is the one
test of "the personalizer said no".

Imports ``agent.ops.errors`` only.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, AsyncIterator, Protocol, runtime_checkable

from agent.ops.errors import UplinkError, UplinkUnavailable

__all__ = ["Uplink", "RequestRecord", "RequestErrorRecord", "CertificateRef", "CAStatusRecord", "RegisteredHolder",
           "RegistrationRecord", "CertificateStatusRecord", "FoundCertificate", "FoundCertificates", "REFUSED_CODES", "is_refusal", "refused", "UplinkError",
           "UplinkUnavailable"]


@dataclass(frozen=True)
class RequestErrorRecord:
    """Why a request failed (set when its state is FAILED)."""
    code: str = ""
    field: str = ""
    message: str = ""


@dataclass(frozen=True)
class CertificateRef:
    issuer_dn: str = ""
    serial_hex: str = ""


@dataclass(frozen=True)
class RequestRecord:
    """A certificate request's state (``cns_spec.requests`` codes) and, once issued, its certificate."""
    request_id: str
    state: int
    certificate_der: bytes = b""
    chain_der: tuple[bytes, ...] = ()          # issuing CA first, root last
    error: RequestErrorRecord = field(default_factory=RequestErrorRecord)
    certificate: CertificateRef = field(default_factory=CertificateRef)
    kind: str = ""                             # issue, renew, suspend, reactivate, revoke
    attempts: int = 0
    waiting_reason: str = ""                   # why it waits ("outside the service window", ...)


@dataclass(frozen=True)
class CertificateStatusRecord:
    """A certificate's status (cns.v1.CertificateStatus codes: 1 active, 2 suspended, 3 revoked, 4 expired;
    times in seconds since the epoch) and, for a status change, the change request and its state."""
    certificate: CertificateRef = field(default_factory=CertificateRef)
    status: int = 0
    not_before: int = 0
    not_after: int = 0
    revocation_reason: str = ""
    revoked_at: int = 0
    request_id: str = ""
    change_request_id: str = ""
    change_state: int = 0


@dataclass(frozen=True)
class FoundCertificate:
    """One certificate the personalizer issued (``find_certificates``); ``profile``: cns.v1.CAProfile code."""
    status: CertificateStatusRecord = field(default_factory=CertificateStatusRecord)
    profile: int = 0
    card_id: str = ""
    codice_fiscale: str = ""
    subject: str = ""
    chamber_code: str = ""


@dataclass(frozen=True)
class FoundCertificates:
    certificates: tuple[FoundCertificate, ...] = ()


@dataclass(frozen=True)
class CAStatusRecord:
    """What GetCAStatus says the operations need: whether the CA answers now, and if not why and until when
    (seconds since the epoch, 0: unknown), and the issuing chain."""
    operational: bool
    detail: str = ""
    service_window_open: bool = True
    in_maintenance: bool = False
    reactivation_at: int = 0
    service_window_changes_at: int = 0
    chain_der: tuple[bytes, ...] = ()


@dataclass(frozen=True)
class RegisteredHolder:
    codice_fiscale: str = ""
    given_name: str = ""
    surname: str = ""
    birth_date: str = ""


@dataclass(frozen=True)
class RegistrationRecord:
    """A holder registered by the chamber's IR (deferred issuance)."""
    registration_id: str
    state: str                                 # open, used, expired, cancelled
    holder: RegisteredHolder = field(default_factory=RegisteredHolder)
    sex: str = ""
    birth_town: str = ""
    card_id: str = ""                          # the card it issued, once used
    expires_at: int = 0
    used_by: str = ""                          # once used: the station's identity, the operator, the request
    used_operator_id: str = ""
    request_id: str = ""


@runtime_checkable
class Uplink(Protocol):
    async def submit_issue(self, *, request_id: str, profile: str, csr_der: bytes, holder: dict, card_id: str,
                           model: str, requester: dict, ef_dati_personali: bytes = b"",
                           registration_id: str = "") -> RequestRecord: ...

    async def renew(self, *, request_id: str, profile: str, csr_der: bytes, current_certificate_der: bytes,
                    proof_of_possession: bytes, requester: dict) -> RequestRecord: ...

    async def get_request(self, request_id: str) -> RequestRecord: ...

    def watch_request(self, request_id: str) -> AsyncIterator[RequestRecord]: ...

    async def get_registration(self, registration_id: str) -> RegistrationRecord: ...

    async def certificate_status(self, *, issuer_dn: str = "", serial_hex: str = "",
                                 request_id: str = "") -> CertificateStatusRecord: ...

    async def change_status(self, action: str, *, request_id: str, issuer_dn: str, serial_hex: str,
                            requester: dict, reason: str = "") -> CertificateStatusRecord: ...

    async def find_certificates(self, *, card_id: str = "", codice_fiscale: str = "") -> FoundCertificates: ...

    async def ca_status(self) -> CAStatusRecord: ...

    def card_admin(self, kind: str, requester: dict) -> Any:
        """A ``agent.card.issuer.CardAuthenticator`` for one operation of ``kind`` (issue 12): the card's
        challenges answered by the personalizer's token, never a key here. Called on the event loop; the
        result is called from the card's worker thread. Unreachable: ``UplinkUnavailable``."""
        ...

    async def close(self) -> None: ...


# The answers that mean "the personalizer said no, for a reason it named": retrying the same request
# cannot change them. Every other failure (unreachable, too slow, an internal error, overloaded) is
# "not now": the journaled operation stays resumable and is retried.
REFUSED_CODES = frozenset({"INVALID_ARGUMENT", "FAILED_PRECONDITION", "PERMISSION_DENIED", "ALREADY_EXISTS",
                           "NOT_FOUND", "UNAUTHENTICATED", "OUT_OF_RANGE", "UNIMPLEMENTED"})


def is_refusal(code: str) -> bool:
    """True for a gRPC status code name that is a refusal (``REFUSED_CODES``), False for "not now"."""
    return code in REFUSED_CODES


def refused(exc: BaseException) -> bool:
    """The personalizer answered and said no, with a refusal's code (as opposed to: could not be reached,
    not now, or an ``UplinkError`` without a code such as an unreadable client key, which a retry after
    the fix cures)."""
    return isinstance(exc, UplinkError) and not isinstance(exc, UplinkUnavailable) and is_refusal(exc.code or "")
