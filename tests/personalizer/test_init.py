"""``cns-personalizer init``: files, permissions, encrypted keys, configs that load, no overwrite."""
from __future__ import annotations

import stat
import subprocess

import pytest
from cryptography.hazmat.primitives import serialization

from personalizer import config
from tests.personalizer import helpers


def test_init_command_creates_a_deployment(tmp_path):
    out = subprocess.run([str(helpers.VENV_BIN / "cns-personalizer"), "init", str(tmp_path / "d"),
                          "--chamber", "MI", "--station-id", "MI-07", "--ca-key-bits", "2048"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    root = tmp_path / "d"
    for line in ("server config", "station config", "admin config", "CNS root CA", "service TLS CA"):
        assert line in out.stdout
    for rel in ("personalizer.toml", "ca/root.pem", "ca/issuing.pem", "ca/issuing.key.pem", "ca/root.key.pem",
                "ca/passphrase", "tls/server.pem", "tls/tls-ca.pem", "stations/MI-07/station.toml",
                "stations/MI-07/client.pem", "admin/admin.toml"):
        assert (root / rel).exists(), rel
    for secret in ("ca/issuing.key.pem", "ca/root.key.pem", "ca/passphrase", "tls/server.key.pem",
                   "stations/MI-07/client.key.pem"):
        assert stat.S_IMODE((root / secret).stat().st_mode) == 0o600, secret
    key_pem = (root / "ca/issuing.key.pem").read_bytes()
    assert b"ENCRYPTED" in key_pem
    with pytest.raises(TypeError):
        serialization.load_pem_private_key(key_pem, None)
    cfg = config.load(root / "personalizer.toml")
    assert cfg.server.require_client_auth
    station = (root / "stations/MI-07/station.toml").read_text()
    assert 'chamber_code = "MI"' in station and 'id = "MI-07"' in station
    import station_config
    loaded = station_config.load(root / "stations/MI-07/station.toml")
    # no card key on the station (issue 12): the daemon's token holds the TEST master keys
    assert "[cards]" not in station and "admin_keys" not in station and not hasattr(loaded, "cards")
    assert "[card_admin]" in (root / "personalizer.toml").read_text() and (root / "hsm" / "pin").stat().st_mode & 0o077 == 0
    again = subprocess.run([str(helpers.VENV_BIN / "cns-personalizer"), "init", str(root)],
                           capture_output=True, text=True, timeout=60)
    assert again.returncode == 1 and "refusing to overwrite" in again.stderr


def test_serve_with_bad_config_fails_clearly(tmp_path):
    bad = tmp_path / "p.toml"
    bad.write_text("[server]\nlisten = \"nohostport\"\n")
    out = subprocess.run([str(helpers.VENV_BIN / "cns-personalizer"), "serve", "--config", str(bad)],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 1
    assert "server.listen" in out.stderr and str(bad) in out.stderr
