"""A real HTTP forward proxy on loopback for the tests: relays to the origin and can cut connections.

It stands for the station's corporate proxy (the agent must use it: every request it relays is
recorded) and for a bad network (``cut_after``: the first N responses are cut after ``cut_bytes``
body-and-header bytes, as a dropped connection; ``stall``: they hang instead, as a stalled server).
"""
from __future__ import annotations

import socket
import socketserver
import threading
from urllib.parse import urlsplit


class _Handler(socketserver.BaseRequestHandler):
    def handle(self):
        srv = self.server
        data = b""
        while b"\r\n\r\n" not in data:
            block = self.request.recv(65536)
            if not block:
                return
            data += block
        head, _, rest = data.partition(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        method, target, version = lines[0].split(b" ", 2)
        u = urlsplit(target.decode())
        srv.seen.append(f"{method.decode()} {target.decode()}")
        path = (u.path or "/") + (f"?{u.query}" if u.query else "")
        headers = [h for h in lines[1:] if not h.lower().startswith((b"proxy-", b"connection:"))]
        req = b"\r\n".join([f"{method.decode()} {path} HTTP/1.1".encode(), *headers, b"Connection: close"]) \
            + b"\r\n\r\n" + rest
        with socket.create_connection((u.hostname, u.port or 80)) as up:
            up.sendall(req)
            with srv.lock:
                cut = srv.cut_remaining > 0
                if cut:
                    srv.cut_remaining -= 1
            budget = srv.cut_bytes if cut else None
            sent = 0
            while True:
                block = up.recv(65536)
                if not block:
                    break
                if budget is not None and sent + len(block) > budget:
                    self.request.sendall(block[:budget - sent])
                    if srv.stall_s:                      # a server that stops sending but keeps the connection
                        srv.stopped.wait(srv.stall_s)
                    self.request.shutdown(socket.SHUT_RDWR)
                    return
                self.request.sendall(block)
                sent += len(block)


class FaultyProxy(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self):
        super().__init__(("127.0.0.1", 0), _Handler)
        self.seen: list[str] = []
        self.lock = threading.Lock()
        self.cut_remaining = 0
        self.cut_bytes = 0
        self.stall_s = 0.0
        self.stopped = threading.Event()
        self._thread = threading.Thread(target=self.serve_forever, daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def cut(self, responses: int, after_bytes: int) -> None:
        with self.lock:
            self.cut_remaining, self.cut_bytes = responses, after_bytes

    def stall(self, responses: int, after_bytes: int, seconds: float) -> None:
        """The next ``responses`` stop after ``after_bytes`` and hang for ``seconds`` before closing."""
        with self.lock:
            self.cut_remaining, self.cut_bytes, self.stall_s = responses, after_bytes, seconds

    def close(self) -> None:
        self.stopped.set()
        self.shutdown()
        self.server_close()
