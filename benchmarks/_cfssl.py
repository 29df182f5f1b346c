"""CFSSL's ``cfssl serve`` as the peer of ``scripts/bench issue``: install, configure, start, call.

The peer gets what the personalizer gets: the same RSA-3072 issuing CA key and
certificate (written unencrypted, mode 0600, into the benchmark's temporary
directory: ``cfssl serve`` reads only a plain PEM key), the same TLS server
certificate, mutual TLS against the same client trust anchor
(``-mutual-tls-ca``: clients without a certificate from it are refused), and a
durable certificate database: SQLite in WAL mode with synchronous=FULL
(go-sqlite3 DSN ``_journal_mode=WAL&_synchronous=FULL``). The schema is
CFSSL's own ``certdb/sqlite`` migration (tables ``certificates`` and
``ocsp_responses``), which the binary expects to exist; ``serve`` then
records every certificate it signs.

``ensure_installed()`` finds ``cfssl`` or, when run as root, installs Debian's
``golang-cfssl``; otherwise it raises ``Missing`` with the apt-get line.
``client(...)`` returns a blocking call for ``benchmarks._load.drive``: one
keep-alive HTTPS connection per client thread, ``POST /api/v1/cfssl/sign``.
Imports nothing of ours except the benchmark helpers.
"""
from __future__ import annotations

import http.client
import json
import os
import shutil
import socket
import sqlite3
import ssl
import subprocess
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

DEB_PACKAGE = "golang-cfssl"
SIGN_PATH = "/api/v1/cfssl/sign"
START_TIMEOUT_S = 20.0
CALL_TIMEOUT_S = 30.0

# cfssl certdb/sqlite/migrations/001_CreateCertificates.sql (the columns the binary's INSERT names)
CERTDB_SCHEMA = """
CREATE TABLE IF NOT EXISTS certificates (
  serial_number            blob NOT NULL,
  authority_key_identifier blob NOT NULL,
  ca_label                 blob,
  status                   blob NOT NULL,
  reason                   int,
  expiry                   timestamp,
  revoked_at               timestamp,
  pem                      blob NOT NULL,
  PRIMARY KEY(serial_number, authority_key_identifier)
);
CREATE TABLE IF NOT EXISTS ocsp_responses (
  serial_number            blob NOT NULL,
  authority_key_identifier blob NOT NULL,
  body                     blob NOT NULL,
  expiry                   timestamp,
  PRIMARY KEY(serial_number, authority_key_identifier),
  FOREIGN KEY(serial_number, authority_key_identifier) REFERENCES certificates(serial_number, authority_key_identifier)
);
"""

SIGNING_CONFIG = {"signing": {"default": {
    "expiry": "8760h",
    "usages": ["digital signature", "key encipherment", "client auth"],
}}}


class Missing(RuntimeError):
    """cfssl is not installed and cannot be installed from here."""


def ensure_installed() -> str:
    """Path of the ``cfssl`` binary; installs golang-cfssl first when root and missing."""
    found = shutil.which("cfssl")
    if found:
        return found
    if os.geteuid() != 0:
        raise Missing(f"cfssl is not installed: run  sudo apt-get install -y {DEB_PACKAGE}")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    for cmd in (["apt-get", "install", "-y", "-q", DEB_PACKAGE], ["apt-get", "update", "-q"],
                ["apt-get", "install", "-y", "-q", DEB_PACKAGE]):
        if subprocess.run(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL).returncode == 0 \
                and shutil.which("cfssl"):
            return shutil.which("cfssl")
    raise Missing(f"cannot install {DEB_PACKAGE} with apt-get (no network or no such package?)")


def create_certdb(path: Path) -> None:
    db = sqlite3.connect(path)
    try:
        db.execute("PRAGMA journal_mode=WAL")     # persistent in the file; the DSN asks for it again
        db.executescript(CERTDB_SCHEMA)
        db.commit()
    finally:
        db.close()


def certdb_rows(path: Path) -> int:
    db = sqlite3.connect(path)
    try:
        return db.execute("SELECT COUNT(*) FROM certificates").fetchone()[0]
    finally:
        db.close()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Peer:
    port: int
    pid: int
    certdb: Path


@contextmanager
def cfssl_serve(workdir: Path, *, ca_cert: Path, ca_key_pem: bytes, tls_cert: Path, tls_key: Path,
                client_ca: Path):
    """Run ``cfssl serve`` (mTLS, certdb on) in ``workdir``; yield a ``Peer``; stop it at the end."""
    binary = ensure_installed()
    workdir.mkdir(parents=True, exist_ok=True)
    key_path = workdir / "ca-key.pem"
    fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(ca_key_pem)
    (workdir / "config.json").write_text(json.dumps(SIGNING_CONFIG))
    certdb = workdir / "certs.db"
    create_certdb(certdb)
    (workdir / "db.json").write_text(json.dumps({
        "driver": "sqlite3", "data_source": f"file:{certdb}?_journal_mode=WAL&_synchronous=FULL"}))
    port = _free_port()
    log = open(workdir / "cfssl.log", "wb")
    proc = subprocess.Popen([binary, "serve", "-address", "127.0.0.1", "-port", str(port),
                             "-ca", str(ca_cert), "-ca-key", str(key_path), "-config", str(workdir / "config.json"),
                             "-db-config", str(workdir / "db.json"), "-tls-cert", str(tls_cert),
                             "-tls-key", str(tls_key), "-mutual-tls-ca", str(client_ca), "-loglevel", "3"],
                            cwd=workdir, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"cfssl serve exited: {(workdir / 'cfssl.log').read_text()[-800:]}")
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError("cfssl serve did not start listening") from None
                time.sleep(0.05)
        yield Peer(port=port, pid=proc.pid, certdb=certdb)
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
        key_path.unlink(missing_ok=True)


def client(port: int, *, trust: Path, cert: Path, key: Path):
    """A blocking ``call(csr_pem)`` for the load generator; one keep-alive connection per thread."""
    ctx = ssl.create_default_context(cafile=str(trust))
    ctx.load_cert_chain(str(cert), str(key))
    local = threading.local()

    def call(csr_pem: str) -> None:
        conn = getattr(local, "conn", None)
        if conn is None:
            conn = local.conn = http.client.HTTPSConnection("localhost", port, context=ctx, timeout=CALL_TIMEOUT_S)
        body = json.dumps({"certificate_request": csr_pem})
        try:
            conn.request("POST", SIGN_PATH, body=body, headers={"Content-Type": "application/json"})
            resp = conn.getresponse()
            data = resp.read()
        except socket.timeout as exc:
            local.conn = None
            conn.close()
            raise TimeoutError(str(exc)) from exc
        except (OSError, http.client.HTTPException):
            local.conn = None
            conn.close()
            raise
        if resp.status != 200:
            raise RuntimeError(f"cfssl answered HTTP {resp.status}: {data[:200]!r}")
        answer = json.loads(data)
        if not answer.get("success") or "BEGIN CERTIFICATE" not in answer.get("result", {}).get("certificate", ""):
            raise RuntimeError(f"cfssl refused: {answer.get('errors')}")

    return call
