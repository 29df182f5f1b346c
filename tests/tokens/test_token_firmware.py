"""Firmware refresh over DFU 1.1 on the step engine: version rules, bootloader checks, power cuts."""
from __future__ import annotations

import asyncio
import dataclasses
import random

import pytest

from agent.devices.usb import UsbTokenBackend
from agent.ops.errors import PreconditionError
from agent.ops.journal import Journal
from agent.ops.token_firmware import run_firmware
from firmware_profiles.usbemu import EmulatedUsbBus, make_token
from firmware_profiles.usbtoken.model import bcd_device
from tests.tokens.helpers import cdrom_payload, read_cdrom, signed

FW = bytes(range(256)) * 400  # 100 KiB of "firmware"


def _setup(tmp_path, model):
    bus = EmulatedUsbBus()
    token = make_token(model, tmp_path / "flash.bin", cdrom=cdrom_payload(n_files=2))
    bus.plug(token)
    return bus, token


async def _flash(tmp_path, bus, token, blob, **kw):
    j = await Journal.open(tmp_path / "journal.db")
    try:
        return await run_firmware(j, lambda: UsbTokenBackend(bus).open(token.serial), token.model, blob, **kw)
    finally:
        await j.close()


def _fw(model, version="3.0.0", **kw):
    return signed(model, FW, kind="firmware", version=version, **kw)


def _running(bus):
    [info] = UsbTokenBackend(bus).scan()
    return info.mode, info.firmware


def test_firmware_refresh_reenumerates_with_the_new_version_in_bcd_device(tmp_path, model):
    bus, token = _setup(tmp_path, model)
    progress = []
    result = asyncio.run(_flash(tmp_path, bus, token, _fw(model), progress=lambda *a: progress.append(a)))
    assert result.state == "done"
    link = UsbTokenBackend(bus).open()
    assert link.mode == "runtime" and link.dev.bcdDevice == bcd_device("3.0.0")
    assert _running(bus) == ("runtime", "3.0.0")
    assert progress and progress[-1][1] == progress[-1][2]
    assert read_cdrom(bus, token)  # partitions untouched


@pytest.mark.parametrize("make,message", [
    (lambda m: _fw(m, "1.0.0"), "older than the installed"),
    (lambda m: _fw(m, min_bootloader="9.0.0"), "needs bootloader 9.0.0"),
    (lambda m: _fw(m)[:-1] + bytes([_fw(m)[-1] ^ 1]), "signature does not verify"),
    (lambda m: signed(m, FW, kind="cdrom"), "is a cdrom image, not a firmware image"),
])
def test_bad_firmware_is_refused_before_a_byte_is_written(tmp_path, token_models, make, message):
    model = token_models["cns-token-ccid"]  # allows no downgrade
    bus, token = _setup(tmp_path, model)
    before = token.flash.bytes_written
    with pytest.raises(PreconditionError, match=message):
        asyncio.run(_flash(tmp_path, bus, token, make(model)))
    assert token.flash.bytes_written == before and _running(bus) == ("runtime", "1.2.0")


def test_downgrade_only_where_the_model_allows_and_the_image_says_so(tmp_path, token_models):
    model = token_models["cns-token-hid"]  # allow_downgrade = true, factory 2.0.1
    bus, token = _setup(tmp_path, model)
    with pytest.raises(PreconditionError, match="this release does not allow a downgrade"):
        asyncio.run(_flash(tmp_path, bus, token, _fw(model, "1.9.0")))
    assert asyncio.run(_flash(tmp_path, bus, token, _fw(model, "1.9.0", downgrade=True))).state == "done"
    assert _running(bus) == ("runtime", "1.9.0")


def test_the_bootloader_refuses_a_tampered_image_at_manifest_and_keeps_the_old_firmware(tmp_path, token_models):
    model = token_models["cns-token-ccid"]
    bus, token = _setup(tmp_path, model)
    bad = bytearray(_fw(model))
    bad[200] ^= 1
    link = UsbTokenBackend(bus).open()
    link.dfu_detach()
    boot = UsbTokenBackend(bus).open()
    for i, pos in enumerate(range(0, len(bad), 4096)):  # bypassing the agent's own check
        boot.dfu_download(i, bytes(bad[pos:pos + 4096]))
    boot.dfu_download(0, b"")
    status, state = boot.dfu_status()
    assert (status, state) == (0x07, 10)  # errVERIFY, dfuERROR
    boot._dfu(4, what="clear")
    boot._dfu(6, what="abort")
    boot.reset()
    assert _running(bus) == ("runtime", "1.2.0")


def test_a_token_stuck_in_its_bootloader_is_found_and_flashed_again(tmp_path, model):
    bus, token = _setup(tmp_path, model)
    blob = _fw(model)
    total = len(blob)
    token.flash.cut_after(8192 + total // 2)  # the pending record, then half the image
    assert asyncio.run(_flash(tmp_path, bus, token, blob)).state == "open"
    bus.replug(token)
    [info] = UsbTokenBackend(bus).scan()
    assert info.mode == "bootloader" and info.product_id == model.usb.bootloader_product_id
    assert asyncio.run(_flash(tmp_path, bus, token, blob)).state == "done"
    assert _running(bus) == ("runtime", "3.0.0")


def _fault_trials(tmp_path, model, n, seed):
    rng = random.Random(seed)
    blob = _fw(model)
    outcomes = {"old": 0, "new": 0, "bootloader": 0}
    for i in range(n):
        d = tmp_path / f"f{i}"
        d.mkdir()
        bus, token = _setup(d, model)
        if i % 2:
            token.flash.cut_after(rng.randrange(len(blob) + 12_288))
        else:
            bus.unplug_after(rng.randrange(1, len(blob) // 4096 * 2 + 12))
        try:
            result = asyncio.run(_flash(d, bus, token, blob))
        except PreconditionError as exc:  # pulled before the operation began: nothing was done
            assert "repeat the command" in str(exc)
            result = None
        token.flash.cut_after(None)
        bus.unplug_after(None)
        bus.replug(token)
        [info] = UsbTokenBackend(bus).scan()
        state = "bootloader" if info.mode == "bootloader" else ("new" if info.firmware == "3.0.0" else "old")
        assert state == "bootloader" or info.firmware in ("1.2.0", "2.0.1", "3.0.0")
        outcomes[state] += 1
        if result is None or result.state != "done":
            assert asyncio.run(_flash(d, bus, token, blob)).state == "done"
        assert _running(bus) == ("runtime", "3.0.0")
        assert read_cdrom(bus, token)
        token.flash.close()
    return outcomes


def test_firmware_fault_sample(tmp_path, model):
    out = _fault_trials(tmp_path, model, 8, seed=5)
    assert sum(out.values()) == 8


@pytest.mark.slow
def test_firmware_fault_matrix_full(tmp_path, model):
    out = _fault_trials(tmp_path, model, 200, seed=55)
    assert out["bootloader"] and out["new"]
