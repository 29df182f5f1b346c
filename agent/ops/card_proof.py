"""The holder's proof of holding the card, for central card administration during self-renewal (issue 12).

A holder's agent has no station certificate, so before the personalizer answers
the card's issuer challenge (``HolderRenewal.AuthenticateCard``) the card proves
it is there and its holder typed the PIN: its live CNS authentication key
(keyset CNS0) signs ``cns_spec.card_admin_proof.proof_message`` over the
personalizer's fresh nonce, RSA PKCS#1 v1.5 SHA-256, and the personalizer checks
it with the live authentication certificate read from the same card.

``live_certificate(issuer)`` and ``sign_proof(issuer, ...)`` run in the card's
worker thread inside its transaction, before GET CHALLENGE (a card's challenge
may be valid for the next command only). The PIN is used for the one VERIFY
and never kept. Imports ``agent.card``, ``agent.ops.csr`` and ``cns_spec``.
"""
from __future__ import annotations

from cryptography import x509

from agent.ops.csr import pkcs1_v15_sha256_block
from agent.ops.errors import PreconditionError
from cns_spec.card_admin_proof import proof_message
from cns_spec.profiles import CNS_AUTH, KEYSET_OF_PROFILE


def _keyset(issuer):
    return issuer.model.keyset(KEYSET_OF_PROFILE[CNS_AUTH])


def live_certificate(issuer) -> bytes:
    """The card's live CNS authentication certificate (DER), the one its live key signs for."""
    der = issuer.read_ef(_keyset(issuer).cert_path)
    if not der:
        raise PreconditionError("the card carries no authentication certificate: it cannot prove its holder "
                                "(it is not personalized)")
    return der


def sign_proof(issuer, *, certificate_der: bytes, nonce: bytes, serial: str, operation_id: str,
               pin: str | None) -> bytes:
    """The live authentication key's signature over the proof message; the PIN verified first when given
    (without it the card must already hold the holder's PIN verification)."""
    ks = _keyset(issuer)
    message = proof_message(nonce, serial, operation_id)
    nbytes = (x509.load_der_x509_certificate(certificate_der).public_key().key_size + 7) // 8
    if pin is not None:
        issuer.cns.verify_pin(pin, ks.name)
    return issuer.raw_sign(ks, ks.key_ref, pkcs1_v15_sha256_block(message, nbytes))
