"""Token models load, and every schema break is a ProfileError naming file, key and expectation."""
from __future__ import annotations

from pathlib import Path

import pytest

from firmware_profiles import ProfileError
from firmware_profiles.usbtoken import TOKENS_DIR, load_token_model, load_token_models
from firmware_profiles.usbtoken.model import bcd_device, version_from_bcd

CCID = TOKENS_DIR / "cns-token-ccid.toml"


def test_shipped_models_cover_both_readers_with_the_open_vendor_id():
    models = load_token_models()
    assert {m.reader for m in models.values()} == {"ccid", "hid"}
    for m in models.values():
        assert m.usb.vendor_id == 0x1209
        assert m.usb.runtime_product_id != m.usb.bootloader_product_id
        assert m.flash.reserved_bytes - 2 * m.flash.slot_bytes >= 100_000_000
        assert m.flash.size_bytes >= 1 << 30
        a_off, a_len = m.flash.region("A")
        b_off, _ = m.flash.region("B")
        assert b_off == a_off + a_len and b_off + a_len <= m.flash.size_bytes


def _variant(tmp_path: Path, old: str, new: str) -> Path:
    text = CCID.read_text()
    assert old in text
    p = tmp_path / "bad.toml"
    p.write_text(text.replace(old, new, 1))
    return p


@pytest.mark.parametrize("old,new,key,expected", [
    ('reader = "ccid"', 'reader = "usb"', "reader", 'one of "ccid", "hid"'),
    ('chip = "infocamere-cns-2048"', 'chip = "nosuch"', "chip", "card model in cards/"),
    ("bootloader_product_id = 0xC502", "bootloader_product_id = 0xC501", "usb.bootloader_product_id",
     "other than runtime_product_id"),
    ("slot_mib = 200", "slot_mib = 250", "partitions.slot_mib", "≥ 100 MB"),
    ("slot_mib = 200", "slot_mib = 100", "partitions.slot_mib", "at least as large as the CD-ROM and the disk"),
    ("reserved_mib = 512", "reserved_mib = 900", "partitions.reserved_mib", "fit the flash"),
    ('bootloader = "1.0.0"', 'bootloader = "0.9.0"', "firmware.bootloader", "at least min_bootloader"),
    ('version = "1.2.0"', 'version = "1.2"', "firmware.version", "a version like 1.2.3"),
    ("block_bytes = 4096", "block_bytes = 3000", "flash.block_bytes", "multiple of 2048"),
    ('link_speed = "high"', 'link_speed = "super"', "link_speed", '"full", "high"'),
    ("[link]", "[linkx]", "link", "a table (missing)"),
    ("frame_us = 125", "frame_us = 1000", "link.frame_us", "125 (the length of a high-speed microframe"),
    ("bulk_packets_per_frame = 13", "bulk_packets_per_frame = 14", "link.bulk_packets_per_frame",
     "1..13: bulk packets of 512 bytes that fit a high-speed microframe with their 55-byte overhead (USB 2.0 Table 5-10)"),
    ("bulk_packet_bytes = 512", "bulk_packet_bytes = 64", "link.bulk_packet_bytes", "512 at high speed (USB 2.0 §5.8.3)"),
    ("control_packets_per_frame = 31", "control_packets_per_frame = 32", "link.control_packets_per_frame",
     "USB 2.0 Table 5-3"),
    ("bulk_transfer_overhead_us = 125", "bulk_transfer_overhead_us = -1", "link.bulk_transfer_overhead_us",
     "microseconds 0..100000"),
    ('link_speed = "high"', 'link_speed = "full"', "link.frame_us", "1000 (the length of a full-speed frame"),
])
def test_schema_breaks_name_file_key_and_expectation(tmp_path, old, new, key, expected):
    with pytest.raises(ProfileError) as ei:
        load_token_model(_variant(tmp_path, old, new))
    err = ei.value
    assert err.key == key and expected in err.expected
    assert str(err).startswith(str(tmp_path / "bad.toml") + ": " + key + ": expected")


def test_two_models_may_not_share_usb_ids(tmp_path):
    (tmp_path / "a.toml").write_text(CCID.read_text())
    (tmp_path / "b.toml").write_text(CCID.read_text().replace('id = "cns-token-ccid"', 'id = "other"'))
    with pytest.raises(ProfileError, match="usb.runtime_product_id: expected a vendor/product id no other"):
        load_token_models(tmp_path)


def test_bad_toml_is_one_line_naming_the_file(tmp_path):
    p = tmp_path / "x.toml"
    p.write_text("schema = = 1")
    with pytest.raises(ProfileError, match=r"x.toml: \(file\): expected valid TOML"):
        load_token_model(p)


def test_version_round_trips_through_bcd_device():
    assert bcd_device("1.2.0") == 0x0120
    assert version_from_bcd(bcd_device("12.3.4")) == "12.3.4"
    with pytest.raises(ValueError):
        bcd_device("1.10.0")
