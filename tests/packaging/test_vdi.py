"""VDI: two Unix users on one host, each with its own session (runtime dir, pcscd, two readers, a
card) and its own one-file agent; neither reaches the other's agent or cards.

This is how a multi-user host keeps cards apart with Debian 12's pcsc-lite 1.9.9, which is built
without polkit (``pcscd --version``: no "polkit" among its features): one pcscd per session, its
socket in the session's 0700 ``$XDG_RUNTIME_DIR`` and handed to clients as ``PCSCLITE_CSOCK_NAME``
(what VDI smart-card redirection provides), and the agent's socket there too (its default).
The users are created with useradd and removed after; root is needed for that.
"""
from __future__ import annotations

import json
import os
import pwd
import shutil
import sys
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from firmware_profiles.emulator.pcscd import missing_tools, start_pcscd
from tests.cli.conftest import one_line_error
from tests.conftest import require

EMULATOR = Path(sys.executable).parent / "cns-emulator"


class Session:
    def __init__(self, name: str, base: Path, binary: Path, serial: str):
        self.name = name
        self.home = base / name
        self.run = base / f"run-{name}"
        for d in (self.home, self.run):
            d.mkdir(mode=0o700)
        subprocess.run(["useradd", "--no-create-home", "--home-dir", str(self.home), "--shell", "/usr/sbin/nologin",
                        "--user-group", name], check=True, capture_output=True)
        pw = pwd.getpwnam(name)
        self.uid, self.gid = pw.pw_uid, pw.pw_gid
        self.binary = binary
        self.procs: list[subprocess.Popen] = []
        self.pcscd = start_pcscd(self.run / "pcscd")          # the session's pcscd (root, as pcscd runs)
        for d in (self.home, self.run):
            os.chown(d, self.uid, self.gid)
            os.chmod(d, 0o700)
        self.procs.append(subprocess.Popen(
            [str(EMULATOR), "serve", "--profile", "infocamere-cns-2048", "--vpcd", self.pcscd.vpcd_address(0),
             "--state", str(base / f"card-{name}.json"), "--serial", serial],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL))

    def env(self, **extra) -> dict:
        return {"PATH": "/usr/bin:/bin", "HOME": str(self.home), "USER": self.name, "LANG": "C.UTF-8",
                "XDG_RUNTIME_DIR": str(self.run), "PCSCLITE_CSOCK_NAME": str(self.pcscd.socket_path), **extra}

    def as_user(self, *argv: str, **extra) -> subprocess.CompletedProcess:
        return subprocess.run(list(argv), capture_output=True, text=True, env=self.env(**extra), user=self.uid,
                              group=self.gid, extra_groups=[], cwd=self.home, timeout=60)

    def start_agent(self) -> None:
        log = open(self.home.parent / f"agent-{self.name}.log", "wb")
        self.procs.append(subprocess.Popen([str(self.binary), "run"], env=self.env(), user=self.uid, group=self.gid,
                                           extra_groups=[], cwd=self.home, stdout=log, stderr=log,
                                           stdin=subprocess.DEVNULL))

    def devices(self, **extra) -> subprocess.CompletedProcess:
        return self.as_user(str(self.binary), "devices", "--json", **extra)

    def stop(self) -> None:
        for p in reversed(self.procs):
            if p.poll() is None:
                p.terminate()
                try:
                    p.wait(10)
                except subprocess.TimeoutExpired:
                    p.kill()
        self.pcscd.stop()
        subprocess.run(["userdel", self.name], capture_output=True)


def _wait_card(s: Session, timeout: float = 40.0) -> dict:
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = s.devices()
        if last.returncode == 0:
            readers = json.loads(last.stdout)["readers"]
            cards = [r["card"] for r in readers if (r.get("card") or {}).get("state") == "ready"]
            if len(readers) == 2 and cards:
                return {"readers": readers, "card": cards[0]}
        time.sleep(0.5)
    raise AssertionError(f"{s.name}'s agent did not show its 2 readers and card: {last.stderr if last else ''}")


@pytest.fixture
def two_sessions(agent_binary):
    require(missing_tools())
    if os.geteuid() != 0 or not shutil.which("useradd"):
        require(["root (useradd) for a test with two Unix users"])
    require([] if EMULATOR.exists() else ["cns-emulator in the venv (scripts/setup)"])
    base = Path(tempfile.mkdtemp(prefix="cns-vdi-", dir="/tmp"))
    os.chmod(base, 0o711)                    # users traverse to their own folders only
    binary = base / "cns-agent"              # as installed: a copy every user may run
    shutil.copy2(agent_binary, binary)
    os.chmod(binary, 0o755)
    tag = f"{os.getpid() % 100000:05d}"
    sessions = []
    try:
        for who, serial in (("a", "VDI0000000000A01"), ("b", "VDI0000000000B02")):
            sessions.append(Session(f"cnsvdi{tag}{who}", base, binary, serial))
        yield sessions
    finally:
        for s in sessions:
            s.stop()
        shutil.rmtree(base, ignore_errors=True)


@pytest.mark.pcscd
@pytest.mark.opensc
def test_two_users_two_agents_neither_reaches_the_other(two_sessions):
    a, b = two_sessions
    for s in (a, b):
        s.start_agent()
    seen = {s.name: _wait_card(s) for s in (a, b)}
    assert seen[a.name]["card"]["serial"] == "VDI0000000000A01"
    assert seen[b.name]["card"]["serial"] == "VDI0000000000B02"
    # the socket is per session, in the user's runtime dir, private to the user
    for s in (a, b):
        sock_dir = s.run / "cns-agent"
        st = os.stat(sock_dir)
        assert (st.st_uid, st.st_mode & 0o777) == (s.uid, 0o700)
        assert (sock_dir / "agent.sock").exists()
    # b cannot talk to a's agent: one clear line, nothing of a's shown
    r = b.as_user(str(b.binary), "devices", "--json", "--socket", str(a.run / "cns-agent" / "agent.sock"))
    assert r.returncode != 0 and "VDI0000000000A01" not in r.stdout
    one_line_error(r)
    # b cannot reach a's readers or card through a's pcscd either
    mine = b.as_user("opensc-tool", "-l")
    theirs = b.as_user("opensc-tool", "-l", PCSCLITE_CSOCK_NAME=str(a.pcscd.socket_path))
    assert "Virtual PCD" in mine.stdout
    assert "Virtual PCD" not in theirs.stdout
    # and nothing machine-wide: no agent socket outside the sessions' runtime dirs
    assert not Path(f"/tmp/cns-agent-{a.uid}").exists() and not Path(f"/tmp/cns-agent-{b.uid}").exists()
