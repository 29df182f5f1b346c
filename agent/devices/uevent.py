"""Linux kernel uevents as the USB backend's hotplug signal, so the idle agent does not poll libusb.

pyusb offers no hotplug callback, and polling the bus every few tens of milliseconds to see a token
within 100 ms costs the idle agent about half a percent of a core (issue 18's budget). The kernel
multicasts a uevent (netlink ``NETLINK_KOBJECT_UEVENT``, group 1) for every device added, removed
or changed; any user may listen, no udev needed. ``KernelEvents.open(subsystems)`` binds that socket
(None when the platform or the sandbox has none: the caller then polls), and ``listen(callback)``
calls ``callback()`` from a reader thread for each event of those subsystems, and once more
``settle_s`` later (libusb may list a device a moment after its uevent). It returns ``remove``.

Imports the standard library only.
"""
from __future__ import annotations

import logging
import os
import select
import socket
import threading
from collections.abc import Callable

log = logging.getLogger(__name__)

NETLINK_KOBJECT_UEVENT = 15
KERNEL_GROUP = 1
MAX_EVENT = 8192


def subsystem_of(message: bytes) -> str:
    """``SUBSYSTEM`` of one kernel uevent (``ACTION@DEVPATH\\0KEY=VALUE\\0...``), "" if absent."""
    for field in message.split(b"\0")[1:]:
        if field.startswith(b"SUBSYSTEM="):
            return field[len(b"SUBSYSTEM="):].decode("ascii", "replace")
    return ""


class KernelEvents:
    def __init__(self, sock: socket.socket, subsystems: tuple[str, ...], settle_s: float):
        self._sock, self.subsystems, self.settle_s = sock, subsystems, settle_s
        self._listeners: list[Callable[[], None]] = []
        self._lock = threading.Lock()
        self._stop_r, self._stop_w = os.pipe()
        self._thread = threading.Thread(target=self._read, name="uevent", daemon=True)
        self._thread.start()

    @classmethod
    def open(cls, subsystems: tuple[str, ...] = ("usb",), *, settle_s: float = 0.25) -> "KernelEvents | None":
        if not hasattr(socket, "AF_NETLINK"):
            return None
        try:
            sock = socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, NETLINK_KOBJECT_UEVENT)
        except OSError as exc:
            log.info("no kernel uevents here (%s): the USB bus is polled", exc)
            return None
        try:
            sock.bind((0, KERNEL_GROUP))
        except OSError as exc:
            sock.close()
            log.info("cannot listen to kernel uevents (%s): the USB bus is polled", exc)
            return None
        return cls(sock, tuple(subsystems), settle_s)

    def listen(self, callback: Callable[[], None]) -> Callable[[], None]:
        with self._lock:
            self._listeners.append(callback)

        def remove() -> None:
            with self._lock:
                if callback in self._listeners:
                    self._listeners.remove(callback)
        return remove

    def _fire(self) -> None:
        with self._lock:
            listeners = list(self._listeners)
        for cb in listeners:
            try:
                cb()
            except Exception:   # a listener's failure must not end the reader
                log.exception("hotplug listener failed")

    def _read(self) -> None:
        while True:
            ready, _, _ = select.select([self._sock, self._stop_r], [], [])
            if self._stop_r in ready:
                return
            try:
                message = self._sock.recv(MAX_EVENT)
            except OSError:
                return
            if subsystem_of(message) in self.subsystems:
                self._fire()
                timer = threading.Timer(self.settle_s, self._fire)
                timer.daemon = True
                timer.start()

    def close(self) -> None:
        os.write(self._stop_w, b"x")
        self._thread.join(2.0)
        self._sock.close()
        os.close(self._stop_r)
        os.close(self._stop_w)


__all__ = ["KernelEvents", "subsystem_of"]
