"""PKCS#10 requests signed by a key that never leaves the card.

``cryptography`` signs CSRs only with a private key object it holds, so the
request info is built with asn1crypto, its DER is hashed here, padded
(EMSA-PKCS1-v1_5, SHA-256) and handed to ``raw_sign`` — the card's raw RSA
operation — and the result is assembled into the CertificationRequest.

Also: the PKCS#1 v1.5 padding the card session needs for test signatures.
A card signature that does not verify is the card's failure: ``VerificationError``
(the step engine's card-side error), never a ValueError. Imports ``agent.ops.errors``, cryptography and
asn1crypto (when a request is built: ~8 MB resident otherwise held by every agent, issue 18).
"""
from __future__ import annotations

import hashlib
from typing import Callable

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from agent.ops.errors import VerificationError

SHA256_DIGEST_INFO = bytes.fromhex("3031300d060960864801650304020105000420")

RawSign = Callable[[bytes], bytes]  # modulus-sized block in, signature out


def pkcs1_v15_sha256_block(message: bytes, modulus_bytes: int) -> bytes:
    """EMSA-PKCS1-v1_5 encoding of SHA-256(message) for a key of ``modulus_bytes``."""
    t = SHA256_DIGEST_INFO + hashlib.sha256(message).digest()
    if modulus_bytes < len(t) + 11:
        raise ValueError(f"a {modulus_bytes * 8}-bit key is too small for SHA-256 PKCS#1 v1.5")
    return b"\x00\x01" + b"\xff" * (modulus_bytes - len(t) - 3) + b"\x00" + t


def build_csr(public_key: rsa.RSAPublicKey, subject: list[tuple[str, str]], raw_sign: RawSign) -> bytes:
    """A DER PKCS#10 request for ``public_key``, signed through ``raw_sign``.

    ``subject`` is a list of (asn1crypto attribute name, value) pairs, e.g.
    ``[("country_name", "IT"), ("common_name", "...")]``. The signature is
    checked against ``public_key`` before the request is returned, so a card
    that signs with the wrong key is caught here, not at the CA.
    """
    spki_der = public_key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    nbytes = (public_key.key_size + 7) // 8
    return build_signed_csr(spki_der, subject, "sha256_rsa", lambda tbs: raw_sign(pkcs1_v15_sha256_block(tbs, nbytes)),
                            who="the card")


def build_signed_csr(spki_der: bytes, subject: list[tuple[str, str]], algorithm: str,
                     sign: Callable[[bytes], bytes], *, who: str) -> bytes:
    """A DER PKCS#10 request for the key of ``spki_der``, ``sign(tbs)`` giving the signature of its
    ``algorithm`` (asn1crypto's name: "sha256_rsa", "sha256_ecdsa") over the request info; checked
    before it is returned (``who`` names the signer in the error). Also used for the station key in a
    PKCS#11 token (``agent.uplink.enroll``)."""
    from asn1crypto import csr as asn1_csr
    from asn1crypto import keys as asn1_keys
    from asn1crypto import x509 as asn1_x509

    name = asn1_x509.Name.build(dict(subject), use_printable=False)
    # asn1crypto's Name.build orders attributes itself; keep it, CAs re-order anyway.
    info = asn1_csr.CertificationRequestInfo({
        "version": "v1",
        "subject": name,
        "subject_pk_info": asn1_keys.PublicKeyInfo.load(spki_der),
        "attributes": [],
    })
    signature = sign(info.dump())
    req = asn1_csr.CertificationRequest({
        "certification_request_info": info,
        "signature_algorithm": {"algorithm": algorithm},
        "signature": signature,
    })
    der = req.dump()
    parsed = x509.load_der_x509_csr(der)
    if not parsed.is_signature_valid:
        raise VerificationError(f"{who}'s signature over the CSR does not verify with the key it generated")
    return der
