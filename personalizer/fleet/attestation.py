"""Is a device's report of an installed release true? Verify its attestation.

A ``FleetAttestation`` is the device's signature (ECDSA P-256 / SHA-256, by a key that never leaves the
device) over a serialized ``FleetInstalledManifest``, with the device key's certificate. The
certificate must be issued directly by the attestation CA of the device's model (``ModelRoots``: one
certificate per model id) and name the device's serial as its subject serialNumber; the manifest must
name the command, the device, its model and the release asked for. A host that reports success without
the device having installed the release has no such signature; an attestation replayed from another
command names another command id. ``verify`` returns None when valid, else the reason.

Model roots are PEM files ``<model id>.pem`` in a directory (``ModelRoots.load``); the emulator's
models have a TEST attestation CA whose device keys the tests hold (the agent side signs with them).
Imports cryptography and proto only.
"""
from __future__ import annotations

from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from google.protobuf.message import DecodeError

from proto.cns.v1 import fleet_pb2 as pb

MAX_BYTES = 16384


class ModelRoots:
    def __init__(self, roots: dict[str, x509.Certificate] | None = None):
        self._roots = dict(roots or {})

    @classmethod
    def load(cls, directory: Path) -> "ModelRoots":
        roots = {}
        if directory.is_dir():
            for f in sorted(directory.glob("*.pem")):
                roots[f.stem] = x509.load_pem_x509_certificate(f.read_bytes())
        return cls(roots)

    def get(self, model: str) -> x509.Certificate | None:
        return self._roots.get(model)


def verify(roots: ModelRoots, raw: bytes, *, command_id: str, serial: str, model: str, release: str) -> str | None:
    if not raw:
        return "no attestation: the device did not sign what it installed"
    if len(raw) > MAX_BYTES:
        return "attestation too large"
    try:
        att = pb.FleetAttestation.FromString(raw)
        manifest = pb.FleetInstalledManifest.FromString(att.manifest)
        cert = x509.load_der_x509_certificate(att.device_certificate)
    except (DecodeError, ValueError):
        return "attestation unreadable"
    root = roots.get(model)
    if root is None:
        return f"no attestation CA known for model {model!r}"
    try:
        cert.verify_directly_issued_by(root)
    except (ValueError, TypeError, InvalidSignature):
        return "the device certificate is not issued by its model's attestation CA"
    names = cert.subject.get_attributes_for_oid(NameOID.SERIAL_NUMBER)
    if [n.value for n in names] != [serial]:
        return "the device certificate names another device"
    key = cert.public_key()
    if not isinstance(key, ec.EllipticCurvePublicKey):
        return "the device key is not an EC key"
    try:
        key.verify(att.signature, att.manifest, ec.ECDSA(hashes.SHA256()))
    except InvalidSignature:
        return "the manifest's signature does not verify"
    if manifest.command_id != command_id:
        return "the manifest names another command (a replayed attestation)"
    if (manifest.device_serial, manifest.model, manifest.release) != (serial, model, release):
        return "the manifest names another device, model or release than the one asked for"
    return None
