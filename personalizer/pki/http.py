"""A small asyncio HTTP/1.1 server: one request per connection, bounded sizes and time.

Enough for CRL downloads and OCSP (RFC 6960 Appendix A: POST with
``application/ocsp-request``, or GET with the base64 request in the path).
The application is one coroutine ``handler(method, path, body) -> Response``.
Every connection is closed after its answer (``Connection: close``).

Idle and slow clients cannot exhaust it: a request (line, headers, body) must
arrive within ``request_timeout`` seconds, and at most ``max_connections``
are open at once; at the limit, a new connection closes the oldest one that
has not finished sending its request (a slow-loris holder), so complete
requests are still served while file descriptors stay bounded.

With ``ssl_context`` it speaks TLS (the handshake must finish within
``request_timeout`` too) and the handler gets a fourth argument, the
connection's ``ssl.SSLObject``, to read the client's certificate from (the
status page's mTLS, ``personalizer.status``). Imports nothing of ours.
"""
from __future__ import annotations

import asyncio
import logging
import ssl
from dataclasses import dataclass, field
from typing import Awaitable, Callable

log = logging.getLogger(__name__)

MAX_HEADER_BYTES = 16 * 1024
MAX_BODY_BYTES = 64 * 1024
READ_TIMEOUT_SECONDS = 10.0
REASONS = {200: "OK", 400: "Bad Request", 401: "Unauthorized", 403: "Forbidden", 404: "Not Found", 405: "Method Not Allowed",
           413: "Payload Too Large", 500: "Internal Server Error", 503: "Service Unavailable"}


@dataclass
class Response:
    status: int
    body: bytes = b""
    content_type: str = "text/plain; charset=utf-8"
    headers: dict[str, str] = field(default_factory=dict)


Handler = Callable[[str, str, bytes], Awaitable[Response]]


DEFAULT_MAX_CONNECTIONS = 512


class HttpServer:
    def __init__(self, handler: Handler, *, host: str, port: int, max_connections: int = DEFAULT_MAX_CONNECTIONS,
                 request_timeout: float = READ_TIMEOUT_SECONDS, ssl_context: ssl.SSLContext | None = None):
        self._handler = handler
        self._ssl = ssl_context
        self._host, self._port = host, port
        self._server: asyncio.AbstractServer | None = None
        self.max_connections, self.request_timeout = max_connections, request_timeout
        self._live: set[asyncio.StreamWriter] = set()
        self._reading: dict[asyncio.StreamWriter, None] = {}   # still sending their request, oldest first
        self.evicted = 0

    @property
    def port(self) -> int:
        return self._server.sockets[0].getsockname()[1] if self._server else self._port

    async def start(self) -> None:
        tls = {} if self._ssl is None else {"ssl": self._ssl, "ssl_handshake_timeout": self.request_timeout}
        self._server = await asyncio.start_server(self._serve, self._host, self._port, limit=MAX_HEADER_BYTES, **tls)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None

    async def _read(self, reader: asyncio.StreamReader) -> tuple[str, str, bytes] | Response:
        head = await reader.readuntil(b"\r\n\r\n")
        lines = head.decode("iso-8859-1").split("\r\n")
        parts = lines[0].split(" ")
        if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
            return Response(400, b"bad request line\n")
        headers = {}
        for line in lines[1:]:
            if ":" in line:
                k, v = line.split(":", 1)
                headers[k.strip().lower()] = v.strip()
        length = headers.get("content-length", "0")
        if not length.isdigit():
            return Response(400, b"bad Content-Length\n")
        if int(length) > MAX_BODY_BYTES:
            return Response(413, b"request too large\n")
        body = await reader.readexactly(int(length)) if int(length) else b""
        return parts[0].upper(), parts[1], body

    @property
    def open_connections(self) -> int:
        return len(self._live)

    def _make_room(self) -> None:
        while len(self._live) >= self.max_connections and self._reading:
            oldest = next(iter(self._reading))
            del self._reading[oldest]
            self._live.discard(oldest)
            oldest.transport.abort()
            self.evicted += 1

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._make_room()
        if len(self._live) >= self.max_connections:   # all of them are being answered: refuse this one
            writer.transport.abort()
            return
        self._live.add(writer)
        self._reading[writer] = None
        try:
            try:
                got = await asyncio.wait_for(self._read(reader), self.request_timeout)
            except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, asyncio.TimeoutError, ValueError,
                    ConnectionError):
                got = Response(400, b"incomplete or oversized request\n")
            if writer not in self._live:   # evicted meanwhile
                return
            self._reading.pop(writer, None)
            if isinstance(got, Response):
                resp = got
            else:
                try:
                    peer = () if self._ssl is None else (writer.get_extra_info("ssl_object"),)
                    resp = await self._handler(*got, *peer)
                except Exception:
                    log.exception("PKI HTTP handler failed on %s %s", got[0], got[1])
                    resp = Response(500, b"internal error\n")
            head = [f"HTTP/1.1 {resp.status} {REASONS.get(resp.status, 'Status')}",
                    f"Content-Type: {resp.content_type}", f"Content-Length: {len(resp.body)}",
                    "Connection: close"] + [f"{k}: {v}" for k, v in resp.headers.items()]
            writer.write(("\r\n".join(head) + "\r\n\r\n").encode("iso-8859-1") + resp.body)
            await writer.drain()
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            self._live.discard(writer)
            self._reading.pop(writer, None)
            writer.close()
            try:
                await writer.wait_closed()
            except (ConnectionError, asyncio.CancelledError):
                pass
