"""Per-card issuer (administration) key diversification: the schemes a card model may name.

A card's administration key is never a model-wide key: it is derived from a
master key and the card's serial (``[dialect] admin_key_scheme``). One scheme
today, ``aes128-ecb-serial``::

    D      = the card's EF_IDCarta serial, 16 ASCII bytes (exactly one AES block)
    K_card = AES-128-ECB(K_master, D)

the single-block "encrypt the diversification data under the master key"
derivation of EMV master-key derivation and GlobalPlatform key
diversification. It is chosen because a PKCS#11 token computes it INSIDE the
token with ``CKM_AES_ECB_ENCRYPT_DATA`` (C_DeriveKey), which SoftHSM2 2.6 and
common HSMs offer, whereas NIST SP 800-108 counter mode with AES-CMAC is no
C_DeriveKey mechanism there (it could only be computed with C_Sign, which
would put the derived key's bytes outside the token). Distinct serials give
distinct blocks and AES is a permutation, so two cards never share a key.

Checked again for issue 12 item 1 (`pkcs11-tool -M` on SoftHSM2 2.6.1): the
token lists AES-ECB-ENCRYPT-DATA and AES-CBC-ENCRYPT-DATA (derive) and
AES-CMAC (sign/verify only), no CKM_SP800_108_COUNTER_KDF. SP 800-108's
K = CMAC(master, [1] || label || 0x00 || context || [L]) through C_Sign would
hand K to this process; nor can ENCRYPT_DATA build it in the token (CMAC needs
the subkey K1 = dbl(AES(master, 0)) XORed into the last block, which a
sensitive key never gives, and CBC-ENCRYPT-DATA keeps the FIRST block of the
ciphertext, not the MAC's last). So the standard KDF would cost the rule that
matters more here (no card key outside the HSM); a model may name another
scheme here (``SCHEMES``) when a vendor documents one its HSM computes inside.

This module only says what the diversification data is; the personalizer's
token does the derivation (personalizer.cardadmin.keys) and the emulator does
the same in software (firmware_profiles.emulator.admin). Imports nothing.
"""
from __future__ import annotations

SCHEME_AES128_ECB_SERIAL = "aes128-ecb-serial"
SCHEMES = (SCHEME_AES128_ECB_SERIAL,)
BLOCK_BYTES = 16


class DiversificationError(ValueError):
    """A serial a scheme cannot diversify (not 16 printable ASCII characters)."""


def diversification_block(scheme: str, serial: str) -> bytes:
    """The 16-byte block that ``scheme`` encrypts under the master key for card ``serial``."""
    if scheme not in SCHEMES:
        raise DiversificationError(f"unknown admin key scheme {scheme!r} (known: {', '.join(SCHEMES)})")
    if not (isinstance(serial, str) and len(serial) == BLOCK_BYTES and serial.isascii() and serial.isprintable()):
        raise DiversificationError(f"card serial must be {BLOCK_BYTES} printable ASCII characters, got {serial!r}")
    return serial.encode("ascii")
