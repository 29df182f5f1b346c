"""Test helpers to make an emulated token: the TEST release key (from a published seed: it
signs images for the test models only, never for a real token), an ISO 9660 CD-ROM image
(pycdlib), and ``make_token`` (flash file + chip + factory CD-ROM).

Imports pycdlib, cryptography, ``firmware_profiles`` and siblings.
"""
from __future__ import annotations

import hashlib
import io
from pathlib import Path

import pycdlib
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from firmware_profiles.emulator.card import EmulatedCard
from firmware_profiles.model import load_models
from firmware_profiles.usbemu.flash import Flash, read_meta, write_meta
from firmware_profiles.usbemu.token import EmulatedToken
from firmware_profiles.usbtoken.model import TokenModel

TEST_SEED = b"cns-token TEST release key"


def test_release_key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.from_private_bytes(hashlib.sha256(TEST_SEED).digest())


def build_cdrom_image(files: dict[str, bytes], volume: str = "CNS_TOOLS") -> bytes:
    """An ISO 9660 image holding ``files`` (names like "README.TXT"), 2048-byte sectors."""
    iso = pycdlib.PyCdlib()
    iso.new(interchange_level=3, vol_ident=volume)
    for name, data in sorted(files.items()):
        iso.add_fp(io.BytesIO(data), len(data), f"/{name.upper()};1")
    out = io.BytesIO()
    iso.write_fp(out)
    iso.close()
    return out.getvalue()


def make_token(model: TokenModel, flash_path: str | Path, *, card: EmulatedCard | None = None,
               cdrom: bytes | None = None, cdrom_version: str = "1.0.0",
               base: str | Path | None = None) -> EmulatedToken:
    """A token on ``flash_path`` (created sparse); a blank flash gets the factory CD-ROM image. ``base``: a
    factory token's flash file this one is a clone of (``Flash``: it reads what it has not written from there;
    the base is never written again)."""
    flash = Flash(flash_path, model.flash.size_bytes, page=model.flash.block_bytes, base=base)
    if card is None:
        card = EmulatedCard(load_models()[model.chip])
    fresh = read_meta(flash) is None
    token = EmulatedToken(model, flash, card)
    if fresh:
        image = cdrom if cdrom is not None else build_cdrom_image(
            {"README.TXT": b"CNS signing software (factory image)\n"})
        off, _ = model.flash.region("cdrom")
        flash.write(off, image)
        meta = dict(token.meta)
        meta["images"] = dict(meta["images"], cdrom={"version": cdrom_version, "length": len(image),
                                                     "sha256": hashlib.sha256(image).hexdigest()})
        token.meta = write_meta(flash, meta)
        token.power_up()
    return token
