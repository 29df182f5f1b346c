"""An update cut by a power loss or a killed agent is finished when the token comes back."""
from __future__ import annotations

import asyncio

from agent.ops.journal import Journal
from agent.ops.token_recovery import recover_token
from agent.ops.token_update import run_update
from firmware_profiles.usbtoken import load_token_models
from tests.tokens.helpers import (cdrom_payload, connect, firmware, flash_firmware, read_cdrom, running,
                                  setup_token, signed)


async def _recover(tmp_path, bus, token):
    j = await Journal.open(tmp_path / "journal.db")
    try:
        return await recover_token(j, connect(bus, token.serial), load_token_models())
    finally:
        await j.close()


def test_partition_update_cut_by_a_power_loss_is_finished_on_the_next_insert(tmp_path, model):
    bus, token = setup_token(tmp_path, model)
    new = cdrom_payload(change=2)
    image = tmp_path / "cdrom-2.0.0.img"
    image.write_bytes(signed(model, new))

    async def start():
        j = await Journal.open(tmp_path / "journal.db")
        try:
            return await run_update(j, connect(bus, token.serial), model, "cdrom", image.read_bytes(),
                                    image_path=str(image))
        finally:
            await j.close()
    token.flash.cut_after(20_000)
    result, _ = asyncio.run(start())
    assert result.state == "open"
    bus.replug(token)
    [(op_id, res)] = asyncio.run(_recover(tmp_path, bus, token))
    assert res.state == "done" and read_cdrom(bus, token) == new
    assert asyncio.run(_recover(tmp_path, bus, token)) == []  # nothing left open


def test_firmware_stuck_in_the_bootloader_is_flashed_on_the_next_insert(tmp_path, model):
    bus, token = setup_token(tmp_path, model, n_files=2)
    image = tmp_path / "fw-3.0.0.img"
    image.write_bytes(firmware(model))
    token.flash.cut_after(30_000)
    assert asyncio.run(flash_firmware(tmp_path, bus, token, image.read_bytes(), image_path=str(image))).state == "open"
    bus.replug(token)
    assert running(bus)[0] == "bootloader"
    [(_, res)] = asyncio.run(_recover(tmp_path, bus, token))
    assert res.state == "done" and running(bus) == ("runtime", "3.0.0")


def test_a_changed_image_file_leaves_the_operation_open_with_a_reason(tmp_path, model):
    bus, token = setup_token(tmp_path, model, n_files=2)
    image = tmp_path / "fw.img"
    image.write_bytes(firmware(model))
    token.flash.cut_after(30_000)
    asyncio.run(flash_firmware(tmp_path, bus, token, image.read_bytes(), image_path=str(image)))
    bus.replug(token)
    image.write_bytes(firmware(model, "4.0.0"))  # someone replaced the file
    [(_, res)] = asyncio.run(_recover(tmp_path, bus, token))
    assert res.state == "open" and "no longer the image" in res.reason
    assert running(bus)[0] == "bootloader"  # found by its bootloader ids, waiting for the same image
    image.unlink()
    [(_, res)] = asyncio.run(_recover(tmp_path, bus, token))
    assert "not readable" in res.reason
