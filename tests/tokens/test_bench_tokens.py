"""Bounded samples of ``scripts/bench token-update`` and ``scripts/bench token-faults`` (CI runs these)."""
from __future__ import annotations

import shutil

from benchmarks import token_faults, token_update
from tests.conftest import require


def test_token_faults_sample_bricks_nothing():
    result = token_faults.main(["--trials", "36", "--seed", "2026"])
    assert result["bricked"] == 0, result["bricked_examples"]
    assert result["ok"] and result["trials"] == 36
    assert result["chip_signatures_verified"] >= 36      # every trial ends with the chip signing through its reader
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
    w = result["write"]
    assert w["ratio"] <= 1.2
    assert w["raw_link_bytes_per_second"] == 53_248_000                      # the high-speed bulk ceiling
    assert w["payload_bytes_by_type"]["bulk"] >= w["blocks_sent"] * 4096     # the image rode the bulk endpoint
    assert w["payload_bytes_by_type"]["control"] < 0.02 * w["image_bytes"]  # the control pipe: commands only
    assert w["same_blocks_on_the_control_pipe"]["ratio"] > 3 * w["ratio"]    # the model charges per transfer
    assert result["ok"]


def test_the_full_token_faults_run_is_the_issues_ten_thousand_trials():
    assert token_faults.parser().parse_args([]).trials >= 10_000


def test_a_chip_that_cannot_sign_through_its_reader_counts_as_bricked(tmp_path, token_models):
    """The trial's end check can fail: a chip that lost its keys, a wrong PIN, a token without its reader."""
    import pytest

    from firmware_profiles.emulator import EmulatedCard
    from firmware_profiles.model import load_models
    from tests.tokens import faults
    from tests.tokens.helpers import setup_token

    model = token_models["cns-token-ccid"]
    card, prep = faults._chip(model)
    bus, token = setup_token(tmp_path, model, card=card)
    faults._chip_signs(bus, token, prep)                                  # a good chip signs
    blank = EmulatedCard(load_models()[model.chip])
    card.restore(blank.snapshot())                                        # the same chip without keys
    with pytest.raises(faults.Bricked, match="does not sign through the token's reader"):
        faults._chip_signs(bus, token, prep)
    from agent.devices.usb import UsbTokenBackend
    card2, prep2 = faults._chip(model)
    (tmp_path / "b").mkdir()
    bus2, token2 = setup_token(tmp_path / "b", model, card=card2)
    UsbTokenBackend(bus2).open().dfu_detach()                              # in its bootloader: no reader
    with pytest.raises(faults.Bricked, match="no reader"):
        faults._chip_signs(bus2, token2, prep2)
