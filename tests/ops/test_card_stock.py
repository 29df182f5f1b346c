"""A blank card is personalized only from the stock central IT loaded (issue 12 item 2), with the production
default of ``[card_admin] unlisted_blank_cards`` ("refuse"; only TEST deployments write "allow").

What the operator sees: a blank card of no loaded batch is refused before anything is journaled, in one line
naming the card and the ``cnsctl cards load-batch`` central IT must run, the card unchanged; once central IT
has loaded the batch, the same card at the same station personalizes.
"""
from __future__ import annotations

import asyncio
import os
import re
import subprocess

import pytest

from agent.ops.errors import PreconditionError
from agent.ops.journal import Journal
from firmware_profiles.emulator import EmulatedCard
from personalizer import deploy
from tests.ops.conftest import station_config_for
from tests.ops.test_personalize import MODELS, codes_for, personalize
from tests.personalizer import helpers
from tests.personalizer.helpers import VENV_BIN

MODEL = MODELS["infocamere-cns-2048"]


@pytest.fixture(scope="module")
def production_stock(tmp_path_factory):
    dep = deploy.init_deployment(tmp_path_factory.mktemp("stock") / "cns", listen="127.0.0.1:0")
    text = dep.server_config.read_text()
    assert 'unlisted_blank_cards = "allow"' in text       # what TEST deployments write
    dep.server_config.write_text(text.replace('unlisted_blank_cards = "allow"\n', ""))
    daemon = helpers.DaemonProcess(dep.server_config)
    try:
        admin = dep.admin_config.with_name("admin-stock-test.toml")
        admin.write_text(re.sub(r'primary = "([^"]*):\d+"', rf'primary = "\g<1>:{daemon.port}"',
                                dep.admin_config.read_text()))
        yield station_config_for(dep, daemon.port), admin
    finally:
        daemon.stop()


def _open_operations(path):
    async def go():
        j = await Journal.open(path)
        try:
            return await j.open_operations()
        finally:
            await j.close()
    return asyncio.run(go())


def test_a_blank_card_of_no_loaded_batch_is_refused_until_central_it_loads_it(production_stock, tmp_path):
    station, admin = production_stock
    card = EmulatedCard(MODEL, serial="ICMRY00000000007")     # keyed with its own key, in no batch
    before = card.snapshot()
    with pytest.raises(PreconditionError) as err:
        asyncio.run(personalize(station, tmp_path / "j.db", card, MODEL, codes_for(MODEL)))
    msg = str(err.value)
    assert "ICMRY00000000007" in msg and "cnsctl cards load-batch" in msg and "--chamber RM" in msg, msg
    assert "\n" not in msg and "FAILED_PRECONDITION" not in msg and "not changed" in msg, msg
    assert card.snapshot() == before and _open_operations(tmp_path / "j.db") == []

    key = tmp_path / "batch.key"
    key.write_text(os.urandom(16).hex())
    key.chmod(0o600)
    r = subprocess.run([str(VENV_BIN / "cnsctl"), "--config", str(admin), "cards", "load-batch", "--batch",
                        "RM-2026-Y1", "--chamber", "RM", "--model", MODEL.id, "--first", "ICMRY00000000000",
                        "--last", "ICMRY00000000099", "--key-file", str(key)], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0, r.stderr
    out = asyncio.run(personalize(station, tmp_path / "j.db", card, MODEL, codes_for(MODEL)))
    assert out.state == "done" and out.test_signatures, out.message
