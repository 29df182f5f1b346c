"""A bounded run of ``scripts/bench token-release``: the delta download meets its target, the install ends on
the exact new release, and every randomized fault trial (each kind at least twice) ends on release 1 or 2
exactly, never a mix. The full run (700 MiB CD-ROM, 1,000 trials) is the benchmark's, not CI's."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from benchmarks import token_release
from tests.conftest import require
from tests.releases import nginx


def test_bench_token_release_small_sample():
    require(nginx.missing())
    r = token_release.main(["--cdrom-mib", "4", "--disk-mib", "2", "--changed", "1", "--faults", "2",
                            "--install-faults", "10", "--fault-cdrom-mib", "2"])
    assert r["ok"], r
    assert r["downloaded_bytes_clean_with_metadata"] <= r["target_bytes"]
    assert r["drop_trials_exact"] == r["drop_trials"] == 2
    assert r["tokens_mixed_or_broken"] == 0 and r["fault_trials"] == 10
    kinds = {k.split(":")[0] for k in r["fault_trials_by_end"]}
    assert kinds == set(token_release.FAULTS)
    assert r["fault_trials_by_end"].get("stall:1.0.0", 0) >= 1      # a refusal undoes the install: old release
    assert r["install_image_bytes_sent"] <= 2 * 2 * 4096             # only the changed blocks crossed the link
    # the fault space the draws range over and the cost per trial, reported for the 4 MiB / 700 MiB comparison
    assert set(r["fault_probe"]) == {"progress", "flash_bytes", "transfers", "mgmt"}
    assert all(v > 0 for v in r["fault_probe"].values())
    assert 0 < r["fault_trial_s_mean"] <= r["fault_trial_s_max"]
    assert set(r["fault_trial_s_by_phase_mean"]) == {"download", "provision", "install_under_fault", "check_and_recover"}


def test_two_workers_run_the_same_trials_in_two_processes():
    """``--workers 2``: the trials run two at a time, each in its own process on its own token, and draw what
    they draw with one worker (each trial's draws come from its own seeded generator): same ends, no mix."""
    require(nginx.missing())
    args = ["--cdrom-mib", "2", "--disk-mib", "2", "--changed", "1", "--faults", "0", "--install-faults", "10",
            "--fault-cdrom-mib", "2", "--seed", "5"]
    # as `scripts/bench` runs it, in a process of its own: forking this pytest process (its grpc and libusb
    # threads and handles) is not what a user runs, and once crashed a worker
    one, two = (_bench(a) for a in (args, args + ["--workers", "2"]))
    assert one["ok"] and two["ok"], (one, two)
    assert one["fault_trial_processes"] == 1 and two["fault_trial_processes"] == 2
    assert two["fault_trials"] == one["fault_trials"] == 10 and two["tokens_mixed_or_broken"] == 0
    assert two["fault_trials_by_end"] == one["fault_trials_by_end"]
    assert {k.split(":")[0] for k in two["fault_trials_by_end"]} == set(token_release.FAULTS)


def test_chunks_of_fault_trials_add_up_and_one_bad_chunk_fails_the_sum():
    a = {"seed": 1, "fault_cdrom_mib": 700, "fault_trials": 3, "fault_trial_s_mean": 2.0, "ok": True,
         "fault_trials_by_end": {"kill:2.0.0": 2, "stall:1.0.0": 1}, "after_fault": {"usable": 3},
         "tokens_mixed_or_broken": 0}
    b = dict(a, seed=2, fault_trials=2, fault_trial_s_mean=4.0, fault_trials_by_end={"kill:1.0.0": 1, "tear:2.0.0": 1},
             after_fault={"usable": 1, "bootloader": 1})
    s = token_release.summed([a, b])
    assert s["fault_trials"] == 5 and s["tokens_mixed_or_broken"] == 0 and s["ok"]
    assert s["fault_trials_by_kind"] == {"kill": 3, "stall": 1, "tear": 1}
    assert s["fault_trials_by_end"]["kill:2.0.0"] == 2 and s["after_fault"] == {"usable": 4, "bootloader": 1}
    assert s["fault_trial_s_mean"] == 2.8 and s["seeds"] == [1, 2]
    bad = token_release.summed([a, dict(b, ok=False, tokens_mixed_or_broken=1)])
    assert not bad["ok"] and bad["tokens_mixed_or_broken"] == 1


def test_the_trial_checks_catch_a_token_that_reads_a_mix_or_a_changed_byte(tmp_path):
    """The checks the fault trials rely on, on a real emulated token: release 1 exactly passes; one changed
    byte of the CD-ROM, or release 2's versions over release 1's bytes, is a broken token."""
    import json
    from types import SimpleNamespace

    import pytest

    from firmware_profiles.usbemu.flash import write_meta
    from firmware_profiles.usbtoken import load_token_models
    from tests.releases.tokenrel import changed, clone, payloads, provision, small_model

    model = small_model(load_token_models()["cns-token-ccid"], cdrom_mib=3, disk_mib=2, slot_mib=4)
    d1 = payloads(model, 3, cdrom_bytes=2 << 20)
    setup = SimpleNamespace(payloads={"1.0.0": d1, "2.0.0": changed(d1, 4)})
    _, token = provision(model, tmp_path / "factory.bin", token_release.V1, d1)
    token.flash.close()
    _, tok = clone(model, tmp_path / "factory.bin", tmp_path / "t.bin")
    assert token_release._which(setup, tok) == "1.0.0" and token_release._usable(setup, tok) == "usable"
    meta = json.loads(json.dumps(tok.meta))
    for name in ("cdrom", "disk"):
        meta["images"][name]["version"] = token_release.V2[name]
    meta["firmware"]["version"] = token_release.V2["firmware"]
    tok.meta = write_meta(tok.flash, meta)                      # release 2's versions, release 1's bytes
    with pytest.raises(token_release.Broken, match="mix"):
        token_release._which(setup, tok)
    at = model.flash.region("cdrom")[0] + (1 << 20) + 17
    tok.flash.write(at, bytes([tok.flash.read(at, 1)[0] ^ 0xFF]))   # one byte of neither release
    with pytest.raises(token_release.Broken, match="cdrom reads neither"):
        token_release._usable(setup, tok)
    tok.flash.close()


def _bench(args: list[str]) -> dict:
    out = subprocess.run([sys.executable, "-m", "benchmarks", "token-release", *args], capture_output=True,
                         text=True, timeout=240, cwd=Path(__file__).resolve().parents[2])
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.timeout(90)
def test_a_worker_that_dies_is_an_error_not_a_hang(monkeypatch, tmp_path):
    """A fault-trial worker that dies (a crash, the OOM killer) ends the run with one line saying so; the pool
    used before waited forever for the dead worker's result."""
    monkeypatch.setattr(token_release, "_trial", lambda *a: os._exit(3))
    for k, v in {"deadline": time.time() + 60, "setup": None, "tmp": tmp_path, "seeded": None, "probe": None}.items():
        monkeypatch.setitem(token_release._W, k, v)
    with pytest.raises(SystemExit, match="worker process died"):
        token_release._trials(2, 1, 2, None)
