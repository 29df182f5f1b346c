"""``scripts/bench fleet`` on a small N: both servers measured in one run, every figure present and sane,
the reference is the bare server of the same run. No speed is asserted (CI machine, 2 shared cores)."""
from __future__ import annotations

import json
import subprocess
import sys

from tests.conftest import ROOT


def test_bench_fleet_small_sample():
    out = subprocess.run([sys.executable, "-m", "benchmarks", "fleet", "--agents", "30", "--idle-seconds", "1"],
                         cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    r = json.loads(out.stdout.strip().splitlines()[-1])
    assert r["ok"] and r["agents"] == 30 and not r["targets_judged"]
    for side in ("bare", "personalizer"):
        f = r[side]
        assert f["connect_s"] > 0 and f["command_reach_s"] > 0 and f["reconnect_s"] > 0, f
        assert 10 << 20 < f["rss_bytes"] < 2 << 30 and 0 <= f["idle_cpu_fraction"] < 2
    assert abs(r["command_reach_ratio"] - r["personalizer"]["command_reach_s"] / r["bare"]["command_reach_s"]) < 0.01
    assert "Traceback" not in out.stderr, out.stderr[-3000:]
