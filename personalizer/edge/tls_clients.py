"""Client certificates of the service TLS CA: chain verification and the client revocation list.

gRPC's TLS layer checks a client chain against the trust anchors but not the
anchors' basicConstraints path length: a leaf under a sub-CA that the TLS CA
signed (pathLen 0) is accepted there, while ``openssl verify`` refuses it.
``ClientTrust.check`` verifies the chain again with cryptography's X.509
verifier (RFC 5280 path validation: path length, validity, EKU clientAuth)
and refuses a certificate listed in the client CRL.

The client CRL (``[server] client_crl`` in personalizer.toml) is a CRL signed
by the TLS CA that lists revoked station, tool and admin certificates. The
daemon rereads it when the file changes (checked at most every
``RELOAD_CHECK_SECONDS``); a CRL that does not verify, or whose CRL number
goes backwards, is refused and the last good one stays in force.
``revoke`` adds a certificate to it (``cns-personalizer revoke-client``).

Imports cryptography and ``errors`` only; no grpc, no store.
"""
from __future__ import annotations

import datetime as _dt
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509.verification import PolicyBuilder, Store, VerificationError

from personalizer.errors import ConfigError, Unauthenticated
from cns_spec import reasons as spec_reasons

log = logging.getLogger(__name__)
RELOAD_CHECK_SECONDS = 1.0
CRL_VALIDITY = _dt.timedelta(days=365)
MAX_CHAIN_CERTS = 4            # leaf + intermediates a client may present
# a station certificate may carry any permanent revocation reason (cns_spec's names are cryptography's values)
REASONS = {name: x509.ReasonFlags(name) for name in spec_reasons.REVOCATION_REASONS}


def _pem_certs(data: bytes) -> list[x509.Certificate]:
    return x509.load_pem_x509_certificates(data)


def load_crl(data: bytes) -> x509.CertificateRevocationList:
    if data.lstrip().startswith(b"-----BEGIN"):
        return x509.load_pem_x509_crl(data)
    return x509.load_der_x509_crl(data)


def _crl_number(crl: x509.CertificateRevocationList) -> int:
    try:
        return crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number
    except x509.ExtensionNotFound:
        return 0


def _signer(crl: x509.CertificateRevocationList, anchors: list[x509.Certificate]) -> x509.Certificate | None:
    for ca in anchors:
        if ca.subject == crl.issuer and crl.is_signature_valid(ca.public_key()):
            return ca
    return None


@dataclass(frozen=True)
class _Revoked:
    number: int
    entries: frozenset[tuple[bytes, int]]     # (issuer name DER, serial)


def read_revocations(path: Path, anchors: list[x509.Certificate]) -> _Revoked:
    """The revoked (issuer, serial) pairs of the CRL at ``path``; ValueError if it is not one the anchors signed."""
    try:
        crl = load_crl(path.read_bytes())
    except OSError as exc:
        raise ValueError(f"cannot read {path}: {exc.strerror}") from None
    except ValueError:
        raise ValueError(f"{path} is not a CRL (PEM or DER)") from None
    signer = _signer(crl, anchors)
    if signer is None:
        raise ValueError(f"{path} is not a CRL signed by the client trust anchors")
    issuer = crl.issuer.public_bytes()
    return _Revoked(_crl_number(crl), frozenset((issuer, r.serial_number) for r in crl))


class ClientTrust:
    """Verifies a client's chain (path length included) and that its certificate is not revoked."""

    def __init__(self, anchors_pem: bytes, crl_path: Path | None = None, *,
                 clock: Callable[[], float] = time.monotonic):
        self._anchors = _pem_certs(anchors_pem)
        self._verifier = PolicyBuilder().store(Store(self._anchors)).build_client_verifier()
        self._crl_path = crl_path
        self._clock = clock
        self._checked_at = float("-inf")
        self._stamp: tuple | None = None
        self._revoked = _Revoked(-1, frozenset())
        if crl_path is not None:
            try:
                self._revoked = read_revocations(crl_path, self._anchors)
                self._stamp = self._file_stamp()
            except ValueError as exc:
                raise ConfigError(crl_path, "server.client_crl", str(exc)) from None

    def _file_stamp(self) -> tuple | None:
        try:
            st = os.stat(self._crl_path)
        except OSError:
            return None
        return (st.st_ino, st.st_mtime_ns, st.st_size)

    def _refresh(self) -> None:
        now = self._clock()
        if self._crl_path is None or now - self._checked_at < RELOAD_CHECK_SECONDS:
            return
        self._checked_at = now
        stamp = self._file_stamp()
        if stamp is None or stamp == self._stamp:
            return
        try:
            fresh = read_revocations(self._crl_path, self._anchors)
        except ValueError as exc:
            log.error("client CRL not reloaded, the previous one stays in force: %s", exc)
            self._stamp = stamp
            return
        if fresh.number < self._revoked.number:
            log.error("client CRL %s not reloaded: CRL number %d is older than %d in force",
                      self._crl_path, fresh.number, self._revoked.number)
        else:
            self._revoked = fresh
            log.info("client CRL reloaded: %d revoked certificate(s)", len(fresh.entries))
        self._stamp = stamp

    def verify_chain(self, leaf: x509.Certificate, intermediates: list[x509.Certificate]) -> None:
        """``Unauthenticated`` unless ``leaf`` chains to an anchor within every CA's path length."""
        if len(intermediates) >= MAX_CHAIN_CERTS:
            raise Unauthenticated("client certificate chain is too long")
        try:
            self._verifier.verify(leaf, intermediates)
        except VerificationError:
            raise Unauthenticated("client certificate is not valid under the service TLS CA "
                                  "(untrusted issuer, path length exceeded, expired or not for client use)") from None

    def check_revoked(self, leaf: x509.Certificate) -> None:
        self.check_revoked_key(leaf.issuer.public_bytes(), leaf.serial_number)

    def check_revoked_key(self, issuer_der: bytes, serial: int) -> None:
        """``check_revoked`` by the certificate's issuer (DER name) and serial (what a cache keeps of it)."""
        self._refresh()
        if (issuer_der, serial) in self._revoked.entries:
            raise Unauthenticated(f"client certificate {serial:X} is revoked; ask central IT for a new one")


def write_empty_crl(crl_path: Path, ca_cert: x509.Certificate, ca_key) -> None:
    """The client CRL as ``init`` writes it: no entries, CRL number 1."""
    _write_crl(crl_path, ca_cert, ca_key, [], 1)


def _write_crl(crl_path: Path, ca_cert: x509.Certificate, ca_key, entries: list[x509.RevokedCertificate],
               number: int) -> None:
    now = _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0)
    b = (x509.CertificateRevocationListBuilder().issuer_name(ca_cert.subject).last_update(now)
         .next_update(now + CRL_VALIDITY)
         .add_extension(x509.CRLNumber(number), critical=False)
         .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_cert.public_key()), critical=False))
    for e in entries:
        b = b.add_revoked_certificate(e)
    crl = b.sign(ca_key, hashes.SHA256())
    tmp = crl_path.with_name(crl_path.name + ".tmp")
    tmp.write_bytes(crl.public_bytes(serialization.Encoding.PEM))
    os.replace(tmp, crl_path)


def revoke(crl_path: Path, ca_cert: x509.Certificate, ca_key, serial: int, reason: str = "unspecified") -> bool:
    """Add ``serial`` (a certificate the TLS CA issued) to the client CRL; False if it was already listed."""
    if reason not in REASONS:
        raise ValueError(f"unknown reason {reason!r}; use one of {', '.join(REASONS)}")
    old = load_crl(crl_path.read_bytes()) if crl_path.exists() else None
    if old is not None and _signer(old, [ca_cert]) is None:
        raise ValueError(f"{crl_path} is not signed by this TLS CA; refusing to replace it")
    entries = list(old) if old is not None else []
    if any(e.serial_number == serial for e in entries):
        return False
    now = _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0)
    entries.append(x509.RevokedCertificateBuilder().serial_number(serial).revocation_date(now)
                   .add_extension(x509.CRLReason(REASONS[reason]), critical=False).build())
    _write_crl(crl_path, ca_cert, ca_key, entries, (_crl_number(old) if old is not None else 0) + 1)
    return True
