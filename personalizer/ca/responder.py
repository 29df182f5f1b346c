"""The embedded CA's OCSP responder identity: a key and a certificate from the issuing CA.

``ensure_responder(ca_dir, issuing_cert, signer)`` loads ``ocsp-responder.pem``
and ``ocsp-responder.key.pem`` from the CA directory, and creates them when
missing, not matching the issuing CA, or within ``RENEW_BEFORE`` of expiry.
The responder key is a file key (mode 0600) even when the CA key sits in a
token: a delegated responder signs every OCSP answer and must not need the
HSM. With ``ca_dir=None`` the identity lives in memory only. Files are written
atomically (``keys.write_private``). Must not import grpc, proto or the store.
"""
from __future__ import annotations

import datetime as _dt
import logging
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from personalizer.ca import profiles
from personalizer.ca.keys import Signer, write_private

log = logging.getLogger(__name__)

CERT_FILE = "ocsp-responder.pem"
KEY_FILE = "ocsp-responder.key.pem"
RESPONDER_KEY_BITS = 2048
RENEW_BEFORE = _dt.timedelta(days=30)
RESPONDER_CN = "CNS Demo OCSP Responder"


@dataclass(frozen=True)
class ResponderIdentity:
    certificate: x509.Certificate
    key: rsa.RSAPrivateKey


def _load(ca_dir: Path, issuing: x509.Certificate, now: _dt.datetime) -> ResponderIdentity | None:
    cert_path, key_path = ca_dir / CERT_FILE, ca_dir / KEY_FILE
    if not (cert_path.exists() and key_path.exists()):
        return None
    try:
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
        key = serialization.load_pem_private_key(key_path.read_bytes(), None)
    except (OSError, ValueError) as exc:
        log.warning("OCSP responder files in %s are unreadable (%s); issuing a new responder", ca_dir, exc)
        return None
    if (cert.issuer != issuing.subject or not isinstance(key, rsa.RSAPrivateKey)
            or key.public_key().public_numbers() != cert.public_key().public_numbers()
            or cert.not_valid_after_utc - now < RENEW_BEFORE):
        return None
    try:
        cert.verify_directly_issued_by(issuing)
    except (ValueError, TypeError, InvalidSignature):
        return None
    return ResponderIdentity(cert, key)


def ensure_responder(ca_dir: Path | None, issuing: x509.Certificate, signer: Signer) -> ResponderIdentity:
    now = _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0)
    if ca_dir is not None:
        found = _load(ca_dir, issuing, now)
        if found is not None:
            return found
    key = rsa.generate_private_key(65537, RESPONDER_KEY_BITS)
    cert = signer.sign_certificate(profiles.build_ocsp_responder(RESPONDER_CN, key.public_key(), issuer=issuing,
                                                                 now=now))
    if ca_dir is not None:
        # key first: a certificate without its key is never left behind
        write_private(ca_dir / KEY_FILE, key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
        write_private(ca_dir / CERT_FILE, cert.public_bytes(serialization.Encoding.PEM))
        log.info("issued OCSP responder certificate %X (valid to %s)", cert.serial_number, cert.not_valid_after_utc)
    return ResponderIdentity(cert, key)
