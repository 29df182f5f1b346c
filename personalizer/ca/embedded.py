"""The embedded CA: an issuing CA inside the daemon, signing through a key store.

Implements ``base.CAConnector``. Certificate state lives in the daemon's store
(the ``CertificateRegistry``), so this class keeps no database of its own.
Lifecycle changes (suspend, reactivate, revoke) and CRL/OCSP publication are
later issues: those methods raise ``NotSupported`` (→ UNIMPLEMENTED).
Must not import grpc, proto or the store module.
"""
from __future__ import annotations

import asyncio
import datetime as _dt

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from personalizer.ca import profiles
from personalizer.ca.base import (CAHealth, CertificateRegistry, CertificateSubject, CertRef, CertState,
                                  CertStatusInfo, IssuedCertificate, ref_of)
from personalizer.ca.keys import Signer
from personalizer.errors import CAError, InvalidRequest, NotSupported

CONNECTOR_NAME = "embedded"


class EmbeddedCA:
    name = CONNECTOR_NAME

    def __init__(self, *, signer: Signer, issuing_cert: x509.Certificate, root_cert: x509.Certificate,
                 urls: profiles.CAUrls = profiles.CAUrls(), registry: CertificateRegistry | None = None,
                 sign_in_thread: bool = False):
        if signer.public_key().public_numbers() != issuing_cert.public_key().public_numbers():
            raise CAError("the CA key does not match the issuing CA certificate")
        self._signer = signer
        self._issuing = issuing_cert
        self._chain = tuple(c.public_bytes(serialization.Encoding.DER) for c in (issuing_cert, root_cert))
        self._urls = urls
        self._registry = registry
        self._sign_in_thread = sign_in_thread

    def attach_registry(self, registry: CertificateRegistry) -> None:
        self._registry = registry

    def chain_der(self) -> tuple[bytes, ...]:
        return self._chain

    def issue_sync(self, profile: str, csr: x509.CertificateSigningRequest, subject: CertificateSubject,
                   request_id: str) -> IssuedCertificate:
        build = profiles.BUILDERS.get(profile)
        if build is None:
            raise InvalidRequest("profile", f"profile {profile!r} is not offered by the embedded CA")
        now = _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0)
        builder = build(subject, csr.public_key(), issuer=self._issuing, urls=self._urls, now=now,
                        serial=x509.random_serial_number())
        cert = self._signer.sign_certificate(builder)
        return IssuedCertificate(
            ref=ref_of(cert), certificate_der=cert.public_bytes(serialization.Encoding.DER), chain_der=self._chain,
            not_before=cert.not_valid_before_utc, not_after=cert.not_valid_after_utc)

    async def issue(self, profile: str, csr: x509.CertificateSigningRequest, subject: CertificateSubject,
                    request_id: str) -> IssuedCertificate:
        if self._sign_in_thread:
            return await asyncio.to_thread(self.issue_sync, profile, csr, subject, request_id)
        return self.issue_sync(profile, csr, subject, request_id)

    async def status(self, ref: CertRef) -> CertStatusInfo | None:
        if self._registry is None:
            return None
        info = await self._registry.get_certificate_status(ref)
        if info and info.state is CertState.ACTIVE and info.not_after < _dt.datetime.now(_dt.timezone.utc):
            info = CertStatusInfo(info.ref, CertState.EXPIRED, info.not_before, info.not_after, info.request_id)
        return info

    async def revoke(self, ref: CertRef, reason: str) -> CertStatusInfo:
        raise NotSupported("revocation is not implemented by the embedded CA yet")

    async def suspend(self, ref: CertRef) -> CertStatusInfo:
        raise NotSupported("suspension is not implemented by the embedded CA yet")

    async def reactivate(self, ref: CertRef) -> CertStatusInfo:
        raise NotSupported("reactivation is not implemented by the embedded CA yet")

    async def health(self) -> CAHealth:
        return CAHealth(connector=self.name, operational=True, detail="issuing CA key loaded")

    async def close(self) -> None:
        self._signer.close()
