"""A vpcd card client: connects to pcscd's vpcd driver and serves any card-like
object (``power_on() -> atr``, ``power_off()``, ``reset()``, ``transmit(apdu) -> data+SW``).

Connecting inserts the card, closing the socket removes it (REFERENCE §2).
``RawCard`` is the simplest card: a fixed ATR and 6D00 to everything.
"""
from __future__ import annotations

import socket
import struct
import threading


class RawCard:
    def __init__(self, atr: bytes) -> None:
        self.atr = atr

    def power_on(self) -> bytes:
        return self.atr

    def power_off(self) -> None:
        pass

    def reset(self) -> bytes:
        return self.atr

    def transmit(self, apdu: bytes) -> bytes:
        return b"\x6d\x00"


class VpcdBridge:
    def __init__(self, address: str, card) -> None:
        host, port = address.rsplit(":", 1)
        self.addr = (host, int(port))
        self.card = card
        self._sock: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self.atr = b""

    def insert(self) -> "VpcdBridge":
        self.atr = bytes(self.card.power_on())
        self._sock = socket.create_connection(self.addr, timeout=5)
        self._sock.settimeout(None)
        self._sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._thread = threading.Thread(target=self._serve, args=(self._sock,), name="vpcd-bridge", daemon=True)
        self._thread.start()
        return self

    @staticmethod
    def _recv(sock: socket.socket, n: int) -> bytes:
        buf = b""
        while len(buf) < n:
            chunk = sock.recv(n - len(buf))
            # vpcd writes the length and the payload separately (Nagle on its side);
            # a delayed ACK from us would then cost ~40 ms per APDU.
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_QUICKACK, 1)
            if not chunk:
                raise OSError("closed")
            buf += chunk
        return buf

    def _send(self, sock: socket.socket, payload: bytes) -> None:
        sock.sendall(struct.pack(">H", len(payload)) + payload)

    def _serve(self, sock: socket.socket) -> None:
        try:
            while True:
                (n,) = struct.unpack(">H", self._recv(sock, 2))
                msg = self._recv(sock, n)
                if n == 1:
                    code = msg[0]
                    if code == 0x00:
                        self.card.power_off()
                    elif code == 0x01:
                        self.atr = bytes(self.card.power_on())
                    elif code == 0x02:
                        self.atr = bytes(self.card.reset() or self.atr)
                    elif code == 0x04:
                        self._send(sock, self.atr)
                    continue
                self._send(sock, bytes(self.card.transmit(msg)))
        except OSError:
            return

    def remove(self) -> None:
        sock, self._sock = self._sock, None
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            sock.close()
        if self._thread is not None:
            self._thread.join(2)
