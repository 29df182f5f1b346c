"""A real session D-Bus for tests (Debian's ``dbus-daemon --session`` on a private socket) and a MOCK of the
desktop's notification daemon on it.

``session_bus(where)`` starts ``dbus-daemon`` and yields its address (what ``DBUS_SESSION_BUS_ADDRESS``
holds in a desktop session). ``MockNotificationDaemon(address)`` owns ``org.freedesktop.Notifications``
on that bus and implements the Desktop Notifications Specification 1.2 as a desktop's daemon does
(``GetCapabilities`` with "actions", ``GetServerInformation``, ``Notify`` returning a new id,
``CloseNotification`` emitting ``NotificationClosed`` with reason 3); it records every notification,
and ``invoke(id, key)`` does what a click on an action button does: ``ActionInvoked(id, key)``, then
``NotificationClosed(id, 2)``. It is a mock (no desktop runs here); the bus between it and the agent is real.
Uses jeepney's blocking I/O in a thread.
"""
from __future__ import annotations

import contextlib
import queue
import shutil
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

BUS_NAME = "org.freedesktop.Notifications"
PATH = "/org/freedesktop/Notifications"


def missing() -> str | None:
    return None if shutil.which("dbus-daemon") else "dbus-daemon (Debian package dbus)"


@contextlib.contextmanager
def session_bus(where: Path):
    where.mkdir(parents=True, exist_ok=True)
    sock = where / "session-bus"
    proc = subprocess.Popen(["dbus-daemon", "--session", f"--address=unix:path={sock}", "--nofork",
                             "--print-address=1"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        address = proc.stdout.readline().strip()
        if not address:
            raise RuntimeError("dbus-daemon printed no address")
        yield address
    finally:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@dataclass
class Shown:
    id: int
    app_name: str
    replaces_id: int
    app_icon: str
    summary: str
    body: str
    actions: list
    hints: dict
    expire_timeout: int
    closed: bool = False

    def action_pairs(self) -> dict[str, str]:
        return dict(zip(self.actions[0::2], self.actions[1::2]))


@dataclass
class MockNotificationDaemon:
    """A MOCK of the desktop's notification daemon (see the module docstring)."""
    address: str
    shown: list[Shown] = field(default_factory=list)
    _next: int = 1
    _todo: queue.Queue = field(default_factory=queue.Queue)
    _stop: threading.Event = field(default_factory=threading.Event)

    def start(self) -> "MockNotificationDaemon":
        from jeepney import DBusAddress
        from jeepney.bus_messages import message_bus
        from jeepney.io.blocking import open_dbus_connection
        self.conn = open_dbus_connection(self.address)
        reply = self.conn.send_and_get_reply(message_bus.RequestName(BUS_NAME, 4))   # DO_NOT_QUEUE
        if reply.body[0] != 1:
            raise RuntimeError(f"could not own {BUS_NAME}: {reply.body}")
        self.emitter = DBusAddress(PATH, interface=BUS_NAME)
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self.thread.join(5)
        self.conn.close()

    def invoke(self, nid: int, key: str) -> None:
        """The holder clicks the action ``key`` of notification ``nid``."""
        self._todo.put(("action", nid, key))

    def wait_shown(self, n: int = 1, timeout: float = 30.0) -> list[Shown]:
        deadline = time.monotonic() + timeout
        while len(self.shown) < n:
            if time.monotonic() > deadline:
                raise AssertionError(f"the agent showed {len(self.shown)} notification(s), not {n}")
            time.sleep(0.02)
        return list(self.shown)

    # -- the daemon's side -------------------------------------------------------------------------
    def _signal(self, name: str, signature: str, body: tuple) -> None:
        from jeepney import new_signal
        self.conn.send(new_signal(self.emitter, name, signature, body))

    def _serve(self) -> None:
        from jeepney import MessageType, new_error, new_method_return
        from jeepney.low_level import HeaderFields
        while not self._stop.is_set():
            while not self._todo.empty():
                _, nid, key = self._todo.get()
                self._signal("ActionInvoked", "us", (nid, key))
                self._signal("NotificationClosed", "uu", (nid, 2))   # 2: dismissed by the user
                for s in self.shown:
                    if s.id == nid:
                        s.closed = True
            try:
                msg = self.conn.receive(timeout=0.05)
            except TimeoutError:
                continue
            if msg.header.message_type != MessageType.method_call:
                continue
            member = msg.header.fields.get(HeaderFields.member)
            if member == "GetCapabilities":
                self.conn.send(new_method_return(msg, "as", (["actions", "body", "persistence"],)))
            elif member == "GetServerInformation":
                self.conn.send(new_method_return(msg, "ssss", ("mock-notifyd", "tests", "0", "1.2")))
            elif member == "Notify":
                app, replaces, icon, summary, body, actions, hints, expire = msg.body
                nid = replaces or self._next
                self._next += 1
                self.shown.append(Shown(nid, app, replaces, icon, summary, body, list(actions), dict(hints), expire))
                self.conn.send(new_method_return(msg, "u", (nid,)))
            elif member == "CloseNotification":
                nid = msg.body[0]
                for s in self.shown:
                    if s.id == nid and not s.closed:
                        s.closed = True
                        self._signal("NotificationClosed", "uu", (nid, 3))   # 3: closed by CloseNotification
                self.conn.send(new_method_return(msg))
            else:
                self.conn.send(new_error(msg, "org.freedesktop.DBus.Error.UnknownMethod", "s", (str(member),)))
