"""``scripts/bench fleet`` on a small N: both servers measured in one run, every figure present and sane,
the reference is the bare server of the same run. No speed is asserted (CI machine, 2 shared cores)."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest

from tests.conftest import ROOT, require


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
    # reach measured twice per server (the worst counts); the bare server once more before its gc.freeze()
    for side in ("bare", "personalizer"):
        runs = r[side]["command_reach_runs_s"]
        assert len(runs) == 2 and all(x > 0 for x in runs) and r[side]["command_reach_s"] == max(runs), runs
        assert 0 < r[side]["rss_per_agent_bytes"] < r[side]["rss_bytes"]
    assert r["bare"]["command_reach_before_gc_freeze_s"] > 0 and r["command_reach_ratio_vs_bare_before_gc_freeze"] > 0
    assert len(r["personalizer"]["broadcast_call_s"]) == 2
    # the reconnect's instruments: per-agent spread, failed attempts by reason, the daemon's own hello timing
    for side in ("bare", "personalizer"):
        for phase, total in (("connect", "connect_s"), ("reconnect", "reconnect_s")):
            spread = r[side][phase]["per_agent_s"]
            assert 0 < spread["p50"] <= spread["max"] <= r[side][total] + 0.5, (side, phase, spread)
            assert spread["agents_within_s"][-1][1] <= 30 and isinstance(r[side][phase]["failures"], dict)
    for side in ("bare", "personalizer"):   # every agent's stream ended with the server's reconnect window
        assert r[side]["reconnect"]["agents_given_the_spread"] == 30, (side, r[side]["reconnect"])
    for phase in ("connect", "reconnect"):   # the restarted daemon counts only the reconnect's hellos
        hello = r["personalizer"][phase]["server_hello"]
        assert hello["wait"]["count"] == hello["record"]["count"] == 30, hello
    assert "Traceback" not in out.stderr, out.stderr[-3000:]


@pytest.mark.slow   # its own Patroni cluster and two daemons on top of the single-process phases: ~40 s
def test_bench_fleet_reports_agents_per_instance_behind_haproxy():
    """Issue 15 item 8's last sentence: ``--instances 2`` adds 1 and 2 personalizer instances on one PostgreSQL
    store behind haproxy; every agent lands on an instance, both get some, a command reaches all of them."""
    from personalizer.continuity.cluster import missing_tools
    require(missing_tools() + ([] if shutil.which("haproxy") else ["haproxy (apt-get install haproxy)"]))
    out = subprocess.run([sys.executable, "-m", "benchmarks", "fleet", "--agents", "20", "--idle-seconds", "1",
                          "--instances", "2"], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    r = json.loads(out.stdout.strip().splitlines()[-1])
    one, two = r["cluster"]["layouts"]
    assert one["instances"] == 1 and [i["agents"] for i in one["per_instance"]] == [20]
    split = [i["agents"] for i in two["per_instance"]]
    assert two["instances"] == 2 and sum(split) == 20 and min(split) >= 1, split
    for layout in (one, two):
        assert layout["connect_s"] > 0 and layout["command_reach_s"] > 0
        assert all(10 << 20 < i["rss_bytes"] < 2 << 30 for i in layout["per_instance"])


def test_bench_fleet_connect_rate_spreads_the_agents_start():
    """``--connect-rate R``: the agents start at R a second over all client processes (at 19,950 at once the
    bare server never converged here), so connecting all takes at least N / R."""
    out = subprocess.run([sys.executable, "-m", "benchmarks", "fleet", "--agents", "12", "--processes", "2",
                          "--connect-rate", "5", "--broadcasts", "1", "--idle-seconds", "0.5"],
                         cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    r = json.loads(out.stdout.strip().splitlines()[-1])
    assert r["connect_rate_per_s"] == 5
    for side in ("bare", "personalizer"):
        assert 2.0 <= r[side]["connect_s"] < 30, r[side]["connect_s"]   # the last agents start after 2.2 s
        assert len(r[side]["command_reach_runs_s"]) == 1


def test_the_bare_reference_names_the_personalizers_reconnect_spread():
    """The bare server ends its streams with the spread the personalizer names (same key, same admit rate), so
    both reconnects are measured under the same agent behaviour."""
    import inspect

    from benchmarks import _fleet_bare
    from personalizer.edge import fleet_service
    assert _fleet_bare.SPREAD_KEY == fleet_service.SPREAD_KEY
    default = inspect.signature(fleet_service.FleetService).parameters["reconnect_admit_per_second"].default
    assert _fleet_bare.RECONNECT_ADMIT_PER_SECOND == default


def test_a_stopped_bench_leaves_no_server_or_client_process_behind():
    """SIGTERM (a timeout, an operator) mid-run: the bench stops its servers and client processes."""
    import os
    import signal
    import time
    p = subprocess.Popen([sys.executable, "-m", "benchmarks", "fleet", "--agents", "10", "--idle-seconds", "30"],
                         cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                         start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:   # until its clients run (the idle phase of the bare server)
            kids = subprocess.run(["pgrep", "-g", str(p.pid)], capture_output=True, text=True).stdout.split()
            if len(kids) >= 3:
                break
            time.sleep(0.2)
        assert len(kids) >= 3, kids
        p.send_signal(signal.SIGTERM)
        p.wait(60)
        time.sleep(1)
        left = subprocess.run(["pgrep", "-g", str(p.pid)], capture_output=True, text=True).stdout.split()
        assert left == [], left
    finally:
        try:
            os.killpg(p.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
