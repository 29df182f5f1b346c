"""``cns-emulator serve --override``: a TEST card that breaks one tender rule, without a catalogue entry."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from firmware_profiles import load_models
from firmware_profiles.emulator import EmulatedCard
from firmware_profiles.emulator import overrides as ov

BIN = Path(sys.executable).parent
MODEL = load_models()["infocamere-cns-2048"]


def test_overrides_change_the_card_not_the_catalogue():
    model, timing = ov.apply(MODEL, MODEL.timing["realistic"],
                             ["sign_seconds.2048=4.5", "pin_tries=2", "pin_length=6", "eeprom_bytes=32768"])
    assert timing.sign_seconds[2048] == 4.5 and MODEL.timing["realistic"].sign_seconds[2048] == 1.4
    assert all(ks.pin_tries == 2 for ks in model.keysets) and MODEL.keysets[0].pin_tries == 3
    assert (model.pin_policy.min_length, model.pin_policy.max_length) == (6, 6)
    assert model.pin_policy.factory_test_pin == "123456"
    card = EmulatedCard(model, timing=timing)
    pins = card.snapshot()["pins"]
    assert {p["max_tries"] for r, p in pins.items() if int(r, 16) in (0x10, 0x1A)} == {2}
    assert card.eeprom_free() < 32768


@pytest.mark.parametrize("spec,says", [
    ("pin_tries", "expected KEY=VALUE"),
    ("pin_tries=three", "expected an integer 1..15"),
    ("sign_seconds.4096=1", "sign_seconds.1024 or sign_seconds.2048"),
    ("pin_length=12", "expected an integer 4..8"),
    ("colour=red", "unknown key 'colour'"),
])
def test_bad_override_is_one_clear_line(spec, says):
    with pytest.raises(ov.OverrideError, match=says):
        ov.apply(MODEL, MODEL.timing["zero"], [spec])
    r = subprocess.run([str(BIN / "cns-emulator"), "serve", "--profile", MODEL.id, "--vpcd", "127.0.0.1:1",
                        "--override", spec], capture_output=True, text=True, timeout=30)
    assert r.returncode == 2 and says in r.stderr and r.stderr.count("\n") <= 1 and "Traceback" not in r.stderr
