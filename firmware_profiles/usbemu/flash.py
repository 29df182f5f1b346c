"""The emulated token's flash: a sparse file (a 1 GiB token costs no disk), power-cut tears,
and the metadata record that maps partitions to regions.

Tear model: ``Flash.cut_after(n)`` lets the next n bytes of writes through and then raises
``PowerCut`` mid-write (the bytes before the cut are on flash, as after a real power loss).
Metadata lives twice (copies at 0 and 4096, each with a sequence number and CRC-32): a write
goes to the older copy, so a torn metadata write leaves the previous record readable. That
write is the token's one atomic switch.

Imports ``firmware_profiles.usbtoken`` only.
"""
from __future__ import annotations

import json
import os
import struct
import zlib
from pathlib import Path

from firmware_profiles.usbtoken.model import META_BYTES, TokenModel

META_COPY = 4096
FIRMWARE_OFFSET = 64 * 1024
FIRMWARE_MAX = META_BYTES - FIRMWARE_OFFSET
_MAGIC = b"CNSM"


class PowerCut(Exception):
    """Power was lost mid-write (tear fault): the token is gone until replugged."""


class Flash:
    def __init__(self, path: str | Path, size: int):
        self.path = Path(path)
        self.size = size
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            if os.fstat(fd).st_size != size:
                os.ftruncate(fd, size)  # sparse: holes read as zero and take no blocks
        finally:
            os.close(fd)
        self._f = open(self.path, "r+b", buffering=0)
        self._budget: int | None = None
        self.bytes_written = 0

    def close(self) -> None:
        self._f.close()

    def cut_after(self, nbytes: int | None) -> None:
        """Arm (or with None disarm) a power cut after ``nbytes`` more bytes written."""
        self._budget = nbytes

    def read(self, offset: int, length: int) -> bytes:
        if offset < 0 or offset + length > self.size:
            raise ValueError("read outside the flash")
        self._f.seek(offset)
        return self._f.read(length).ljust(length, b"\0")

    def write(self, offset: int, data: bytes) -> None:
        if offset < 0 or offset + len(data) > self.size:
            raise ValueError("write outside the flash")
        cut = self._budget is not None and len(data) > self._budget
        if cut:
            data = data[:self._budget]
        self._f.seek(offset)
        self._f.write(data)
        self.bytes_written += len(data)
        if self._budget is not None:
            self._budget -= len(data)
        if cut:
            self._budget = None
            raise PowerCut(f"power cut after {len(data)} bytes of a write at {offset}")


def factory_meta(model: TokenModel, serial: str) -> dict:
    return {
        "seq": 0, "serial": serial, "model": model.id,
        "map": {"cdrom": "cdrom", "disk": "disk"}, "previous": {},
        "images": {"cdrom": {"version": "0.0.0", "length": 0, "sha256": ""},
                   "disk": {"version": "0.0.0", "length": model.flash.disk_bytes, "sha256": ""}},
        "firmware": {"version": model.firmware.version, "valid": True, "sha256": ""},
        "bootloader": model.firmware.bootloader,
    }


def _decode(raw: bytes) -> dict | None:
    if raw[:4] != _MAGIC:
        return None
    seq, length, crc = struct.unpack(">III", raw[4:16])
    body = raw[16:16 + length]
    if length > META_COPY - 16 or zlib.crc32(body) != crc:
        return None
    meta = json.loads(body)
    return meta if meta.get("seq") == seq else None


def read_meta(flash: Flash) -> dict | None:
    """The newest intact metadata copy, or None on a blank flash."""
    copies = [m for m in (_decode(flash.read(i * META_COPY, META_COPY)) for i in (0, 1)) if m]
    return max(copies, key=lambda m: m["seq"]) if copies else None


def write_meta(flash: Flash, meta: dict) -> dict:
    """Write ``meta`` with the next sequence number into the older copy (the atomic switch)."""
    new = dict(meta, seq=meta["seq"] + 1)
    body = json.dumps(new, sort_keys=True).encode()
    if len(body) > META_COPY - 16:
        raise ValueError("metadata record too large")
    rec = (_MAGIC + struct.pack(">III", new["seq"], len(body), zlib.crc32(body)) + body).ljust(META_COPY, b"\0")
    flash.write((new["seq"] % 2) * META_COPY, rec)
    return new
