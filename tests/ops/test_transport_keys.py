"""Transport keys changed at first use (issue 12 item 3), against the real daemon and its SoftHSM2 token.

Central IT loads a batch's transport key with ``cnsctl cards load-batch`` (key file 0600, never shown
again); a blank card of the batch arriving keyed with it is personalized, its first step replacing the
transport key with the card's own diversified key (wrapped in the token); a card pulled during PUT
KEY is finished on reinsert, never left with an unknown key; a card of another chamber's batch is
refused with the card untouched; a transport-keyed card of no loaded batch gets a clear refusal.
"""
from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess

import pytest

from agent.card.errors import CardRemovedError
from agent.ops.errors import PreconditionError
from agent.ops.journal import Journal
from firmware_profiles.emulator import EmulatedCard, admin
from tests.ops.test_personalize import MODELS, codes_for, personalize, resume
from tests.personalizer.helpers import VENV_BIN

MODEL = MODELS["infocamere-cns-2048"]
RM_KEY, MI_KEY = os.urandom(16), os.urandom(16)


def _cnsctl(cfg, *args):
    return subprocess.run([str(VENV_BIN / "cnsctl"), "--config", str(cfg), *args], capture_output=True, text=True,
                          timeout=60)


@pytest.fixture(scope="module")
def batches(ops_deployment, ops_daemon, tmp_path_factory):
    src = ops_deployment.admin_config
    cfg = src.with_name("admin-transport-test.toml")
    cfg.write_text(re.sub(r'primary = "([^"]*):\d+"', rf'primary = "\g<1>:{ops_daemon.port}"', src.read_text()))
    work = tmp_path_factory.mktemp("batches")
    for batch, chamber, first, last, key in (("RM-2026-T1", "RM", "ICMRT00000000000", "ICMRT00000000099", RM_KEY),
                                             ("MI-2026-T1", "MI", "ICMRU00000000000", "ICMRU00000000099", MI_KEY)):
        key_file = work / f"{batch}.key"
        key_file.write_text(key.hex() + "\n")
        key_file.chmod(0o600)
        r = _cnsctl(cfg, "--json", "cards", "load-batch", "--batch", batch, "--chamber", chamber, "--model",
                    MODEL.id, "--first", first, "--last", last, "--key-file", str(key_file))
        assert r.returncode == 0, r.stderr
    return cfg, work


def test_cnsctl_loads_a_batch_refuses_a_readable_key_file_and_never_shows_a_key(batches):
    cfg, work = batches
    loose = work / "loose.key"
    loose.write_text(RM_KEY.hex())
    loose.chmod(0o644)
    r = _cnsctl(cfg, "cards", "load-batch", "--batch", "X", "--chamber", "RM", "--model", MODEL.id,
                "--first", "ICMRV00000000000", "--last", "ICMRV00000000009", "--key-file", str(loose))
    assert r.returncode == 1 and r.stderr.count("\n") == 1 and "chmod 600" in r.stderr
    r = _cnsctl(cfg, "--json", "cards", "list")
    assert r.returncode == 0, r.stderr
    listed = json.loads(r.stdout)["batches"]
    assert {b["batch"]: b["chamber"] for b in listed} == {"MI-2026-T1": "MI", "RM-2026-T1": "RM"}
    assert RM_KEY.hex() not in r.stdout.lower() and MI_KEY.hex() not in r.stdout.lower()
    again = work / "again.key"
    again.write_text(RM_KEY.hex())
    again.chmod(0o600)
    r = _cnsctl(cfg, "cards", "load-batch", "--batch", "RM-2026-T2", "--chamber", "RM", "--model", MODEL.id,
                "--first", "ICMRT00000000050", "--last", "ICMRT00000000150", "--key-file", str(again))
    assert r.returncode == 1 and "overlap batch RM-2026-T1" in r.stderr


def _auth(card, key) -> int:
    card.power_off()
    card.power_on()
    rnd = card.transmit(bytes.fromhex("0084000010"))[:-2]
    r = card.transmit(bytes([0, 0x82, 0, MODEL.dialect.admin_key_ref, 16]) + admin.cryptogram(key, rnd))
    return int.from_bytes(r[-2:], "big")


def test_the_first_step_replaces_the_transport_key_with_the_cards_own(batches, station, tmp_path):
    card = EmulatedCard(MODEL, serial="ICMRT00000000001", transport_key=RM_KEY)
    out = asyncio.run(personalize(station, tmp_path / "j.db", card, MODEL, codes_for(MODEL)))
    assert out.state == "done" and out.test_signatures, out.message
    assert _auth(card, RM_KEY) & 0xFFF0 == 0x63C0                       # the transport key is gone
    assert _auth(card, admin.card_key(MODEL, card.serial)) == 0x9000     # the card's own key is in force


def test_a_card_pulled_during_put_key_is_finished_on_reinsert(batches, station, tmp_path):
    card = EmulatedCard(MODEL, serial="ICMRT00000000002", transport_key=RM_KEY, faults=["drop:ins=D2"])
    with pytest.raises(CardRemovedError):
        asyncio.run(personalize(station, tmp_path / "j.db", card, MODEL, codes_for(MODEL)))
    card.power_on()    # reinserted
    out = asyncio.run(resume(station, tmp_path / "j.db", card, MODEL, codes_for(MODEL)))
    assert out.state == "done", out.message
    assert _auth(card, admin.card_key(MODEL, card.serial)) == 0x9000


def test_a_card_of_another_chambers_batch_is_refused_and_untouched(batches, station, tmp_path):
    card = EmulatedCard(MODEL, serial="ICMRU00000000001", transport_key=MI_KEY)
    with pytest.raises(PreconditionError) as err:   # before anything is journaled
        asyncio.run(personalize(station, tmp_path / "j.db", card, MODEL, codes_for(MODEL)))
    assert "batch MI-2026-T1 of chamber MI's stock" in str(err.value)
    assert card.snapshot()["keys"] == {} and _auth(card, MI_KEY) == 0x9000   # still its transport key


def test_a_blank_card_of_no_loaded_batch_is_refused_before_anything_is_journaled(batches, station, tmp_path):
    """Issue 12 item 3: the refusal names the card and the cnsctl command, changes nothing on the card and
    leaves no operation in the journal (an open one could neither go forward nor be undone: nothing can
    authenticate to the card until its batch is loaded, and it would block the card's next personalization)."""
    card = EmulatedCard(MODEL, serial="ICMRX00000000001", transport_key=os.urandom(16))
    before = card.snapshot()
    with pytest.raises(PreconditionError) as err:
        asyncio.run(personalize(station, tmp_path / "j.db", card, MODEL, codes_for(MODEL)))
    msg = str(err.value)
    assert "ICMRX00000000001" in msg and "cnsctl cards load-batch" in msg and "\n" not in msg, msg
    assert "FAILED_PRECONDITION" not in msg and "not changed" in msg, msg
    assert card.snapshot() == before

    async def open_ops():
        j = await Journal.open(tmp_path / "j.db")
        try:
            return await j.open_operations()
        finally:
            await j.close()
    assert asyncio.run(open_ops()) == []
