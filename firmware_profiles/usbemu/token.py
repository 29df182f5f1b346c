"""One emulated composite CNS token: the functions behind its descriptors.

Runtime mode: the reader (CCID over bulk, or HID reports) carrying APDUs to an
``EmulatedCard`` (the same object ``VpcdClient`` can put into pcscd), mass storage
(``msc.MassStorage``), the management channel (vendor interface control requests, or HID
feature reports on the HID model; protocol in SCHEMA.md §10) and the DFU 1.1 runtime
interface. Image data for a partition update arrives on the management interface's bulk OUT
endpoint (``OP_BULK_WRITE``, each block checked against its announced SHA-256 before it is written).
Bootloader mode (after DETACH, or when a firmware download never finished): one
DFU interface with the bootloader's own product id. Mode changes re-enumerate (the bus gives
the token a new address; old handles fail with ENODEV).

The link is modelled (``account``, called by the bus for every transfer): the time each transfer takes by
its type under the model's ``LinkModel`` (SCHEMA.md §9), the bytes and the transfers per type.

Imports ``firmware_profiles.usbtoken``, ``firmware_profiles.emulator`` (the card) and its siblings.
"""
from __future__ import annotations

import hashlib
import json
import struct

from firmware_profiles.emulator.card import CardRemovedError, EmulatedCard
from firmware_profiles.usbemu import descriptors as d
from firmware_profiles.usbemu.attestation import AttestRefused, attest
from firmware_profiles.usbemu.flash import (FIRMWARE_MAX, FIRMWARE_OFFSET, Flash, factory_meta, read_meta,
                                            write_meta)
from firmware_profiles.usbemu.msc import CDROM, DISK, BadCbw, MassStorage
from firmware_profiles.usbtoken.image import ImageError, check_for, parse_image
from firmware_profiles.usbtoken.model import TokenModel, bcd_device
from firmware_profiles.usbtoken.protocol import (APP_IDLE, DFU_ABORT, DFU_CLRSTATUS, DFU_DETACH, DFU_DNLOAD,
                                                 DFU_DNLOAD_IDLE, DFU_ERROR, DFU_GETSTATE, DFU_GETSTATUS,
                                                 DFU_IDLE, DFU_MANIFEST_WAIT_RESET, ERR_FILE, ERR_OK, ERR_UNKNOWN,
                                                 ERR_VERIFY, MAX_BULK_BLOCKS, MGMT_REPORT_ID, OP_ATTEST, OP_BULK_WRITE,
                                                 OP_CONFIRM, OP_COPY, OP_DIGEST, OP_HASH, OP_INFO, OP_SWITCH, OP_WRITE,
                                                 PARTS, REGIONS, REQ_COMMAND, REQ_RESPONSE, ST_BAD_REQUEST,
                                                 ST_BLOCK_HASH, ST_NOT_INSTALLED, ST_OK, ST_PROTECTED,
                                                 ST_TOO_LARGE, ST_VERIFY)

HID_REPORT = 64
# The old byte-counting model's share of the signalling rate; the link model is now ``TokenModel.link``
# (per transfer type). Kept for benchmarks/token_release.py, which still reads it.
LINK_EFFICIENCY = 0.8
MGMT_BULK_OUT = 0x06  # the management interface's bulk OUT endpoint (image data)
TRANSFER_KINDS = ("control", "bulk", "interrupt")


class Stall(Exception):
    """The endpoint answers STALL (pyusb: USBError with errno EPIPE)."""


class EmulatedToken:
    def __init__(self, model: TokenModel, flash: Flash, card: EmulatedCard, *, serial: str | None = None):
        self.model, self.flash, self.card = model, flash, card
        meta = read_meta(flash)
        if meta is None:
            meta = write_meta(flash, factory_meta(model, serial or f"{model.serial_prefix}{card.serial[-8:]}"))
        self.meta = meta
        self.serial = meta["serial"]
        self.link_seconds = 0.0  # modelled time on the USB link (``model.link``, per transfer type)
        self.link_bytes = 0      # bytes over the link (control transfers with their 8-byte setup packets, bulk data)
        self.link_transfers = dict.fromkeys(TRANSFER_KINDS, 0)   # transfers per type
        self.link_payload = dict.fromkeys(TRANSFER_KINDS, 0)     # data bytes per type (no setup packets)
        # fault: the management bulk OUT endpoint stalls at its n-th transfer
        self.bulk_fault: int | None = None
        # fault: the management channel "stall"s or answers "garbage" at the n-th request
        self.mgmt_fault: tuple[str, int] | None = None
        # fault: the DFU interface "stall"s its n-th request, or answers its n-th IN request (GETSTATUS,
        # GETSTATE) with "garbage" (two bytes that are no DFU answer)
        self.dfu_fault: tuple[str, int] | None = None
        self.power_up()

    # -------------------------------------------------------------- power / mode
    def power_up(self, *, bootloader: bool = False) -> None:
        """Boot: runtime when the firmware is valid and no download is pending, else (or after a
        DFU detach, ``bootloader``) the bootloader."""
        meta = read_meta(self.flash)
        if meta is None:  # no intact record on flash (what a torn single-copy write would cause): bricked
            meta = factory_meta(self.model, self.serial)
            meta["images"]["cdrom"]["length"] = 0
            meta["firmware"]["valid"] = False
        self.meta = meta
        if self.card.powered:
            self.card.power_off()  # the chip loses power with the token
        fw = self.meta["firmware"]
        self.mode = "runtime" if fw["valid"] and not fw.get("pending") and not bootloader else "bootloader"
        self.msc = MassStorage(self.flash, self._lun_region, self.serial, self.model.usb.product)
        self._ccid_in: list[bytes] = []
        self._hid_in = b""
        self._hid_out = b""
        self._mgmt_reply = b""
        self._bulk: dict | None = None   # an armed OP_BULK_WRITE (region, blocks, hashes, progress)
        self._dfu = {"state": APP_IDLE if self.mode == "runtime" else DFU_IDLE, "status": ERR_OK,
                     "received": 0}
        self.detach_requested = False
        self.reset_requested = False

    @property
    def firmware_version(self) -> str:
        return self.meta["firmware"]["version"]

    def descriptors(self, bus: int, address: int) -> tuple[d.DeviceDescriptor, d.Configuration]:
        m = self.model
        speed = 3 if m.link_speed == "high" else 2
        mps = 512 if speed == 3 else 64
        if self.mode == "bootloader":
            dev = d.DeviceDescriptor(m.usb.vendor_id, m.usb.bootloader_product_id,
                                     bcd_device(self.meta["bootloader"]), bus, address, speed)
            return dev, d.Configuration([d.Interface(0, 0xFE, 0x01, 0x02, [], d.STR_DFU,
                                                     d.dfu_functional_descriptor(m.flash.block_bytes), "dfu")])
        dev = d.DeviceDescriptor(m.usb.vendor_id, m.usb.runtime_product_id, bcd_device(self.firmware_version),
                                 bus, address, speed, bcdUSB=0x0210 if m.reader == "ccid" else 0x0200)
        dfu = d.dfu_functional_descriptor(m.flash.block_bytes)
        if m.reader == "ccid":
            intfs = [
                d.Interface(0, 0x0B, 0, 0, [d.Endpoint(0x01, 2, mps), d.Endpoint(0x82, 2, mps),
                                            d.Endpoint(0x83, 3, 8, 16)], d.STR_READER, d.ccid_class_descriptor(), "ccid"),
                d.Interface(1, 0x08, 0x06, 0x50, [d.Endpoint(0x04, 2, mps), d.Endpoint(0x85, 2, mps)], 0, b"", "msc"),
                d.Interface(2, 0xFF, 0, 0, [d.Endpoint(MGMT_BULK_OUT, 2, mps)], d.STR_MGMT, b"", "mgmt"),
                d.Interface(3, 0xFE, 0x01, 0x01, [], d.STR_DFU, dfu, "dfu"),
            ]
        else:
            intfs = [
                d.Interface(0, 0x03, 0, 0, [d.Endpoint(0x81, 3, HID_REPORT, 1), d.Endpoint(0x01, 3, HID_REPORT, 1)],
                            d.STR_READER, d.hid_class_descriptor(34), "hid"),
                d.Interface(1, 0x08, 0x06, 0x50, [d.Endpoint(0x02, 2, mps), d.Endpoint(0x83, 2, mps)], 0, b"", "msc"),
                d.Interface(2, 0xFE, 0x01, 0x01, [], d.STR_DFU, dfu, "dfu"),
            ]
        return dev, d.Configuration(intfs)

    def winusb(self) -> int | None:
        """The management interface Windows binds WinUSB to (Microsoft OS 2.0), None without one (HID model,
        bootloader)."""
        return 2 if self.mode == "runtime" and self.model.reader == "ccid" else None

    def strings(self) -> dict[int, str]:
        return {d.STR_MANUFACTURER: self.model.usb.manufacturer, d.STR_PRODUCT: self.model.usb.product,
                d.STR_SERIAL: self.serial, d.STR_MGMT: "CNS token management", d.STR_READER: "CNS reader",
                d.STR_DFU: "CNS DFU"}

    def account(self, kind: str, nbytes: int, max_packet: int = 64) -> None:
        """One transfer of ``kind`` ("control" | "bulk" | "interrupt") carrying ``nbytes`` of data, on the
        modelled link: its time by the model's per-type costs (a control transfer's setup packet counted in
        its bytes; ``max_packet``: an interrupt endpoint's packet size)."""
        link = self.model.link
        self.link_transfers[kind] += 1
        self.link_payload[kind] += nbytes
        if kind == "control":
            self.link_bytes += 8 + nbytes
            self.link_seconds += link.control_seconds(nbytes)
        elif kind == "bulk":
            self.link_bytes += nbytes
            self.link_seconds += link.bulk_seconds(nbytes)
        else:
            self.link_bytes += nbytes
            self.link_seconds += link.interrupt_seconds(nbytes, max_packet)

    # -------------------------------------------------------------- regions
    def region(self, name: str) -> tuple[int, int]:
        return self.model.flash.region(name)

    def _lun_region(self, lun: int) -> tuple[int, int]:
        part = "cdrom" if lun == CDROM else "disk"
        off, cap = self.region(self.meta["map"][part])
        if part == "cdrom":
            return off, min(cap, self.meta["images"]["cdrom"]["length"])
        return off, self.model.flash.disk_bytes

    # -------------------------------------------------------------- CCID (bulk) and HID reader
    def _ccid(self, msg: bytes) -> bytes:
        if len(msg) < 10:
            raise Stall()
        mtype, length, slot, seq = struct.unpack("<BIBB", msg[:7])
        body = msg[10:10 + length]

        def block(data: bytes, status: int = 0, error: int = 0) -> bytes:
            return struct.pack("<BIBBBBB", 0x80, len(data), slot, seq, status, error, 0) + data

        def slot_status(status: int) -> bytes:
            return struct.pack("<BIBBBBB", 0x81, 0, slot, seq, status, 0, 0)
        try:
            if mtype == 0x62:  # PC_to_RDR_IccPowerOn
                return block(self.card.power_on())
            if mtype == 0x63:  # PC_to_RDR_IccPowerOff
                self.card.power_off()
                return slot_status(0x01)
            if mtype == 0x65:  # PC_to_RDR_GetSlotStatus
                return slot_status(0x00 if self.card.powered else 0x01)
            if mtype == 0x6F:  # PC_to_RDR_XfrBlock (short APDU level)
                return block(self.card.transmit(body))
        except CardRemovedError:
            return slot_status(0x42)  # failed, no ICC present
        return struct.pack("<BIBBBBB", 0x81, 0, slot, seq, 0x40, 0x00, 0)  # command not supported

    def _hid_report_out(self, report: bytes) -> None:
        n = report[0] & 0x3F
        self._hid_out += bytes(report[1:1 + n])
        if report[0] & 0x80:
            resp, self._hid_out = self._ccid(self._hid_out), b""
            chunks = [resp[i:i + 63] for i in range(0, len(resp), 63)] or [b""]
            self._hid_in = b"".join(bytes([len(c) | (0x80 if i == len(chunks) - 1 else 0)]) + c.ljust(63, b"\0")
                                    for i, c in enumerate(chunks))

    # -------------------------------------------------------------- transfers
    def bulk_write(self, role: str, data: bytes) -> int:
        if role == "mgmt":
            self._bulk_in(data)
        elif role == "ccid":
            self._ccid_in.append(self._ccid(data))
        elif role == "msc":
            try:
                self.msc.bulk_out(data)
            except BadCbw:
                raise Stall() from None
        else:
            raise Stall()
        return len(data)

    def bulk_read(self, role: str, size: int) -> bytes:
        if role == "ccid":
            out = self._ccid_in.pop(0) if self._ccid_in else b""
        elif role == "msc":
            out = self.msc.bulk_in(size)
        else:
            raise Stall()
        return out

    def intr_write(self, role: str, data: bytes) -> int:
        if role != "hid" or len(data) != HID_REPORT:
            raise Stall()
        self._hid_report_out(data)
        return len(data)

    def intr_read(self, role: str, size: int) -> bytes:
        if role == "hid":
            out, self._hid_in = self._hid_in[:HID_REPORT], self._hid_in[HID_REPORT:]
            return out
        if role == "ccid":  # RDR_to_PC_NotifySlotChange: slot 0 present, changed
            return bytes([0x50, 0x03])
        raise Stall()

    def control(self, req_type: int, req: int, value: int, index: int, data: bytes | None, length: int,
                role_of: dict[int, str]) -> bytes | None:
        """A control transfer; returns IN data (or None for OUT). Standard requests are the bus's."""
        kind = (req_type >> 5) & 3
        role = role_of.get(index & 0xFF, "")
        if kind == 2 and role == "mgmt":  # vendor, interface: the management channel
            return self._mgmt_control(req, data, length)
        if kind == 1 and role == "hid" and (value >> 8) == 3 and (value & 0xFF) == MGMT_REPORT_ID:
            return self._mgmt_control(REQ_COMMAND if req == 0x09 else REQ_RESPONSE, data, length)  # SET_REPORT / GET_REPORT feature
        if kind == 1 and role == "msc":
            if req == 0xFE:  # Get Max LUN
                return bytes([1])
            if req == 0xFF:  # Bulk-Only Mass Storage Reset
                self.msc.reset()
                return None
        if kind == 1 and role == "dfu":
            return self._dfu_control(req, value, data, length)
        raise Stall()

    # -------------------------------------------------------------- management (SCHEMA.md §10)
    def _mgmt_control(self, req: int, data: bytes | None, length: int) -> bytes | None:
        if self.mgmt_fault is not None and req == REQ_COMMAND:
            kind, n = self.mgmt_fault
            self.mgmt_fault = (kind, n - 1)
            if n <= 1:
                if kind == "stall":
                    raise Stall()
                self._mgmt_reply = bytes([ST_OK]) + b"\xde\xad\xbe\xef" * 3
                return None
        if req == REQ_COMMAND and data is not None:
            self._bulk = None   # a new command ends any bulk write still armed
            self._mgmt_reply = self._mgmt(bytes(data))
            return None
        if req == REQ_RESPONSE and data is None:
            out = self._mgmt_reply[:length]
            self._mgmt_reply = b""
            return out
        raise Stall()

    def _bulk_in(self, data: bytes) -> None:
        """Image data on the management bulk OUT endpoint, for the armed OP_BULK_WRITE: each whole block is
        checked against its announced SHA-256 and written; the last block makes the answer (RESPONSE)."""
        if self.bulk_fault is not None:
            self.bulk_fault -= 1
            if self.bulk_fault <= 0:
                self.bulk_fault = None
                raise Stall()
        b = self._bulk
        if b is None or b["failed"] or len(b["buf"]) + len(data) > (b["count"] - b["done"]) * b["bs"]:
            self._bulk = None
            raise Stall()   # not armed, or more data than announced
        b["buf"] += data
        bs = b["bs"]
        while len(b["buf"]) >= bs:
            block, b["buf"] = b["buf"][:bs], b["buf"][bs:]
            if hashlib.sha256(block).digest() != b["hashes"][b["done"]]:
                b["failed"] = True
                self._mgmt_reply = bytes([ST_BLOCK_HASH]) + struct.pack(">H", b["done"])
                self._bulk = None
                return
            self.flash.write(b["off"] + (b["first"] + b["done"]) * bs, block)
            b["done"] += 1
        if b["done"] == b["count"]:
            self._mgmt_reply = bytes([ST_OK]) + struct.pack(">H", b["done"])
            self._bulk = None

    def _free_regions(self) -> list[str]:
        """Every region (factory home or slot, SCHEMA.md §10) that is neither live nor kept: a confirmed switch
        frees the region it left, whichever it was; an unconfirmed one keeps it (``previous``) for the revert."""
        used = set(self.meta["map"].values()) | set(self.meta["previous"].values())
        return [r for r in REGIONS if r not in used]

    def _free_slots(self) -> list[str]:
        return [r for r in self._free_regions() if r in ("A", "B")]

    def _digest(self, off: int, length: int) -> bytes:
        return self.flash.digest(off, length)

    def info(self) -> dict:
        m = self.meta
        return {"model": self.model.id, "serial": self.serial, "firmware": m["firmware"]["version"],
                "bootloader": m["bootloader"], "map": m["map"], "previous": m["previous"],
                "images": m["images"], "free_slots": self._free_slots(), "free_regions": self._free_regions(),
                "block_bytes": self.model.flash.block_bytes,
                "slot_bytes": self.model.flash.slot_bytes, "chip": self.card.serial}

    def _mgmt(self, req: bytes) -> bytes:
        if not req:
            return bytes([ST_BAD_REQUEST])
        op, args = req[0], req[1:]
        bs = self.model.flash.block_bytes
        try:
            if op == OP_INFO:
                return bytes([ST_OK]) + json.dumps(self.info(), sort_keys=True).encode()
            if op == OP_HASH:  # region u8, first block u32, count u16 → count × SHA-256
                reg, first, count = struct.unpack(">BIH", args[:7])
                off, ln = self.region(REGIONS[reg])
                if count > 256 or (first + count) * bs > ln:
                    return bytes([ST_BAD_REQUEST])
                return bytes([ST_OK]) + b"".join(self.flash.hashes(off + first * bs, count, bs))
            if op == OP_BULK_WRITE:  # region u8, first block u32, count u16, count × SHA-256; data on bulk OUT
                reg, first, count = struct.unpack(">BIH", args[:7])
                hashes = args[7:]
                if not 1 <= count <= MAX_BULK_BLOCKS or len(hashes) != 32 * count:
                    return bytes([ST_BAD_REQUEST])
                if REGIONS[reg] not in self._free_regions():
                    return bytes([ST_PROTECTED])
                off, ln = self.region(REGIONS[reg])
                if (first + count) * bs > ln:
                    return bytes([ST_TOO_LARGE])
                self._bulk = {"off": off, "first": first, "count": count, "bs": bs, "done": 0, "buf": b"",
                              "failed": False, "hashes": [hashes[i * 32:(i + 1) * 32] for i in range(count)]}
                return bytes([ST_OK])
            if op in (OP_WRITE, OP_COPY):
                if op == OP_WRITE:  # slot u8, block u32, data (≤ one block)
                    reg, block = struct.unpack(">BI", args[:5])
                    payload = args[5:]
                else:  # src region u8, dst slot u8, block u32, count u16: copy within the flash
                    src, reg, block, count = struct.unpack(">BBIH", args[:8])
                if REGIONS[reg] not in self._free_regions():
                    return bytes([ST_PROTECTED])  # never a live or kept region
                off, ln = self.region(REGIONS[reg])
                if op == OP_WRITE:
                    if len(payload) > bs or block * bs + len(payload) > ln:
                        return bytes([ST_TOO_LARGE])
                    self.flash.write(off + block * bs, payload)
                    return bytes([ST_OK])
                soff, sln = self.region(REGIONS[src])
                if count > 256 or (block + count) * bs > min(ln, sln):
                    return bytes([ST_BAD_REQUEST])
                self.flash.copy(off + block * bs, soff + block * bs, count * bs)   # a remap (flash.py)
                return bytes([ST_OK])
            if op == OP_DIGEST:  # region u8, length u64
                reg, length = struct.unpack(">BQ", args[:9])
                off, ln = self.region(REGIONS[reg])
                if length > ln:
                    return bytes([ST_TOO_LARGE])
                return bytes([ST_OK]) + self._digest(off, length)
            if op == OP_SWITCH:  # partition u8, slot u8, length u64, sha256[32], version (UTF-8)
                part, reg, length = struct.unpack(">BBQ", args[:10])
                digest, version = args[10:42], args[42:].decode()
                part_name, slot = PARTS[part], REGIONS[reg]
                if slot not in self._free_regions() and slot != self.meta["previous"].get(part_name):
                    return bytes([ST_PROTECTED])   # a free region, or the kept image (the revert of a switch)
                off, ln = self.region(slot)
                if length > ln or (part_name == "disk" and length != self.model.flash.disk_bytes):
                    return bytes([ST_TOO_LARGE])
                if self._digest(off, length) != digest:
                    return bytes([ST_VERIFY])
                meta = json.loads(json.dumps(self.meta))
                meta["previous"][part_name] = meta["map"][part_name]
                meta["map"][part_name] = slot
                meta["images"][part_name] = {"version": version, "length": length, "sha256": digest.hex()}
                self.meta = write_meta(self.flash, meta)  # the one atomic switch
                self.msc.medium_changed(CDROM if part_name == "cdrom" else DISK)
                return bytes([ST_OK])
            if op == OP_ATTEST:  # the installed release, signed by the device key (attestation.py)
                try:
                    manifest, sig, cert = attest(args, model=self.model.id, serial=self.serial, meta=self.meta)
                except AttestRefused:
                    return bytes([ST_NOT_INSTALLED])
                return (bytes([ST_OK]) + struct.pack(">H", len(manifest)) + manifest + struct.pack(">H", len(sig))
                        + sig + cert)
            if op == OP_CONFIRM:  # partition u8: the new image was read back; free the old region
                part_name = PARTS[args[0]]
                if part_name in self.meta["previous"]:
                    meta = json.loads(json.dumps(self.meta))
                    del meta["previous"][part_name]
                    self.meta = write_meta(self.flash, meta)
                return bytes([ST_OK])
        except (struct.error, IndexError, UnicodeDecodeError):
            return bytes([ST_BAD_REQUEST])
        return bytes([ST_BAD_REQUEST])

    # -------------------------------------------------------------- DFU 1.1
    def _dfu_status(self) -> bytes:
        return bytes([self._dfu["status"], 0, 0, 0, self._dfu["state"], 0])

    def _dfu_control(self, req: int, value: int, data: bytes | None, length: int) -> bytes | None:
        if self.dfu_fault is not None and (self.dfu_fault[0] == "stall" or data is None):
            kind, n = self.dfu_fault
            self.dfu_fault = (kind, n - 1) if n > 1 else None
            if n <= 1:
                if kind == "stall":
                    raise Stall()
                return b"\xde\xad"
        st = self._dfu
        if req == DFU_GETSTATUS:
            return self._dfu_status()
        if req == DFU_GETSTATE:
            return bytes([st["state"]])
        if self.mode == "runtime":
            if req == DFU_DETACH:
                self.detach_requested = True  # bitWillDetach: the token re-enumerates by itself
                return None
            raise Stall()
        if req == DFU_CLRSTATUS:
            st.update(state=DFU_IDLE, status=ERR_OK, received=0)
            return None
        if req == DFU_ABORT:
            st.update(state=DFU_IDLE, received=0)
            if self.meta["firmware"].get("pending"):  # back to the old firmware, still intact in its bank
                meta = json.loads(json.dumps(self.meta))
                meta["firmware"].pop("pending")
                self.meta = write_meta(self.flash, meta)
            return None
        if req != DFU_DNLOAD or st["state"] not in (DFU_IDLE, DFU_DNLOAD_IDLE):
            st.update(state=DFU_ERROR, status=ERR_UNKNOWN)
            raise Stall()
        payload = bytes(data or b"")
        staging = self._staging_bank()
        if payload:
            if st["state"] == DFU_IDLE:
                meta = json.loads(json.dumps(self.meta))
                meta["firmware"]["pending"] = True  # a cut from here on leaves the token in its bootloader
                self.meta = write_meta(self.flash, meta)
                st["received"] = 0
            if st["received"] + len(payload) > FIRMWARE_MAX // 2:
                st.update(state=DFU_ERROR, status=ERR_FILE)
                raise Stall()
            self.flash.write(staging + st["received"], payload)
            st["received"] += len(payload)
            st["state"] = DFU_DNLOAD_IDLE
            return None
        # zero-length DNLOAD: manifest. The bootloader verifies the image before it switches banks.
        blob = self.flash.read(staging, st["received"])
        try:
            image = parse_image(blob, self.model.firmware.signing_public_key)
            check_for(image, self.model, kind="firmware", bootloader=self.meta["bootloader"])
        except ImageError:
            st.update(state=DFU_ERROR, status=ERR_VERIFY)
            return None
        meta = json.loads(json.dumps(self.meta))
        meta["firmware"] = {"version": image.version, "valid": True, "sha256": image.sha256,
                            "bank": 0 if staging == FIRMWARE_OFFSET else 1, "length": st["received"]}
        self.meta = write_meta(self.flash, meta)
        st.update(state=DFU_MANIFEST_WAIT_RESET, received=0)
        return None

    def _staging_bank(self) -> int:
        bank = self.meta["firmware"].get("bank", 0)
        return FIRMWARE_OFFSET + (1 - bank) * (FIRMWARE_MAX // 2)
