"""Test helpers for the CA tier: a throw-away CA directory, CSRs, an embedded CA factory."""
from __future__ import annotations

import datetime as dt
import functools
import shutil
import subprocess
import sys
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

from personalizer import deploy
from personalizer.ca.base import CertificateSubject
from personalizer.ca.embedded import EmbeddedCA
from personalizer.ca.keys import FileSigner
from personalizer.rules.validation import Holder

VENV_BIN = Path(sys.executable).parent
CA_KEY_BITS = 2048
HOLDER = Holder("RSSMRA80A01H501U", "Mario", "Rossi", dt.date(1980, 1, 1))
SUBJECT = CertificateSubject(HOLDER, "7420000000000001", "ABCDEF0123456789")


@functools.cache
def _template(key_bits: int = CA_KEY_BITS) -> Path:
    """One CA per test session (RSA key generation is the slow part); copied per test."""
    import tempfile
    d = Path(tempfile.mkdtemp(prefix="ca-template-"))
    deploy.create_ca(d, key_bits=key_bits)
    return d


def ca_dir(tmp_path: Path) -> Path:
    d = tmp_path / "ca"
    shutil.copytree(_template(), d)
    return d


def make_ca(directory: Path | None, *, template: Path | None = None) -> EmbeddedCA:
    src = template or directory
    root = x509.load_pem_x509_certificate((src / "root.pem").read_bytes())
    issuing = x509.load_pem_x509_certificate((src / "issuing.pem").read_bytes())
    signer = FileSigner.load(src / "issuing.key.pem", src / "passphrase")
    return EmbeddedCA(signer=signer, issuing_cert=issuing, root_cert=root, ca_dir=directory)


@functools.cache
def _key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(65537, 2048)


def csr() -> x509.CertificateSigningRequest:
    name = x509.Name([x509.NameAttribute(NameOID.COUNTRY_NAME, "IT"),
                      x509.NameAttribute(NameOID.SERIAL_NUMBER, "TINIT-" + HOLDER.codice_fiscale)])
    return x509.CertificateSigningRequestBuilder().subject_name(name).sign(_key(), hashes.SHA256())


def pem(obj) -> bytes:
    return obj.public_bytes(serialization.Encoding.PEM)


def run(*args, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([str(a) for a in args], capture_output=True, text=True, timeout=timeout)
