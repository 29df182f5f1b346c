"""``scripts/bench agent`` on a short window: the one-file binary's size and start time beside the
venv's, and both agents' idle RSS and CPU with two readers and a card (a real private pcscd), each agent
enrolled with a running personalizer as a station runs it."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from firmware_profiles.emulator.pcscd import missing_tools
from tests.conftest import require
from tests.packaging.conftest import ROOT


@pytest.mark.pcscd
def test_bench_agent_reports_size_start_and_idle_figures(agent_binary):
    require(missing_tools())
    r = subprocess.run([sys.executable, "-m", "benchmarks", "agent", "--binary", str(agent_binary),
                        "--window", "3", "--starts", "2"], capture_output=True, text=True, timeout=300, cwd=ROOT)
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert r.returncode in (0, 1) and out["ok"], out.get("error") or r.stderr[-2000:]
    assert out["binary_bytes"] == agent_binary.stat().st_size
    assert out["window_s"] == 3.0 and out["targets"] == {"rss_mb": 60.0, "cpu_pct": 0.5}
    assert set(out["start_s"]) == {"onefile", "venv"} and all(0 < s < 30 for s in out["start_s"].values())
    # the one-file build is a bootloader and the Python process it starts; both are counted
    assert out["idle"]["onefile"]["processes"] == 2 and out["idle"]["venv"]["processes"] == 1
    assert out["station"] == "enrolled" and "enrolled" in out["note"]
    for fig in out["idle"].values():
        assert 10 < fig["rss_mb"] < 1000 and 0 <= fig["cpu_pct"] < 100
        assert fig["cryptography_mapped"] is False     # idle with a station: no cryptography (issue 18)
    assert out["meets_targets"] == (out["idle"]["onefile"]["rss_mb"] < 60 and out["idle"]["onefile"]["cpu_pct"] < 0.5)
