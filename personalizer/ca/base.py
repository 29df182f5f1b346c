"""The protocol every CA connector implements, and the values it exchanges.

Imports nothing of ours except ``errors`` and ``validation`` (for the parsed
request types). The broker calls a connector only through ``CAConnector``.
"""
from __future__ import annotations

import datetime as _dt
import enum
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from cryptography import x509

from personalizer.rules.validation import Holder


@dataclass(frozen=True)
class CertificateSubject:
    """Who the certificate is for: validated holder data, the device, the CN hash."""

    holder: Holder
    card_id: str
    dati_personali_hash: str | None = None   # CNS authentication profile only


class CertState(enum.Enum):
    ACTIVE = "active"
    SUSPENDED = "suspended"
    REVOKED = "revoked"
    EXPIRED = "expired"


@dataclass(frozen=True)
class CertRef:
    issuer_dn: str      # RFC 4514
    serial_hex: str     # upper-case hex


@dataclass(frozen=True)
class IssuedCertificate:
    ref: CertRef
    certificate_der: bytes
    chain_der: tuple[bytes, ...]      # issuing CA first, root last
    not_before: _dt.datetime
    not_after: _dt.datetime


@dataclass(frozen=True)
class CertStatusInfo:
    ref: CertRef
    state: CertState
    not_before: _dt.datetime
    not_after: _dt.datetime
    request_id: str
    revocation_reason: str = ""
    revoked_at: _dt.datetime | None = None


@dataclass(frozen=True)
class CAHealth:
    connector: str
    operational: bool
    detail: str = ""
    reactivation_at: _dt.datetime | None = None


class CertificateRegistry(Protocol):
    """Where a connector without its own database records its certificates (the store)."""

    async def get_certificate_status(self, ref: CertRef) -> CertStatusInfo | None: ...


@runtime_checkable
class CAConnector(Protocol):
    name: str

    def chain_der(self) -> tuple[bytes, ...]:
        """Issuing CA certificate first, root last."""

    async def issue(self, profile: str, csr: x509.CertificateSigningRequest, subject: CertificateSubject,
                    request_id: str) -> IssuedCertificate:
        """Issue under ``profile``. Raise InvalidRequest (refused), CAUnavailable (retry later).
        The caller decides whether to look for an earlier certificate first (the relay: ``find_issued``
        before every retry, never on a first attempt); ``issue`` need not look, but never gives one request
        id a second certificate on record."""

    async def find_issued(self, request_id: str) -> IssuedCertificate | None:
        """The certificate already issued for ``request_id``, if any. The relay calls it before a retry."""

    async def status(self, ref: CertRef) -> CertStatusInfo | None: ...

    async def revoke(self, ref: CertRef, reason: str) -> CertStatusInfo:
        """Permanent revocation; ``reason`` is an RFC 5280 name (``keyCompromise``…, see ``reasons``).
        Raise ca.errors.InvalidTransition when the state forbids it, NotFound for an unknown certificate."""

    async def suspend(self, ref: CertRef) -> CertStatusInfo:
        """Hold (CRL reason certificateHold); only from active."""

    async def reactivate(self, ref: CertRef) -> CertStatusInfo:
        """Lift a hold (removeFromCRL); only from suspended, else InvalidTransition."""

    async def health(self) -> CAHealth: ...

    async def close(self) -> None: ...


def ref_of(cert: x509.Certificate) -> CertRef:
    return CertRef(cert.issuer.rfc4514_string(), f"{cert.serial_number:X}")
