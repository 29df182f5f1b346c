"""Proof that a self-renewal's caller holds the card (issue 12): single-use nonces and the proof's check.

``HolderRenewal.AuthenticateCard`` answers a card's issuer challenge only after
``check_proof``: the presented certificate's key (the card's live CNS
authentication key, PIN verified on the card) signed, RSA PKCS#1 v1.5 SHA-256,
``cns_spec.card_admin_proof.proof_message(nonce, serial, operation id)`` over a
nonce this personalizer issued for that card and certificate (``NonceBook``).

``NonceBook``: a nonce is 32 random bytes bound to (card serial, certificate
SHA-256, the caller's address), valid ``ttl_s`` seconds and taken at most once
— taken (gone) on the first attempt that names it, whether the proof then
verifies or not, so an old or failed proof never buys a second try. Memory is
bounded: at most ``per_card`` outstanding nonces per card and address (the
oldest dropped: someone else asking for nonces of the same card, with its
public certificate, never drops the holder's) and ``capacity`` in all
(expired ones, then the oldest, dropped). Nonces live in this daemon's
memory: a restart invalidates every outstanding one (the agent just asks again).

Pure apart from the clock passed in; imports cryptography, ``cns_spec`` and ``errors``.
"""
from __future__ import annotations

import hashlib
import secrets
import threading
import time
from collections import OrderedDict

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from cns_spec.card_admin_proof import NONCE_BYTES, proof_message
from personalizer.errors import PermissionDenied

DEFAULT_TTL_S = 120.0
DEFAULT_CAPACITY = 10_000
DEFAULT_PER_CARD = 4


def fingerprint(certificate_der: bytes) -> bytes:
    return hashlib.sha256(certificate_der).digest()


class NonceBook:
    def __init__(self, *, ttl_s: float = DEFAULT_TTL_S, capacity: int = DEFAULT_CAPACITY,
                 per_card: int = DEFAULT_PER_CARD, clock=time.monotonic):
        self.ttl_s, self._capacity, self._per_card, self._clock = ttl_s, capacity, per_card, clock
        self._book: OrderedDict[bytes, tuple[str, bytes, str, float]] = OrderedDict()   # nonce → (serial, fp, peer, expiry)
        self._lock = threading.Lock()

    def issue(self, serial: str, certificate_der: bytes, peer: str = "") -> bytes:
        nonce = secrets.token_bytes(NONCE_BYTES)
        now = self._clock()
        with self._lock:
            for n in [n for n, e in self._book.items() if e[3] <= now]:
                del self._book[n]
            mine = [n for n, e in self._book.items() if (e[0], e[2]) == (serial, peer)]
            for n in mine[:max(0, len(mine) - self._per_card + 1)]:
                del self._book[n]
            while len(self._book) >= self._capacity:
                self._book.popitem(last=False)
            self._book[nonce] = (serial, fingerprint(certificate_der), peer, now + self.ttl_s)
        return nonce

    def take(self, nonce: bytes, serial: str, certificate_der: bytes, peer: str = "") -> None:
        """The nonce, consumed; ``PermissionDenied`` when it is unknown, used, expired, or was issued for another
        card, certificate or address."""
        with self._lock:
            entry = self._book.pop(bytes(nonce), None)
        if entry is None or entry[3] <= self._clock() or entry[:3] != (serial, fingerprint(certificate_der), peer):
            raise PermissionDenied("the card administration nonce is unknown, already used or expired (a proof is "
                                   "good for one answer): ask for a fresh nonce and have the card sign it")


def check_proof(cert: x509.Certificate, *, nonce: bytes, serial: str, operation_id: str, proof: bytes) -> None:
    """``PermissionDenied`` unless ``proof`` is ``cert``'s key's signature over the proof message."""
    key = cert.public_key()
    if not proof:
        raise PermissionDenied("card administration needs the card's proof (its authentication key's signature "
                               "over a fresh nonce after the holder's PIN); a certificate alone is not enough")
    if not isinstance(key, rsa.RSAPublicKey):
        raise PermissionDenied("the certificate's key is not an RSA key: no card proof can verify with it")
    try:
        key.verify(proof, proof_message(nonce, serial, operation_id), padding.PKCS1v15(), hashes.SHA256())
    except (InvalidSignature, ValueError):
        raise PermissionDenied("the card's proof does not verify with the presented certificate for this nonce, "
                               "card and operation: the card that signed is not the card of that certificate, or "
                               "the proof was made for something else") from None
