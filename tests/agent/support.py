"""Helpers for the agent's integration tests: an unprivileged user, the agent
and its client as that user, emulated cards on vpcd (``cns-emulator serve``) and
a raw vpcd card with any ATR (for "unsupported")."""
from __future__ import annotations

import json
import os
import pwd
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
TEST_USER = "cns-test"


def ensure_test_user() -> tuple[int, int] | None:
    """(uid, gid) of the unprivileged test user, created if missing; None when we are not root."""
    if os.getuid() != 0:
        return None
    try:
        pw = pwd.getpwnam(TEST_USER)
    except KeyError:
        subprocess.run(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", TEST_USER],
                       check=True, capture_output=True)
        pw = pwd.getpwnam(TEST_USER)
    return pw.pw_uid, pw.pw_gid


def allow_traverse(path: Path) -> None:
    """Let other users reach ``path`` (x on its ancestors under /tmp): pytest's temp root is 0700."""
    path = path.resolve()
    for parent in [path, *path.parents]:
        if parent == Path("/tmp") or parent == Path("/"):
            break
        mode = os.stat(parent).st_mode
        os.chmod(parent, mode | 0o011)


def as_user(ids: tuple[int, int] | None, argv: list[str]) -> list[str]:
    if ids is None:
        return argv
    uid, gid = ids
    return ["setpriv", f"--reuid={uid}", f"--regid={gid}", "--init-groups", *argv]


class AgentUnderTest:
    """``cns-agent run`` as the test user with a private XDG_RUNTIME_DIR; clients as the same user."""

    def __init__(self, pcscd_env: dict[str, str], ids: tuple[int, int] | None) -> None:
        self.ids = ids
        self.runtime = Path(tempfile.mkdtemp(prefix="cns-agent-xdg-"))
        if ids:
            os.chown(self.runtime, *ids)
        os.chmod(self.runtime, 0o700)
        self.env = dict(pcscd_env)
        self.env.update(XDG_RUNTIME_DIR=str(self.runtime), HOME=str(self.runtime), PYTHONUNBUFFERED="1")
        self.socket = self.runtime / "cns-agent" / "agent.sock"
        self.log = self.runtime / "agent.log"
        self.proc: subprocess.Popen | None = None
        self._watch: subprocess.Popen | None = None
        self.events: list[dict] = []

    def start(self, *args: str) -> None:
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(as_user(self.ids, [str(BIN / "cns-agent"), "run", *args]),
                                         env=self.env, stdout=log, stderr=subprocess.STDOUT, cwd="/")
        wait_for(lambda: self.socket.exists(), 15, lambda: f"agent did not start: {self.log_text()}")

    def log_text(self) -> str:
        try:
            return self.log.read_text(errors="replace")
        except OSError:
            return ""

    def cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        res = subprocess.run(as_user(self.ids, [str(BIN / "cns-agent"), *args]), env=self.env, cwd="/",
                             capture_output=True, text=True, timeout=30)
        if check and res.returncode != 0:
            raise AssertionError(f"cns-agent {' '.join(args)} failed: {res.stderr}\nagent log:\n{self.log_text()}")
        return res

    def devices(self) -> dict:
        return json.loads(self.cli("devices", "--json").stdout)

    def reader(self, name: str) -> dict:
        for r in self.devices()["readers"]:
            if r["name"] == name:
                return r
        raise AssertionError(f"reader {name} not listed")

    def wait_reader(self, name: str, pred: Callable[[dict], bool], timeout: float = 15) -> dict:
        last: list[dict] = []

        def check() -> bool:
            found = [r for r in self.devices()["readers"] if r["name"] == name]
            last[:] = found or [{"name": name, "listed": False}]
            return bool(found) and pred(found[0])
        wait_for(check, timeout, lambda: f"reader {name} never matched; last {last}\nagent log:\n{self.log_text()}")
        return last[0]

    def start_watch(self) -> None:
        self._watch = subprocess.Popen(as_user(self.ids, [str(BIN / "cns-agent"), "watch", "--json"]),
                                       env=self.env, cwd="/", stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                       text=True)

        def pump() -> None:
            for line in self._watch.stdout:
                if line.strip():
                    self.events.append(json.loads(line))
        threading.Thread(target=pump, name="watch-pump", daemon=True).start()
        wait_for(lambda: bool(self.events), 10, lambda: "watch sent no snapshot")

    def stop(self) -> int | None:
        if self._watch and self._watch.poll() is None:
            self._watch.terminate()
            self._watch.wait(5)
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self.runtime, ignore_errors=True)


def wait_for(pred: Callable[[], bool], timeout: float, message: Callable[[], str]) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return
        time.sleep(0.1)
    raise AssertionError(message())


class Emulator:
    """``cns-emulator serve`` on one vpcd port, as a subprocess: start = insert, stop = remove."""

    def __init__(self, env: dict[str, str], profile: str, address: str, *, state: Path | None = None,
                 faults: tuple[str, ...] = (), reinsert_after: float | None = None) -> None:
        self.argv = [str(BIN / "cns-emulator"), "serve", "--profile", profile, "--vpcd", address]
        if reinsert_after is not None:
            self.argv += ["--reinsert-after", str(reinsert_after)]
        if state is not None:
            self.argv += ["--state", str(state)]
        for f in faults:
            self.argv += ["--fault", f]
        self.env = env
        self.proc: subprocess.Popen | None = None

    def start(self) -> "Emulator":
        self.proc = subprocess.Popen(self.argv, env=self.env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        return self

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def raw_vpcd_card(address: str, atr: bytes):
    """A bare vpcd card with ``atr`` that answers 6D00 to everything; ``.stop()`` pulls it."""
    from tests.support.vpcd import RawCard, insert

    return insert(address, RawCard(atr))
