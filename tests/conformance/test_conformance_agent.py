"""``cns-agent conformance`` end to end: the running agent (with a station config), a private pcscd +
vpcd, cards from ``cns-emulator serve`` (with ``--override`` for the non-conforming ones), OpenSC.

The conforming card runs with realistic timing (signatures 1.4 s; key generation shortened: the
tender times the signature, not key generation). Each non-conforming card fails the clause it breaks."""
from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from html.parser import HTMLParser
from pathlib import Path

import pytest

from firmware_profiles.emulator.pcscd import missing_tools, start_pcscd
from tests.conftest import require

pytestmark = pytest.mark.pcscd

BIN = Path(sys.executable).parent
PROFILE = "infocamere-cns-2048"
PIN, PUK = "12345678", "87654321"
FAST_KEYGEN = ("keygen_seconds.2048=1", "keygen_seconds.1024=0.5")


class Rig:
    def __init__(self, work: Path, pcscd, sock: Path, log: Path):
        self.work, self.pcscd, self.sock, self.log = work, pcscd, sock, log

    def cli(self, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run([str(BIN / "cns-agent"), *args, "--socket", str(self.sock)], capture_output=True,
                              text=True, timeout=300, env=self.pcscd.env, stdin=subprocess.DEVNULL)

    def reader_state(self, reader: str) -> dict | None:
        r = self.cli("devices", "--json")
        if r.returncode != 0:
            return None
        for rd in json.loads(r.stdout).get("readers", []):
            if rd.get("name") == reader:
                return rd
        return None

    def wait_card(self, reader: str, present: bool = True, timeout: float = 30.0) -> None:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            rd = self.reader_state(reader)
            if rd is not None and ((rd.get("card") or {}).get("state") == "ready") == present \
                    and (present or not rd.get("card_present")):
                return
            time.sleep(0.2)
        raise AssertionError(f"{reader}: card {'never ready' if present else 'never gone'}; agent log:\n"
                             f"{self.log.read_text(errors='replace')[-3000:]}")

    def serve(self, reader: int, *args: str) -> subprocess.Popen:
        return subprocess.Popen([str(BIN / "cns-emulator"), "serve", "--profile", PROFILE, "--vpcd",
                                 self.pcscd.vpcd_address(reader), *args], env=self.pcscd.env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


@pytest.fixture(scope="module")
def rig(tmp_path_factory):
    require(missing_tools())
    from personalizer import deploy

    work = tmp_path_factory.mktemp("conformance-agent")
    dep = deploy.init_deployment(work / "cns", chamber="RM", station_id="RM-STATION-01", listen="127.0.0.1:0")
    cfg = dep.station_config
    # the card's issuer challenges are answered by the personalizer (issue 12: no key on the station)
    from tests.personalizer.helpers import DaemonProcess
    daemon = DaemonProcess(dep.server_config)
    text = re.sub(r'data_dir = ".*"', f'data_dir = "{work / "agent-data"}"', cfg.read_text())
    cfg.write_text(re.sub(r'primary = "([^"]*):\d+"', rf'primary = "\g<1>:{daemon.port}"', text))
    pcscd = start_pcscd(work / "pcscd")
    sock = work / "agent" / "agent.sock"
    sock.parent.mkdir(mode=0o700)
    log = work / "agent.log"
    agent = subprocess.Popen([str(BIN / "cns-agent"), "run", "--config", str(cfg), "--socket", str(sock)],
                             stdout=log.open("wb"), stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=pcscd.env)
    try:
        end = time.monotonic() + 20
        while not sock.exists() and time.monotonic() < end and agent.poll() is None:
            time.sleep(0.1)
        assert sock.exists(), f"the agent did not start:\n{log.read_text(errors='replace')}"
        codes = work / "codes.toml"
        codes.write_text(f'pin = "{PIN}"\npuk = "{PUK}"\n')
        codes.chmod(0o600)
        yield Rig(work, pcscd, sock, log)
    finally:
        agent.terminate()
        try:
            agent.wait(15)
        except subprocess.TimeoutExpired:
            agent.kill()
        pcscd.stop()
        daemon.stop()


def reader_name(n: int) -> str:
    return f"Virtual PCD 00 {n:02d}"


def run_on(rig: Rig, n: int, serve_args: tuple[str, ...], *cli_args: str):
    emu = rig.serve(n, *serve_args)
    try:
        rig.wait_card(reader_name(n))
        r = rig.cli("conformance", "--reader", reader_name(n), "--codes-file", str(rig.work / "codes.toml"),
                    "--json", *cli_args)
    finally:
        emu.terminate()
        emu.wait(10)
    rig.wait_card(reader_name(n), present=False)
    lines = [json.loads(x) for x in r.stdout.splitlines() if x.strip()]
    report = lines[-1]["report"] if lines and "report" in lines[-1] else None
    return r, report, lines


class Rows(HTMLParser):
    def __init__(self):
        super().__init__()
        self.rows, self.verdict, self._in_verdict, self.tags = {}, "", False, set()

    def handle_starttag(self, tag, attrs):
        self.tags.add(tag)
        a = dict(attrs)
        if tag == "tr" and "data-check" in a:
            self.rows[a["data-check"]] = a["class"]
        self._in_verdict = a.get("id") == "verdict"

    def handle_data(self, data):
        if self._in_verdict:
            self.verdict += data


def test_conforming_card_passes_every_check_through_the_agent_and_opensc(rig):
    html = rig.work / "report.html"
    r, report, lines = run_on(rig, 0, ("--timing", "realistic", *(f"--override={o}" for o in FAST_KEYGEN)),
                              "--samples", "3", "--report", str(html))
    assert r.returncode == 0, (r.stdout, r.stderr, rig.log.read_text(errors="replace")[-3000:])
    got = {c["id"]: c for c in report["checks"]}
    assert {k: v["status"] for k, v in got.items()} == {k: "pass" for k in got}, report
    assert set(got) == {"eeprom", "pin_block", "pin_length", "rsa_keygen", "sha256", "sign_time", "symmetric",
                        "opensc"}
    assert report["mode"].startswith("full: a blank test card")
    assert 1.3 < got["sign_time"]["figures"]["median_seconds"] <= 4.0
    assert any(x.get("step") == "sign_time" for x in lines[:-1])          # progress was streamed
    page = Rows()
    page.feed(html.read_text())
    assert page.verdict.startswith("CONFORMS") and set(page.rows.values()) == {"pass"}
    assert "script" not in page.tags


def test_slow_signature_card_fails_naming_the_clause(rig):
    r, report, _ = run_on(rig, 1, ("--timing", "realistic", "--override", "sign_seconds.2048=4.3",
                                   *(f"--override={o}" for o in FAST_KEYGEN)), "--samples", "1")
    assert r.returncode == 1, (r.stdout, r.stderr)
    failed = {c["id"]: c for c in report["checks"] if c["status"] == "fail"}
    assert list(failed) == ["sign_time"], report
    assert failed["sign_time"]["clause"] == "§5.2.1.2 (a 2048-bit signature in at most 4 s)"
    assert failed["sign_time"]["figures"]["median_seconds"] > 4.0


def test_two_tries_card_fails_the_blocking_clause_and_is_left_unblocked(rig):
    state = rig.work / "two-tries.json"
    r, report, _ = run_on(rig, 1, ("--override", "pin_tries=2", "--state", str(state)))
    assert r.returncode == 1, (r.stdout, r.stderr)
    failed = [c for c in report["checks"] if c["status"] == "fail"]
    assert [c["id"] for c in failed] == ["pin_block"] and "blocked after 2" in failed[0]["detail"]
    pins = json.loads(state.read_text())["pins"]
    assert all(p["tries_left"] == p["max_tries"] for p in pins.values()), pins
    assert json.loads(state.read_text())["keys"] == {}


def test_without_a_card_the_operator_gets_one_line(rig):
    r = rig.cli("conformance", "--reader", reader_name(1))
    assert r.returncode == 1 and r.stderr.count("\n") == 1 and "no card in" in r.stderr, r.stderr
    assert "Traceback" not in r.stderr and "StatusCode" not in r.stderr


def test_ctrl_c_mid_run_leaves_the_card_as_it_was_and_the_reader_usable(rig):
    import signal

    state = rig.work / "cancelled.json"
    emu = rig.serve(0, "--state", str(state), "--timing", "realistic", *(f"--override={o}" for o in FAST_KEYGEN))
    try:
        rig.wait_card(reader_name(0))
        cli = subprocess.Popen([str(BIN / "cns-agent"), "conformance", "--reader", reader_name(0), "--codes-file",
                                str(rig.work / "codes.toml"), "--json", "--socket", str(rig.sock)],
                               env=rig.pcscd.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for line in cli.stdout:                   # the operator presses Ctrl-C while the card signs
            if json.loads(line).get("step") == "sign_time":
                break
        assert json.loads(state.read_text())["keys"] != {}     # the test key is on the card right now
        cli.send_signal(signal.SIGINT)
        assert cli.wait(30) == 130 and "Traceback" not in cli.stderr.read()
        # the agent finishes the cleanup under its device lock; the next run waits for it, then runs whole
        r = rig.cli("conformance", "--reader", reader_name(0), "--codes-file", str(rig.work / "codes.toml"),
                    "--json", "--samples", "1")
        assert r.returncode == 0, (r.stdout, r.stderr)
        s = json.loads(state.read_text())
        assert s["keys"] == {} and all(p["tries_left"] == p["max_tries"] for p in s["pins"].values())
        log = rig.log.read_text(errors="replace")
        assert "the conformance run was cancelled; the card was put back" in log and "Traceback" not in log
    finally:
        emu.terminate()
        emu.wait(10)
    rig.wait_card(reader_name(0), present=False)


def test_mistyped_pin_is_one_line_with_the_tries_left_and_nothing_else_runs(rig):
    wrong = rig.work / "wrong.toml"
    wrong.write_text('pin = "12345679"\npuk = "87654321"\n')
    wrong.chmod(0o600)
    state = rig.work / "mistyped.json"
    emu = rig.serve(1, "--state", str(state))
    try:
        rig.wait_card(reader_name(1))
        r = rig.cli("conformance", "--reader", reader_name(1), "--codes-file", str(wrong), "--json")
    finally:
        emu.terminate()
        emu.wait(10)
    rig.wait_card(reader_name(1), present=False)
    assert r.returncode == 1
    assert r.stderr.count("\n") == 1 and "refused the PIN (2 tries left)" in r.stderr, r.stderr
    assert "12345679" not in r.stderr + r.stdout and "StatusCode" not in r.stderr
    assert json.loads(r.stdout.splitlines()[-1])["error"]["message"].startswith("the card refused the PIN")
    assert json.loads(state.read_text())["keys"] == {}
