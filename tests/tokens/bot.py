"""Host side of USB mass storage bulk-only transport, for tests (the agent never claims the
mass-storage interface: the OS driver owns it)."""
from __future__ import annotations

import struct

_tag = [0]


def scsi(dev, out_ep: int, in_ep: int, lun: int, cb: bytes, *, data_in: int = 0, data_out: bytes = b""):
    """One command; returns (status, data). status 0 good, 1 failed."""
    _tag[0] += 1
    xfer = data_in or len(data_out)
    cbw = b"USBC" + struct.pack("<IIBBB", _tag[0], xfer, 0x80 if data_in else 0, lun, len(cb)) + cb.ljust(16, b"\0")
    dev.write(out_ep, cbw)
    if data_out:
        dev.write(out_ep, data_out)
    raw = bytes(dev.read(in_ep, data_in + 13))
    data, csw = raw[:-13], raw[-13:]
    assert csw[:4] == b"USBS" and struct.unpack("<I", csw[4:8])[0] == _tag[0]
    return csw[12], data


def sense(dev, out_ep, in_ep, lun):
    _, s = scsi(dev, out_ep, in_ep, lun, bytes([0x03, 0, 0, 0, 18, 0]), data_in=18)
    return s[2] & 0x0F, s[12], s[13]


def read10(lba: int, count: int) -> bytes:
    return bytes([0x28, 0]) + lba.to_bytes(4, "big") + b"\0" + count.to_bytes(2, "big") + b"\0"


def write10(lba: int, count: int) -> bytes:
    return bytes([0x2A, 0]) + lba.to_bytes(4, "big") + b"\0" + count.to_bytes(2, "big") + b"\0"
