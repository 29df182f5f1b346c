"""Item 4 of the wiring task (issue 13 item 2): ``cns-emulator serve-token`` serves an emulated token over
USB/IP until SIGTERM (Debian's ``usbip list -r`` lists it); a wrong profile or address is one line."""
from __future__ import annotations

import shutil
import signal
import socket
import subprocess

import pytest

from tests.cli.conftest import BIN, run
from tests.conftest import require


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_serve_token_lists_over_usbip_and_stops_on_sigterm(tmp_path):
    require([] if shutil.which("usbip") else ["Debian package usbip (the usbip command)"])
    port = _free_port()
    proc = subprocess.Popen([str(BIN / "cns-emulator"), "serve-token", "--profile", "cns-token-hid",
                             "--flash", str(tmp_path / "f.bin"), "--usbip", f"127.0.0.1:{port}"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        assert "serving token" in line and "cns-token-hid" in line, (line, proc.stderr.read() if proc.poll() else "")
        out = subprocess.run(["usbip", "--tcp-port", str(port), "list", "-r", "127.0.0.1"],
                             capture_output=True, text=True, timeout=20)
        assert out.returncode == 0, out.stderr
        assert "(1209:" in out.stdout and "(03/00/00)" in out.stdout and "(08/06/50)" in out.stdout
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0
    assert (tmp_path / "f.bin").exists()


@pytest.mark.parametrize("argv, expect", [
    (["--profile", "nope"], "no token model 'nope'"),
    (["--profile", "cns-token-ccid", "--usbip", "localhost"], "--usbip must be HOST:PORT"),
])
def test_serve_token_bad_input_is_one_line(argv, expect):
    r = run("cns-emulator", "serve-token", *argv, timeout=30)
    err = r.stderr.strip()
    assert r.returncode == 2 and len(err.splitlines()) == 1 and expect in err and "Traceback" not in err, err


def test_serve_token_is_in_the_help():
    r = run("cns-emulator", "--help", timeout=30)
    assert r.returncode == 0 and "serve-token" in r.stdout
