"""CnsSession on the in-process emulator: serial, holder, blank card, PINs, chaining, a pulled card."""
from __future__ import annotations

import pytest

from agent.card import CardRemovedError, CnsSession, PersonalData, PinBlockedError, PinNotSetError, WrongPinError
from agent.card.transport import RecordingTransport
from agent.devices.inspect import inspect_card
from firmware_profiles import identify, load_models
from firmware_profiles.emulator import CardRemovedError as EmulatorRemoved
from firmware_profiles.emulator import EmulatedCard
from tests.support.emulated import EmulatedTransport, personalized_card

MODELS = load_models()
HOLDER = PersonalData(issuer="CCIAA Roma", issue_date="01012025", expiry_date="01012031", surname="ROSSI",
                      given_name="MARIO", birth_date="15031980", sex="M", codice_fiscale="RSSMRA80C15H501U")


@pytest.fixture(params=sorted(MODELS))
def model(request):
    return MODELS[request.param]


def transport(card):
    return EmulatedTransport(card, (EmulatorRemoved,))


def test_models_identify_by_atr(model):
    assert identify(model.atr, MODELS) is model
    assert identify(bytes.fromhex("3B021450"), MODELS) is None


def test_blank_card_has_serial_and_no_holder(model):
    card = EmulatedCard(model)
    card.power_on()
    session = CnsSession(transport(card), model)
    assert session.read_serial() == card.serial and len(card.serial) == 16
    assert session.read_personal_data() is None
    found = inspect_card(transport(card), model)
    assert found.blank and found.holder_label == "" and found.serial == card.serial


def test_personalized_card_round_trips_dati_personali(model):
    card = personalized_card(model, HOLDER)
    card.power_off()
    card.power_on()  # a fresh session: no admin rights left, reads must still work
    session = CnsSession(transport(card), model)
    assert session.read_personal_data() == HOLDER
    found = inspect_card(transport(card), model)
    assert (found.holder_label, found.blank) == ("MARIO ROSSI", False)


def test_pin_status_and_verify(model):
    card = EmulatedCard(model)
    card.power_on()
    session = CnsSession(transport(card), model)
    keyset = model.keysets[0]
    if model.pin_mode == "set_at_personalization":
        with pytest.raises(PinNotSetError):
            session.pin_tries_left(keyset.name)
        return
    assert session.pin_tries_left(keyset.name) == keyset.pin_tries
    for expected in range(keyset.pin_tries - 1, 0, -1):
        with pytest.raises(WrongPinError) as err:
            session.verify_pin("00000000", keyset.name)
        assert err.value.tries_left == expected
    with pytest.raises(PinBlockedError):
        session.verify_pin("00000000", keyset.name)
    assert session.pin_tries_left(keyset.name) == 0


def test_card_pulled_mid_read_is_card_removed(model):
    card = EmulatedCard(model, faults=["drop:ins=B0,nth=1"])
    card.power_on()
    with pytest.raises(CardRemovedError):
        CnsSession(transport(card), model).read_serial()


def test_a_file_longer_than_one_read_is_read_in_parts(model):
    card = personalized_card(model, HOLDER)
    rec = RecordingTransport(transport(card))
    raw = CnsSession(rec, model, raw=True).read_file(model.paths.dati_personali)
    reads = [c for c, _, _ in rec.exchanges if c[1] == 0xB0]
    assert len(raw) > 255 and len(reads) >= 2
    assert raw.startswith(b"0000")


def test_recorded_exchanges_hide_the_pin(model):
    card = EmulatedCard(model)
    card.power_on()
    rec = RecordingTransport(transport(card))
    with pytest.raises(Exception):
        CnsSession(rec, model).verify_pin("13572468")
    assert all(b"13572468" not in c for c, _, _ in rec.exchanges)
