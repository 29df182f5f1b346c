"""Acceptance: certificate lifecycle and PIN management as an operator runs them.

A private pcscd with vpcd, an emulated card served by ``cns-emulator serve``,
``cns-agent run`` as a process with the station configuration, the personalizer
daemon over mTLS — and the console scripts: ``cns-agent personalize``,
``cns-agent cert ...``, ``cns-agent pin ...``, ``cns-personalizer audit``.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from firmware_profiles import load_models
from firmware_profiles.emulator.pcscd import missing_tools, start_pcscd
from tests.conftest import require

pytestmark = pytest.mark.pcscd

BIN = Path(sys.executable).parent
PROFILE = "infocamere-cns-2048"
MODEL = load_models()[PROFILE]
PIN, PUK = MODEL.pin_policy.factory_test_pin, MODEL.pin_policy.factory_test_puk
NEW_PIN = "24681357"
STATION_URI = "urn:cns:station:RM:RM-STATION-01"
HOLDER = """[holder]
codice_fiscale = "RSSMRA80A01H501U"
given_name = "Mario"
surname = "Rossi"
birth_date = "1980-01-01"
sex = "M"
birth_town = "ROMA"
issuer = "CCIAA di Roma"
"""


class Rig:
    def __init__(self, work: Path, pcscd, sock: Path, server_config: Path, logs: list[Path]):
        self.work, self.pcscd, self.sock, self.server_config, self.logs = work, pcscd, sock, server_config, logs
        self.reader = pcscd.reader_names[0]

    def cli(self, *args: str, stdin: str | None = None, env: dict | None = None) -> subprocess.CompletedProcess:
        return subprocess.run([str(BIN / "cns-agent"), *args, "--socket", str(self.sock)],
                              env={**self.pcscd.env, **(env or {})}, input=stdin if stdin is not None else "",
                              capture_output=True, text=True, timeout=300)

    def json(self, *args: str, ok: bool = True, **kw) -> dict:
        r = self.cli(*args, "--json", **kw)
        assert (r.returncode == 0) == ok, (args, r.returncode, r.stdout, r.stderr)
        return json.loads(r.stdout.strip().splitlines()[-1])

    def card(self) -> dict | None:
        r = self.cli("devices", "--json")
        if r.returncode != 0:
            return None
        for rd in json.loads(r.stdout).get("readers", []):
            if rd.get("name") == self.reader and (rd.get("card") or {}).get("state") == "ready":
                return rd["card"]
        return None


def _wait(predicate, what: str, timeout: float = 60.0):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture(scope="module")
def rig(ops_deployment, station, tmp_path_factory):
    require(missing_tools())
    work = tmp_path_factory.mktemp("lifecycle-agent")
    pcscd = start_pcscd(work / "pcscd")
    procs: list[subprocess.Popen] = []
    logs: list[Path] = []

    def spawn(name: str, cmd: list[str]) -> None:
        log = work / f"{name}.log"
        logs.append(log)
        procs.append(subprocess.Popen(cmd, stdout=log.open("wb"), stderr=subprocess.STDOUT,
                                      stdin=subprocess.DEVNULL, env=pcscd.env))
    try:
        spawn("emulator", [str(BIN / "cns-emulator"), "serve", "--profile", PROFILE, "--vpcd",
                           pcscd.vpcd_address(0), "--state", str(work / "card.json"), "--timing", "zero"])
        # the session's station config (real daemon port), with this agent's own data directory
        text = re.sub(r'data_dir = ".*"', f'data_dir = "{work / "agent-data"}"',
                      ops_deployment.station_config.read_text())
        cfg = ops_deployment.station_config.with_name("station-lifecycle.toml")
        cfg.write_text(text)
        sock = work / "agent" / "agent.sock"
        sock.parent.mkdir(mode=0o700)
        spawn("agent", [str(BIN / "cns-agent"), "--log-level", "DEBUG", "--log-format", "json", "run",
                        "--config", str(cfg),
                        "--socket", str(sock)])
        r = Rig(work, pcscd, sock, ops_deployment.server_config, logs)
        _wait(r.card, "the agent to see the emulated card")
        yield r
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(15)
            except subprocess.TimeoutExpired:
                p.kill()
        pcscd.stop()


@pytest.fixture(scope="module")
def personalized(rig):
    (rig.work / "holder.toml").write_text(HOLDER)
    codes = rig.work / "codes.toml"
    codes.write_text(f'pin = "{PIN}"\npuk = ""\n')
    codes.chmod(0o600)
    r = rig.cli("personalize", "--reader", rig.reader, "--holder", str(rig.work / "holder.toml"),
                "--codes-file", str(codes), "--json")
    assert r.returncode == 0, r.stderr
    result = json.loads(r.stdout.splitlines()[-1])["result"]
    assert result["state"] == "done"
    # the agent opened the card through OpenSC's PKCS#11 module (pcscd, vpcd) and signed with both keys
    assert result["pkcs11"] == "verified", result
    # the device view follows the operation: the card is no longer listed as blank
    card = rig.card()
    assert card is not None and card["blank"] is False and card["serial"] == result["card_serial"], card
    assert card["holder_label"] and card["holder_label"].upper() == result["holder_label"].upper(), card
    return result


def _on_terminal(rig, args: list[str], answer: str) -> tuple[int, str]:
    """Run a cns-agent command on a pseudo-terminal, answer its question, return (exit status, output)."""
    import pty
    master, slave = pty.openpty()
    p = subprocess.Popen([str(BIN / "cns-agent"), *args, "--socket", str(rig.sock)], stdin=slave, stdout=slave,
                         stderr=slave, env=rig.pcscd.env, close_fds=True)
    os.close(slave)
    out = b""
    answered = False
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            chunk = os.read(master, 4096)
        except OSError:   # EIO: the command ended and closed the terminal
            break
        if not chunk:
            break
        out += chunk
        if not answered and b"Type yes:" in out:
            os.write(master, answer.encode() + b"\n")
            answered = True
    os.close(master)
    return p.wait(30), out.decode(errors="replace")


def _states(resp: dict) -> dict[str, str]:
    return {c["keyset"]: c["status"] for c in resp["certificates"]}


def test_suspend_reactivate_revoke_through_the_agent(rig, personalized):
    card_serial = personalized["card_serial"]
    st = rig.json("cert", "status", "--reader", rig.reader)
    assert st["card_serial"] == card_serial and _states(st) == {"CNS0": "active", "CNS1": "active"}
    assert "RSSMRA80A01H501U" in st["certificates"][0]["subject"]
    serials = {c["keyset"]: c["serial_hex"] for c in st["certificates"]}

    out = rig.json("cert", "suspend", "--reader", rig.reader)
    assert _states(out) == {"CNS0": "suspended", "CNS1": "suspended"}
    assert _states(rig.json("cert", "status", "--reader", rig.reader)) == {"CNS0": "suspended", "CNS1": "suspended"}
    again = rig.json("cert", "suspend", "--reader", rig.reader)          # re-run: nothing sent twice
    assert "already suspended" in again["message"]

    out = rig.json("cert", "reactivate", "--reader", rig.reader)
    assert _states(out) == {"CNS0": "active", "CNS1": "active"}

    # revoke is final: not on a terminal it needs --yes; on a terminal it shows the certificates and asks
    r = rig.cli("cert", "revoke", "--reason", "keyCompromise", "--reader", rig.reader)
    assert r.returncode == 1 and "add --yes" in r.stderr and "Traceback" not in r.stderr, r.stderr
    rc, text = _on_terminal(rig, ["cert", "revoke", "--reason", "keyCompromise", "--reader", rig.reader], "no")
    assert rc == 1 and "Type yes" in text and serials["CNS0"] in text and "not revoked" in text, text
    assert _states(rig.json("cert", "status", "--reader", rig.reader)) == {"CNS0": "active", "CNS1": "active"}

    # central IT's view from the station: the card's certificates by card serial and by codice fiscale
    by_card = rig.json("cert", "status", "--card", card_serial)
    assert {c["serial_hex"] for c in by_card["certificates"]} >= set(serials.values())
    by_cf = rig.json("cert", "status", "--cf", "RSSMRA80A01H501U")
    assert {c["serial_hex"] for c in by_cf["certificates"]} >= set(serials.values())
    r = rig.cli("cert", "status", "--card", "NOSUCHCARD0000")
    assert r.returncode == 1 and "knows no certificate" in r.stderr, r.stderr

    rc, text = _on_terminal(rig, ["cert", "revoke", "--reason", "keyCompromise", "--card", card_serial], "yes")
    assert rc == 0 and "revoked" in text, text
    out = rig.json("cert", "status", "--reader", rig.reader)
    assert _states(out) == {"CNS0": "revoked", "CNS1": "revoked"}
    again = rig.json("cert", "revoke", "--yes", "--reason", "keyCompromise", "--reader", rig.reader)
    assert "already revoked" in again["message"]
    assert {c["revocation_reason"] for c in out["certificates"]} == {"keyCompromise"}

    r = rig.cli("cert", "reactivate", "--reader", rig.reader)               # a revoked certificate stays revoked
    assert r.returncode == 1
    assert "FAILED_PRECONDITION" in r.stderr and "cannot reactivate a certificate that is revoked" in r.stderr
    assert "revocation is final" in r.stderr
    err = rig.json("cert", "reactivate", "--reader", rig.reader, ok=False)["error"]
    assert err["code"] == "FAILED_PRECONDITION" and "CNS0" in err["message"] and "CNS1" in err["message"]

    # the card is absent (lost): by serial
    by_serial = rig.json("cert", "status", "--serial", serials["CNS0"], serials["CNS1"].lower())
    assert [c["status"] for c in by_serial["certificates"]] == ["revoked", "revoked"]
    r = rig.cli("cert", "suspend", "--serial", "not-hex")
    assert r.returncode == 1 and "not hexadecimal" in r.stderr

    # the personalizer's audit trail: who, from which station, when, what, result
    a = subprocess.run([str(BIN / "cns-personalizer"), "audit", "--json", "--config", str(rig.server_config)],
                       capture_output=True, text=True, timeout=60)
    assert a.returncode == 0, a.stderr
    rows = [json.loads(line) for line in a.stdout.splitlines()]
    mine = [r for r in rows if serials["CNS0"] in (r["target"] or "") or serials["CNS1"] in (r["target"] or "")
            or any(s in (r["request_id"] or "") for s in serials.values())]
    got = {(r["actor"], r["station_id"], r["operation"], r["result"]) for r in mine}
    for op in ("suspend", "reactivate", "revoke"):
        assert (STATION_URI, "RM-STATION-01", op, "accepted") in got, op
        assert ("relay", "RM-STATION-01", op, "done") in got, op
    assert (STATION_URI, "RM-STATION-01", "status", "done") in got
    refused = [r for r in rows if r["operation"] == "reactivate" and r["result"] == "refused:FAILED_PRECONDITION"
               and r["actor"] == STATION_URI and r["station_id"] == "RM-STATION-01"]
    assert len(refused) >= 4 and all("revocation is final" in r["detail"] and r["at"] for r in refused)
    text = subprocess.run([str(BIN / "cns-personalizer"), "audit", "--config", str(rig.server_config)],
                          capture_output=True, text=True, timeout=60).stdout
    assert "refused:FAILED_PRECONDITION" in text and STATION_URI in text


def test_pin_change_block_and_unblock_through_the_agent(rig, personalized):
    st = rig.json("pin", "status", "--reader", rig.reader)
    assert (st["pin_tries_left"], st["pin_tries_max"], st["puk_tries_left"], st["puk_tries_max"]) == (3, 3, 10, 10)

    # a new PIN the model refuses: nothing reaches the card
    err = rig.json("pin", "change", "--reader", rig.reader, "--codes-stdin", stdin=f"{PIN}\n1234\n", ok=False)
    assert err["error"]["code"] == "INVALID_ARGUMENT" and "8 digits" in err["error"]["message"]
    assert rig.json("pin", "status", "--reader", rig.reader)["pin_tries_left"] == 3

    r = rig.cli("pin", "change", "--reader", rig.reader, "--codes-stdin", stdin=f"{PIN}\n{NEW_PIN}\n")
    assert r.returncode == 0, r.stderr
    assert "PIN 3 of 3 tries left; PUK 10 of 10 tries left" in r.stdout and "PIN changed" in r.stdout

    # wrong PIN: the tries left, until it blocks
    wrong = {"CNS_PIN": "11112222", "CNS_NEW_PIN": "33334444"}
    r = rig.cli("pin", "change", "--reader", rig.reader, "--codes-env", env=wrong)
    assert r.returncode == 1 and "wrong PIN: 2 tries left" in r.stderr and "PIN 2 of 3 tries left" in r.stdout
    out = rig.json("pin", "change", "--reader", rig.reader, "--codes-env", env=wrong, ok=False)
    assert out["status"]["pin_tries_left"] == 1 and "1 try left" in out["error"]["message"]
    out = rig.json("pin", "change", "--reader", rig.reader, "--codes-env", env=wrong, ok=False)
    assert out["error"]["code"] == "FAILED_PRECONDITION" and out["status"]["pin_blocked"]
    assert "unblock it with the PUK" in out["error"]["message"]
    st = rig.json("pin", "status", "--reader", rig.reader)
    assert st["pin_blocked"] and st["pin_tries_left"] == 0 and st["puk_tries_left"] == 10
    assert "pin unblock" in st["message"]

    # unblock with the PUK: a wrong PUK shows its tries, the right one sets a new PIN
    codes = rig.work / "unblock.toml"
    codes.write_text(f'puk = "00000000"\nnew_pin = "{PIN}"\n')
    codes.chmod(0o600)
    out = rig.json("pin", "unblock", "--reader", rig.reader, "--codes-file", str(codes), ok=False)
    assert "wrong PUK: 9 tries left" in out["error"]["message"] and out["status"]["puk_tries_left"] == 9
    codes.write_text(f'puk = "{PUK}"\nnew_pin = "{PIN}"\n')
    out = rig.json("pin", "unblock", "--reader", rig.reader, "--codes-file", str(codes))
    assert (out["pin_tries_left"], out["puk_tries_left"], out["pin_blocked"]) == (3, 10, False)
    # the unblocked PIN is the one now in force on the card
    r = rig.cli("pin", "change", "--reader", rig.reader, "--codes-stdin", stdin=f"{PIN}\n{NEW_PIN}\n")
    assert r.returncode == 0, r.stderr

    # the agent's log is one JSON object per line (issue 15 item 5), and no code ever reached it or its journals
    agent_log = [json.loads(line) for line in (rig.work / "agent.log").read_text().splitlines()]
    assert agent_log and all(list(line)[:4] == ["time", "level", "logger", "message"] for line in agent_log)
    for path in rig.logs + list((rig.work / "agent-data").glob("*")):
        raw = path.read_bytes()
        for secret in (PIN, NEW_PIN, PUK, "11112222"):
            assert secret.encode() not in raw, (path, "holds a code")
