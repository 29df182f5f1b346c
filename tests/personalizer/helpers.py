"""Test helpers: CSRs, holders, requests, extra client certificates, a daemon subprocess."""
from __future__ import annotations

import contextlib
import datetime as dt
import functools
import os
import re
import select
import signal
import subprocess
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

from personalizer import codice_fiscale, dati_personali
from personalizer.ca import profiles
from proto.cns.v1 import common_pb2, personalizer_pb2 as pb
from tests.support import keys

VENV_BIN = Path(sys.executable).parent
CF = "RSSMRA80A01H501U"
CARD_ID = "7420000000000001"


@functools.cache
def rsa_key(bits: int = 2048) -> rsa.RSAPrivateKey:
    """One fixed key per size (for a CSR that must not be accepted, or a proof by a wrong key)."""
    return rsa.generate_private_key(65537, bits)


def key_of(certificate_der: bytes) -> rsa.RSAPrivateKey:
    """The private key of a certificate issued on a CSR from ``csr_der`` (the test's "card")."""
    key = keys.key_for(x509.load_der_x509_certificate(certificate_der).public_key())
    assert key is not None, "the certificate's key did not come from tests.support.keys"
    return key


def csr_der(key=None, *, cf: str = CF, given: str = "Mario", surname: str = "Rossi",
            hash_alg=hashes.SHA256()) -> bytes:
    """A CSR for the holder; without ``key``, on a key no other CSR of this process used (the
    personalizer certifies a public key once: one holder, one profile, one request)."""
    key = key or keys.fresh_key()
    name = x509.Name([
        x509.NameAttribute(NameOID.COUNTRY_NAME, "IT"),
        x509.NameAttribute(NameOID.GIVEN_NAME, given),
        x509.NameAttribute(NameOID.SURNAME, surname),
        x509.NameAttribute(NameOID.SERIAL_NUMBER, "TINIT-" + cf),
    ])
    csr = x509.CertificateSigningRequestBuilder().subject_name(name).sign(key, hash_alg)
    return csr.public_bytes(serialization.Encoding.DER)


def ef_dati(cf: str = CF, given: str = "Mario", surname: str = "Rossi", birth: str = "01011980") -> bytes:
    return dati_personali.encode(dati_personali.DatiPersonali(
        issuer="CCIAA di Roma", issue_date="01012026", expiry_date="01012032", surname=surname,
        given_name=given, birth_date=birth, sex="M", codice_fiscale=cf))


def issue_request(*, request_id: str | None = None, profile=pb.CA_PROFILE_CNS_AUTH, csr: bytes | None = None,
                  cf: str = CF, given: str = "Mario", surname: str = "Rossi", birth: str = "1980-01-01",
                  chamber: str = "RM", station: str = "RM-STATION-01", ef: bytes | None = None,
                  operator: str = "op-001") -> pb.SubmitIssueRequest:
    return pb.SubmitIssueRequest(
        request_id=request_id or str(uuid.uuid4()), profile=profile,
        csr_der=csr if csr is not None else csr_der(),
        holder=common_pb2.Holder(codice_fiscale=cf, given_name=given, surname=surname, birth_date=birth),
        card=common_pb2.Card(card_id=CARD_ID, model="test-card"),
        requester=common_pb2.Requester(station_id=station, chamber_code=chamber, operator_id=operator),
        ef_dati_personali=ef if ef is not None else ef_dati(cf, given, surname))


def random_cf(n: int) -> str:
    """A valid codice fiscale numbered n (birth 1980-01-01, digits vary in the municipality)."""
    return codice_fiscale.make(f"RSSMRA80A01H{n % 1000:03d}"[:15])


@dataclass
class ClientCert:
    cert: bytes
    key: bytes


def client_cert(tls_dir: Path, *, common_name: str, identity: str | None, foreign: bool = False) -> ClientCert:
    """A client certificate from the deployment's TLS CA (or from a foreign CA)."""
    now = dt.datetime.now(dt.timezone.utc)
    if foreign:
        ca_key = ec.generate_private_key(ec.SECP256R1())
        ca_cert = profiles.build_ca(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Foreign CA")]),
                                    ca_key.public_key(), issuer=None, now=now, path_length=0,
                                    validity=dt.timedelta(days=10)).sign(ca_key, hashes.SHA256())
    else:
        ca_key = serialization.load_pem_private_key((tls_dir / "tls-ca.key.pem").read_bytes(), None)
        ca_cert = x509.load_pem_x509_certificate((tls_dir / "tls-ca.pem").read_bytes())
    key = ec.generate_private_key(ec.SECP256R1())
    cert = profiles.build_tls_leaf(common_name, key.public_key(), issuer=ca_cert, now=now,
                                   identity_uri=identity).sign(ca_key, hashes.SHA256())
    return ClientCert(cert.public_bytes(serialization.Encoding.PEM),
                      key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                        serialization.NoEncryption()))


def channel(port: int, tls_dir: Path, cc: ClientCert | None) -> grpc.Channel:
    creds = grpc.ssl_channel_credentials(
        root_certificates=(tls_dir / "tls-ca.pem").read_bytes(),
        private_key=cc.key if cc else None, certificate_chain=cc.cert if cc else None)
    return grpc.secure_channel(f"localhost:{port}", creds)


class DaemonProcess:
    """``cns-personalizer serve`` as a subprocess; the port comes from its first stdout line.

    The start waits at most ``start_timeout`` seconds for that line. If the start fails in any way (no port
    line, the time is up, or the wait is interrupted: pytest-timeout, Ctrl-C) the process is stopped before the
    error propagates: a fixture whose start failed has nothing running to leak."""

    LISTEN_RE = re.compile(r"listening on port (\d+)")
    START_TIMEOUT = 120.0

    def __init__(self, config: Path, *, env: dict | None = None, preexec_fn=None, log_level: str = "WARNING",
                 start_timeout: float = START_TIMEOUT):
        self.proc = subprocess.Popen(
            [str(VENV_BIN / "cns-personalizer"), "--log-level", log_level, "serve", "--config", str(config)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ, **(env or {})},
            preexec_fn=preexec_fn)
        try:
            ready, _, _ = select.select([self.proc.stdout], [], [], start_timeout)
            if not ready:
                raise RuntimeError(f"daemon did not print its port within {start_timeout:g} s ({config})")
            line = self.proc.stdout.readline()
            m = self.LISTEN_RE.search(line)
            if not m:
                self._halt()
                raise RuntimeError(f"daemon did not start: {line!r} {self.proc.stderr.read()}")
            self.port = int(m.group(1))
        except BaseException:
            self._halt()
            raise

    def _halt(self, grace: float = 5.0) -> None:
        """Stop the process whatever its state (SIGTERM, then SIGKILL after ``grace`` seconds) and reap it."""
        if self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(grace)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def stop(self, timeout: float = 15) -> int:
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            raise


@contextlib.contextmanager
def daemons(*configs: Path, **kwargs):
    """Start one ``DaemonProcess`` per config, in order; stop every one that started when the block ends, and
    also when a later start fails (its own start stops itself): nothing is left running. Yields the list."""
    started: list[DaemonProcess] = []
    try:
        for cfg in configs:
            started.append(DaemonProcess(cfg, **kwargs))
        yield started
    finally:
        for d in reversed(started):
            if d.proc.poll() is None:
                try:
                    d.stop()
                except subprocess.TimeoutExpired:
                    d.proc.wait()


def sub_ca_client_cert(tls_dir: Path, *, identity: str) -> ClientCert:
    """A client certificate under a sub-CA that the deployment's TLS CA (pathLen 0) signed; the chain
    (leaf + sub-CA) is what the client presents. ``openssl verify`` refuses it: path length exceeded."""
    now = dt.datetime.now(dt.timezone.utc)
    ca_key = serialization.load_pem_private_key((tls_dir / "tls-ca.key.pem").read_bytes(), None)
    ca_cert = x509.load_pem_x509_certificate((tls_dir / "tls-ca.pem").read_bytes())
    sub_key = ec.generate_private_key(ec.SECP256R1())
    sub = profiles.build_ca(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Rogue sub-CA")]),
                            sub_key.public_key(), issuer=ca_cert, now=now, path_length=0,
                            validity=dt.timedelta(days=10)).sign(ca_key, hashes.SHA256())
    key = ec.generate_private_key(ec.SECP256R1())
    leaf = profiles.build_tls_leaf("rogue", key.public_key(), issuer=sub, now=now,
                                   identity_uri=identity).sign(sub_key, hashes.SHA256())
    pem = serialization.Encoding.PEM
    return ClientCert(leaf.public_bytes(pem) + sub.public_bytes(pem),
                      key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
