"""``scripts/bench queue`` on a tiny sample: nothing lost or duplicated (SIGKILL round included), drain ratio reported.

No speed is asserted here; the ratio must be the drain rate over the raw signing
rate measured in the same run (the headline: the daemon's drain, ``[server] processes`` = 2; the
in-process one-interpreter drain beside it), and the broker's promises must hold with the
CA's signing threads on (the default ``[server] workers``) and off (0), the
SIGKILL round's daemon serving from two processes (``[server] processes``). On PostgreSQL (Patroni
with its synchronous standby, issue 17 item 6) the headline is the same daemon drain, both processes
claiming from the one schema (FOR UPDATE SKIP LOCKED), and the kill round runs two processes too.
"""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from personalizer.continuity.cluster import missing_tools
from tests.conftest import ROOT, require


@pytest.mark.parametrize("workers", ["default", "0"])
def test_bench_queue_small_sample(workers):
    args = ["--workers", workers] if workers != "default" else []
    r = _run(args)
    _assert_headline(r)
    assert r["workers"] == (workers if workers == "default" else int(workers))


def test_bench_queue_postgresql_small_sample():
    """The PostgreSQL headline is the daemon's own drain with two processes over the PG store."""
    require(missing_tools())
    r = _run(["--store", "postgresql"])
    _assert_headline(r)
    assert r["store"] == "postgresql" and r["postgresql_standby"] == "sync"
    assert "(cns-personalizer serve, [server] processes = 2)" in r["drain_rate_unit"]
    # the PostgreSQL servers' CPU during the daemon's drain, and phase 2's own counts beside it
    assert r["postgresql_drain"]["postgres_cores_used"] > 0 and r["postgresql_drain"]["transactions_per_issuance"] > 0
    assert r["postgresql_drain"]["postgres_cpu_ms_per_issuance"]["primary_backends"] > 0
    assert r["drain_one_process"]["postgresql"]["transactions_per_issuance"] > 0
    assert r["pg_meets_target"] == (r["drain_ratio"] >= r["pg_target_drain_ratio"])


def _run(extra: list[str]) -> dict:
    args = [sys.executable, "-m", "benchmarks", "queue", "--queued", "60", "--kill-requests", "40", "--processes", "2"]
    out = subprocess.run(args + extra, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def _assert_headline(r: dict) -> None:
    assert r["ok"] and r["lost"] == 0 and r["duplicated"] == 0
    assert r["kill_round"]["kill_round_lost"] == 0 and r["kill_round"]["kill_round_duplicated"] == 0
    assert r["raw_sign_rate"] > 0 and r["drain_rate"] > 0
    assert r["drain_ratio"] == pytest.approx(r["drain_rate"] / r["raw_sign_rate"], rel=0.01)
    assert r["kill_round_processes"] == 2 and r["relay_concurrency"] == "default"
    # the headline drain is the daemon's, both processes up before the outage ended, both draining
    assert r["drain_processes"] == 2 and r["drain_all_processes_up"]
    assert sum(r["drain_per_process"]) == 60 and len(r["drain_per_process"]) in (1, 2)
    assert r["drain_one_process"]["drain_rate"] > 0 and r["drain_one_process"]["raw_sign_rate"] > 0
