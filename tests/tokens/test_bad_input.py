"""Bad input and misbehaving tokens: one clear line, and the token as it was or as the new version."""
from __future__ import annotations

import asyncio

import pytest

from agent.devices.usb import TokenProtocolError, UsbTokenBackend
from agent.ops.errors import PreconditionError
from firmware_profiles.usbemu.flash import write_meta
from tests.tokens.helpers import cdrom_payload, read_cdrom, setup_token as _setup, signed, update as _update


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
    bus, token = _setup(tmp_path, model)
    meta = dict(token.meta, map={"cdrom": "A", "disk": "B"})
    token.meta = write_meta(token.flash, meta)
    bus.replug(token)
    with pytest.raises(PreconditionError, match="reserved area has no free slot"):
        asyncio.run(_update(tmp_path, bus, token, signed(model, cdrom_payload(change=1))))


def test_the_token_refuses_writes_into_a_live_region(tmp_path, model):
    bus, token = _setup(tmp_path, model)
    link = UsbTokenBackend(bus).open()
    with pytest.raises(Exception, match="refused to write a region in use"):
        link.write_block("cdrom", 0, b"x" * 4096)
    with pytest.raises(TokenProtocolError, match="stalled"):
        token.mgmt_fault = ("stall", 1)
        link.info()
