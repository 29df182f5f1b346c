"""OCSP responses (RFC 6960) for one issuing CA, signed by its delegated responder.

``respond(request_der, ...)`` is the whole protocol: parse the request, check
that it names our issuing CA (issuerNameHash and issuerKeyHash under the
request's hash algorithm), look the serial up, and answer good / revoked
(with reason; a suspension is revoked with reason certificateHold, RFC 6960
§2.2) / unknown, echoing the nonce. Malformed requests get the
malformedRequest status; requests for another CA get unauthorized.
Imports nothing of ours but ``ca.base`` and ``ca.responder``.
"""
from __future__ import annotations

import datetime as _dt
from typing import Awaitable, Callable

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509 import ocsp

from personalizer.ca.base import CertState, CertStatusInfo
from personalizer.ca.responder import ResponderIdentity

RESPONSE_VALIDITY = _dt.timedelta(minutes=15)   # nextUpdate: relying parties re-ask within minutes
SIGNATURE_HASH = hashes.SHA256()
CONTENT_TYPE_REQUEST = "application/ocsp-request"
CONTENT_TYPE_RESPONSE = "application/ocsp-response"

Lookup = Callable[[int], Awaitable[CertStatusInfo | None]]


def _issuer_hashes(issuing: x509.Certificate, algorithm: hashes.HashAlgorithm) -> tuple[bytes, bytes]:
    def digest(data: bytes) -> bytes:
        h = hashes.Hash(algorithm)
        h.update(data)
        return h.finalize()
    name_der = issuing.subject.public_bytes()
    # subjectPublicKey BIT STRING contents; for RSA that is the PKCS#1 RSAPublicKey DER
    key_bits = issuing.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.PKCS1)
    return digest(name_der), digest(key_bits)


def unsuccessful(status: ocsp.OCSPResponseStatus) -> bytes:
    return ocsp.OCSPResponseBuilder.build_unsuccessful(status).public_bytes(serialization.Encoding.DER)


async def respond(request_der: bytes, *, issuing: x509.Certificate, responder: ResponderIdentity,
                  lookup: Lookup, now: _dt.datetime | None = None) -> bytes:
    try:
        req = ocsp.load_der_ocsp_request(request_der)
        algorithm = req.hash_algorithm
        serial = req.serial_number
        name_hash, key_hash = req.issuer_name_hash, req.issuer_key_hash
    except (ValueError, TypeError, NotImplementedError, UnsupportedAlgorithm):
        return unsuccessful(ocsp.OCSPResponseStatus.MALFORMED_REQUEST)
    if (name_hash, key_hash) != _issuer_hashes(issuing, algorithm):
        return unsuccessful(ocsp.OCSPResponseStatus.UNAUTHORIZED)
    try:
        nonce = req.extensions.get_extension_for_class(x509.OCSPNonce).value.nonce
    except x509.ExtensionNotFound:
        nonce = None
    info = await lookup(serial)
    now = (now or _dt.datetime.now(_dt.timezone.utc)).replace(microsecond=0)
    revocation_time = reason = None
    if info is None:
        status = ocsp.OCSPCertStatus.UNKNOWN
    elif info.state in (CertState.REVOKED, CertState.SUSPENDED) and info.revoked_at is not None:
        status = ocsp.OCSPCertStatus.REVOKED
        revocation_time = info.revoked_at
        reason = x509.ReasonFlags(info.revocation_reason) if info.revocation_reason else None
        if reason is x509.ReasonFlags.unspecified:
            reason = None
    else:
        status = ocsp.OCSPCertStatus.GOOD   # active, or expired and never revoked
    b = (ocsp.OCSPResponseBuilder()
         .add_response_by_hash(issuer_name_hash=name_hash, issuer_key_hash=key_hash, serial_number=serial,
                               algorithm=algorithm, cert_status=status, this_update=now,
                               next_update=now + RESPONSE_VALIDITY, revocation_time=revocation_time,
                               revocation_reason=reason)
         .responder_id(ocsp.OCSPResponderEncoding.HASH, responder.certificate)
         .certificates([responder.certificate]))
    if nonce is not None:
        b = b.add_extension(x509.OCSPNonce(nonce), critical=False)
    return b.sign(responder.key, SIGNATURE_HASH).public_bytes(serialization.Encoding.DER)
