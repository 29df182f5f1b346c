"""Issue 9 item 1: a personalization is bound to its holder, and a wrong PIN changes nothing on the card.

Real daemon (mTLS, embedded CA), emulated card in process."""
from __future__ import annotations

import asyncio

import pytest
from cryptography import x509

from agent.card.cns import CnsSession
from agent.card.errors import CardRemovedError, WrongPinError
from agent.card.issuer import IssuerSession
from agent.ops.errors import PreconditionError
from agent.ops.holder import Codes, HolderRecord
from agent.ops.journal import Journal
from agent.ops.personalize import Personalizer
from agent.uplink.client import PersonalizerClient
from agent.uplink.card_admin import CardAdminClient
from firmware_profiles.emulator import EmulatedCard
from tests.support.emulated import EmulatedTransport
from tests.ops.test_personalize import HOLDER, MODELS, REQUESTER, codes_for, connect_to

OTHER = HolderRecord(codice_fiscale="BNCLCU85T45F205C", given_name="Lucia", surname="Bianchi",
                     birth_date="1985-12-05", sex="F", birth_town="MILANO", issuer="CCIAA di Roma")
MODEL = MODELS["infocamere-cns-2048"]


async def run(station, journal_path, card, holder, codes):
    journal = await Journal.open(journal_path)
    try:
        async with PersonalizerClient(station) as uplink:
            p = Personalizer(journal=journal, uplink=uplink, requester=REQUESTER,
                             card_admin=CardAdminClient(uplink).for_operation("personalize", REQUESTER))
            return await p.start(connect=connect_to(card), reader="in-process", model=MODEL, holder=holder,
                                 codes=codes)
    finally:
        await journal.close()


async def open_ops(journal_path):
    journal = await Journal.open(journal_path)
    try:
        return await journal.open_operations()
    finally:
        await journal.close()


def _card_view(card):
    card.power_off()
    card.power_on()
    cns = CnsSession(EmulatedTransport(card), MODEL)
    return cns, IssuerSession(cns, MODEL)


def test_wrong_pin_uses_one_try_and_changes_nothing_then_another_holder_gets_their_own(station, tmp_path):
    card = EmulatedCard(MODEL)
    right = codes_for(MODEL)
    wrong = Codes("1" * len(right.pin) if right.pin != "1" * len(right.pin) else "2" * len(right.pin))
    with pytest.raises(WrongPinError):
        asyncio.run(run(station, tmp_path / "j.db", card, HOLDER, wrong))
    cns, issuer = _card_view(card)
    assert cns.pin_tries_left("CNS0") == MODEL.pin_policy.pin_tries - 1    # one try, not more
    assert all(issuer.read_public_key(ks.key_ref) is None for ks in MODEL.keysets)   # no key generated
    assert all(issuer.read_ef(ks.cert_path) is None for ks in MODEL.keysets)
    assert asyncio.run(open_ops(tmp_path / "j.db")) == []                  # nothing left open
    # the operator retries with the right PIN, for another holder: the certificates name that holder
    out = asyncio.run(run(station, tmp_path / "j.db", card, OTHER, right))
    assert out.state == "done", out.message
    for der in out.certificates.values():
        assert "BNCLCU85T45F205C" in x509.load_der_x509_certificate(der).subject.rfc4514_string()
    assert out.holder_label == "LUCIA BIANCHI"


def test_open_operation_for_holder_a_refuses_holder_b_and_resumes_for_a(station, tmp_path):
    card = EmulatedCard(MODEL, faults=["drop:ins=2A,nth=1"])   # pulled while signing the first CSR
    codes = codes_for(MODEL)
    with pytest.raises(CardRemovedError):
        asyncio.run(run(station, tmp_path / "j.db", card, HOLDER, codes))
    card.power_on()
    [op] = asyncio.run(open_ops(tmp_path / "j.db"))
    with pytest.raises(PreconditionError) as ei:
        asyncio.run(run(station, tmp_path / "j.db", card, OTHER, codes))
    msg = str(ei.value)
    assert op.op_id in msg and "RSSMRA80A01H501U" in msg and "MARIO ROSSI" in msg
    assert f"cns-agent operations finish {op.op_id}" in msg and f"discard {op.op_id}" in msg
    _, issuer = _card_view(card)
    assert all(issuer.read_ef(ks.cert_path) is None for ks in MODEL.keysets)   # nothing issued or written
    [still] = asyncio.run(open_ops(tmp_path / "j.db"))
    assert still.op_id == op.op_id and still.data["holder"] == HOLDER.as_dict()
    out = asyncio.run(run(station, tmp_path / "j.db", card, HOLDER, codes))   # the same holder resumes it
    assert out.state == "done" and out.op_id == op.op_id and out.holder_label == "MARIO ROSSI"
