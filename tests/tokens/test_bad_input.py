"""Bad input and misbehaving tokens: one clear line, and the token as it was or as the new version."""
from __future__ import annotations

import asyncio

import pytest

from agent.devices.usb import TokenProtocolError, UsbTokenBackend
from agent.ops.errors import PreconditionError
from firmware_profiles.usbemu.flash import write_meta
from tests.tokens.helpers import FW, cdrom_payload, firmware, flash_firmware as _flash, read_cdrom, signed
from tests.tokens.helpers import setup_token as _setup, update as _update


def test_a_token_answering_garbage_is_refused_and_left_alone(tmp_path, model):
    bus, token = _setup(tmp_path, model)
    token.mgmt_fault = ("garbage", 1)
    before = token.flash.bytes_written
    with pytest.raises(PreconditionError, match="garbage answer") as ei:
        asyncio.run(_update(tmp_path, bus, token, signed(model, cdrom_payload(change=1))))
    assert "\n" not in str(ei.value) and token.flash.bytes_written == before


def test_a_stalled_endpoint_mid_staging_undoes_the_update(tmp_path, model):
    bus, token = _setup(tmp_path, model)
    old = read_cdrom(bus, token)
    token.mgmt_fault = ("stall", 6)  # INFO, INFO, HASH, HASH, then a WRITE/COPY stalls
    blob = signed(model, cdrom_payload(change=1))
    result, _ = asyncio.run(_update(tmp_path, bus, token, blob))
    assert result.state == "undone" and "endpoint stalled" in result.reason
    assert read_cdrom(bus, token) == old and token.meta["map"]["cdrom"] == "cdrom"
    token.mgmt_fault = None
    result, _ = asyncio.run(_update(tmp_path, bus, token, blob))  # the operator retries: it works
    assert result.state == "done"


def test_a_full_reserved_area_is_refused(tmp_path, model):
    """Genuinely full: both partitions switched and neither confirmed (e.g. left so by an install whose journal
    is gone), so every region holds a live or a kept image. One line, nothing written."""
    bus, token = _setup(tmp_path, model)
    meta = dict(token.meta, map={"cdrom": "A", "disk": "B"}, previous={"cdrom": "cdrom", "disk": "disk"})
    token.meta = write_meta(token.flash, meta)
    bus.replug(token)
    before = token.flash.bytes_written
    with pytest.raises(PreconditionError, match="reserved area has no free slot for the cdrom image") as ei:
        asyncio.run(_update(tmp_path, bus, token, signed(model, cdrom_payload(change=1))))
    assert "\n" not in str(ei.value) and token.flash.bytes_written == before and token.meta["map"]["cdrom"] == "A"


def test_a_disk_image_is_refused_when_the_only_free_region_is_too_small(tmp_path, model):
    """The disk's switch into slot B unconfirmed (its home kept), the CD-ROM on slot A: the one free region is
    the CD-ROM's 1 MiB home, too small for a 2 MiB disk image: refused in one line, nothing written."""
    from tests.releases.tokenrel import small_model
    model = small_model(model, cdrom_mib=1, disk_mib=2)
    bus, token = _setup(tmp_path, model)
    meta = dict(token.meta, map={"cdrom": "A", "disk": "B"}, previous={"disk": "disk"})
    token.meta = write_meta(token.flash, meta)
    bus.replug(token)
    assert UsbTokenBackend(bus).open().info()["free_regions"] == ["cdrom"]
    before = token.flash.bytes_written
    disk = signed(model, bytes(model.flash.disk_bytes), kind="disk")
    with pytest.raises(PreconditionError, match="no free slot for the disk image") as ei:
        asyncio.run(_update(tmp_path, bus, token, disk, "disk"))
    assert "\n" not in str(ei.value) and token.flash.bytes_written == before and token.meta["map"]["disk"] == "B"


def test_a_confirmed_switch_frees_the_region_it_left_an_unconfirmed_one_keeps_it(tmp_path, model):
    """The token's own rule (SCHEMA.md §10): the factory home a partition left is protected while the switch
    is unconfirmed (the revert needs it), writable once it is confirmed."""
    bus, token = _setup(tmp_path, model)
    link = UsbTokenBackend(bus).open()
    payload = cdrom_payload(change=2)
    import hashlib
    for b in range(0, len(payload), model.flash.block_bytes):
        link.write_block("A", b // model.flash.block_bytes, payload[b:b + model.flash.block_bytes])
    link.switch("cdrom", "A", len(payload), hashlib.sha256(payload).digest(), "2.0.0")
    assert link.info()["free_regions"] == ["B"]              # the CD-ROM's home kept, the disk's live
    with pytest.raises(Exception, match="refused to write a region in use"):
        link.write_block("cdrom", 0, b"x" * 4096)
    link.confirm("cdrom")
    assert link.info()["free_regions"] == ["cdrom", "B"] and link.info()["free_slots"] == ["B"]
    link.write_block("cdrom", 0, b"x" * 4096)                # free space now: the next update's
    assert read_cdrom(bus, token) == payload                   # and the live CD-ROM is untouched


def test_the_token_refuses_writes_into_a_live_region(tmp_path, model):
    bus, token = _setup(tmp_path, model)
    link = UsbTokenBackend(bus).open()
    with pytest.raises(Exception, match="refused to write a region in use"):
        link.write_block("cdrom", 0, b"x" * 4096)
    with pytest.raises(TokenProtocolError, match="stalled"):
        token.mgmt_fault = ("stall", 1)
        link.info()


# ---------------------------------------------------------------- issue 13 item 6, case by case
# Each case: one line naming the problem (no traceback, no raw USB error), and the token exactly as it
# was (nothing written, CD-ROM and firmware old) or, once finished, as the new version.

def _other_key_image(model, payload, kind="cdrom", **kw):
    """A well-formed image with a valid signature, but by a key that is not the model's release key."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from firmware_profiles.usbtoken.image import build_image
    return build_image(Ed25519PrivateKey.generate(), kind=kind, model=model.id, version="2.0.0" if kind != "firmware"
                       else "3.0.0", payload=payload, **kw)


def _firmware_untouched(bus, token, model, before_written):
    from tests.tokens.helpers import running
    assert token.flash.bytes_written == before_written and running(bus) == ("runtime", model.firmware.version)


def test_a_partition_image_signed_by_another_key_is_refused_before_a_byte_is_written(tmp_path, model):
    bus, token = _setup(tmp_path, model)
    before = token.flash.bytes_written
    with pytest.raises(PreconditionError, match="signed by someone else; do not install it") as ei:
        asyncio.run(_update(tmp_path, bus, token, _other_key_image(model, cdrom_payload(change=1))))
    assert "\n" not in str(ei.value) and token.flash.bytes_written == before


@pytest.mark.parametrize("case, make, message", [
    ("wrongly signed", lambda m, o: _other_key_image(m, FW, kind="firmware"), "signed by someone else"),
    ("truncated", lambda m, o: firmware(m)[:-4096], "signature does not verify"),
    ("truncated header", lambda m, o: firmware(m)[:40], "truncated"),
    ("wrong model", lambda m, o: firmware(o), "image is for token model"),
])
def test_bad_firmware_images_are_refused_before_a_byte_is_written(tmp_path, token_models, case, make, message):
    model, other = token_models["cns-token-ccid"], token_models["cns-token-hid"]
    bus, token = _setup(tmp_path, model)
    before = token.flash.bytes_written
    with pytest.raises(PreconditionError, match=message) as ei:
        asyncio.run(_flash(tmp_path, bus, token, make(model, other)))
    assert "\n" not in str(ei.value)
    _firmware_untouched(bus, token, model, before)


def test_a_token_pulled_mid_transfer_says_so_and_the_next_insert_finishes_the_update(tmp_path, model):
    bus, token = _setup(tmp_path, model)
    old = read_cdrom(bus, token)
    new = cdrom_payload(change=1)
    blob = signed(model, new)
    bus.unplug_after(12)                                  # pulled while the blocks are being staged
    result, _ = asyncio.run(_update(tmp_path, bus, token, blob))
    assert result.state == "open" and "removed" in result.reason and "plug it in again" in result.reason
    assert "\n" not in result.reason and "Errno" not in result.reason and "USBError" not in result.reason
    bus.unplug_after(None)
    bus.replug(token)
    assert read_cdrom(bus, token) == old                  # the user still has the old CD-ROM
    result, _ = asyncio.run(_update(tmp_path, bus, token, blob))
    assert result.state == "done" and read_cdrom(bus, token) == new


def test_a_token_pulled_mid_firmware_download_is_flashed_again_on_the_next_insert(tmp_path, model):
    from tests.tokens.helpers import running
    bus, token = _setup(tmp_path, model)
    blob = firmware(model)
    bus.unplug_after(20)                                  # after the detach, during the download
    result = asyncio.run(_flash(tmp_path, bus, token, blob))
    assert result.state == "open" and "removed" in result.reason and "\n" not in result.reason
    bus.unplug_after(None)
    bus.replug(token)
    assert running(bus)[0] in ("bootloader", "runtime")  # found, by its bootloader ids if need be
    result = asyncio.run(_flash(tmp_path, bus, token, blob))
    assert result.state == "done" and running(bus) == ("runtime", "3.0.0")


@pytest.mark.parametrize("fault", ["stall", "garbage"])
def test_a_dfu_interface_that_stalls_or_answers_garbage_mid_download_leaves_old_or_new(tmp_path, model, fault):
    """The bootloader stalls a DNLOAD (or answers GETSTATUS with garbage) half-way: the agent names it in one
    line and the token is left flashable; the operator's retry installs the new firmware."""
    from tests.tokens.helpers import running
    bus, token = _setup(tmp_path, model)
    blob = firmware(model)
    token.dfu_fault = (fault, 12)
    result = asyncio.run(_flash(tmp_path, bus, token, blob))
    assert result.state in ("open", "undone"), result
    reason = result.reason or str(result.error)
    assert ("stalled" if fault == "stall" else "DFU status") in reason and "\n" not in reason, reason
    token.dfu_fault = None
    mode, version = running(bus)
    assert (mode, version) in (("runtime", model.firmware.version), ("bootloader", "none (bootloader)")), (mode, version)
    result = asyncio.run(_flash(tmp_path, bus, token, blob))
    assert result.state == "done" and running(bus) == ("runtime", "3.0.0")


def test_a_token_answering_garbage_to_a_firmware_update_is_refused_and_left_alone(tmp_path, model):
    """Garbage on the management channel (its state) refuses the update before it begins; garbage from the
    DFU interface (its first status) undoes it: one line each, the old firmware running, nothing written."""
    bus, token = _setup(tmp_path, model)
    before = token.flash.bytes_written
    token.mgmt_fault = ("garbage", 1)
    with pytest.raises(PreconditionError, match="garbage answer") as ei:
        asyncio.run(_flash(tmp_path, bus, token, firmware(model)))
    assert "\n" not in str(ei.value)
    token.mgmt_fault = None
    _firmware_untouched(bus, token, model, before)
    token.dfu_fault = ("garbage", 1)
    result = asyncio.run(_flash(tmp_path, bus, token, firmware(model)))
    assert result.state == "undone" and result.reason == "the token's DFU status is not 6 bytes"
    _firmware_untouched(bus, token, model, before)
