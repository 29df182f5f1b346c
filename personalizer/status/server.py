"""The read-only status page for central IT: HTTPS on its own port, served only to an admin certificate.

``StatusPage(view, ...)`` serves ``GET /`` with ``page.render(await view())`` on
``personalizer.pki.http.HttpServer`` (bounded connections, sizes and time) over TLS with the
daemon's server certificate. The client certificate is asked for (not required, so a browser
without one gets a page saying what to do instead of a failed handshake) and must carry the
``urn:cns:admin:`` identity: the same identity rules, chain check (path length, client use) and
client CRL as the gRPC port (``edge.identity``, ``edge.tls_clients``). No certificate: 401; a
station, operator tool or IR certificate: 403; each refusal is logged with who it was. Nothing on
this port changes anything: other methods get 405, other paths 404.

Imports ``pki.http``, ``edge.identity`` / ``edge.tls_clients`` (identity only) and ``status.page``.
"""
from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Awaitable, Callable
from pathlib import Path

from cryptography import x509

from personalizer.edge.identity import ROLE_ADMIN, Identity, identity_from_certificate
from personalizer.edge.tls_clients import ClientTrust
from personalizer.errors import PermissionDenied, Unauthenticated
from personalizer.pki.http import HttpServer, Response
from personalizer.status import page

log = logging.getLogger(__name__)

HTML = "text/html; charset=utf-8"
# no script, no frames, nothing fetched: the page is its own inline style and text
HEADERS = {"Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; frame-ancestors 'none'",
           "X-Content-Type-Options": "nosniff", "Cache-Control": "no-store", "Referrer-Policy": "no-referrer"}
MAX_CONNECTIONS = 64
VIEW_TIMEOUT_SECONDS = 5.0


def tls_context(cert: Path, key: Path, anchors: Path) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(cert, key)
    ctx.load_verify_locations(anchors)
    ctx.verify_mode = ssl.CERT_OPTIONAL   # a certificate the TLS CA did not issue still fails the handshake
    return ctx


def admin_of(ssl_object, trust: ClientTrust) -> Identity:
    """The admin identity of the connection's client certificate, or Unauthenticated / PermissionDenied."""
    der = ssl_object.getpeercert(binary_form=True) if ssl_object is not None else None
    if not der:
        raise Unauthenticated("a client certificate is required: open this page with central IT's admin "
                              "certificate (cnsctl's client.pem) installed in the browser")
    try:
        leaf = x509.load_der_x509_certificate(der)
        chain = getattr(getattr(ssl_object, "_sslobj", None), "get_unverified_chain", lambda: [])() or []
        intermediates = [x509.load_der_x509_certificate(c.public_bytes(ssl._ssl.ENCODING_DER)) for c in chain[1:]]
    except ValueError:
        raise Unauthenticated("unreadable client certificate") from None
    ident = identity_from_certificate(leaf)
    trust.verify_chain(leaf, intermediates)
    trust.check_revoked(leaf)
    if ident.role != ROLE_ADMIN:
        raise PermissionDenied(f"the status page is for central IT: role {ident.role} ({ident.uri}) may not read it;"
                               " use an admin certificate")
    return ident


class StatusPage:
    def __init__(self, view: Callable[[], Awaitable[page.StatusView]], *, host: str, port: int, tls_cert: Path,
                 tls_key: Path, anchors: Path, client_crl: Path | None = None,
                 max_connections: int = MAX_CONNECTIONS, request_timeout: float = 10.0):
        self._view = view
        self._trust = ClientTrust(anchors.read_bytes(), client_crl)
        self._http = HttpServer(self._handle, host=host, port=port, max_connections=max_connections,
                                request_timeout=request_timeout, ssl_context=tls_context(tls_cert, tls_key, anchors))
        self.refused = 0

    @property
    def port(self) -> int:
        return self._http.port

    async def start(self) -> int:
        await self._http.start()
        log.info("status page on https://%s:%d/", self._http._host, self.port)
        return self.port

    async def stop(self) -> None:
        await self._http.stop()

    @staticmethod
    def _page(status: int, title: str, text: str) -> Response:
        return Response(status, page.refusal(status, title, text).encode(), HTML, dict(HEADERS))

    async def _handle(self, method: str, path: str, body: bytes, ssl_object) -> Response:
        try:
            ident = admin_of(ssl_object, self._trust)
        except (Unauthenticated, PermissionDenied) as exc:
            self.refused += 1
            status = 401 if isinstance(exc, Unauthenticated) else 403
            log.warning("status page refused (%d): %s", status, exc, extra={"http_status": status})
            return self._page(status, "Unauthorized" if status == 401 else "Forbidden", str(exc))
        if method != "GET":
            return self._page(405, "Method Not Allowed", f"{method[:16]} is not served: the status page is read-only")
        if path.split("?", 1)[0] != "/":
            return self._page(404, "Not Found", "the status page is at /")
        try:
            view = await asyncio.wait_for(self._view(), VIEW_TIMEOUT_SECONDS)
        except Exception as exc:   # the page says so; the daemon keeps serving
            log.warning("status page for %s could not be built: %s", ident.uri, exc)
            return self._page(503, "Service Unavailable", "the status could not be read just now; "
                                                          "reload in a few seconds")
        return Response(200, page.render(view).encode(), HTML, dict(HEADERS))
