"""``cns-agent personalize --registration ID``'s operation (issue 19 item 1): the agent completes a
registration on a blank card; the holder comes from the personalizer and the operation stays bound to it.

Real daemon over mTLS (the agent tests' deployment, embedded CA), emulated cards in process. The IR
registers through the daemon with its own certificate; the station then personalizes with the uplink
reading the registration; a second card for the same registration, an id of the wrong shape, and a
resume with other inputs are refused before anything changes on the card.
"""
from __future__ import annotations

import asyncio

import pytest
from cryptography import x509

from agent.card.errors import CardRemovedError
from agent.ops.errors import PreconditionError
from agent.ops.journal import Journal
from agent.ops.personalize import Personalizer, registration_holder
from agent.uplink.client import PersonalizerClient
from agent.uplink.card_admin import CardAdminClient
from firmware_profiles.emulator import EmulatedCard
from proto.cns.v1 import registrations_pb2 as rpb, registrations_pb2_grpc as rpb_grpc
from tests.ops.test_personalize import HOLDER, MODELS, REQUESTER, codes_for, connect_to
from tests.ops.test_personalize_binding import _card_view, open_ops
from tests.personalizer import helpers
from tests.registrations.support import PDF, holder

MODEL = MODELS["infocamere-cns-2048"]


def _register(deployment, daemon) -> str:
    d = deployment.ir_config.parent
    ir = helpers.ClientCert((d / "client.pem").read_bytes(), (d / "client.key.pem").read_bytes())
    with helpers.channel(daemon.port, deployment.root / "tls", ir) as ch:
        return rpb_grpc.RegistrationsStub(ch).RegisterHolder(rpb.RegisterHolderRequest(
            holder=holder(), form=PDF, sex="M", birth_town="ROMA"), timeout=10).registration_id


async def _personalize(station, journal_path, card, registration_id: str | None, codes, *, plain=None):
    journal = await Journal.open(journal_path)
    try:
        async with PersonalizerClient(station) as uplink:
            p = Personalizer(journal=journal, uplink=uplink, requester=REQUESTER,
                             card_admin=CardAdminClient(uplink).for_operation("personalize", REQUESTER))
            reg, who = (await registration_holder(uplink, registration_id)) if registration_id else (None, plain)
            out = await p.start(connect=connect_to(card), reader="in-process", model=MODEL, holder=who, codes=codes,
                                registration=reg)
            after = (await uplink.get_registration(reg.registration_id)) if reg else None
            return out, after
    finally:
        await journal.close()


def _blank(card) -> bool:
    _, issuer = _card_view(card)
    return all(issuer.read_public_key(ks.key_ref) is None and issuer.read_ef(ks.cert_path) is None
               for ks in MODEL.keysets)


def test_a_registration_is_completed_on_one_blank_card_and_refused_for_a_second(station, ops_deployment,
                                                                                ops_daemon, tmp_path):
    reg_id = _register(ops_deployment, ops_daemon)
    card = EmulatedCard(MODEL)
    out, after = asyncio.run(_personalize(station, tmp_path / "j.db", card, reg_id, codes_for(MODEL)))
    assert out.state == "done", out.message
    assert out.holder_label == "MARIO ROSSI"
    for der in out.certificates.values():   # both keysets' certificates, for the registered holder
        assert helpers.CF in x509.load_der_x509_certificate(der).subject.rfc4514_string()
    assert (after.state, after.card_id, after.used_by, after.used_operator_id) == (
        "used", out.card_serial, "urn:cns:station:RM:RM-STATION-01", REQUESTER["operator_id"])
    other = EmulatedCard(MODEL, serial="7420000000009999")
    with pytest.raises(PreconditionError) as ei:
        asyncio.run(_personalize(station, tmp_path / "j2.db", other, reg_id, codes_for(MODEL)))
    assert f"already used for card {out.card_serial}" in str(ei.value) and "register the holder again" in str(ei.value)
    assert _blank(other) and asyncio.run(open_ops(tmp_path / "j2.db")) == []


def test_an_id_of_the_wrong_shape_or_unknown_is_refused_before_the_card_is_touched(station, tmp_path):
    card = EmulatedCard(MODEL)
    with pytest.raises(PreconditionError) as ei:
        asyncio.run(_personalize(station, tmp_path / "j.db", card, "reg-12", codes_for(MODEL)))
    assert "not a registration id" in str(ei.value)
    from agent.ops.errors import UplinkError
    with pytest.raises(UplinkError) as ei:
        asyncio.run(_personalize(station, tmp_path / "j.db", card, "REG-00000000000000AB", codes_for(MODEL)))
    assert "NOT_FOUND" in str(ei.value) and "REG-00000000000000AB" in str(ei.value)
    assert _blank(card) and asyncio.run(open_ops(tmp_path / "j.db")) == []


def test_an_open_deferred_personalization_resumes_only_with_its_registration(station, ops_deployment, ops_daemon,
                                                                             tmp_path):
    reg_id = _register(ops_deployment, ops_daemon)
    card = EmulatedCard(MODEL, faults=["drop:ins=2A,nth=1"])   # pulled while signing the first CSR
    codes = codes_for(MODEL)
    with pytest.raises(CardRemovedError):
        asyncio.run(_personalize(station, tmp_path / "j.db", card, reg_id, codes))
    card.power_on()
    [op] = asyncio.run(open_ops(tmp_path / "j.db"))
    assert op.data["registration_id"] == reg_id
    with pytest.raises(PreconditionError) as ei:   # the same holder typed in by hand: other inputs
        asyncio.run(_personalize(station, tmp_path / "j.db", card, None, codes, plain=HOLDER))
    assert f"open personalization {op.op_id} for registration {reg_id}" in str(ei.value)
    out, after = asyncio.run(_personalize(station, tmp_path / "j.db", card, reg_id, codes))
    assert out.state == "done" and out.op_id == op.op_id, out.message
    assert after.state == "used" and after.card_id == out.card_serial
