"""No card key on a workstation (issue 12 items 2, 4, 5): the station config names no key file and
personalizes; the card's key never reaches the agent's journal or logs; an unreachable personalizer
means no card administration at all (the operation waits in the journal, the card is untouched), and
the same operation finishes when the personalizer is back."""
from __future__ import annotations

import asyncio
import logging
import re

from agent.ops.errors import UplinkUnavailable
from firmware_profiles.emulator import EmulatedCard, admin
from tests.ops.test_personalize import MODELS, codes_for, personalize, resume

MODEL = MODELS["oberthur-cns-1024"]     # sets the codes at personalization: admin from the first step


def test_a_station_config_without_any_key_file_personalizes(station, tmp_path):
    text = station.source.read_text()
    assert "[cards]" not in text and "admin_keys" not in text and "allow_test" not in text
    card = EmulatedCard(MODEL)
    out = asyncio.run(personalize(station, tmp_path / "j.db", card, MODEL, codes_for(MODEL)))
    assert out.state == "done" and out.test_signatures, out.message


def test_the_cards_key_never_reaches_the_journal_or_the_logs(station, tmp_path, caplog):
    card = EmulatedCard(MODEL)
    key, master = admin.card_key(MODEL, card.serial), MODEL.dialect.admin_test_master_key
    caplog.set_level(logging.DEBUG)
    out = asyncio.run(personalize(station, tmp_path / "j.db", card, MODEL, codes_for(MODEL)))
    assert out.state == "done", out.message
    files = [p.read_bytes() for p in tmp_path.iterdir() if p.name.startswith("j.db")]
    assert files
    logs = caplog.text.encode()
    for secret in (key, master):
        for form in (secret, secret.hex().encode(), secret.hex().upper().encode()):
            assert all(form not in blob for blob in files + [logs])


def test_unreachable_personalizer_administers_nothing_and_the_operation_waits(station, ops_daemon, tmp_path):
    import station_config

    dead = tmp_path / "station.toml"
    dead.write_text(re.sub(r'primary = "([^"]*):\d+"', r'primary = "\g<1>:9"', station.source.read_text())
                    .replace('client_certificate = "', f'client_certificate = "{station.source.parent}/')
                    .replace('client_key = "', f'client_key = "{station.source.parent}/')
                    .replace('trust_anchors = "', f'trust_anchors = "{station.source.parent}/'))
    offline = station_config.load(dead)
    card = EmulatedCard(MODEL)
    blank = card.snapshot()
    try:
        out = asyncio.run(personalize(offline, tmp_path / "j.db", card, MODEL, codes_for(MODEL)))
        assert out.state == "open", out
        message = out.message
    except UplinkUnavailable as exc:
        message = str(exc)
    assert "nothing answers at the personalizer" in message
    after = card.snapshot()
    assert after["keys"] == blank["keys"] == {} and after["pins"] == blank["pins"]   # nothing administered
    out = asyncio.run(resume(station, tmp_path / "j.db", card, MODEL, codes_for(MODEL)))
    assert out.state == "done", out.message


def test_the_retired_key_file_settings_are_refused_saying_what_to_do(station, tmp_path):
    import pytest

    import station_config

    for line in ('admin_keys = "keys.toml"', "allow_test_admin_keys = true"):
        cfg = tmp_path / "station.toml"
        cfg.write_text(station.source.read_text() + f"\n[cards]\n{line}\n")
        with pytest.raises(station_config.StationConfigError) as err:
            station_config.load(cfg)
        assert "no longer read" in str(err.value) and "delete this line" in str(err.value)
        assert "cards." + line.split(" ")[0] in str(err.value)
