"""The emulated composite token as a host sees it through pyusb (pure-Python backend)."""
from __future__ import annotations

import errno
import hashlib
import os
import struct

import pytest
import usb.core

from firmware_profiles.model import load_models
from firmware_profiles.usbemu import EmulatedUsbBus, build_cdrom_image, make_token
from tests.tokens.bot import read10, scsi, sense, write10
from tests.tokens.conftest import find


@pytest.fixture(autouse=True)
def _as_the_os(bus):
    bus.host_owns_os_interfaces = True  # these tests play the OS's mass-storage and CCID drivers


def _eps(dev, role_class):
    intf = next(i for i in dev.get_active_configuration() if i.bInterfaceClass == role_class)
    out = next(e.bEndpointAddress for e in intf if not e.bEndpointAddress & 0x80 and e.bmAttributes == 2)
    inn = next(e.bEndpointAddress for e in intf if e.bEndpointAddress & 0x80 and e.bmAttributes == 2)
    return out, inn


def test_descriptors_strings_and_class_descriptors(token, bus, model):
    dev = find(bus, idVendor=0x1209, idProduct=model.usb.runtime_product_id)
    assert dev is not None
    assert dev.serial_number == token.serial and dev.serial_number.startswith(model.serial_prefix)
    assert dev.product == model.usb.product and dev.manufacturer == model.usb.manufacturer
    assert dev.bcdDevice == 0x0120 if model.id == "cns-token-ccid" else 0x0201
    assert dev.speed == (3 if model.link_speed == "high" else 2)
    classes = {i.bInterfaceClass: i for i in dev.get_active_configuration()}
    assert 0x08 in classes and (classes[0x08].bInterfaceSubClass, classes[0x08].bInterfaceProtocol) == (6, 0x50)
    dfu = classes[0xFE]
    assert (dfu.bInterfaceSubClass, dfu.bInterfaceProtocol) == (1, 1)
    fd = bytes(dfu.extra_descriptors)
    assert len(fd) == 9 and fd[1] == 0x21 and struct.unpack("<H", fd[7:9])[0] == 0x0110
    if model.reader == "ccid":
        ccid = bytes(classes[0x0B].extra_descriptors)
        assert len(ccid) == 54 and ccid[0] == 54 and ccid[1] == 0x21
        assert struct.unpack("<I", ccid[40:44])[0] & 0x00070000 == 0x00020000  # short APDU exchange
        assert 0xFF in classes  # the vendor management interface
        eps = [(e.bEndpointAddress, e.bmAttributes, e.wMaxPacketSize) for e in classes[0xFF]]
        assert eps == [(0x06, 2, 512)]  # its bulk OUT endpoint: partition image data (SCHEMA.md §10)
    else:
        assert 0x03 in classes


def _ccid_xfr(dev, mtype: int, body: bytes = b"", seq: int = 0) -> bytes:
    dev.write(0x01, struct.pack("<BIBBBBB", mtype, len(body), 0, seq, 0, 0, 0) + body)
    resp = bytes(dev.read(0x82, 512))
    assert resp[0] in (0x80, 0x81) and resp[6] == seq
    return resp


def _hid_xfr(dev, mtype: int, body: bytes = b"") -> bytes:
    msg = struct.pack("<BIBBBBB", mtype, len(body), 0, 0, 0, 0, 0) + body
    chunks = [msg[i:i + 63] for i in range(0, len(msg), 63)]
    for i, c in enumerate(chunks):
        dev.write(0x01, bytes([len(c) | (0x80 if i == len(chunks) - 1 else 0)]) + c.ljust(63, b"\0"))
    out = b""
    while True:
        r = bytes(dev.read(0x81, 64))
        out += r[1:1 + (r[0] & 0x3F)]
        if r[0] & 0x80:
            return out


def test_reader_carries_apdus_to_the_chip(token, bus, model):
    dev = find(bus, idVendor=0x1209)
    xfr = _ccid_xfr if model.reader == "ccid" else _hid_xfr
    atr = xfr(dev, 0x62)[10:]
    assert atr == load_models()[model.chip].atr
    # SELECT the MF, then the serial EF (3F00/1000/1003) and READ BINARY: the chip's own serial
    assert xfr(dev, 0x6F, bytes.fromhex("00A4000C023F00"))[-2:] == b"\x90\x00"
    assert xfr(dev, 0x6F, bytes.fromhex("00A4000C021000"))[-2:] == b"\x90\x00"
    assert xfr(dev, 0x6F, bytes.fromhex("00A4000C021003"))[-2:] == b"\x90\x00"
    r = xfr(dev, 0x6F, bytes.fromhex("00B0000010"))
    assert r[-2:] == b"\x90\x00" and r[10:-2].decode().rstrip("\0") == token.card.serial


def test_mass_storage_cdrom_is_iso9660_read_only_and_disk_is_writable(token, bus):
    dev = find(bus, idVendor=0x1209)
    out, inn = _eps(dev, 0x08)
    assert bytes(dev.ctrl_transfer(0xA1, 0xFE, 0, 1 if token.model.reader == "ccid" else 1, 1)) == b"\x01"
    st, inq = scsi(dev, out, inn, 0, bytes([0x12, 0, 0, 0, 36, 0]), data_in=36)
    assert st == 0 and inq[0] == 0x05  # CD-ROM
    st, cap = scsi(dev, out, inn, 0, bytes([0x25] + [0] * 9), data_in=8)
    last, blen = struct.unpack(">II", cap)
    assert blen == 2048
    st, pvd = scsi(dev, out, inn, 0, read10(16, 1), data_in=2048)
    assert st == 0 and pvd[1:6] == b"CD001"
    _, img = scsi(dev, out, inn, 0, read10(0, last + 1), data_in=(last + 1) * 2048)
    assert hashlib.sha256(img).hexdigest() == token.meta["images"]["cdrom"]["sha256"]
    st, _ = scsi(dev, out, inn, 0, write10(0, 1), data_out=b"x" * 2048)
    assert st == 1 and sense(dev, out, inn, 0) == (0x07, 0x27, 0x00)
    assert scsi(dev, out, inn, 0, read10(16, 1), data_in=2048)[1] == pvd  # nothing written
    # the disk LUN: type 00, 512-byte blocks, writable
    st, inq = scsi(dev, out, inn, 1, bytes([0x12, 0, 0, 0, 36, 0]), data_in=36)
    assert inq[0] == 0x00
    _, cap = scsi(dev, out, inn, 1, bytes([0x25] + [0] * 9), data_in=8)
    assert struct.unpack(">II", cap)[1] == 512
    assert scsi(dev, out, inn, 1, write10(7, 2), data_out=b"D" * 1024)[0] == 0
    assert scsi(dev, out, inn, 1, read10(7, 2), data_in=1024)[1] == b"D" * 1024
    # past the end: ILLEGAL REQUEST / LBA OUT OF RANGE
    assert scsi(dev, out, inn, 0, read10(last + 1, 1), data_in=2048)[0] == 1
    assert sense(dev, out, inn, 0) == (0x05, 0x21, 0x00)


def test_flash_is_a_sparse_file(token, tmp_path):
    st = os.stat(tmp_path / "flash.bin")
    assert st.st_size == 1 << 30
    assert st.st_blocks * 512 < 4 << 20  # a 1 GiB token costs a few MiB of disk at most


def test_unplug_makes_old_handles_fail_with_enodev(token, bus):
    dev = find(bus, idVendor=0x1209)
    out, inn = _eps(dev, 0x08)
    bus.unplug(token)
    with pytest.raises(usb.core.USBError) as ei:
        scsi(dev, out, inn, 0, bytes(6))
    assert ei.value.errno == errno.ENODEV
    assert find(bus, idVendor=0x1209) is None
    bus.plug(token)
    assert find(bus, idVendor=0x1209).serial_number == token.serial
    assert [e for e, _ in bus.events] == ["arrived", "left", "arrived"]


def test_bad_request_stalls_with_epipe(token, bus):
    dev = find(bus, idVendor=0x1209)
    with pytest.raises(usb.core.USBError) as ei:
        dev.ctrl_transfer(0x21, 0x77, 0, 1, b"")  # unknown class request to mass storage
    assert ei.value.errno == errno.EPIPE


def test_dfu_detach_reenumerates_with_bootloader_ids(token, bus, model):
    dev = find(bus, idVendor=0x1209)
    dfu = next(i for i in dev.get_active_configuration() if i.bInterfaceClass == 0xFE).bInterfaceNumber
    old_address = dev.address
    dev.ctrl_transfer(0x21, 0x00, 1000, dfu, b"")  # DFU_DETACH
    with pytest.raises(usb.core.USBError) as ei:
        dev.ctrl_transfer(0xA1, 0x03, 0, dfu, 6)
    assert ei.value.errno == errno.ENODEV
    boot = find(bus, idVendor=0x1209)
    assert boot.idProduct == model.usb.bootloader_product_id and boot.address != old_address
    intf = boot.get_active_configuration()[(0, 0)]
    assert (intf.bInterfaceClass, intf.bInterfaceSubClass, intf.bInterfaceProtocol) == (0xFE, 1, 2)
    assert bytes(boot.ctrl_transfer(0xA1, 0x03, 0, 0, 6))[4] == 2  # dfuIDLE
    boot.reset()  # no download started: back to runtime with the old firmware
    assert find(bus, idVendor=0x1209).idProduct == model.usb.runtime_product_id


def test_a_tear_mid_write_unplugs_the_token(token, bus):
    dev = find(bus, idVendor=0x1209)
    out, inn = _eps(dev, 0x08)
    token.flash.cut_after(700)
    with pytest.raises(usb.core.USBError) as ei:
        scsi(dev, out, inn, 1, write10(0, 2), data_out=b"Z" * 1024)
    assert ei.value.errno == errno.ENODEV
    bus.replug(token)
    dev = find(bus, idVendor=0x1209)
    _, data = scsi(dev, out, inn, 1, read10(0, 2), data_in=1024)
    assert data == b"Z" * 700 + b"\0" * 324  # what reached flash before the cut, and no more


def test_custom_cdrom_image_is_served(tmp_path, token_models):
    iso = build_cdrom_image({"SIGN.EXE": b"MZ" + b"\0" * 5000})
    t = make_token(token_models["cns-token-ccid"], tmp_path / "f.bin", cdrom=iso)
    b = EmulatedUsbBus()
    b.host_owns_os_interfaces = True
    b.plug(t)
    dev = find(b, idVendor=0x1209)
    _, cap = scsi(dev, 0x04, 0x85, 0, bytes([0x25] + [0] * 9), data_in=8)
    assert (struct.unpack(">I", cap[:4])[0] + 1) * 2048 == len(iso)


def test_windows_binds_winusb_to_the_management_interface_by_itself(tmp_path, token_models, bus):
    """Microsoft OS 2.0: bcdUSB 2.10, a BOS platform capability naming the vendor request, and a descriptor set
    giving the management interface (2) only the WINUSB compatible id and our interface GUID (no admin, no
    driver package). The USB/IP export serves the same bytes."""
    from firmware_profiles.usbemu import descriptors as d
    from firmware_profiles.usbemu.usbip_export import UsbipExport
    t = make_token(token_models["cns-token-ccid"], tmp_path / "f.bin")
    bus.plug(t)
    dev = find(bus, idVendor=0x1209)
    assert dev.bcdUSB == 0x0210
    head = bytes(dev.ctrl_transfer(0x80, 6, 0x0F00, 0, 5))
    assert head[1] == 0x0F
    bos = bytes(dev.ctrl_transfer(0x80, 6, 0x0F00, 0, struct.unpack("<H", head[2:4])[0]))
    cap = bos[5:]
    assert cap[:3] == bytes([28, 0x10, 0x05])
    assert cap[4:20] == bytes.fromhex("DF60DDD88945C74C9CD2659D9E648A9F")   # {D8DD60DF-4589-4CC7-9CD2-659D9E648A9F}
    set_len, vendor_code = struct.unpack("<HB", cap[24:27])
    msos = bytes(dev.ctrl_transfer(0xC0, vendor_code, 0, 7, set_len))
    assert len(msos) == set_len
    function = msos.index(struct.pack("<HHB", 8, 0x0002, 2))            # function subset: first interface 2
    assert msos.index(b"WINUSB\0\0") > function and msos.count(b"WINUSB") == 1
    assert d.MGMT_INTERFACE_GUID.encode("utf-16-le") in msos
    export = UsbipExport(t, port=0)
    assert export.dev.bos_bytes() == bos and export.dev._msos2_bytes() == msos


def test_the_hid_model_needs_no_winusb(tmp_path, token_models, bus):
    t = make_token(token_models["cns-token-hid"], tmp_path / "f.bin")
    bus.plug(t)
    dev = find(bus, idVendor=0x1209)
    assert dev.bcdUSB == 0x0200
    import usb.core
    with pytest.raises(usb.core.USBError):
        dev.ctrl_transfer(0x80, 6, 0x0F00, 0, 5)
