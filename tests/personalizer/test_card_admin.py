"""CardAdmin (issue 12 item 2): a card's issuer challenge answered from the daemon's PKCS#11 token.

Over the daemon's real mTLS port: the answer is the one the card's own diversified key gives (the
emulated card accepts it), another card refuses it, an old answer does not fit a fresh challenge; only
stations may ask, for their own chamber, never for a card of another chamber's records, a renewal only
for a card with certificates on record; every answer is audited with operator and card; a station that
asks too fast is refused (RESOURCE_EXHAUSTED) and the card is untouched.
"""
from __future__ import annotations

import asyncio
import os
import sqlite3
import time

import grpc
import pytest

from firmware_profiles import load_models
from firmware_profiles.emulator import EmulatedCard, admin
from personalizer.cardadmin import setup as card_admin_setup
from personalizer.cardadmin.service import CardAdmin
from personalizer.errors import PersonalizerError
from proto.cns.v1 import card_admin_pb2 as pb, card_admin_pb2_grpc, common_pb2, personalizer_pb2 as ppb
from tests.personalizer import helpers

MODEL = load_models()["infocamere-cns-2048"]
RM = common_pb2.Requester(station_id="RM-STATION-01", chamber_code="RM", operator_id="op-card-admin")


@pytest.fixture(scope="module")
def stub(daemon, tls_dir, station_cert):
    ch = helpers.channel(daemon.port, tls_dir, station_cert)
    yield card_admin_pb2_grpc.CardAdminStub(ch)
    ch.close()


def tx(card, apdu: bytes) -> tuple[bytes, int]:
    r = card.transmit(apdu)
    return r[:-2], int.from_bytes(r[-2:], "big")


def _challenge(card) -> bytes:
    rnd, sw = tx(card, bytes.fromhex("0084000010"))
    assert sw == 0x9000
    return rnd


def _external(card, answer: bytes) -> int:
    return tx(card, bytes([0, 0x82, 0, MODEL.dialect.admin_key_ref, 16]) + answer)[1]


def _ask(stub, serial, challenge, operation=pb.CARD_OPERATION_PERSONALIZE, requester=RM, model=MODEL.id):
    return stub.Authenticate(pb.CardAuthRequest(requester=requester, card_serial=serial, card_model=model,
                                                challenge=challenge, operation=operation,
                                                operation_id="op-test"), timeout=10).cryptogram


def test_the_token_answers_what_the_cards_own_key_answers_and_only_for_that_card(stub):
    a, b = EmulatedCard(MODEL), EmulatedCard(MODEL)
    a.power_on()
    b.power_on()
    rnd = _challenge(a)
    answer = _ask(stub, a.serial, rnd)
    assert answer == admin.cryptogram(admin.card_key(MODEL, a.serial), rnd)   # derived in the token
    assert answer != admin.cryptogram(MODEL.dialect.admin_test_master_key, rnd)
    assert _external(a, answer) == 0x9000 and a.admin_authenticated
    rnd_b = _challenge(b)     # card A's answer to B's challenge: B refuses it (its key differs)
    assert _external(b, _ask(stub, a.serial, rnd_b)) & 0xFFF0 == 0x63C0 and not b.admin_authenticated
    assert _external(b, _ask(stub, b.serial, _challenge(b))) == 0x9000


def test_a_replayed_cryptogram_is_refused_by_the_card(stub):
    card = EmulatedCard(MODEL)
    card.power_on()
    old = _ask(stub, card.serial, _challenge(card))
    assert _external(card, old) == 0x9000
    card.reset()
    assert _external(card, old) == 0x6985            # no challenge: refused
    _challenge(card)
    assert _external(card, old) & 0xFFF0 == 0x63C0   # a fresh challenge: the old answer does not fit
    assert not card.admin_authenticated


def test_only_stations_of_their_own_chamber_may_ask(daemon, tls_dir, admin_cert, stub):
    serial = EmulatedCard(MODEL).serial
    ch = helpers.channel(daemon.port, tls_dir, admin_cert)
    try:
        with pytest.raises(grpc.RpcError) as err:
            _ask(card_admin_pb2_grpc.CardAdminStub(ch), serial, os.urandom(16))
        assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
    finally:
        ch.close()
    mi = common_pb2.Requester(station_id="RM-STATION-01", chamber_code="MI", operator_id="op")
    with pytest.raises(grpc.RpcError) as err:
        _ask(stub, serial, os.urandom(16), requester=mi)
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED and "chamber MI" in err.value.details()


def test_bad_input_is_refused_with_what_is_expected(stub):
    cases = [("SHORT", os.urandom(16), MODEL.id, "card_serial"), ("A" * 16, os.urandom(8), MODEL.id, "challenge"),
             ("A" * 16, os.urandom(16), "no-such-model", "card_model")]
    for serial, challenge, model, field in cases:
        with pytest.raises(grpc.RpcError) as err:
            _ask(stub, serial, challenge, model=model)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and field in err.value.details()
    with pytest.raises(grpc.RpcError) as err:
        _ask(stub, "A" * 16, os.urandom(16), operation=pb.CARD_OPERATION_UNSPECIFIED)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_a_renewal_needs_a_card_this_personalizer_personalized(stub):
    serial = EmulatedCard(MODEL).serial
    with pytest.raises(grpc.RpcError) as err:
        _ask(stub, serial, os.urandom(16), operation=pb.CARD_OPERATION_RENEW)
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert f"card {serial} has no certificate on record" in err.value.details()


def test_a_card_of_another_chambers_records_is_refused(daemon, tls_dir, deployment, stub, admin_stub):
    mi = helpers.client_cert(tls_dir, common_name="MI-STATION-01", identity="urn:cns:station:MI:MI-STATION-01")
    ch = helpers.channel(daemon.port, tls_dir, mi)
    try:
        from proto.cns.v1 import personalizer_pb2_grpc
        cf = helpers.random_cf(712)
        req = helpers.issue_request(chamber="MI", station="MI-STATION-01", cf=cf, csr=helpers.csr_der(cf=cf))
        serial = "MICARD" + "".join(str(b % 10) for b in os.urandom(10))
        req.card.card_id = serial
        resp = personalizer_pb2_grpc.PersonalizerStub(ch).SubmitIssue(req, timeout=30)
        end = time.monotonic() + 20
        while resp.state != ppb.REQUEST_STATE_ISSUED and time.monotonic() < end:
            time.sleep(0.2)
            resp = admin_stub.GetRequest(ppb.GetRequestRequest(request_id=req.request_id), timeout=10)
        assert resp.state == ppb.REQUEST_STATE_ISSUED, resp
    finally:
        ch.close()
    with pytest.raises(grpc.RpcError) as err:
        _ask(stub, serial, os.urandom(16))
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "belongs to chamber MI" in err.value.details()


def test_every_answer_is_audited_with_operator_and_card(stub, deployment):
    card = EmulatedCard(MODEL)
    card.power_on()
    _ask(stub, card.serial, _challenge(card))
    db = deployment.root / "data" / "requests.sqlite"
    rows = []
    end = time.monotonic() + 5
    while not rows and time.monotonic() < end:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as c:
            rows = c.execute("SELECT actor, station_id, operation, operator_id, card_id, detail, result FROM audit "
                             "WHERE card_id = ?", (card.serial,)).fetchall()
        time.sleep(0.05)
    assert rows == [("urn:cns:station:RM:RM-STATION-01", "RM-STATION-01", "card-admin", "op-card-admin",
                     card.serial, f"personalize op-test model {MODEL.id}", "done")]


def test_a_station_that_asks_too_fast_is_refused(deployment, tmp_path):
    """The core with a bucket of 3 a minute, over the deployment's real token and a real store (through
    the broker, as in the daemon; no CA: nothing is issued)."""
    from personalizer.outbox.broker import Broker
    from personalizer.store import SqliteRequestStore

    async def go():
        store = await SqliteRequestStore.open(tmp_path / "requests.sqlite")
        cfg = card_admin_setup.load(deployment.server_config)
        token = card_admin_setup.open_token(cfg, deployment.server_config)
        core = CardAdmin(records=Broker(store=store, ca=None, min_rsa_bits={}), token=token, per_minute=3,
                         allow_unlisted_blank=cfg.allow_unlisted_blank_cards)
        try:
            kw = dict(actor="urn:cns:station:RM:S1", station_id="S1", chamber_code="RM", operator_id="op",
                      model_id=MODEL.id, challenge=os.urandom(16), operation="personalize")
            for _ in range(3):
                await core.answer(serial="ICMR000000000001", **kw)
            with pytest.raises(PersonalizerError) as err:
                await core.answer(serial="ICMR000000000001", **kw)
            assert err.value.code == "RESOURCE_EXHAUSTED" and "station S1" in str(err.value)
            await core.answer(serial="ICMR000000000001", **{**kw, "station_id": "S2"})   # per station
        finally:
            core.close()
            await store.close()
    asyncio.run(go())


def test_a_production_card_admin_section_refuses_unlisted_blank_cards_by_default(tmp_path):
    (tmp_path / "pin").write_text("1234\n")
    (tmp_path / "pin").chmod(0o600)
    cfg = tmp_path / "personalizer.toml"
    cfg.write_text('[card_admin]\npkcs11_module = "/x.so"\ntoken_label = "t"\npin_file = "pin"\n')
    assert card_admin_setup.load(cfg).allow_unlisted_blank_cards is False


@pytest.mark.parametrize("section,key,expected", [
    ('[card_admin]\npkcs11_module = "/x.so"\ntoken_label = "t"\npin_file = "missing-pin"\n', "card_admin.pin_file",
     "file not found"),
    ('[card_admin]\npkcs11_module = "/x.so"\ntoken_label = "t"\npin_file = "pin"\nkey_file = "k"\n',
     "card_admin.key_file", "unknown key"),
    ('[card_admin]\npkcs11_module = "/x.so"\ntoken_label = "t"\npin_file = "pin"\nper_minute = 0\n',
     "card_admin.per_minute", "1 to 6000"),
    ('[card_admin]\npkcs11_module = "/x.so"\ntoken_label = "t"\npin_file = "open-pin"\n', "card_admin.pin_file",
     "chmod 600"),
    ('[card_admin]\npkcs11_module = "/x.so"\ntoken_label = "t"\npin_file = "pin"\nunlisted_blank_cards = "yes"\n',
     "card_admin.unlisted_blank_cards", "cnsctl cards load-batch"),
])
def test_card_admin_config_errors_name_file_key_and_expectation(tmp_path, section, key, expected):
    from personalizer.errors import ConfigError
    (tmp_path / "pin").write_text("1234\n")
    (tmp_path / "pin").chmod(0o600)
    cfg = tmp_path / "personalizer.toml"
    (tmp_path / "open-pin").write_text("1234\n")
    (tmp_path / "open-pin").chmod(0o644)
    cfg.write_text(section)
    with pytest.raises(ConfigError) as err:
        card_admin_setup.load(cfg)
    assert str(cfg) in str(err.value) and key in str(err.value) and expected in str(err.value)
