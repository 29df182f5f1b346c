"""Tell the holder on the desktop that a token release waits for approval (issue 14 item 4), on Linux.

``DesktopNotifier(approvals).run()`` is the agent's task ``token-notify``: it opens the user's session
D-Bus (``DBUS_SESSION_BUS_ADDRESS``; with jeepney, pure Python, asyncio) and for every release that
starts waiting (``Approvals.subscribe``) calls ``org.freedesktop.Notifications.Notify`` (the Desktop
Notifications Specification, 1.2) with the actions "Install now" (key ``install``) and "Later" (key
``later``). The daemon's ``ActionInvoked`` signal answers the approval: ``install`` approves (the
``token-updates`` task installs it once the token is plugged in and idle), ``later`` declines it
(postponed); a notification closed without an action leaves it waiting (``cns-agent update approve``
still answers it). An answer given elsewhere (the CLI, an operator tool) closes the notification.
No session bus (a service without a desktop, a VDI without D-Bus), or no notification daemon on it:
silently nothing (one debug line); the task then waits until cancelled and never fails the agent.

Imports jeepney and ``agent.updates.approvals``.
"""
from __future__ import annotations

import asyncio
import logging

from agent.updates.approvals import Approvals, ApprovalError, Pending

log = logging.getLogger(__name__)
BUS_NAME = "org.freedesktop.Notifications"
PATH = "/org/freedesktop/Notifications"
ACTIONS = ["install", "Install now", "later", "Later"]   # key, label, key, label (the spec's flat list)
APP_NAME = "cns-agent"
RETRY_S = 60.0


def _size(n: int) -> str:
    for unit in ("bytes", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n}"


def text_of(p: Pending) -> tuple[str, str]:
    """(summary, body) of the notification for ``p``."""
    now = f" (it runs {p.current})" if p.current else ""
    body = (f"Release {p.release} for your CNS token {p.serial} ({p.model}){now} is downloaded, "
            f"{_size(p.size_bytes)}. Install now: it is installed while the token stays plugged in and unused; "
            "keep it plugged in until it is done. Later: you are asked again later.")
    return "CNS token update ready", body


class DesktopNotifier:
    def __init__(self, approvals: Approvals, *, bus: str = "SESSION") -> None:
        self.approvals, self.bus = approvals, bus
        self.shown: dict[int, Pending] = {}     # notification id → the approval it asks for
        self.available = False

    async def run(self) -> None:
        """Until cancelled; never fails the agent: without a session bus it waits, a bus that goes away
        (the desktop session ended) is tried again every ``RETRY_S``."""
        try:
            import jeepney  # noqa: F401
        except ImportError:   # not a Linux build
            await asyncio.Event().wait()
        while True:
            try:
                await self._serve()
            except KeyError:      # no DBUS_SESSION_BUS_ADDRESS: no desktop session for this agent
                log.debug("no session D-Bus: token releases waiting for approval are not shown on the desktop")
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - the desktop is optional; the approvals stay on the local API
                log.debug("session D-Bus not usable (%s: %s); trying again in %.0f s", type(exc).__name__, exc,
                          RETRY_S)
            self.available = False
            self.shown.clear()
            await asyncio.sleep(RETRY_S)

    async def _serve(self) -> None:
        from jeepney import DBusAddress, MatchRule, MessageType, message_bus, new_method_call
        from jeepney.io.asyncio import open_dbus_router

        router_cm = open_dbus_router(self.bus)
        router = await router_cm.__aenter__()
        loop = asyncio.get_running_loop()
        events: asyncio.Queue = asyncio.Queue()
        unsubscribe = self.approvals.subscribe(lambda kind, p: loop.call_soon_threadsafe(events.put_nowait, (kind, p)))
        target = DBusAddress(PATH, bus_name=BUS_NAME, interface=BUS_NAME)
        rule = MatchRule(type="signal", interface=BUS_NAME, path=PATH)
        try:
            await router.send_and_get_reply(message_bus.AddMatch(rule))
            self.available = True
            for p in self.approvals.list():       # already waiting when the task started
                if p.state == "waiting":
                    events.put_nowait(("pending", p))
            with router.filter(rule, queue=asyncio.Queue()) as signals:
                sig_task = asyncio.ensure_future(signals.get())
                ev_task = asyncio.ensure_future(events.get())
                try:
                    while True:
                        done, _ = await asyncio.wait({sig_task, ev_task}, return_when=asyncio.FIRST_COMPLETED)
                        if ev_task in done:
                            kind, p = ev_task.result()
                            ev_task = asyncio.ensure_future(events.get())
                            await self._on_approval(router, target, new_method_call, MessageType, kind, p)
                        if sig_task in done:
                            msg = sig_task.result()
                            sig_task = asyncio.ensure_future(signals.get())
                            self._on_signal(msg)
                finally:
                    sig_task.cancel()
                    ev_task.cancel()
        finally:
            unsubscribe()
            await router_cm.__aexit__(None, None, None)

    async def _on_approval(self, router, target, new_method_call, MessageType, kind: str, p: Pending) -> None:
        if kind == "pending":
            summary, body = text_of(p)
            reply = await router.send_and_get_reply(new_method_call(
                target, "Notify", "susssasa{sv}i",
                (APP_NAME, 0, "drive-removable-media", summary, body, ACTIONS,
                 {"urgency": ("y", 1), "category": ("s", "device"), "desktop-entry": ("s", APP_NAME)}, 0)))
            if reply.header.message_type == MessageType.error:
                log.debug("the desktop's notification daemon refused: %s", reply.body)
                return
            self.shown[int(reply.body[0])] = p
            log.info("token %s: release %s shown to the holder (notification %s)", p.serial, p.release, reply.body[0])
            return
        for nid, shown in list(self.shown.items()):      # answered elsewhere: the question is gone
            if shown.serial == p.serial:
                del self.shown[nid]
                await router.send_and_get_reply(new_method_call(target, "CloseNotification", "u", (nid,)))

    def _on_signal(self, msg) -> None:
        from jeepney.low_level import HeaderFields
        member = msg.header.fields.get(HeaderFields.member)
        if member == "ActionInvoked":
            nid, key = int(msg.body[0]), str(msg.body[1])
            p = self.shown.pop(nid, None)
            if p is None or key not in ("install", "later"):
                return
            try:
                self.approvals.answer(p.serial, key == "install", p.release)
                log.info("token %s: the holder chose %s for release %s on the desktop", p.serial, key, p.release)
            except ApprovalError as exc:
                log.info("desktop answer for token %s not taken: %s", p.serial, exc)
        elif member == "NotificationClosed":
            self.shown.pop(int(msg.body[0]), None)       # dismissed: the approval keeps waiting
