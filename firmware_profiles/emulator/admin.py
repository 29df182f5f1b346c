"""The emulated card's issuer key: the model's TEST master key diversified per card, in software.

``card_key(model, serial)`` is what the personalizer's token derives inside
the token for a real card (firmware_profiles.admin_keys names the scheme);
here it is computed with ``cryptography`` because the emulator plays the card
factory that loaded the diversified key. ``cryptogram`` is the answer to a
challenge (SCHEMA.md §4.1). TEST keys only: tests and the emulator use these.

Imports ``firmware_profiles.admin_keys`` only.
"""
from __future__ import annotations

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from firmware_profiles.admin_keys import diversification_block


def _aes_ecb(key: bytes, block: bytes) -> bytes:
    enc = Cipher(algorithms.AES(key), modes.ECB()).encryptor()
    return enc.update(block) + enc.finalize()


def card_key(model, serial: str) -> bytes:
    """The emulated card ``serial``'s administration key (its model's TEST master key, diversified)."""
    d = model.dialect
    return _aes_ecb(d.admin_test_master_key, diversification_block(d.admin_key_scheme, serial))


def wrap(key: bytes, new_key: bytes) -> bytes:
    """PUT KEY's data: ``new_key`` wrapped under ``key`` (RFC 3394 AES key wrap)."""
    from cryptography.hazmat.primitives.keywrap import aes_key_wrap
    return aes_key_wrap(key, new_key)


def unwrap(key: bytes, wrapped: bytes) -> bytes:
    """The key PUT KEY carries; ``ValueError`` when it was not wrapped under ``key`` (integrity check)."""
    from cryptography.hazmat.primitives.keywrap import InvalidUnwrap, aes_key_unwrap
    try:
        return aes_key_unwrap(key, wrapped)
    except InvalidUnwrap:
        raise ValueError("not wrapped under the card's current key") from None


def cryptogram(key: bytes, challenge: bytes) -> bytes:
    """EXTERNAL AUTHENTICATE's data for ``challenge`` under ``key``: AES-128-ECB(key, challenge)."""
    return _aes_ecb(key, challenge)


class SoftwareAuthenticator:
    """A ``CardAuthenticator`` (agent.card.issuer) for EMULATED cards of ``models``, computed in software
    from their TEST master keys: for tests of the card layer that run without a personalizer."""

    def __init__(self, *models) -> None:
        self._models = {m.id: m for m in models}

    def cryptogram(self, *, model_id: str, serial: str, challenge: bytes, transport_key: bool = False) -> bytes:
        m = self._models[model_id]
        return cryptogram(m.dialect.transport_test_key if transport_key else card_key(m, serial), challenge)

    def wrapped_card_key(self, *, model_id: str, serial: str) -> bytes:
        m = self._models[model_id]
        return wrap(m.dialect.transport_test_key, card_key(m, serial))
