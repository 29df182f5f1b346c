"""What a holder's card signs to get card administration during self-renewal (issue 12).

``HolderRenewal.AuthenticateCard`` answers a card's issuer challenge only for
a caller that proves it holds the card and its PIN: the card's CNS
authentication key (keyset CNS0, PIN verified) signs, RSA PKCS#1 v1.5 with
SHA-256, the message ``proof_message(nonce, card_serial, operation_id)``::

    "CNS-CARD-ADMIN-PROOF/1" 0x00 || nonce (32 bytes) || card serial (16 ASCII) || 0x00 || operation id (UTF-8)

``nonce`` is fresh from the personalizer (``HolderRenewal.CardAuthNonce``),
single-use and short-lived, so an old proof is worth nothing; the domain
prefix keeps this signature from ever being taken for another one the card
makes (a CSR, a renewal's proof of possession, a TLS client signature of
SHA-256 DigestInfo over other data). The agent makes the proof before it asks
the card for its challenge: a card's challenge may be valid for the next
command only.

Pure: standard library only, nothing of ours.
"""
from __future__ import annotations

DOMAIN = b"CNS-CARD-ADMIN-PROOF/1\x00"
NONCE_BYTES = 32
SERIAL_BYTES = 16
MAX_OPERATION_ID = 128


def proof_message(nonce: bytes, card_serial: str, operation_id: str = "") -> bytes:
    """The bytes the card signs; ``ValueError`` saying which input is malformed."""
    if not isinstance(nonce, (bytes, bytearray)) or len(nonce) != NONCE_BYTES:
        raise ValueError(f"the nonce must be {NONCE_BYTES} bytes (ask the personalizer for a fresh one)")
    if not (isinstance(card_serial, str) and len(card_serial) == SERIAL_BYTES and card_serial.isascii()
            and card_serial.isprintable()):
        raise ValueError(f"the card serial must be {SERIAL_BYTES} printable ASCII characters")
    op = operation_id.encode("utf-8")
    if len(op) > MAX_OPERATION_ID or b"\x00" in op:
        raise ValueError(f"the operation id must be at most {MAX_OPERATION_ID} bytes without NUL")
    return DOMAIN + bytes(nonce) + card_serial.encode("ascii") + b"\x00" + op


__all__ = ["DOMAIN", "NONCE_BYTES", "proof_message"]
