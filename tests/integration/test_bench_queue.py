"""``scripts/bench queue`` on a tiny sample: nothing lost or duplicated (SIGKILL round included), drain ratio reported.

No speed is asserted here; the ratio must be the drain rate over the raw signing
rate measured in the same run (the headline: the daemon's drain, ``[server] processes`` = 2; the
in-process one-interpreter drain beside it), and the broker's promises must hold with the
CA's signing threads on (the default ``[server] workers``) and off (0), the
SIGKILL round's daemon serving from two processes (``[server] processes``).
"""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.conftest import ROOT


@pytest.mark.parametrize("workers", ["default", "0"])
def test_bench_queue_small_sample(workers):
    args = [sys.executable, "-m", "benchmarks", "queue", "--queued", "60", "--kill-requests", "40", "--processes", "2"]
    if workers != "default":
        args += ["--workers", workers]
    out = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    r = json.loads(out.stdout.strip().splitlines()[-1])
    assert r["ok"] and r["lost"] == 0 and r["duplicated"] == 0
    assert r["kill_round"]["kill_round_lost"] == 0 and r["kill_round"]["kill_round_duplicated"] == 0
    assert r["raw_sign_rate"] > 0 and r["drain_rate"] > 0
    assert r["drain_ratio"] == pytest.approx(r["drain_rate"] / r["raw_sign_rate"], rel=0.01)
    assert r["workers"] == (workers if workers == "default" else int(workers))
    assert r["kill_round_processes"] == 2
    # the headline drain is the daemon's, both processes up before the outage ended, both draining
    assert r["drain_processes"] == 2 and r["drain_all_processes_up"]
    assert sum(r["drain_per_process"]) == 60 and len(r["drain_per_process"]) in (1, 2)
    assert r["drain_one_process"]["drain_rate"] > 0 and r["drain_one_process"]["raw_sign_rate"] > 0
