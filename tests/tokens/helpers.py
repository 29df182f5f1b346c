"""Shared helpers for the token update tests and benchmarks."""
from __future__ import annotations

import functools
import hashlib

import usb.core

from agent.devices.usb import UsbTokenBackend
from agent.ops.journal import Journal
from agent.ops.token_firmware import run_firmware
from agent.ops.token_update import run_update
from firmware_profiles.usbemu import EmulatedUsbBus, build_cdrom_image, make_token, test_release_key
from firmware_profiles.usbtoken.image import build_image
from tests.tokens.bot import read10, scsi


@functools.cache
def cdrom_payload(n_files: int = 8, size: int = 40_000, change: int = -1) -> bytes:
    """An ISO image of ``n_files`` files (``change``: one file's first bytes differ). Built once per arguments:
    an ISO carries its build time, so two builds a clock second apart differ, and a test that rebuilds the
    factory image to offer it "again" would offer another image."""
    files = {f"F{i}.BIN": bytes([i]) * size for i in range(n_files)}
    if change >= 0:
        files[f"F{change}.BIN"] = b"changed" + files[f"F{change}.BIN"][7:]
    return build_cdrom_image(files)


def signed(model, payload: bytes, *, kind: str = "cdrom", version: str = "2.0.0", **kw) -> bytes:
    return build_image(test_release_key(), kind=kind, model=model.id, version=version, payload=payload, **kw)


def read_cdrom(bus, token, lun: int = 0) -> bytes:
    """The whole CD-ROM LUN (or, ``lun=1``, the disk) as the OS's mass-storage driver reads it (after any
    UNIT ATTENTION)."""
    owned = bus.host_owns_os_interfaces
    bus.host_owns_os_interfaces = True
    try:
        dev = usb.core.find(backend=bus, idVendor=token.model.usb.vendor_id)
        intf = next(i for i in dev.get_active_configuration() if i.bInterfaceClass == 0x08)
        out = next(e.bEndpointAddress for e in intf if not e.bEndpointAddress & 0x80)
        inn = next(e.bEndpointAddress for e in intf if e.bEndpointAddress & 0x80)
        for _ in range(2):  # a pending UNIT ATTENTION fails the first command
            st, cap = scsi(dev, out, inn, lun, bytes([0x25] + [0] * 9), data_in=8)
            if st == 0:
                break
        n, block = int.from_bytes(cap[:4], "big") + 1, int.from_bytes(cap[4:8], "big")
        data = b""
        for lba in range(0, n, 64):
            c = min(64, n - lba)
            data += scsi(dev, out, inn, lun, read10(lba, c), data_in=c * block)[1]
        return data
    finally:
        bus.host_owns_os_interfaces = owned


def read_disk(bus, token) -> bytes:
    """The whole removable-disk LUN as the OS reads it."""
    return read_cdrom(bus, token, lun=1)


def sha(b: bytes) -> str:
    return hashlib.sha256(b).hexdigest()


FW = bytes(range(256)) * 400  # 100 KiB of "firmware"


def setup_token(tmp_path, model, *, n_files: int = 8, card=None):
    """A token with a factory CD-ROM of ``n_files`` files (and the chip ``card``, default a blank one of
    the model's chip), plugged into a fresh bus."""
    bus = EmulatedUsbBus()
    token = make_token(model, tmp_path / "flash.bin", cdrom=cdrom_payload(n_files=n_files), card=card)
    bus.plug(token)
    return bus, token


def connect(bus, serial):
    return lambda: UsbTokenBackend(bus).open(serial)


async def update(tmp_path, bus, token, blob, partition="cdrom", **kw):
    j = await Journal.open(tmp_path / "journal.db")
    try:
        return await run_update(j, connect(bus, token.serial), token.model, partition, blob, **kw)
    finally:
        await j.close()


async def flash_firmware(tmp_path, bus, token, blob, **kw):
    j = await Journal.open(tmp_path / "journal.db")
    try:
        return await run_firmware(j, connect(bus, token.serial), token.model, blob, **kw)
    finally:
        await j.close()


def firmware(model, version="3.0.0", **kw):
    return signed(model, FW, kind="firmware", version=version, **kw)


def running(bus):
    [info] = UsbTokenBackend(bus).scan()
    return info.mode, info.firmware
