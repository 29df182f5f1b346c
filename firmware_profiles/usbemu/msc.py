"""Bulk-only mass storage (USB MSC BOT, interface 08/06/50) with the SCSI commands a host
uses: INQUIRY, TEST UNIT READY, REQUEST SENSE, READ CAPACITY(10), READ(10), WRITE(10),
MODE SENSE(6), PREVENT ALLOW MEDIUM REMOVAL. LUN 0 is the CD-ROM (type 05, 2048-byte
blocks, read-only: WRITE(10) answers 07/27/00), LUN 1 the removable disk (type 00, 512-byte
blocks). A medium change is reported once per LUN as UNIT ATTENTION 06/28/00.

Imports nothing of ours; the token gives it ``lun_region(lun) -> (offset, length)`` and its flash.
"""
from __future__ import annotations

import struct
from collections.abc import Callable

CBW_SIG, CSW_SIG = b"USBC", b"USBS"
GOOD, FAILED, PHASE_ERROR = 0, 1, 2
CDROM, DISK = 0, 1
BLOCK = {CDROM: 2048, DISK: 512}


class BadCbw(Exception):
    """Not a CBW where one was due: the host must reset the interface (the endpoint stalls)."""


class MassStorage:
    def __init__(self, flash, lun_region: Callable[[int], tuple[int, int]], serial: str, product: str):
        self.flash = flash
        self.lun_region = lun_region
        self.serial, self.product = serial, product
        self.sense = {CDROM: (0, 0, 0), DISK: (0, 0, 0)}
        self.attention = {CDROM: False, DISK: False}
        self._in = b""          # data + CSW waiting for bulk IN
        self._out: tuple | None = None  # (tag, lun, lba, remaining bytes, collected) of a WRITE(10)

    def medium_changed(self, lun: int) -> None:
        self.attention[lun] = True

    def reset(self) -> None:
        self._in, self._out = b"", None

    # -------------------------------------------------------------- bulk
    def bulk_out(self, data: bytes) -> None:
        if self._out is not None:
            tag, lun, lba, remaining, got = self._out
            got += data
            if len(got) < remaining:
                self._out = (tag, lun, lba, remaining, got)
                return
            self._out = None
            if lun is None:  # data of a refused command: discarded, then the failed CSW
                self._in = self._csw(tag, remaining, FAILED)
                return
            off, _ = self.lun_region(lun)
            self.flash.write(off + lba * BLOCK[lun], got[:remaining])
            self._in = self._csw(tag, 0, GOOD)
            return
        if len(data) != 31 or data[:4] != CBW_SIG:
            raise BadCbw("not a CBW")
        tag, xfer, flags, lun, cblen = struct.unpack("<4xIIBBB", data[:15])
        cb = data[15:15 + cblen]
        self._command(tag, xfer, flags, lun & 0x0F, cb)

    def bulk_in(self, size: int) -> bytes:
        out, self._in = self._in[:size], self._in[size:]
        return out

    # -------------------------------------------------------------- SCSI
    @staticmethod
    def _csw(tag: int, residue: int, status: int) -> bytes:
        return CSW_SIG + struct.pack("<IIB", tag, residue, status)

    def _fail(self, tag: int, xfer: int, lun: int, sense: tuple[int, int, int], flags: int = 0x80) -> None:
        if lun in self.sense:
            self.sense[lun] = sense
        if xfer and not flags & 0x80:  # host-to-device data still coming: take it, then fail
            self._out = (tag, None, 0, xfer, b"")
            return
        self._in = self._csw(tag, xfer, FAILED)

    def _reply(self, tag: int, xfer: int, data: bytes) -> None:
        data = data[:xfer]
        self._in = data + self._csw(tag, xfer - len(data), GOOD)

    def _blocks(self, lun: int) -> int:
        _, length = self.lun_region(lun)
        return length // BLOCK[lun]

    def _command(self, tag: int, xfer: int, flags: int, lun: int, cb: bytes) -> None:
        op = cb[0] if cb else -1
        if lun not in BLOCK:
            return self._fail(tag, xfer, lun, (0x05, 0x25, 0x00))  # LOGICAL UNIT NOT SUPPORTED
        if op == 0x12:  # INQUIRY
            dtype = 0x05 if lun == CDROM else 0x00
            inq = bytes([dtype, 0x80, 0x05, 0x02, 31, 0, 0, 0]) + b"CNS     " + \
                self.product.encode()[:16].ljust(16) + b"1.00"
            return self._reply(tag, xfer, inq)
        if op == 0x03:  # REQUEST SENSE
            k, asc, ascq = self.sense[lun]
            self.sense[lun] = (0, 0, 0)
            return self._reply(tag, xfer, bytes([0x70, 0, k, 0, 0, 0, 0, 10, 0, 0, 0, 0, asc, ascq, 0, 0, 0, 0]))
        if self.attention[lun]:
            self.attention[lun] = False
            return self._fail(tag, xfer, lun, (0x06, 0x28, 0x00), flags)  # NOT READY TO READY CHANGE, MEDIUM MAY HAVE CHANGED
        if op in (0x00, 0x1E):  # TEST UNIT READY, PREVENT ALLOW MEDIUM REMOVAL
            if op == 0x00 and self._blocks(lun) == 0:
                return self._fail(tag, xfer, lun, (0x02, 0x3A, 0x00))  # MEDIUM NOT PRESENT
            return self._reply(tag, xfer, b"")
        if op == 0x1A:  # MODE SENSE(6): no pages; WP bit for the CD-ROM
            return self._reply(tag, xfer, bytes([3, 0, 0x80 if lun == CDROM else 0, 0]))
        if op == 0x25:  # READ CAPACITY(10)
            n = self._blocks(lun)
            if n == 0:
                return self._fail(tag, xfer, lun, (0x02, 0x3A, 0x00))
            return self._reply(tag, xfer, struct.pack(">II", n - 1, BLOCK[lun]))
        if op in (0x28, 0x2A):
            cb = cb.ljust(10, b"\0")
            lba, count = int.from_bytes(cb[2:6], "big"), int.from_bytes(cb[7:9], "big")
            if lba + count > self._blocks(lun) or count * BLOCK[lun] != xfer:
                return self._fail(tag, xfer, lun, (0x05, 0x21, 0x00), flags)  # LBA OUT OF RANGE
            if op == 0x28:
                off, _ = self.lun_region(lun)
                return self._reply(tag, xfer, self.flash.read(off + lba * BLOCK[lun], xfer))
            if lun == CDROM:
                return self._fail(tag, xfer, lun, (0x07, 0x27, 0x00), flags)  # WRITE PROTECTED
            self._out = (tag, lun, lba, xfer, b"")
            return None
        return self._fail(tag, xfer, lun, (0x05, 0x20, 0x00))  # INVALID COMMAND OPERATION CODE
