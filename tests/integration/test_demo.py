"""Acceptance: the main job as a user runs it (scripts/demo.py), for both card models.

A blank emulated card behind a private pcscd is personalized by the agent
(run as a process) through the personalizer daemon (mTLS, embedded CA); then
OpenSC reads the holder and both certificates, and signatures made through
OpenSC's PKCS#11 module verify with openssl against the certificates the card presents.
"""
import json
import subprocess
import sys
from pathlib import Path

import pytest

from firmware_profiles import load_models
from firmware_profiles.emulator.pcscd import missing_tools
from tests.conftest import require

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.pcscd
@pytest.mark.opensc
@pytest.mark.parametrize("profile", sorted(load_models()))
def test_demo_personalizes_and_opensc_reads(profile, opensc_tools, tmp_path):
    require(missing_tools())
    r = subprocess.run([sys.executable, str(ROOT / "scripts" / "demo.py"), "--profile", profile, "--json",
                        "--workdir", str(tmp_path)], capture_output=True, text=True, timeout=600)
    report = json.loads(r.stdout.strip().splitlines()[-1])
    assert r.returncode == 0 and report["ok"], report.get("error") or r.stderr[-2000:]
    assert report["opensc_token_label"] == "MARIO ROSSI"
    assert report["personalization"]["state"] == "done" and report["personalization"]["test_signatures"]
    assert sorted(report["opensc_signatures_verified"]) == ["CNS0", "CNS1"]
    assert len(report["opensc_certificates"]) >= 2
