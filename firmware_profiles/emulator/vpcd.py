"""vpcd client: puts an ``EmulatedCard`` into pcscd's virtual reader.

Owns the vsmartcard vpcd wire protocol (REFERENCE.md §2): we are the TCP
client; every message both ways is a 2-byte big-endian length and a payload.
A 1-byte message from vpcd is a control code (00 power off, 01 power on,
02 reset, 04 get ATR; only 04 gets a reply); longer ones are C-APDUs, answered
with data + SW1 SW2. A closed socket is a removed card; reconnecting inserts it.

Imports: ``firmware_profiles.emulator.card`` only.
"""
from __future__ import annotations

import logging
import socket
import struct
import threading
from enum import IntEnum

from firmware_profiles.emulator.card import CardRemovedError, EmulatedCard

log = logging.getLogger(__name__)

_QUICKACK = getattr(socket, "TCP_QUICKACK", None)  # Linux only
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 35963


class Control(IntEnum):
    POWER_OFF = 0x00
    POWER_ON = 0x01
    RESET = 0x02
    GET_ATR = 0x04


def parse_address(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"vpcd address must be HOST:PORT, got {text!r}")
    return host, int(port)


class VpcdClient:
    """Serve one card to one vpcd reader until ``stop()``; reinserts after a fault pulls it."""

    def __init__(self, card: EmulatedCard, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT, *,
                 reinsert_after: float = 1.0, connect_retry: float = 0.2):
        self.card, self.host, self.port = card, host, port
        self.reinsert_after = reinsert_after
        self.connect_retry = connect_retry
        self._stop = threading.Event()
        self._sock: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self.inserted = threading.Event()
        self.connections = 0
        self._hold = threading.Event()  # set: stay removed until release()

    # ------------------------------------------------------------ control
    def start(self) -> "VpcdClient":
        self._thread = threading.Thread(target=self.serve_forever, name=f"vpcd-{self.port}", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        self._close()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout)

    def remove(self) -> None:
        """Pull the card out of the reader and keep it out until ``insert()``."""
        self._hold.set()
        self._close()

    def insert(self) -> None:
        self._hold.clear()

    def _close(self) -> None:
        sock, self._sock = self._sock, None
        self.inserted.clear()
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            sock.close()

    # ------------------------------------------------------------ loop
    def serve_forever(self) -> None:
        while not self._stop.is_set():
            if self._hold.is_set():
                self._stop.wait(0.05)
                continue
            try:
                sock = socket.create_connection((self.host, self.port), timeout=2)
            except OSError:
                self._stop.wait(self.connect_retry)
                continue
            sock.settimeout(None)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self._sock = sock
            self.connections += 1
            self.inserted.set()
            log.info("card %s inserted into vpcd %s:%d", self.card.serial, self.host, self.port)
            pulled = self._session(sock)
            self._close()
            self.card.power_off()
            if pulled and not self._stop.is_set():
                self._stop.wait(self.reinsert_after)

    def _recv_exact(self, sock: socket.socket, n: int) -> bytes | None:
        buf = b""
        while len(buf) < n:
            try:
                # vpcd writes the length and the payload separately; with Nagle on its side and
                # delayed ACKs on ours every APDU would wait ~40 ms. Ask for immediate ACKs.
                if _QUICKACK is not None:
                    sock.setsockopt(socket.IPPROTO_TCP, _QUICKACK, 1)
                chunk = sock.recv(n - len(buf))
            except OSError:
                return None
            if not chunk:
                return None
            buf += chunk
        return buf

    def _send(self, sock: socket.socket, payload: bytes) -> bool:
        try:
            sock.sendall(struct.pack(">H", len(payload)) + payload)
            return True
        except OSError:
            return False

    def _session(self, sock: socket.socket) -> bool:
        """Serve until the socket closes. Returns True when a fault pulled the card."""
        while not self._stop.is_set():
            head = self._recv_exact(sock, 2)
            if head is None:
                return False
            (length,) = struct.unpack(">H", head)
            msg = self._recv_exact(sock, length) if length else b""
            if msg is None:
                return False
            if len(msg) == 1:
                code = msg[0]
                if code == Control.POWER_OFF:
                    self.card.power_off()
                elif code == Control.POWER_ON:
                    self.card.power_on()
                elif code == Control.RESET:
                    self.card.reset()
                elif code == Control.GET_ATR:
                    if not self._send(sock, self.card.atr):
                        return False
                else:
                    log.warning("unknown vpcd control code %02X", code)
                continue
            if not msg:
                continue
            try:
                if not self.card.powered:
                    self.card.power_on()  # vpcd may send an APDU right after insertion
                resp = self.card.transmit(msg)
            except CardRemovedError:
                log.info("fault: card %s pulled from the reader", self.card.serial)
                return True
            if not self._send(sock, resp):
                return False
        return False
