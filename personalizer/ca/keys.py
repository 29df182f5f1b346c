"""CA key stores: where the issuing key lives and how it signs.

Two implementations of ``Signer``:

- ``FileSigner``: an encrypted PKCS#8 PEM file (mode 0600), passphrase from a
  separate 0600 file. The key is parsed once at start-up.
- ``Pkcs11Signer``: the key stays in a PKCS#11 token (SoftHSM2 in tests, an
  HSM in production). The TBSCertificate is built by ``cryptography`` (signed
  once with a throw-away key so the library emits it), then the token signs
  the TBS bytes with CKM_SHA256_RSA_PKCS and the certificate is reassembled
  with asn1crypto. The result is checked against the CA public key.

Must not import grpc, proto or the store. Never logs passphrases or PINs.
"""
from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Protocol

from asn1crypto import crl as asn1_crl
from asn1crypto import x509 as asn1_x509
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from personalizer.errors import CAError, CAUnavailable

SIGNATURE_HASH = hashes.SHA256()
PRIVATE_FILE_MODE = 0o600
THROWAWAY_KEY_BITS = 2048


class Signer(Protocol):
    def public_key(self) -> rsa.RSAPublicKey: ...

    def sign_certificate(self, builder: x509.CertificateBuilder) -> x509.Certificate: ...

    def sign_crl(self, builder: x509.CertificateRevocationListBuilder) -> x509.CertificateRevocationList: ...

    def close(self) -> None: ...


def write_private(path: Path, data: bytes) -> None:
    """Write a secret atomically with mode 0600 (temporary file, fsync, os.replace)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, PRIVATE_FILE_MODE)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def save_encrypted_key(path: Path, key, passphrase: bytes) -> None:
    write_private(path, key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(passphrase)))


class FileSigner:
    def __init__(self, key: rsa.RSAPrivateKey):
        self._key = key

    @classmethod
    def load(cls, key_path: Path, passphrase_path: Path) -> "FileSigner":
        try:
            passphrase = passphrase_path.read_bytes().strip()
            key = serialization.load_pem_private_key(key_path.read_bytes(), passphrase)
        except (OSError, ValueError, TypeError) as exc:
            raise CAError(f"cannot load CA key {key_path} (wrong passphrase file or damaged key)") from exc
        if not isinstance(key, rsa.RSAPrivateKey):
            raise CAError(f"CA key {key_path} is not RSA")
        return cls(key)

    def public_key(self) -> rsa.RSAPublicKey:
        return self._key.public_key()

    def sign_certificate(self, builder: x509.CertificateBuilder) -> x509.Certificate:
        return builder.sign(self._key, SIGNATURE_HASH)

    def sign_crl(self, builder: x509.CertificateRevocationListBuilder) -> x509.CertificateRevocationList:
        return builder.sign(self._key, SIGNATURE_HASH)

    def raw_sign(self, data: bytes) -> bytes:
        """PKCS#1 v1.5 SHA-256 over data (used by the benchmark's reference figure)."""
        return self._key.sign(data, padding.PKCS1v15(), SIGNATURE_HASH)

    def close(self) -> None:
        pass


_throwaway: rsa.RSAPrivateKey | None = None
_throwaway_lock = threading.Lock()


def _throwaway_key() -> rsa.RSAPrivateKey:
    global _throwaway
    with _throwaway_lock:
        if _throwaway is None:
            _throwaway = rsa.generate_private_key(65537, THROWAWAY_KEY_BITS)
        return _throwaway


class Pkcs11Signer:
    """Signs with an RSA private key held in a PKCS#11 token, found by label."""

    def __init__(self, *, module: str, token_label: str, pin: str, key_label: str):
        import pkcs11  # python-pkcs11; imported here so file-only deployments need no module
        from pkcs11 import Attribute, KeyType, ObjectClass

        try:
            lib = pkcs11.lib(module)
            token = lib.get_token(token_label=token_label)
            self._session = token.open(user_pin=pin)
            self._priv = self._session.get_key(ObjectClass.PRIVATE_KEY, KeyType.RSA, label=key_label)
            pub = self._session.get_key(ObjectClass.PUBLIC_KEY, KeyType.RSA, label=key_label)
            n = int.from_bytes(pub[Attribute.MODULUS], "big")
            e = int.from_bytes(pub[Attribute.PUBLIC_EXPONENT], "big")
        except pkcs11.PKCS11Error as exc:
            raise CAUnavailable(f"PKCS#11 token {token_label!r}: {type(exc).__name__}") from exc
        self._pub = rsa.RSAPublicNumbers(e, n).public_key()
        self._mechanism = pkcs11.Mechanism.SHA256_RSA_PKCS
        self._errors = pkcs11.PKCS11Error
        self._lock = threading.Lock()   # one session; PKCS#11 sessions are not thread-safe

    def public_key(self) -> rsa.RSAPublicKey:
        return self._pub

    def raw_sign(self, data: bytes) -> bytes:
        with self._lock:
            try:
                return self._priv.sign(data, mechanism=self._mechanism)
            except self._errors as exc:
                raise CAUnavailable(f"PKCS#11 signing failed: {type(exc).__name__}") from exc

    def sign_certificate(self, builder: x509.CertificateBuilder) -> x509.Certificate:
        draft = asn1_x509.Certificate.load(builder.sign(_throwaway_key(), SIGNATURE_HASH).public_bytes(
            serialization.Encoding.DER))
        tbs = draft["tbs_certificate"]
        signature = self.raw_sign(tbs.dump())
        der = asn1_x509.Certificate({
            "tbs_certificate": tbs,
            "signature_algorithm": draft["signature_algorithm"],
            "signature_value": signature,
        }).dump()
        cert = x509.load_der_x509_certificate(der)
        try:
            self._pub.verify(cert.signature, cert.tbs_certificate_bytes, padding.PKCS1v15(), SIGNATURE_HASH)
        except Exception as exc:
            raise CAError("PKCS#11 signature does not verify with the CA public key") from exc
        return cert

    def sign_crl(self, builder: x509.CertificateRevocationListBuilder) -> x509.CertificateRevocationList:
        """Same pattern as certificates: draft with a throw-away key, token signs the TBSCertList."""
        draft = asn1_crl.CertificateList.load(builder.sign(_throwaway_key(), SIGNATURE_HASH).public_bytes(
            serialization.Encoding.DER))
        tbs = draft["tbs_cert_list"]
        signature = self.raw_sign(tbs.dump())
        der = asn1_crl.CertificateList({
            "tbs_cert_list": tbs,
            "signature_algorithm": draft["signature_algorithm"],
            "signature": signature,
        }).dump()
        crl = x509.load_der_x509_crl(der)
        if not crl.is_signature_valid(self._pub):
            raise CAError("PKCS#11 CRL signature does not verify with the CA public key")
        return crl

    def close(self) -> None:
        try:
            self._session.close()
        except Exception:
            pass
