"""``cns-emulator`` as a user runs it: list, check, and clear errors for a bad profile or state file."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

CLI = [str(Path(sys.executable).parent / "cns-emulator")]


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=120)


def test_list_json_names_both_models():
    r = run("list", "--json")
    assert r.returncode == 0, r.stderr
    rows = [json.loads(x) for x in r.stdout.splitlines()]
    assert {row["id"] for row in rows} == {"infocamere-cns-2048", "oberthur-cns-1024"}
    assert all(row["eeprom_bytes"] == 65536 for row in rows)


def test_check_passes():
    r = run("check", "--profile", "oberthur-cns-1024")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "FAIL" not in r.stdout and "checks passed" in r.stdout


def test_unknown_profile_is_a_usage_error():
    r = run("serve", "--profile", "no-such-card")
    assert r.returncode == 2
    assert "unknown profile 'no-such-card'" in r.stderr and "cns-emulator list" in r.stderr


def test_broken_state_file_names_the_file_and_the_fix(tmp_path):
    state = tmp_path / "card.json"
    state.write_text("[]")
    r = run("serve", "--profile", "oberthur-cns-1024", "--state", str(state), "--vpcd", "127.0.0.1:1")
    assert r.returncode == 2
    assert str(state) in r.stderr and "Delete the file" in r.stderr


def test_bad_fault_spec(tmp_path):
    r = run("serve", "--profile", "oberthur-cns-1024", "--fault", "melt:ins=D6")
    assert r.returncode == 2 and "kind must be one of" in r.stderr
