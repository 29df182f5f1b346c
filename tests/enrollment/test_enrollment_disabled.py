"""A personalizer without [enrollment]: no enrollment port, and cnsctl station says what to turn on."""
from __future__ import annotations

import subprocess

from personalizer import deploy
from tests.personalizer import helpers


def test_station_commands_say_enrollment_is_off(tmp_path):
    dep = deploy.init_deployment(tmp_path / "cns", listen="127.0.0.1:0", ca_key_bits=2048)
    cfg = dep.server_config
    cfg.write_text(cfg.read_text().replace("[enrollment]\nenabled = true", "[enrollment]\nenabled = false"))
    d = helpers.DaemonProcess(cfg)
    try:
        admin = dep.admin_config.read_text().replace("127.0.0.1:0", f"127.0.0.1:{d.port}")
        dep.admin_config.write_text(admin)
        r = subprocess.run([str(helpers.VENV_BIN / "cnsctl"), "--config", str(dep.admin_config), "station", "list"],
                           capture_output=True, text=True, timeout=60)
    finally:
        assert d.stop() == 0
    assert "enrollment on port" not in d.proc.stdout.read()
    assert r.returncode == 1 and r.stderr.count("\n") == 1, r.stderr
    assert "[enrollment] enabled = true" in r.stderr and "Traceback" not in r.stderr
