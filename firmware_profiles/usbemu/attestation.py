"""The emulated token's device key: it signs the token's installed release manifest (issue 15 item 3, issue 14).

Each emulated token holds an ECDSA P-256 device key and its certificate (subject serialNumber = the
token's USB serial), issued by the TEST attestation CA of its model (``model_ca``). Both are derived
from a published seed, like the TEST release key (``signing.py``): they attest emulated tokens only,
never a real one; only a test deployment writes ``model_ca(model).pem()`` as that model's attestation
root (the personalizer's ``fleet-model-roots/<model>.pem``).

``attest(request, ...)`` is the token's side of the management request ``OP_ATTEST`` (SCHEMA.md §10):
the host names the command (``nonce``) and the release with the component versions it consists of;
the token answers only when what it runs is exactly that and committed (firmware running that
version, no download pending; each partition on that version with no switch left unconfirmed), with
an installed-release manifest it composes itself and its signature. The manifest is the wire format
``cns.v1.FleetInstalledManifest`` (fields 1-5, encoded here as the device's firmware would; the
emulator imports nothing of ours). A host that did not install the release gets a refusal, not a
signature.

Imports cryptography only.
"""
from __future__ import annotations

import datetime as dt
import functools
import hashlib
import json
import time

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

TEST_SEED = b"cns-token TEST attestation key"
_ORDER = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551   # P-256 group order
_EPOCH = dt.datetime(2025, 1, 1, tzinfo=dt.timezone.utc)


class AttestRefused(Exception):
    """The token does not run what the host asks it to attest."""


def _key(*parts: str) -> ec.EllipticCurvePrivateKey:
    d = int.from_bytes(hashlib.sha256(TEST_SEED + b"\0" + "\0".join(parts).encode()).digest(), "big")
    return ec.derive_private_key(d % (_ORDER - 1) + 1, ec.SECP256R1())


class ModelCA:
    def __init__(self, model: str):
        self.model = model
        self.key = _key("ca", model)
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"TEST attestation CA {model}")])
        self.cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
                     .public_key(self.key.public_key()).serial_number(_serial("ca", model))
                     .not_valid_before(_EPOCH).not_valid_after(_EPOCH + dt.timedelta(days=3650))
                     .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
                     .sign(self.key, hashes.SHA256()))

    def pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)


def _serial(*parts: str) -> int:
    return int.from_bytes(hashlib.sha256("\0".join(parts).encode()).digest()[:16], "big") >> 1


@functools.lru_cache(maxsize=64)
def model_ca(model: str) -> ModelCA:
    return ModelCA(model)


@functools.lru_cache(maxsize=1024)
def device_identity(model: str, serial: str) -> tuple[ec.EllipticCurvePrivateKey, bytes]:
    """(device key, certificate DER) of the emulated token ``serial`` of ``model``."""
    ca = model_ca(model)
    key = _key("device", model, serial)
    cert = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.SERIAL_NUMBER, serial)]))
            .issuer_name(ca.cert.subject).public_key(key.public_key()).serial_number(_serial("device", model, serial))
            .not_valid_before(_EPOCH).not_valid_after(_EPOCH + dt.timedelta(days=3650))
            .sign(ca.key, hashes.SHA256()))
    return key, cert.public_bytes(serialization.Encoding.DER)


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b, n = n & 0x7F, n >> 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def installed_manifest(command_id: str, serial: str, model: str, release: str, installed_at: int) -> bytes:
    """``cns.v1.FleetInstalledManifest`` on the wire: strings 1-4 (length-delimited), installed_at 5 (varint)."""
    out = b""
    for field, text in ((1, command_id), (2, serial), (3, model), (4, release)):
        if text:
            raw = text.encode()
            out += bytes([field << 3 | 2]) + _varint(len(raw)) + raw
    return out + (bytes([5 << 3]) + _varint(installed_at) if installed_at else b"")


def attest(request: bytes, *, model: str, serial: str, meta: dict, clock=time.time) -> tuple[bytes, bytes, bytes]:
    """(manifest, signature, certificate DER) for ``request`` (JSON: nonce, release, components), or
    AttestRefused naming what the token runs instead."""
    try:
        req = json.loads(request)
        nonce, release, comps = str(req["nonce"]), str(req["release"]), dict(req["components"])
    except (ValueError, KeyError, TypeError) as exc:
        raise AttestRefused(f"malformed request ({exc})") from None
    if not (0 < len(nonce) <= 128 and 0 < len(release) <= 64) or not comps:
        raise AttestRefused("nonce, release and components are required")
    fw = meta["firmware"]
    have = {"firmware": fw["version"] if fw.get("valid") and not fw.get("pending") else "",
            **{p: img["version"] for p, img in meta["images"].items()}}
    for name, version in comps.items():
        if have.get(name) != version:
            raise AttestRefused(f"it runs {name} {have.get(name) or 'nothing valid'}, not {version}")
        if name in meta.get("previous", {}):
            raise AttestRefused(f"its {name} switch is not committed yet")
    manifest = installed_manifest(nonce, serial, model, release, int(clock()))
    key, cert = device_identity(model, serial)
    return manifest, key.sign(manifest, ec.ECDSA(hashes.SHA256())), cert
