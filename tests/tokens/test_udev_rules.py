"""The shipped udev rule gives the logged-in user every token model's USB node, in both modes.

Without it a Linux agent (no admin) cannot open the management or DFU interface; a model added to
``firmware_profiles/tokens`` without regenerating the file would leave its tokens unreachable there.
"""
from __future__ import annotations

import dataclasses
import re

from firmware_profiles.usbtoken import load_token_models
from firmware_profiles.usbtoken.udev import SHIPPED, udev_rules

# udev(7): a rule is comma-separated KEY[{attr}] OP "value" pairs on one line; "#" starts a comment only
# at the start of a line (a trailing "# ..." is an invalid key/value pair, and the rule is dropped).
_PAIR = re.compile(r'^(?P<key>[A-Z]+)(\{(?P<attr>[A-Za-z_]+)\})?(?P<op>==|!=|\+=|=|:=)"(?P<value>[^"]*)"$')


def _rules(text: str) -> list[dict[str, str]]:
    rules = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.startswith("#"):
            continue
        pairs = {}
        for part in line.split(", "):
            m = _PAIR.match(part)
            assert m, f"line {n}: {part!r} is not a udev key/value pair"
            pairs[m["key"] + (f"{{{m['attr']}}}" if m["attr"] else "")] = m["op"] + m["value"]
        rules.append(pairs)
    return rules


def test_the_shipped_file_is_the_one_generated_from_the_models():
    assert SHIPPED.read_text() == udev_rules(load_token_models().values()), (
        "packaging/linux/70-cns-tokens.rules is stale: run python -m firmware_profiles.usbtoken.udev")


def test_every_model_in_both_modes_is_tagged_uaccess_on_its_usb_device_node():
    rules = _rules(SHIPPED.read_text())
    usb = {(r["ATTR{idVendor}"], r["ATTR{idProduct}"]) for r in rules
           if r.get("SUBSYSTEM") == "==usb" and r.get("ENV{DEVTYPE}") == "==usb_device"
           and r.get("TAG") == "+=uaccess"}
    for m in load_token_models().values():
        for pid in (m.usb.runtime_product_id, m.usb.bootloader_product_id):
            assert (f"=={m.usb.vendor_id:04x}", f"=={pid:04x}") in usb, (m.id, hex(pid))
        hidraw = [r for r in rules if r.get("SUBSYSTEM") == "==hidraw"
                  and r.get("ATTRS{idProduct}") == f"=={m.usb.runtime_product_id:04x}"]
        assert bool(hidraw) == (m.reader == "hid"), m.id
    assert all(set(r) <= {"SUBSYSTEM", "ENV{DEVTYPE}", "ATTR{idVendor}", "ATTR{idProduct}",
                          "ATTRS{idVendor}", "ATTRS{idProduct}", "TAG"} for r in rules)   # grants nothing else


def test_a_new_model_gets_its_own_rules():
    m = next(iter(load_token_models().values()))
    new = dataclasses.replace(m, id="zz-new", usb=dataclasses.replace(m.usb, runtime_product_id=0xC5F1,
                                                                        bootloader_product_id=0xC5F2))
    text = udev_rules([m, new])
    products = {r["ATTR{idProduct}"] for r in _rules(text) if "ATTR{idProduct}" in r}
    assert {"==c5f1", "==c5f2"} <= products
    assert text != SHIPPED.read_text()
