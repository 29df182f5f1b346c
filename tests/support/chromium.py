"""Headless Chromium (Debian's ``chromium``) as central IT's browser, with or without a client certificate.

``Browser(where, ca_pem, client=None)`` makes a private HOME whose NSS database (``~/.pki/nssdb``,
NSS's ``certutil``/``pk12util`` from ``libnss3-tools``) trusts the deployment's TLS CA and holds the
client certificate and key, and a Chromium profile whose content setting ``auto_select_certificate``
lets it present that certificate to one origin without the picker a headless browser cannot show.
``dom(url)`` is ``--dump-dom`` (the DOM after loading), ``screenshot(url, path, size)`` is
``--screenshot``. Nothing outside ``where`` is touched; each call is one short-lived Chromium process.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.serialization import pkcs12

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
P12_PASSWORD = "status-page-test"
TIMEOUT_SECONDS = 60


def missing() -> list[str]:
    out = [] if shutil.which("chromium") else ["chromium (apt-get install chromium)"]
    out += [f"{t} (apt-get install libnss3-tools)" for t in ("certutil", "pk12util") if not shutil.which(t)]
    return out


class Browser:
    def __init__(self, where: Path, ca_pem: bytes, client=None, *, origin: str):
        """``client``: a tests.personalizer.helpers.ClientCert (None: the browser has no certificate)."""
        self.where = where
        self.home = where / "home"
        self.profile = where / "profile"
        nssdb = self.home / ".pki" / "nssdb"
        nssdb.mkdir(parents=True)
        (where / "ca.pem").write_bytes(ca_pem)
        self._run(["certutil", "-N", "-d", f"sql:{nssdb}", "--empty-password"])
        self._run(["certutil", "-A", "-d", f"sql:{nssdb}", "-n", "cns-tls-ca", "-t", "C,,",
                   "-i", str(where / "ca.pem")])
        if client is not None:
            cert = x509.load_pem_x509_certificate(client.cert)
            key = serialization.load_pem_private_key(client.key, None)
            (where / "client.p12").write_bytes(pkcs12.serialize_key_and_certificates(
                b"client", key, cert, None, serialization.BestAvailableEncryption(P12_PASSWORD.encode())))
            self._run(["pk12util", "-i", str(where / "client.p12"), "-d", f"sql:{nssdb}", "-W", P12_PASSWORD])
        (self.profile / "Default").mkdir(parents=True)
        prefs = {"profile": {"content_settings": {"exceptions": {"auto_select_certificate": {
            f"{origin},*": {"last_modified": "13300000000000000", "setting": {"filters": [{}]}}}}}}}
        (self.profile / "Default" / "Preferences").write_text(json.dumps(prefs))

    @staticmethod
    def _run(argv: list[str]) -> None:
        r = subprocess.run(argv, capture_output=True, text=True, timeout=30)
        assert r.returncode == 0, f"{argv[0]} failed: {r.stdout}{r.stderr}"

    def _chromium(self, *args: str) -> subprocess.CompletedProcess:
        argv = [CHROMIUM, "--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run",
                "--disable-extensions", "--disable-background-networking", f"--user-data-dir={self.profile}", *args]
        env = {**os.environ, "HOME": str(self.home)}
        env.pop("DBUS_SESSION_BUS_ADDRESS", None)
        return subprocess.run(argv, capture_output=True, text=True, timeout=TIMEOUT_SECONDS, env=env)

    def dom(self, url: str) -> str:
        r = self._chromium("--dump-dom", url)
        assert r.returncode == 0, r.stderr[-2000:]
        return r.stdout

    def screenshot(self, url: str, path: Path, size: tuple[int, int]) -> Path:
        r = self._chromium(f"--screenshot={path}", f"--window-size={size[0]},{size[1]}", "--hide-scrollbars", url)
        assert r.returncode == 0 and path.exists(), r.stderr[-2000:]
        return path
