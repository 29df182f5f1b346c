"""The chip inside an emulated token is the same ``EmulatedCard`` object pcscd sees through vpcd:
OpenSC reads it through pcscd, the token's CCID carries APDUs to it, and the agent pairs the token
with the chip by the serial the token reports."""
from __future__ import annotations

import struct
import subprocess
import time

import pytest
import usb.core

from agent.devices.usb import UsbTokenBackend
from firmware_profiles.emulator.card import EmulatedCard
from firmware_profiles.emulator.vpcd import VpcdClient, parse_address
from firmware_profiles.model import load_models
from firmware_profiles.usbemu import EmulatedUsbBus, make_token
from tests.support.cardprep import personalize

pytestmark = [pytest.mark.pcscd, pytest.mark.opensc]
OPENSC_CONF = "app default {\n    framework pkcs15 {\n        use_file_caching = false;\n    }\n}\n"


def test_opensc_reads_the_tokens_chip_through_pcscd(tmp_path, pcscd, opensc_tools, token_models):
    model = token_models["cns-token-ccid"]
    card = EmulatedCard(load_models()[model.chip])
    personalize(card, first="GIULIA", last="BIANCHI")
    token = make_token(model, tmp_path / "f.bin", card=card)
    bus = EmulatedUsbBus()
    bus.plug(token)
    host, port = parse_address(pcscd.vpcd_address(0))
    client = VpcdClient(card, host, port).start()
    try:
        assert client.inserted.wait(10)
        conf = tmp_path / "opensc.conf"
        conf.write_text(OPENSC_CONF)
        for _ in range(50):  # pcscd notices the vpcd card on its next poll
            r = subprocess.run(["pkcs15-tool", "-D"], env={**pcscd.env, "OPENSC_CONF": str(conf)},
                               capture_output=True, text=True, timeout=120)
            if "Card not present" not in r.stderr:
                break
            time.sleep(0.2)
        assert r.returncode == 0, r.stderr
        assert "GIULIA BIANCHI" in r.stdout
        [info] = UsbTokenBackend(bus).scan()
        assert info.chip_serial == card.serial  # the pairing key between token and PC/SC reader
        # the OS's CCID driver path: the same object answers (the serial EF read over the token's CCID)
        bus.host_owns_os_interfaces = True
        dev = usb.core.find(backend=bus, idVendor=0x1209)
        for apdu in ("00A4000C023F00", "00A4000C021000", "00A4000C021003"):
            body = bytes.fromhex(apdu)
            dev.write(0x01, struct.pack("<BIBBBBB", 0x6F, len(body), 0, 0, 0, 0, 0) + body)
            assert bytes(dev.read(0x82, 512))[-2:] == b"\x90\x00"
        body = bytes.fromhex("00B0000010")
        dev.write(0x01, struct.pack("<BIBBBBB", 0x6F, len(body), 0, 0, 0, 0, 0) + body)
        assert bytes(dev.read(0x82, 512))[10:-2].decode().rstrip("\0") == card.serial
    finally:
        client.stop()
