"""Operations journaled by the per-operation loops (before the step engine) resume on the engine.

Those journals carry ``_done``, ``_submitted`` and the last step begun (``op.step``), but no
``_begun`` list (personalization). The journal is made so here by removing ``_begun`` from an
operation the engine recorded, as the old loop would have left it after a pulled card.
"""
from __future__ import annotations

import asyncio
import json
import sqlite3

import pytest

from agent.card.cns import CnsSession
from agent.card.errors import CardRemovedError
from agent.card.issuer import IssuerSession
from firmware_profiles.emulator import EmulatedCard
from tests.support.emulated import EmulatedTransport
from tests.ops.test_personalize import MODELS, assert_personalized, codes_for, personalize, resume


def _as_old_loop_left_it(path) -> dict:
    with sqlite3.connect(path) as c:
        [(op_id, raw)] = list(c.execute("SELECT op_id, data FROM operations WHERE state = 'running'"))
        data = json.loads(raw)
        assert "_begun" in data   # the engine keeps it; the old loop did not
        data.pop("_begun")
        c.execute("UPDATE operations SET data = ? WHERE op_id = ?", (json.dumps(data), op_id))
    return data


@pytest.mark.parametrize("ins,nth,forward", [("46", 2, False), ("E0", 1, True)])
def test_an_old_personalization_journal_resumes_without_the_pin(ins, nth, forward, station, ops_deployment, tmp_path):
    model = MODELS["infocamere-cns-2048"]
    card = EmulatedCard(model, faults=[f"drop:ins={ins},nth={nth}"])
    codes = codes_for(model)
    with pytest.raises(CardRemovedError):
        asyncio.run(personalize(station, tmp_path / "j.db", card, model, codes))
    data = _as_old_loop_left_it(tmp_path / "j.db")
    card.power_on()
    out = asyncio.run(resume(station, tmp_path / "j.db", card, model, None))
    if forward:
        assert set(data["_submitted"]) == {ks.name for ks in model.keysets}
        assert out.state == "done", out.message
        assert_personalized(card, model, codes, ops_deployment.issuing_cert.read_bytes())
    else:
        assert out.state == "undone", out.message
        issuer = IssuerSession(CnsSession(EmulatedTransport(card), model), model)
        for ks in model.keysets:   # the key begun when the card was pulled is erased too
            assert issuer.read_ef(ks.cert_path) is None and issuer.read_public_key(ks.key_ref) is None
