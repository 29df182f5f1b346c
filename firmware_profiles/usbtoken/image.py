"""Signed token images (firmware and partition images): the one implementation of the format,
read by the agent (verify before a byte is sent) and by the emulated bootloader (verify at
manifest). SCHEMA.md §10.

Format: ``b"CNSIMG1\\0"``, u32 BE header length, UTF-8 JSON header, payload, 64-byte Ed25519
signature over everything before it. Header keys: ``kind`` ("firmware" | "cdrom" | "disk"),
``model`` (token model id), ``version``, ``length``, ``sha256`` (of the payload),
``min_bootloader`` (firmware), ``downgrade`` (bool: the release allows installing over a newer one).

Imports ``cryptography`` (when an image is verified: the idle agent, which imports this module, does not
load it) and ``firmware_profiles.usbtoken.model`` only.
"""
from __future__ import annotations

import hashlib
import json
import struct
from dataclasses import dataclass

from typing import TYPE_CHECKING

from firmware_profiles.usbtoken.model import TokenModel, parse_version

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

MAGIC = b"CNSIMG1\0"
KINDS = ("firmware", "cdrom", "disk")
MAX_HEADER = 4096


class ImageError(ValueError):
    """An image that must not be installed; the message says why and what to do."""


@dataclass(frozen=True)
class Image:
    kind: str
    model: str
    version: str
    payload: bytes | memoryview   # a read-only view into the signed image (parse_image)
    sha256: str
    min_bootloader: str | None
    downgrade: bool


def build_image(key: Ed25519PrivateKey, *, kind: str, model: str, version: str, payload: bytes,
                min_bootloader: str | None = None, downgrade: bool = False) -> bytes:
    """A signed image (release tooling and tests)."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}")
    parse_version(version)
    header = {"kind": kind, "model": model, "version": version, "length": len(payload),
              "sha256": hashlib.sha256(payload).hexdigest(), "downgrade": bool(downgrade)}
    if min_bootloader is not None:
        header["min_bootloader"] = min_bootloader
    h = json.dumps(header, sort_keys=True).encode()
    body = MAGIC + struct.pack(">I", len(h)) + h + payload
    return body + key.sign(body)


def parse_image(blob: bytes, public_key: bytes, *, payload_checked: bool = False) -> Image:
    """Check structure, signature and hash; raises ImageError naming what is wrong.

    No copy of the image is made: the returned payload is a read-only view into ``blob`` (a ``bytes``; any
    other buffer is copied once first, so the view cannot change under the caller). ``payload_checked``:
    these exact bytes passed this check before (the caller holds their SHA-256 from then and compared it):
    the payload is not hashed again against its signed header; the signature is always verified."""
    if not isinstance(blob, bytes):
        blob = bytes(blob)
    if len(blob) < len(MAGIC) + 4 + 64 and blob[:len(MAGIC)] == MAGIC[:len(blob)] and blob:
        raise ImageError("image truncated (it ends before its header): download the release again")
    if len(blob) < len(MAGIC) + 4 + 64 or not blob.startswith(MAGIC):
        raise ImageError("not a CNS token image (bad magic or too short): download the release again")
    (hlen,) = struct.unpack(">I", blob[len(MAGIC):len(MAGIC) + 4])
    start = len(MAGIC) + 4
    if hlen > MAX_HEADER or start + hlen + 64 > len(blob):
        raise ImageError("image truncated or header too long: download the release again")
    view = memoryview(blob).toreadonly()
    body, sig = view[:-64], blob[-64:]
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
    try:
        Ed25519PublicKey.from_public_bytes(public_key).verify(sig, body)
    except InvalidSignature:
        raise ImageError("image signature does not verify with this model's release key: "
                         "it was altered or signed by someone else; do not install it") from None
    try:
        h = json.loads(blob[start:start + hlen])
        kind, model, version = h["kind"], h["model"], h["version"]
        length, digest = int(h["length"]), h["sha256"]
        parse_version(version)
    except (ValueError, KeyError, TypeError):
        raise ImageError("image header is not valid (signed, but malformed): report it to the release team") from None
    payload = body[start + hlen:]
    if kind not in KINDS or len(payload) != length or (
            not payload_checked and hashlib.sha256(payload).hexdigest() != digest):
        raise ImageError("image payload does not match its signed length/hash: download the release again")
    mb = h.get("min_bootloader")
    return Image(kind, model, version, payload, digest, mb, bool(h.get("downgrade", False)))


def check_for(image: Image, model: TokenModel, *, kind: str, current_version: str | None = None,
              bootloader: str | None = None) -> None:
    """The model's rules for installing ``image`` on a token of ``model``; raises ImageError."""
    if image.kind != kind:
        raise ImageError(f"this is a {image.kind} image, not a {kind} image: pick the right file")
    if image.model != model.id:
        raise ImageError(f"image is for token model {image.model}, this token is {model.id}: pick the right file")
    if kind != "firmware" or current_version is None:
        return
    if parse_version(image.version) < parse_version(current_version):
        if not (model.firmware.allow_downgrade and image.downgrade):
            raise ImageError(f"firmware {image.version} is older than the installed {current_version} and "
                             f"{'this release does not allow a downgrade' if model.firmware.allow_downgrade else 'model ' + model.id + ' allows no downgrade'}")
    need = image.min_bootloader or model.firmware.min_bootloader
    if bootloader is not None and parse_version(bootloader) < parse_version(need):
        raise ImageError(f"firmware {image.version} needs bootloader {need}, the token has {bootloader}")
