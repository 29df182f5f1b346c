"""Signing keys of the release repository: Ed25519, one PEM (PKCS#8) file per key, mode 0600.

Offline keys (root, targets) go to a folder meant for removable media that is mounted only to sign;
online keys (snapshot, timestamp) to the folder the publishing host keeps. A key file is named
``<role>-<n>.pem``; the role is read back from the name.
"""
from __future__ import annotations

import os
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import load_pem_private_key
from securesystemslib.signer import CryptoSigner

OFFLINE_ROLES = ("root", "targets")
ONLINE_ROLES = ("snapshot", "timestamp")


class KeyFileError(ValueError):
    """A key file that cannot be used (names the file)."""


def generate(folder: Path, role: str) -> tuple[Path, CryptoSigner]:
    """A new key for ``role`` in ``folder`` (created 0700), never overwriting an existing file."""
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    n = 1
    while (folder / f"{role}-{n}.pem").exists():
        n += 1
    path = folder / f"{role}-{n}.pem"
    signer = CryptoSigner(Ed25519PrivateKey.generate())
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(signer.private_bytes)
    return path, signer


def load(path: Path) -> CryptoSigner:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise KeyFileError(f"{path}: cannot read the key: {exc.strerror or exc}") from None
    try:
        return CryptoSigner(load_pem_private_key(data, password=None))
    except (ValueError, TypeError) as exc:
        raise KeyFileError(f"{path}: not an unencrypted PEM private key: {exc}") from None


def role_of(path: Path) -> str:
    return path.name.rsplit("-", 1)[0]


def load_folder(folder: Path, roles: tuple[str, ...] | None = None) -> dict[str, list[CryptoSigner]]:
    """Every ``<role>-<n>.pem`` in ``folder`` (only ``roles`` when given), by role."""
    if not folder.is_dir():
        raise KeyFileError(f"{folder}: no such key folder")
    out: dict[str, list[CryptoSigner]] = {}
    for p in sorted(folder.glob("*-*.pem")):
        role = role_of(p)
        if roles is None or role in roles:
            out.setdefault(role, []).append(load(p))
    return out
