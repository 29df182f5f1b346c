"""The emulated token exported over USB/IP: Debian's ``usbip list -r`` lists its interfaces."""
from __future__ import annotations

import shutil
import socket
import subprocess

import pytest

from firmware_profiles.usbemu import make_token
from tests.conftest import require


def _free_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


@pytest.mark.parametrize("model_id,reader_line", [
    ("cns-token-ccid", "(0b/00/00)"), ("cns-token-hid", "(03/00/00)")])
def test_usbip_list_shows_the_composite_token(tmp_path, token_models, model_id, reader_line):
    require([] if shutil.which("usbip") else ["Debian package usbip (the usbip command)"])
    from firmware_profiles.usbemu.usbip_export import UsbipExport
    model = token_models[model_id]
    token = make_token(model, tmp_path / "f.bin")
    port = _free_port()
    with UsbipExport(token, port=port):
        out = subprocess.run(["usbip", "--tcp-port", str(port), "list", "-r", "127.0.0.1"],
                             capture_output=True, text=True, timeout=20)
    assert out.returncode == 0, out.stderr
    text = out.stdout
    assert f"(1209:{model.usb.runtime_product_id:04x})" in text
    assert reader_line in text and "(08/06/50)" in text and "(fe/01/01)" in text
    if model.reader == "ccid":
        assert "(ff/00/00)" in text  # the management interface


def test_serve_token_command_serves_until_terminated(tmp_path):
    require([] if shutil.which("usbip") else ["Debian package usbip (the usbip command)"])
    import os
    import signal
    import sys
    import time
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "firmware_profiles.usbemu", "serve-token", "--profile",
                             "cns-token-ccid", "--flash", str(tmp_path / "f.bin"), "--usbip", f"127.0.0.1:{port}"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            cwd=os.path.dirname(os.path.dirname(os.path.dirname(__file__))))
    try:
        line = proc.stdout.readline()
        assert "serving token TKC" in line
        out = subprocess.run(["usbip", "--tcp-port", str(port), "list", "-r", "127.0.0.1"],
                             capture_output=True, text=True, timeout=20)
        assert "(1209:c501)" in out.stdout
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0
    assert (tmp_path / "f.bin").stat().st_size == 1 << 30


def test_serve_token_unknown_profile_is_one_line():
    import sys
    r = subprocess.run([sys.executable, "-m", "firmware_profiles.usbemu", "serve-token", "--profile", "nope"],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 2 and r.stderr.strip().count("\n") == 0 and "no token model 'nope'" in r.stderr
