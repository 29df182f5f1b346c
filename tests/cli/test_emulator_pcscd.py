"""``cns-emulator pcscd``: a newcomer's private pcscd with an emulated card, by one command."""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import time

import pytest

from firmware_profiles.emulator.pcscd import missing_tools
from tests.cli.conftest import BIN
from tests.conftest import require

pytestmark = pytest.mark.pcscd


def test_pcscd_with_a_card_until_ctrl_c(tmp_path):
    require(missing_tools() + ([] if shutil.which("opensc-tool") else ["opensc-tool (apt-get install opensc)"]))
    proc = subprocess.Popen([str(BIN / "cns-emulator"), "pcscd", "--dir", str(tmp_path / "p"), "--card",
                             "infocamere-cns-2048", "--json"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    try:
        info = json.loads(proc.stdout.readline())
        assert info["card"]["profile"] == "infocamere-cns-2048" and "12345678" in info["card"]["codes"]
        env = {**os.environ, **info["env"]}
        deadline = time.monotonic() + 10
        while True:                 # pcscd polls its readers: the insert shows within a moment
            listed = subprocess.run(["opensc-tool", "--list-readers"], env=env, capture_output=True, text=True,
                                    timeout=30).stdout
            if re.search(r"0\s+Yes.*Virtual PCD 00 00", listed) or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert re.search(r"0\s+Yes.*Virtual PCD 00 00", listed), listed       # the card is in reader 0
        proc.send_signal(signal.SIGINT)
        assert proc.wait(15) == 0, proc.stderr.read()
        gone = subprocess.run(["opensc-tool", "--list-readers"], env=env, capture_output=True, text=True, timeout=30)
        assert "Virtual PCD" not in gone.stdout                               # pcscd stopped with it
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_unknown_card_model_is_a_usage_error(tmp_path):
    r = subprocess.run([str(BIN / "cns-emulator"), "pcscd", "--dir", str(tmp_path / "p"), "--card", "nope"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "unknown profile 'nope'" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "p" / "pcscd.comm").exists()


def test_json_before_the_command_and_closed_pipe():
    from tests.cli.conftest import run, run_into_closed_pipe

    before, after = run("cns-emulator", "--json", "list"), run("cns-emulator", "list", "--json")
    assert before.returncode == 0 and before.stdout == after.stdout and json.loads(before.stdout.splitlines()[0])
    for args in (("list",), ("list", "--json")):
        r = run_into_closed_pipe("cns-emulator", *args)
        assert r.returncode == 0 and r.stderr == "", r.stderr
