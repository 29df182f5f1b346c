"""What the publisher needs from a CA: the protocol ``EmbeddedCA`` implements.

Imports nothing of ours but ``ca.base`` (values) and ``ca.responder`` (the
responder identity type).
"""
from __future__ import annotations

from typing import Protocol

from cryptography import x509

from personalizer.ca.base import CertStatusInfo
from personalizer.ca.responder import ResponderIdentity


class RevocationAuthority(Protocol):
    @property
    def issuing_certificate(self) -> x509.Certificate: ...

    async def revoked_entries(self) -> list[CertStatusInfo]:
        """Revoked and suspended certificates, expired ones included."""

    async def status_by_serial(self, serial: int) -> CertStatusInfo | None: ...

    async def next_crl_number(self) -> int:
        """A new CRL number, durably recorded before it is used."""

    async def sign_crl(self, builder: x509.CertificateRevocationListBuilder) -> x509.CertificateRevocationList: ...

    async def ocsp_responder(self) -> ResponderIdentity: ...
