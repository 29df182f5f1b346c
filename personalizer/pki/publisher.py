"""``PkiPublisher``: CRLs on disk and over HTTP, OCSP over HTTP, for one issuing CA.

::

    pub = PkiPublisher(ca, crl_dir=Path("pki"), http_host="0.0.0.0", http_port=8080)
    await pub.start()        # publishes a CRL, binds HTTP, starts the refresh task
    await pub.publish_now()  # after every suspension / reactivation / revocation
    await pub.stop()

HTTP routes: ``GET /crl/<name>.crl`` (DER), ``GET /crl/<name>.pem``,
``GET /ca/<name>.cer`` (the issuing CA, for AIA caIssuers), ``POST /ocsp``
(or ``POST /``, for an AIA OCSP URL that is a bare host) and
``GET /ocsp/<base64 request>``. The bind address (``http_host``,
``http_port``) is separate from the public URLs written in certificates
(``CAUrls``): a proxy or DNS name fronts the publisher in production.

The refresh task (named ``pki-crl-refresh``) republishes every
``refresh_seconds`` (at most 1 h 45 min, so that nextUpdate = thisUpdate +
refresh + 15 min stays within the 2 hours of SLA4.3); a failed refresh is logged and
retried after ``RETRY_SECONDS`` while the last CRL keeps being served. CRL
files are written atomically (temporary file, fsync, ``os.replace``).

Revocations made by another process (the daemon's helpers with ``[server]
processes`` > 1, whose relays change ca.db themselves) are followed: when the CA
counts its status changes (``revocation_version``, the embedded CA over SQLite or PostgreSQL),
the task ``pki-crl-follow`` reads that counter every ``follow_seconds`` (one
single-row read) and publishes when it moved since the last CRL. So a
suspension, reactivation or revocation by any process is on the published CRL
within ``follow_seconds`` plus one CRL signature (``FOLLOW_SECONDS`` = 0.5 s),
as OCSP answers from ca.db at once.
Imports nothing of ours but ``pki`` modules and ``ca.base``.
"""
from __future__ import annotations

import asyncio
import base64
import datetime as _dt
import logging
import os
import urllib.parse
from pathlib import Path, PurePosixPath

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from personalizer.pki import crl as crl_mod
from personalizer.pki import ocsp as ocsp_mod
from personalizer.pki.http import HttpServer, Response
from personalizer.pki.source import RevocationAuthority

log = logging.getLogger(__name__)

DEFAULT_REFRESH_SECONDS = 3600
MAX_REFRESH_SECONDS = int(crl_mod.MAX_REFRESH_INTERVAL.total_seconds())
RETRY_SECONDS = 60
FOLLOW_SECONDS = 0.5
PUBLIC_FILE_MODE = 0o644
CRL_CONTENT_TYPE = "application/pkix-crl"
CERT_CONTENT_TYPE = "application/pkix-cert"
OCSP_PATH = "/ocsp"


def write_public(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, PUBLIC_FILE_MODE)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def _name_from_url(url: str | None, suffix: str, default: str) -> str:
    if not url:
        return default
    name = PurePosixPath(urllib.parse.urlparse(url).path).name
    return name[: -len(suffix)] if name.endswith(suffix) else (name or default)


class PkiPublisher:
    def __init__(self, ca: RevocationAuthority, *, crl_dir: Path, http_host: str, http_port: int,
                 refresh_seconds: int = DEFAULT_REFRESH_SECONDS, crl_name: str | None = None,
                 ca_cert_name: str | None = None, max_connections: int = 512, request_timeout: float = 10.0,
                 follow_seconds: float = FOLLOW_SECONDS):
        if not 0 < refresh_seconds <= MAX_REFRESH_SECONDS:
            raise ValueError(f"refresh_seconds must be in 1..{MAX_REFRESH_SECONDS}, got {refresh_seconds}")
        urls = getattr(ca, "urls", None)
        self._ca = ca
        self.crl_dir = Path(crl_dir)
        self.refresh = _dt.timedelta(seconds=refresh_seconds)
        self.crl_name = crl_name or _name_from_url(getattr(urls, "crl", None), ".crl", "ca")
        self.ca_cert_name = ca_cert_name or _name_from_url(getattr(urls, "ca_issuers", None), ".cer", "ca")
        self._http = HttpServer(self._handle, host=http_host, port=http_port, max_connections=max_connections,
                                request_timeout=request_timeout)
        self._lock = asyncio.Lock()
        self._crl_der: bytes | None = None
        self._crl_pem: bytes | None = None
        self._task: asyncio.Task | None = None
        self._follower: asyncio.Task | None = None
        self.follow_seconds = follow_seconds
        self._version = getattr(ca, "revocation_version", None)   # None: the CA does not count its changes
        self.published_version: int | None = None   # the CA's revocation_version the last CRL was built from
        self.last_published: _dt.datetime | None = None
        self.last_error: str = ""

    # -- paths and state ------------------------------------------------------

    @property
    def port(self) -> int:
        return self._http.port

    @property
    def crl_path(self) -> Path:
        return self.crl_dir / f"{self.crl_name}.crl"

    @property
    def crl_pem_path(self) -> Path:
        return self.crl_dir / f"{self.crl_name}.pem"

    # -- lifecycle ------------------------------------------------------------

    async def start(self) -> None:
        await self.publish_now()
        await self._http.start()
        self._task = asyncio.create_task(self._refresh_loop(), name="pki-crl-refresh")
        if self._version is not None and self.published_version is not None:
            self._follower = asyncio.create_task(self._follow_loop(), name="pki-crl-follow")
        log.info("PKI publisher: CRL %s, HTTP port %d, refresh every %s", self.crl_path, self.port, self.refresh)

    async def stop(self) -> None:
        for task in (self._task, self._follower):
            if task is not None:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        self._task = self._follower = None
        await self._http.stop()

    async def _follow_loop(self) -> None:
        """Publish when the CA's status changes moved since the last CRL (another process revoked)."""
        while True:
            await asyncio.sleep(self.follow_seconds)
            try:
                if await self._version() != self.published_version:
                    await self.publish_now()
            except asyncio.CancelledError:
                raise
            except Exception as exc:   # the periodic refresh and the next look try again
                self.last_error = f"{type(exc).__name__}: {exc}"
                log.warning("CRL publication after a change by another process failed: %s", exc)

    async def _refresh_loop(self) -> None:
        delay = self.refresh.total_seconds()
        while True:
            await asyncio.sleep(delay)
            try:
                await self.publish_now()
                delay = self.refresh.total_seconds()
            except Exception as exc:   # keep serving the last CRL; try again soon
                self.last_error = f"{type(exc).__name__}: {exc}"
                log.exception("CRL refresh failed; retrying in %d s", RETRY_SECONDS)
                delay = min(RETRY_SECONDS, self.refresh.total_seconds())

    # -- publication ----------------------------------------------------------

    async def publish_now(self) -> x509.CertificateRevocationList:
        """Build, sign and write a new CRL; returns it. Serialised: concurrent calls queue."""
        async with self._lock:
            now = _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0)
            # read before the entries: a change committed meanwhile makes the next look publish again
            version = await self._version() if self._version is not None else None
            number = await self._ca.next_crl_number()
            entries = await self._ca.revoked_entries()
            builder = crl_mod.build_crl(self._ca.issuing_certificate, entries, crl_number=number,
                                        this_update=now, refresh=self.refresh)
            crl = await self._ca.sign_crl(builder)
            der = crl.public_bytes(serialization.Encoding.DER)
            pem = crl.public_bytes(serialization.Encoding.PEM)
            await asyncio.to_thread(write_public, self.crl_path, der)
            await asyncio.to_thread(write_public, self.crl_pem_path, pem)
            self._crl_der, self._crl_pem = der, pem
            self.last_published, self.last_error = now, ""
            self.published_version = version
            log.info("published CRL %d with %d entries", number, len(entries))
            return crl

    # -- HTTP -----------------------------------------------------------------

    async def _ocsp(self, request_der: bytes) -> Response:
        issuing = self._ca.issuing_certificate
        body = await ocsp_mod.respond(request_der, issuing=issuing, responder=await self._ca.ocsp_responder(),
                                      lookup=self._ca.status_by_serial)
        return Response(200, body, ocsp_mod.CONTENT_TYPE_RESPONSE, {"Cache-Control": "no-cache"})

    async def _handle(self, method: str, target: str, body: bytes) -> Response:
        path = urllib.parse.urlsplit(target).path
        if method == "POST" and path.rstrip("/") in (OCSP_PATH, ""):   # AIA URL may be the bare host
            return await self._ocsp(body)
        if method != "GET":
            return Response(405, b"method not allowed\n")
        if path.startswith(OCSP_PATH + "/"):
            raw = urllib.parse.unquote(path[len(OCSP_PATH) + 1:])
            try:
                request_der = base64.b64decode(raw + "=" * (-len(raw) % 4), validate=False)
            except ValueError:
                return Response(200, ocsp_mod.unsuccessful(x509.ocsp.OCSPResponseStatus.MALFORMED_REQUEST),
                                ocsp_mod.CONTENT_TYPE_RESPONSE)
            return await self._ocsp(request_der)
        if path == f"/crl/{self.crl_name}.crl" and self._crl_der is not None:
            return Response(200, self._crl_der, CRL_CONTENT_TYPE)
        if path == f"/crl/{self.crl_name}.pem" and self._crl_pem is not None:
            return Response(200, self._crl_pem, "application/x-pem-file")
        if path == f"/ca/{self.ca_cert_name}.cer":
            return Response(200, self._ca.issuing_certificate.public_bytes(serialization.Encoding.DER),
                            CERT_CONTENT_TYPE)
        return Response(404, b"not found\n")
