"""Personalization end to end against the real daemon (mTLS, store, embedded CA), card in process.

Card faults come from the emulator: a card pulled at a step, then resumed
with or without the PIN; the personalizer stopped mid-way.
"""
from __future__ import annotations

import asyncio

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding

from agent.card.cns import CnsSession
from agent.card.errors import CardRemovedError
from agent.card.issuer import IssuerSession
from agent.ops.csr import pkcs1_v15_sha256_block
from agent.ops.holder import Codes, HolderRecord
from agent.ops.journal import Journal
from agent.ops.personalize import Personalizer
from agent.uplink.client import PersonalizerClient
from agent.uplink.card_admin import CardAdminClient
from firmware_profiles import load_models
from firmware_profiles.emulator import EmulatedCard
from tests.support.emulated import EmulatedTransport, connect_to  # noqa: F401  (re-exported to tests)

MODELS = load_models()
HOLDER = HolderRecord(codice_fiscale="RSSMRA80A01H501U", given_name="Mario", surname="Rossi",
                      birth_date="1980-01-01", sex="M", birth_town="ROMA", issuer="CCIAA di Roma")
REQUESTER = {"station_id": "RM-STATION-01", "chamber_code": "RM", "operator_id": "op-test"}


def codes_for(model) -> Codes:
    if model.pin_mode == "preset":
        return Codes(model.pin_policy.factory_test_pin)
    return Codes("24681357", "97531864")


async def personalize(station, journal_path, card, model, codes, **kw):
    journal = await Journal.open(journal_path)
    try:
        async with PersonalizerClient(station) as uplink:
            p = Personalizer(journal=journal, uplink=uplink, requester=REQUESTER,
                             card_admin=CardAdminClient(uplink).for_operation("personalize", REQUESTER), **kw)
            return await p.start(connect=connect_to(card), reader="in-process", model=model, holder=HOLDER,
                                 codes=codes)
    finally:
        await journal.close()


async def resume(station, journal_path, card, model, codes):
    journal = await Journal.open(journal_path)
    try:
        [op] = await journal.open_operations()
        async with PersonalizerClient(station) as uplink:
            p = Personalizer(journal=journal, uplink=uplink, requester=REQUESTER,
                             card_admin=CardAdminClient(uplink).for_operation("personalize", REQUESTER))
            return await p.resume(op, connect=connect_to(card), model=model, codes=codes)
    finally:
        await journal.close()


def assert_personalized(card, model, codes, issuing_pem: bytes):
    """As a user would: certificates on the card, their keys sign, the chain holds."""
    card.power_off()
    card.power_on()
    cns = CnsSession(EmulatedTransport(card), model)
    issuer = IssuerSession(cns, model)
    issuing = x509.load_pem_x509_certificate(issuing_pem)
    assert cns.read_personal_data().holder_label == "MARIO ROSSI"
    for ks in model.keysets:
        cert = x509.load_der_x509_certificate(issuer.read_ef(ks.cert_path))
        cert.verify_directly_issued_by(issuing)
        cns.verify_pin(codes.pin, ks.name)
        block = pkcs1_v15_sha256_block(b"hello", (cert.public_key().key_size + 7) // 8)
        sig = issuer.raw_sign(ks, ks.key_ref, block)
        cert.public_key().verify(sig, b"hello", padding.PKCS1v15(), hashes.SHA256())
    return cns


@pytest.mark.parametrize("model_id", sorted(MODELS))
def test_blank_card_personalized(model_id, station, ops_deployment, tmp_path):
    model = MODELS[model_id]
    card = EmulatedCard(model)
    codes = codes_for(model)
    out = asyncio.run(personalize(station, tmp_path / "j.db", card, model, codes))
    assert out.state == "done" and out.test_signatures, out.message
    assert out.holder_label == "MARIO ROSSI"
    subjects = out.as_dict()["certificate_subjects"]
    assert "RSSMRA80A01H501U" in subjects["CNS0"] and "TINIT-RSSMRA80A01H501U" in subjects["CNS1"]
    assert_personalized(card, model, codes, ops_deployment.issuing_cert.read_bytes())
    if model.pin_mode == "set_at_personalization":
        # the holder's new codes are in force, with full counters; the PUK unblocks
        card.power_off()
        card.power_on()
        cns = CnsSession(EmulatedTransport(card), model)
        assert cns.pin_tries_left("CNS0") == model.pin_policy.pin_tries
        cns.unblock_pin(codes.puk, codes.pin, "CNS0")
        cns.verify_pin(codes.pin, "CNS0")


def test_not_blank_is_refused(station, tmp_path):
    model = MODELS["infocamere-cns-2048"]
    card = EmulatedCard(model)
    codes = codes_for(model)
    assert asyncio.run(personalize(station, tmp_path / "j.db", card, model, codes)).state == "done"
    from agent.ops.errors import PreconditionError
    with pytest.raises(PreconditionError, match="not blank"):
        asyncio.run(personalize(station, tmp_path / "j2.db", card, model, codes))


@pytest.mark.parametrize("ins,nth,expect_forward", [
    ("46", 2, False),   # pulled during the second key generation: nothing sent, undo without PIN
    ("2A", 3, False),   # pulled while signing the second CSR (1st PSO = CSR CNS0... order: 2 PSO per CSR step)
    ("E0", 1, True),    # pulled creating the first certificate file: certificates issued, roll forward
    ("D6", 3, True),    # pulled while writing
])
def test_card_pulled_then_recovered_without_pin(ins, nth, expect_forward, station, ops_deployment, tmp_path):
    model = MODELS["infocamere-cns-2048"]
    card = EmulatedCard(model, faults=[f"drop:ins={ins},nth={nth}"])
    codes = codes_for(model)
    with pytest.raises(CardRemovedError):
        asyncio.run(personalize(station, tmp_path / "j.db", card, model, codes))
    card.power_on()  # reinserted
    out = asyncio.run(resume(station, tmp_path / "j.db", card, model, None))
    if expect_forward:
        assert out.state == "done" and not out.test_signatures
        assert_personalized(card, model, codes, ops_deployment.issuing_cert.read_bytes())
    else:
        assert out.state == "undone"
        issuer = IssuerSession(CnsSession(EmulatedTransport(card), model), model)
        for ks in model.keysets:
            assert issuer.read_ef(ks.cert_path) is None and issuer.read_public_key(ks.key_ref) is None
        # blank again: a new personalization succeeds
        assert asyncio.run(personalize(station, tmp_path / "j2.db", card, model, codes)).state == "done"


def test_pulled_then_resumed_with_pin_completes(station, ops_deployment, tmp_path):
    model = MODELS["infocamere-cns-2048"]
    card = EmulatedCard(model, faults=["drop:ins=46,nth=2"])
    codes = codes_for(model)
    with pytest.raises(CardRemovedError):
        asyncio.run(personalize(station, tmp_path / "j.db", card, model, codes))
    card.power_on()
    out = asyncio.run(resume(station, tmp_path / "j.db", card, model, codes))
    assert out.state == "done" and out.test_signatures
    assert_personalized(card, model, codes, ops_deployment.issuing_cert.read_bytes())


def test_journal_never_holds_codes(station, tmp_path):
    model = MODELS["oberthur-cns-1024"] if "oberthur-cns-1024" in MODELS else MODELS["infocamere-cns-2048"]
    card = EmulatedCard(model)
    codes = codes_for(model)
    asyncio.run(personalize(station, tmp_path / "j.db", card, model, codes))
    raw = b"".join(p.read_bytes() for p in tmp_path.glob("j.db*"))
    assert codes.pin.encode() not in raw
    if codes.puk:
        assert codes.puk.encode() not in raw
