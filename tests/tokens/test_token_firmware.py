"""Firmware refresh over DFU 1.1 on the step engine: version rules, bootloader checks, power cuts."""
from __future__ import annotations

import asyncio

import pytest

from agent.devices.usb import UsbTokenBackend
from agent.ops.errors import PreconditionError
from firmware_profiles.usbtoken.model import bcd_device
from tests.tokens.faults import firmware_fault_trials
from tests.tokens.helpers import FW, firmware, flash_firmware, read_cdrom, running, setup_token, signed

def _setup(tmp_path, model):
    return setup_token(tmp_path, model, n_files=2)


def test_firmware_refresh_reenumerates_with_the_new_version_in_bcd_device(tmp_path, model):
    bus, token = _setup(tmp_path, model)
    progress = []
    result = asyncio.run(flash_firmware(tmp_path, bus, token, firmware(model), progress=lambda *a: progress.append(a)))
    assert result.state == "done"
    link = UsbTokenBackend(bus).open()
    assert link.mode == "runtime" and link.dev.bcdDevice == bcd_device("3.0.0")
    assert running(bus) == ("runtime", "3.0.0")
    assert progress and progress[-1][1] == progress[-1][2]
    assert read_cdrom(bus, token)  # partitions untouched


@pytest.mark.parametrize("make,message", [
    (lambda m: firmware(m, "1.0.0"), "older than the installed"),
    (lambda m: firmware(m, min_bootloader="9.0.0"), "needs bootloader 9.0.0"),
    (lambda m: firmware(m)[:-1] + bytes([firmware(m)[-1] ^ 1]), "signature does not verify"),
    (lambda m: signed(m, FW, kind="cdrom"), "is a cdrom image, not a firmware image"),
])
def test_bad_firmware_is_refused_before_a_byte_is_written(tmp_path, token_models, make, message):
    model = token_models["cns-token-ccid"]  # allows no downgrade
    bus, token = _setup(tmp_path, model)
    before = token.flash.bytes_written
    with pytest.raises(PreconditionError, match=message):
        asyncio.run(flash_firmware(tmp_path, bus, token, make(model)))
    assert token.flash.bytes_written == before and running(bus) == ("runtime", "1.2.0")


def test_downgrade_only_where_the_model_allows_and_the_image_says_so(tmp_path, token_models):
    model = token_models["cns-token-hid"]  # allow_downgrade = true, factory 2.0.1
    bus, token = _setup(tmp_path, model)
    with pytest.raises(PreconditionError, match="this release does not allow a downgrade"):
        asyncio.run(flash_firmware(tmp_path, bus, token, firmware(model, "1.9.0")))
    assert asyncio.run(flash_firmware(tmp_path, bus, token, firmware(model, "1.9.0", downgrade=True))).state == "done"
    assert running(bus) == ("runtime", "1.9.0")


def test_the_bootloader_refuses_a_tampered_image_at_manifest_and_keeps_the_old_firmware(tmp_path, token_models):
    model = token_models["cns-token-ccid"]
    bus, token = _setup(tmp_path, model)
    bad = bytearray(firmware(model))
    bad[200] ^= 1
    link = UsbTokenBackend(bus).open()
    link.dfu_detach()
    boot = UsbTokenBackend(bus).open()
    for i, pos in enumerate(range(0, len(bad), 4096)):  # bypassing the agent's own check
        boot.dfu_download(i, bytes(bad[pos:pos + 4096]))
    boot.dfu_download(0, b"")
    status, state = boot.dfu_status()
    assert (status, state) == (0x07, 10)  # errVERIFY, dfuERROR
    boot.dfu_abort()
    boot.reset()
    assert running(bus) == ("runtime", "1.2.0")


def test_a_token_stuck_in_its_bootloader_is_found_and_flashed_again(tmp_path, model):
    bus, token = _setup(tmp_path, model)
    blob = firmware(model)
    total = len(blob)
    token.flash.cut_after(8192 + total // 2)  # the pending record, then half the image
    assert asyncio.run(flash_firmware(tmp_path, bus, token, blob)).state == "open"
    bus.replug(token)
    [info] = UsbTokenBackend(bus).scan()
    assert info.mode == "bootloader" and info.product_id == model.usb.bootloader_product_id
    assert asyncio.run(flash_firmware(tmp_path, bus, token, blob)).state == "done"
    assert running(bus) == ("runtime", "3.0.0")


def test_firmware_fault_sample(tmp_path, model):
    out = firmware_fault_trials(tmp_path, model, 8, seed=5)
    assert sum(out.values()) == 8


@pytest.mark.slow
def test_firmware_fault_matrix_full(tmp_path, model):
    out = firmware_fault_trials(tmp_path, model, 200, seed=55)
    assert out["bootloader"] and out["new"]


def test_resuming_with_another_release_of_the_same_payload_is_refused(tmp_path, token_models):
    model = token_models["cns-token-ccid"]
    bus, token = _setup(tmp_path, model)
    token.flash.cut_after(30_000)
    assert asyncio.run(flash_firmware(tmp_path, bus, token, firmware(model, "3.0.0"))).state == "open"
    bus.replug(token)
    with pytest.raises(PreconditionError, match="run it again with that image, not another"):
        asyncio.run(flash_firmware(tmp_path, bus, token, firmware(model, "4.0.0")))  # same bytes, other release
    assert asyncio.run(flash_firmware(tmp_path, bus, token, firmware(model, "3.0.0"))).state == "done"


def test_an_image_the_bootloader_refuses_is_undone_back_to_the_old_firmware(tmp_path, token_models, monkeypatch):
    from firmware_profiles.usbemu import token as emulated
    from firmware_profiles.usbtoken.image import ImageError
    model = token_models["cns-token-ccid"]
    bus, token = _setup(tmp_path, model)

    def stricter(*a, **kw):  # a bootloader with a rule the agent does not know
        raise ImageError("refused by this bootloader")
    monkeypatch.setattr(emulated, "check_for", stricter)
    result = asyncio.run(flash_firmware(tmp_path, bus, token, firmware(model)))
    assert result.state == "undone" and "bootloader refused the firmware image" in result.reason
    assert running(bus) == ("runtime", "1.2.0")
    assert read_cdrom(bus, token)
