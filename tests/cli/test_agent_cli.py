"""``cns-agent`` as an operator types it, against a real agent: ``devices`` in a pipe and at 80 columns with
full serials, ``devices`` when pcscd is down, ``watch`` across an agent restart, ``--json`` before the
command, quiet on a closed pipe, and PIN codes (asked twice on a terminal, never equal to the PUK)."""
from __future__ import annotations

import fcntl
import json
import os
import pty
import re
import signal
import struct
import sys
import subprocess
import termios
import time
from pathlib import Path

import pytest

from firmware_profiles.emulator.pcscd import missing_tools, start_pcscd
from tests.cli.conftest import BIN, one_line_error, run_into_closed_pipe
from tests.conftest import require

PROFILE = "infocamere-cns-2048"
SERIAL = "ICMRTEST00012345"
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def _wait(predicate, what: str, timeout: float = 30.0):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


class Agent:
    """``cns-agent run`` on its own socket, in an environment (a pcscd, or none)."""

    def __init__(self, work: Path, env: dict):
        self.work, self.env = work, env
        self.sock = work / "agent" / "agent.sock"
        self.sock.parent.mkdir(mode=0o700, exist_ok=True)
        self.proc: subprocess.Popen | None = None

    def start(self) -> "Agent":
        log = (self.work / "agent.log").open("ab")
        self.proc = subprocess.Popen([str(BIN / "cns-agent"), "run", "--socket", str(self.sock)], env=self.env,
                                     stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        _wait(lambda: self.cli("info").returncode == 0, "the agent to answer")
        return self

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def argv(self, *args: str) -> list[str]:
        return [str(BIN / "cns-agent"), *args, "--socket", str(self.sock)]

    def cli(self, *args: str, stdin: str = "") -> subprocess.CompletedProcess:
        return subprocess.run(self.argv(*args), env=self.env, input=stdin, capture_output=True, text=True,
                              timeout=60)


def _controlling_terminal() -> None:
    os.setsid()
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)


def on_terminal(argv: list[str], env: dict, answers: list[str] = (), columns: int = 80) -> tuple[int, str]:
    """Run ``argv`` on a pseudo-terminal of ``columns`` columns (its controlling terminal, as getpass
    wants), typing the next of ``answers`` at each new prompt (output ending in ": ")."""
    import select

    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, columns, 0, 0))
    env = {k: v for k, v in env.items() if k not in ("COLUMNS", "LINES")}
    proc = subprocess.Popen(argv, stdin=slave, stdout=slave, stderr=slave, env=env, preexec_fn=_controlling_terminal)
    os.close(slave)
    out, pending, answered_at = b"", list(answers), 0
    end = time.monotonic() + 30
    while time.monotonic() < end:
        ready, _, _ = select.select([master], [], [], 0.2)
        if ready:
            try:
                chunk = os.read(master, 4096)
            except OSError:
                break
            if not chunk:
                break
            out += chunk
        elif proc.poll() is not None:
            break
        if pending and len(out) > answered_at and out.endswith(b": "):
            os.write(master, pending.pop(0).encode() + b"\n")
            answered_at = len(out)
    os.close(master)
    if proc.poll() is None:
        proc.kill()
    return proc.wait(10), ANSI.sub("", out.decode(errors="replace")).replace("\r", "")


@pytest.fixture(scope="module")
def rig(tmp_path_factory):
    require(missing_tools())
    work = tmp_path_factory.mktemp("agent-cli")
    pcscd = start_pcscd(work / "pcscd")
    card = subprocess.Popen([str(BIN / "cns-emulator"), "serve", "--profile", PROFILE, "--vpcd",
                             pcscd.vpcd_address(0), "--serial", SERIAL], env=pcscd.env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
    agent = Agent(work, pcscd.env)
    try:
        agent.start()

        def card_ready():
            r = agent.cli("devices", "--json")
            return r.returncode == 0 and any((x["card"] or {}).get("state") == "ready"
                                             for x in json.loads(r.stdout)["readers"])
        _wait(card_ready, "the emulated card")
        yield agent
    finally:
        agent.stop()
        card.terminate()
        card.wait(10)
        pcscd.stop()


def test_devices_in_a_pipe_shows_every_value_whole(rig):
    r = rig.cli("devices")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0].split() == ["reader", "card", "model", "serial", "holder"]
    row = next(line for line in lines if "Virtual PCD 00 00" in line)
    assert SERIAL in row.split() and "ready" in row and "(blank card)" in row
    assert not any(ch in r.stdout for ch in "│┃━…"), r.stdout        # plain text, nothing cut


def test_devices_at_80_columns_keeps_the_full_serial(rig):
    rc, out = on_terminal(rig.argv("devices"), rig.env, columns=80)
    assert rc == 0, out
    assert SERIAL in out and "…" not in out, out
    assert max(len(line) for line in out.splitlines()) <= 80, out


def test_json_before_the_command_and_closed_pipe(rig):
    before = rig.cli("--json", "devices")
    assert before.returncode == 0, before.stderr
    assert json.loads(before.stdout)["pcsc"] == "ok"
    assert json.loads(rig.cli("info", "--json").stdout)["pcsc"] == "ok"
    for args in (("devices",), ("devices", "--json"), ("info",)):
        r = run_into_closed_pipe(*rig.argv(*args)[0:1], *rig.argv(*args)[1:], env=rig.env)
        assert r.returncode == 0 and r.stderr == "", (args, r.stderr)


def test_devices_says_when_pcscd_is_down(tmp_path):
    env = {**os.environ, "PCSCLITE_CSOCK_NAME": str(tmp_path / "no-pcscd.comm")}
    agent = Agent(tmp_path, env).start()
    try:
        _wait(lambda: json.loads(agent.cli("devices", "--json").stdout)["pcsc"] != "ok", "the agent to notice")
        r = agent.cli("devices")
        assert r.returncode == 0
        assert "cannot reach pcscd" in r.stdout and "systemctl start pcscd" in r.stdout, r.stdout
        assert "no readers" not in r.stdout
    finally:
        agent.stop()


def test_watch_follows_the_agent_across_a_restart(tmp_path):
    env = {**os.environ, "PCSCLITE_CSOCK_NAME": str(tmp_path / "no-pcscd.comm")}
    agent = Agent(tmp_path, env).start()
    watch = subprocess.Popen(agent.argv("watch", "--json"), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True)
    try:
        first = json.loads(watch.stdout.readline())
        assert first["kind"] == "snapshot"
        agent.stop()
        agent.start()
        again = json.loads(watch.stdout.readline())          # a new snapshot from the restarted agent
        assert again["kind"] == "snapshot"
        assert watch.poll() is None                           # still watching
        watch.send_signal(signal.SIGINT)
        assert watch.wait(10) == 130
        err = watch.stderr.read()
        assert "went away; reconnecting" in err and "Traceback" not in err, err
    finally:
        if watch.poll() is None:
            watch.kill()
        agent.stop()


def test_watch_without_an_agent_is_one_line(tmp_path):
    r = subprocess.run([str(BIN / "cns-agent"), "watch", "--socket", str(tmp_path / "none.sock")],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 1 and "no agent is running" in one_line_error(r)


def test_new_pin_equal_to_the_puk_is_refused_before_the_card(rig, tmp_path):
    for sock in (rig.sock, tmp_path / "no-agent.sock"):      # refused before any agent or card is asked
        r = subprocess.run([str(BIN / "cns-agent"), "pin", "unblock", "--reader", "Virtual PCD 00 00",
                            "--codes-stdin", "--socket", str(sock)], input="87654321\n87654321\n",
                           env=rig.env, capture_output=True, text=True, timeout=60)
        assert r.returncode == 1
        err = one_line_error(r)
        assert "equals the PUK" in err and "87654321" not in err


def test_unblock_on_a_terminal_asks_the_new_pin_twice(rig):
    rc, out = on_terminal(rig.argv("pin", "unblock", "--reader", "Virtual PCD 00 00"), rig.env,
                          answers=["87654321", "11112222", "11113333"])
    assert rc == 1
    assert "PUK:" in out and "New PIN:" in out and "New PIN again:" in out
    assert "the two new PINs differ; nothing was changed" in out
    assert "11112222" not in out and "87654321" not in out                 # no echo
    rc, out = on_terminal(rig.argv("pin", "unblock", "--reader", "Virtual PCD 00 00"), rig.env,
                          answers=["87654321", "87654321", "87654321"])
    assert rc == 1 and "equals the PUK" in out


def test_an_unusable_data_dir_is_one_line(deployment, tmp_path):
    (tmp_path / "file").write_text("x")
    cfg = tmp_path / "station.toml"
    text = deployment.station_config.read_text()
    text = re.sub(r'data_dir = ".*"', f'data_dir = "{tmp_path / "file" / "data"}"', text)
    text = re.sub(r'primary = "([^"]*):\d+"', r'primary = "\g<1>:1"', text)     # never reached: it stops before
    cfg.write_text(text.replace('"tls-ca.pem"', f'"{deployment.station_config.parent / "tls-ca.pem"}"')
                   .replace('"client.pem"', f'"{deployment.station_config.parent / "client.pem"}"')
                   .replace('"client.key.pem"', f'"{deployment.station_config.parent / "client.key.pem"}"'))
    r = subprocess.run([str(BIN / "cns-agent"), "--log-level", "ERROR", "run", "--config", str(cfg),
                        "--socket", str(tmp_path / "s" / "agent.sock")],
                       env={**os.environ, "PCSCLITE_CSOCK_NAME": str(tmp_path / "none.comm")},
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 1
    err = one_line_error(r)
    assert str(tmp_path / "file") in err and "cannot use" in err


ASK = [sys.executable, "-c",
       "from agent.commands import ask_personalization_codes, CommandError\n"
       "try:\n    pin, puk = ask_personalization_codes(); print('GOT', len(pin), len(puk))\n"
       "except CommandError as e:\n    print('REFUSED', e); raise SystemExit(1)\n"]


@pytest.mark.parametrize("answers,rc,expect", [
    (["", "12345678"], 0, "GOT 8 0"),                                          # preset: the sealed PIN, once
    (["87654321", "87654321", "11223344", "11223344"], 0, "GOT 8 8"),          # new codes, each twice
    (["87654321", "87654320"], 1, "the two new PUKs differ"),
    (["87654321", "87654321", "11223344", "11223345"], 1, "the two new PINs differ"),
    (["87654321", "87654321", "87654321", "87654321"], 1, "equals the PUK"),
], ids=["preset", "new", "puk-typo", "pin-typo", "pin-is-puk"])
def test_personalization_codes_on_a_terminal(answers, rc, expect):
    from tests.conftest import ROOT
    code, out = on_terminal(ASK, {**os.environ, "PYTHONPATH": str(ROOT)}, answers=answers)
    assert code == rc and expect in out, out
    assert not any(a and a in out for a in answers), out                      # never echoed


def test_personalize_asks_new_codes_twice_before_the_agent_is_reached(tmp_path):
    """`cns-agent personalize` on a terminal: a PUK typo is refused in one line before anything reaches the
    agent (no socket exists here: reaching it would be a different error)."""
    holder = tmp_path / "holder.toml"
    holder.write_text('[holder]\ncodice_fiscale = "DNGNCL85C12D704Y"\ngiven_name = "Nicolò"\n'
                      'surname = "D\'Angelò"\nbirth_date = 1985-03-12\nsex = "M"\nbirth_town = "FORLÌ"\n'
                      'issuer = "CCIAA di Forlì-Cesena"\n')
    argv = [str(BIN / "cns-agent"), "personalize", "--reader", "R0", "--holder", str(holder),
            "--socket", str(tmp_path / "none" / "agent.sock")]
    code, out = on_terminal(argv, dict(os.environ), answers=["87654321", "87654320"])
    assert code == 1 and "the two new PUKs differ" in out, out
    assert "Traceback" not in out and "87654320" not in out
    code, out = on_terminal(argv, dict(os.environ), answers=["87654321", "87654321", "87654321", "87654321"])
    assert code == 1 and "equals the PUK" in out, out
