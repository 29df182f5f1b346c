"""Issue 9 item 1: a personalization is bound to its holder, and a wrong PIN changes nothing on the card.

Ops logic, so no daemon process (issue 11 item 2): the in-memory uplink over the real broker, relay,
store and embedded CA (``Daemon.build(serve=False)``), the emulated card in process, the card's
administration through the emulator's software authenticator (a test double of the central key)."""
from __future__ import annotations

import asyncio
import time

import pytest
from cryptography import x509

from agent.card.cns import CnsSession
from agent.card.errors import CardRemovedError, WrongPinError
from agent.card.issuer import IssuerSession
from agent.ops.errors import PreconditionError
from agent.ops.holder import Codes, HolderRecord
from agent.ops.journal import Journal
from agent.ops.personalize import Personalizer
from firmware_profiles.emulator import EmulatedCard
from firmware_profiles.emulator.admin import SoftwareAuthenticator
from personalizer.outbox.windows import ServiceCalendar
from tests.broker.conftest import Env
from tests.support.emulated import EmulatedTransport
from tests.ops.test_personalize import HOLDER, MODELS, REQUESTER, codes_for, connect_to
from tests.support.uplink import InMemoryUplink

OTHER = HolderRecord(codice_fiscale="BNCLCU85T45F205C", given_name="Lucia", surname="Bianchi",
                     birth_date="1985-12-05", sex="F", birth_town="MILANO", issuer="CCIAA di Roma")
MODEL = MODELS["infocamere-cns-2048"]


@pytest.fixture
def deployment(inmemory_deployment):
    return inmemory_deployment


@pytest.fixture
def personalizer(deployment, tmp_path):
    """``run(card, holder, codes)``: one personalization through the in-memory personalizer (its store
    kept in ``tmp_path`` across runs, as a daemon's database is)."""
    def run(card, holder, codes):
        async def go():
            async with Env(deployment, tmp_path / "personalizer", time.time,
                           ServiceCalendar(always_open=True), answer_wait=10.0) as env:
                await env.relay.start()
                uplink = InMemoryUplink(env.broker, relay=env.relay)
                journal = await Journal.open(tmp_path / "j.db")
                try:
                    p = Personalizer(journal=journal, uplink=uplink, requester=REQUESTER,
                                     card_admin=SoftwareAuthenticator(MODEL), watch_timeout_s=20)
                    return await p.start(connect=connect_to(card), reader="in-process", model=MODEL,
                                         holder=holder, codes=codes)
                finally:
                    await journal.close()
        return asyncio.run(go())
    (tmp_path / "personalizer").mkdir()
    return run


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


def test_wrong_pin_uses_one_try_and_changes_nothing_then_another_holder_gets_their_own(personalizer, tmp_path):
    card = EmulatedCard(MODEL)
    right = codes_for(MODEL)
    wrong = Codes("1" * len(right.pin) if right.pin != "1" * len(right.pin) else "2" * len(right.pin))
    with pytest.raises(WrongPinError):
        personalizer(card, HOLDER, wrong)
    cns, issuer = _card_view(card)
    assert cns.pin_tries_left("CNS0") == MODEL.pin_policy.pin_tries - 1    # one try, not more
    assert all(issuer.read_public_key(ks.key_ref) is None for ks in MODEL.keysets)   # no key generated
    assert all(issuer.read_ef(ks.cert_path) is None for ks in MODEL.keysets)
    assert asyncio.run(open_ops(tmp_path / "j.db")) == []                  # nothing left open
    # the operator retries with the right PIN, for another holder: the certificates name that holder
    out = personalizer(card, OTHER, right)
    assert out.state == "done", out.message
    for der in out.certificates.values():
        assert "BNCLCU85T45F205C" in x509.load_der_x509_certificate(der).subject.rfc4514_string()
    assert out.holder_label == "LUCIA BIANCHI"


def test_open_operation_for_holder_a_refuses_holder_b_and_resumes_for_a(personalizer, tmp_path):
    card = EmulatedCard(MODEL, faults=["drop:ins=2A,nth=1"])   # pulled while signing the first CSR
    codes = codes_for(MODEL)
    with pytest.raises(CardRemovedError):
        personalizer(card, HOLDER, codes)
    card.power_on()
    [op] = asyncio.run(open_ops(tmp_path / "j.db"))
    with pytest.raises(PreconditionError) as ei:
        personalizer(card, OTHER, codes)
    msg = str(ei.value)
    assert op.op_id in msg and "RSSMRA80A01H501U" in msg and "MARIO ROSSI" in msg
    assert f"cns-agent operations finish {op.op_id}" in msg and f"discard {op.op_id}" in msg
    _, issuer = _card_view(card)
    assert all(issuer.read_ef(ks.cert_path) is None for ks in MODEL.keysets)   # nothing issued or written
    [still] = asyncio.run(open_ops(tmp_path / "j.db"))
    assert still.op_id == op.op_id and still.data["holder"] == HOLDER.as_dict()
    out = personalizer(card, HOLDER, codes)   # the same holder resumes it
    assert out.state == "done" and out.op_id == op.op_id and out.holder_label == "MARIO ROSSI"
