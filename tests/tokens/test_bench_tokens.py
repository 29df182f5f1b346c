"""Bounded samples of ``scripts/bench token-update`` and ``scripts/bench token-faults`` (CI runs these)."""
from __future__ import annotations

import shutil

from benchmarks import token_faults, token_update
from tests.conftest import require


def test_token_faults_sample_bricks_nothing():
    result = token_faults.main(["--trials", "36", "--seed", "2026"])
    assert result["bricked"] == 0, result["bricked_examples"]
    assert result["ok"] and result["trials"] == 36
    kinds = {k.rsplit("/", 1)[0] for k in result["outcomes"]}
    assert kinds == {f"{op}/{f}" for op in ("partition", "firmware") for f in ("tear", "unplug", "kill")}


def test_token_update_sends_no_more_than_the_changed_blocks_nor_than_zsync_and_casync():
    require([f"Debian package {p}" for p in ("zsync", "casync") if shutil.which(p) is None])
    result = token_update.main(["--size-mb", "2", "--write-mb", "4"])
    for name in ("small", "large", "none"):
        row = result["scenarios"][name]
        assert row["meets_target"], (name, row)
        assert row["zsync"]["result_ok"]
    small = result["scenarios"]["small"]
    assert small["ours"]["image_bytes_sent"] <= 1.05 * small["changed_bytes"]
    assert small["metadata_bytes"] < 0.05 * result["image_bytes"]
    assert result["write"]["ratio"] <= 1.2
    assert result["ok"]
