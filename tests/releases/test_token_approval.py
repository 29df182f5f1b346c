"""Asking the holder before a token release is installed (issue 14 item 4, ``token_install = "ask"``), for a
holder with no terminal open: the running agent (``Agent.build``, USB backend on the emulated bus) downloads
the release in the background (TUF repository served by nginx), exposes it on its local API as a pending
approval (``cns-agent update pending|approve|decline --token``, ``watch``) and shows a desktop notification
over a real session D-Bus (``dbus-daemon --session``) to a MOCK of the desktop's notification daemon; the
holder's "Install now" installs it once the token is idle, "Later" postpones it."""
from __future__ import annotations

import asyncio
import json
import threading
import time

import pytest

from agent import cli
from agent.api.client import AgentClient
from agent.updates.approvals import Approvals
from agent.updates.desktop import DesktopNotifier
from tests.conftest import require
from tests.releases.test_token_update_cli import V1, V2, _setup_agent, _start
from tests.releases.tokenrel import contents, token_set
from tests.support import dbus
from tests.wiring.conftest import wait_for


@pytest.fixture
def bus_address(tmp_path, monkeypatch):
    require(dbus.missing())
    with dbus.session_bus(tmp_path / "dbus") as address:
        monkeypatch.setenv("DBUS_SESSION_BUS_ADDRESS", address)
        yield address


@pytest.fixture
def notifyd(bus_address):
    daemon = dbus.MockNotificationDaemon(bus_address).start()
    yield daemon
    daemon.stop()


def _notifier(running):
    return asyncio.run_coroutine_threadsafe(DesktopNotifier(running.agent.approvals).run(), running.loop)


def _json(capsys) -> list[dict]:
    return [json.loads(x) for x in capsys.readouterr().out.splitlines() if x.startswith("{")]


class Watch:
    """``AgentClient.watch()`` in a thread: the events a watching tool sees."""

    def __init__(self, sock):
        self.client, self.events = AgentClient(sock), []
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        from agent.commands.devices import event_dict
        for e in self.client.watch():
            self.events.append(event_dict(e))

    def approvals(self, kind):
        return [e["approval"] for e in self.events if e["kind"] == kind]

    def close(self):
        self.client.__exit__()
        self.thread.join(5)


def test_install_now_on_the_desktop_installs_the_waiting_release_once_the_token_is_idle(
        served, make_release, tmp_path, notifyd, capsys):
    running, token, updates, d2 = _setup_agent(served, make_release, tmp_path)
    holder_signing = {"now": True}
    running.agent.token_busy = lambda serial: "its chip is in use" if holder_signing["now"] else None
    sock = running.cfg.socket
    notifier = _notifier(running)
    task = _start(running, served, updates, "ask")
    watch = Watch(sock)
    try:
        [shown] = notifyd.wait_shown(1)
        # what the holder sees: the release, the token, its model, the size; two actions
        assert shown.app_name == "cns-agent" and shown.summary == "CNS token update ready"
        assert "Release 2.0.0" in shown.body and token.serial in shown.body and token.model.id in shown.body
        assert "(it runs 1.0.0)" in shown.body and "MiB" in shown.body
        assert shown.action_pairs() == {"install": "Install now", "later": "Later"}
        # the same question on the local API, for operator and holder tools
        assert cli.main(["update", "pending", "--token", "--json", "--socket", str(sock)]) == 0
        [row] = _json(capsys)
        assert (row["serial"], row["model"], row["release"], row["current_release"], row["state"]) == \
            (token.serial, token.model.id, "2.0.0", "1.0.0", "waiting")
        assert row["size_bytes"] == sum(c.length for c in _release(updates, token).components)
        wait_for(lambda: watch.approvals("approval_pending"), "the watch event")
        assert watch.approvals("approval_pending")[0]["release"] == "2.0.0"
        from agent.commands.devices import _describe
        line = _describe(next(e for e in watch.events if e["kind"] == "approval_pending"))   # `cns-agent watch`
        assert f"token {token.serial}" in line and "release 2.0.0 (runs 1.0.0)" in line and "waiting" in line
        time.sleep(0.5)                                   # several retry ticks: nothing installed unasked
        assert token_set(token) == V1
        notifyd.invoke(shown.id, "install")               # the holder clicks "Install now"
        wait_for(lambda: watch.approvals("approval_answered"), "the answer in watch")
        assert watch.approvals("approval_answered")[0]["state"] == "approved"
        time.sleep(0.5)
        assert token_set(token) == V1                     # approved, but the holder is signing: it waits
        holder_signing["now"] = False
        wait_for(lambda: token_set(token) == V2, "the install once idle", 30)
        assert contents(token)["cdrom"] == d2["cdrom"]
        wait_for(lambda: not running.agent.approvals.list(), "the approval gone once installed")
        capsys.readouterr()
        assert cli.main(["update", "pending", "--token", "--socket", str(sock)]) == 0
        assert "no token release waits for an answer" in capsys.readouterr().out
        assert cli.main(["update", "decline", "--token", "--socket", str(sock)]) == 1   # nothing to decline
        err = capsys.readouterr().err.strip()
        assert "no token release waits for an answer" in err and "\n" not in err and "Traceback" not in err
    finally:
        watch.close()
        for t in (task, notifier):
            running.loop.call_soon_threadsafe(t.cancel)
        running.stop()


def test_later_postpones_the_question_then_approve_from_the_command_line(served, make_release, tmp_path, notifyd,
                                                                         capsys):
    running, token, updates, _ = _setup_agent(served, make_release, tmp_path)
    running.agent.approvals.postpone_s = 2.0
    sock = str(running.cfg.socket)
    notifier = _notifier(running)
    task = asyncio.run_coroutine_threadsafe(__import__("agent.app", fromlist=["token_updates"]).token_updates(
        running.agent, url=served.url, proxy=None, state_dir=updates / "updates", policy="ask",
        interval_s=0.3, jitter_s=0, retry_s=0.1), running.loop)        # checks every 0.3 s
    try:
        [first] = notifyd.wait_shown(1)
        notifyd.invoke(first.id, "later")                 # "Later" on the desktop
        wait_for(lambda: running.agent.approvals.list()[0].state == "declined", "declined")
        assert cli.main(["update", "pending", "--token", "--json", "--socket", sock]) == 0
        [row] = _json(capsys)
        assert row["state"] == "declined" and row["postponed_until_unix_ms"] > time.time() * 1000
        time.sleep(1.0)                                   # three checks: not asked again, nothing installed
        assert len(notifyd.shown) == 1 and token_set(token) == V1
        [second] = notifyd.wait_shown(2, timeout=10)[1:]  # the postponement over: asked again
        assert "Release 2.0.0" in second.body
        # a mistyped release is refused in one line; the question stays
        assert cli.main(["update", "approve", "--token", "--release", "2.0.1", "--socket", sock]) == 1
        err = capsys.readouterr().err.strip()
        assert "waits for release 2.0.0, not 2.0.1" in err and "\n" not in err and "Traceback" not in err
        assert token_set(token) == V1
        assert cli.main(["update", "approve", "--token", "--release", "2.0.0", "--socket", sock]) == 0
        assert "approved" in capsys.readouterr().out
        wait_for(lambda: token_set(token) == V2, "the install once approved", 30)
        wait_for(lambda: second.closed, "the desktop question closed once answered elsewhere")
    finally:
        for t in (task, notifier):
            running.loop.call_soon_threadsafe(t.cancel)
        running.stop()


def _release(updates, token):
    from agent.updates.client import known_releases
    return next(r for r in known_releases(updates / "updates", token.model.id) if r.version == "2.0.0")


def test_a_decline_survives_a_restart_and_a_newer_release_asks_at_once(tmp_path):
    now = [1000.0]
    a = Approvals(tmp_path / "approvals.json", postpone_s=3600, clock=lambda: now[0])
    assert a.offer("TK1", "m", "2.0.0", "1.0.0", 10, tmp_path / "m.json") is not None
    assert a.offer("TK1", "m", "2.0.0", "1.0.0", 10, tmp_path / "m.json") is None      # asked once, not twice
    a.answer("TK1", False)
    b = Approvals(tmp_path / "approvals.json", postpone_s=3600, clock=lambda: now[0])  # the agent restarted
    assert b.offer("TK1", "m", "2.0.0", "1.0.0", 10, tmp_path / "m.json") is None
    assert b.list()[0].state == "declined" and not b.approved("TK1", "2.0.0")
    assert b.offer("TK1", "m", "2.1.0", "1.0.0", 10, tmp_path / "n.json").release == "2.1.0"
    now[0] += 3601
    c = Approvals(tmp_path / "approvals.json", postpone_s=3600, clock=lambda: now[0])
    assert c.offer("TK1", "m", "2.0.0", "1.0.0", 10, tmp_path / "m.json") is not None   # postponement over


def test_without_a_session_bus_the_notifier_is_silent_and_keeps_running(monkeypatch):
    monkeypatch.delenv("DBUS_SESSION_BUS_ADDRESS", raising=False)

    async def go():
        a = Approvals(None)
        n = DesktopNotifier(a)
        task = asyncio.create_task(n.run())
        await asyncio.sleep(0.3)
        a.offer("TK1", "m", "2.0.0", "", 10, "/x.json")
        await asyncio.sleep(0.1)
        assert not task.done() and not n.available       # nothing shown, nothing failed
        task.cancel()
    asyncio.run(go())


def test_a_session_bus_without_a_notification_daemon_leaves_the_agent_running(bus_address):
    async def go():
        a = Approvals(None)
        n = DesktopNotifier(a)
        task = asyncio.create_task(n.run())
        await asyncio.sleep(0.3)
        assert n.available                                # connected to the bus
        a.offer("TK1", "m", "2.0.0", "", 10, "/x.json")   # Notify: no daemon owns the name
        await asyncio.sleep(0.3)
        assert not task.done() and n.shown == {}
        assert a.list()[0].state == "waiting"             # still answerable on the local API
        task.cancel()
    asyncio.run(go())
