"""OCSP responses (RFC 6960) for one issuing CA, signed by its delegated responder.

``respond(request_der, ...)`` is the whole protocol: parse the request, check
that it names our issuing CA (issuerNameHash and issuerKeyHash under the
request's hash algorithm), look the serial up, and answer good / revoked
(with reason; a suspension is revoked with reason certificateHold, RFC 6960
§2.2) / unknown, echoing the nonce. Malformed requests get the
malformedRequest status, never an exception: undecodable DER, more than one
request, a serial that is not positive or longer than 20 octets, more than one
nonce, a nonce outside 1..32 octets (RFC 8954), a request over 8 KiB.
Requests for another CA get unauthorized.
Imports nothing of ours but ``ca.base`` and ``ca.responder``.
"""
from __future__ import annotations

import datetime as _dt
from typing import Awaitable, Callable

from asn1crypto import ocsp as aocsp
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
MAX_NONCE_BYTES = 32            # RFC 8954 §2.1: 1..32 octets
MAX_SERIAL = 1 << 159           # RFC 5280 §4.1.2.2: positive, at most 20 octets
MAX_REQUEST_BYTES = 8 * 1024    # one CertID and a nonce fit in a few hundred bytes

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


def _nonces(request_der: bytes) -> list[bytes]:
    """Every nonce extension of the request, as sent (cryptography's view would hide duplicates)."""
    req = aocsp.OCSPRequest.load(request_der, strict=True)
    extensions = req["tbs_request"]["request_extensions"]
    if not extensions.native:
        return []
    return [e["extn_value"].parsed.native for e in extensions if e["extn_id"].native == "nonce"]


def _parse(request_der: bytes):
    """(request, nonce or None), or None when the request is malformed."""
    if len(request_der) > MAX_REQUEST_BYTES:
        return None
    try:
        req = ocsp.load_der_ocsp_request(request_der)
        req.hash_algorithm, req.issuer_name_hash, req.issuer_key_hash   # noqa: B018 (parse now, not later)
        nonces = _nonces(request_der)
    except (ValueError, TypeError, NotImplementedError, UnsupportedAlgorithm, KeyError):
        return None
    if not 0 < req.serial_number < MAX_SERIAL or len(nonces) > 1:
        return None
    if nonces and not 1 <= len(nonces[0]) <= MAX_NONCE_BYTES:
        return None
    return req, (nonces[0] if nonces else None)


async def respond(request_der: bytes, *, issuing: x509.Certificate, responder: ResponderIdentity,
                  lookup: Lookup, now: _dt.datetime | None = None) -> bytes:
    parsed = _parse(request_der)
    if parsed is None:
        return unsuccessful(ocsp.OCSPResponseStatus.MALFORMED_REQUEST)
    req, nonce = parsed
    algorithm, serial = req.hash_algorithm, req.serial_number
    name_hash, key_hash = req.issuer_name_hash, req.issuer_key_hash
    if (name_hash, key_hash) != _issuer_hashes(issuing, algorithm):
        return unsuccessful(ocsp.OCSPResponseStatus.UNAUTHORIZED)
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
