"""Each emulated card carries its own issuer key (issue 12 item 1): the model's TEST master key
diversified with the card's serial; one card's key fails on another card, and a cryptogram is good
for one challenge only (the replayed answer is refused)."""
from __future__ import annotations

import pytest
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from firmware_profiles import load_models
from firmware_profiles.admin_keys import DiversificationError, diversification_block
from firmware_profiles.emulator import EmulatedCard, admin

MODELS = load_models()


def tx(card, apdu: bytes) -> tuple[bytes, int]:
    r = card.transmit(apdu)
    return r[:-2], int.from_bytes(r[-2:], "big")


def _auth(card, key: bytes) -> int:
    d = card.model.dialect
    rnd, sw = tx(card, bytes.fromhex("0084000010"))
    assert sw == 0x9000
    return tx(card, bytes([0, 0x82, 0, d.admin_key_ref, 16]) + admin.cryptogram(key, rnd))[1]


@pytest.fixture(params=sorted(MODELS))
def model(request):
    return MODELS[request.param]


def test_the_card_key_is_the_master_key_encrypting_the_serial(model):
    serial = model.serial_prefix.ljust(16, "7")
    enc = Cipher(algorithms.AES(model.dialect.admin_test_master_key), modes.ECB()).encryptor()
    assert admin.card_key(model, serial) == enc.update(serial.encode()) + enc.finalize()
    assert admin.card_key(model, serial) != model.dialect.admin_test_master_key


def test_two_cards_have_different_keys_and_one_cards_key_fails_on_the_other(model):
    a, b = EmulatedCard(model), EmulatedCard(model)
    a.power_on()
    b.power_on()
    assert a.serial != b.serial
    key_a, key_b = admin.card_key(model, a.serial), admin.card_key(model, b.serial)
    assert key_a != key_b
    assert _auth(b, key_a) == 0x63C0 | (model.dialect.admin_tries - 1)   # a's key on b: refused, one try used
    assert not b.admin_authenticated
    assert _auth(b, key_b) == 0x9000 and b.admin_authenticated
    assert _auth(a, model.dialect.admin_test_master_key) & 0xFFF0 == 0x63C0   # the master key itself is no card key


def test_a_replayed_cryptogram_is_refused(model):
    card = EmulatedCard(model)
    card.power_on()
    d = model.dialect
    rnd, _ = tx(card, bytes.fromhex("0084000010"))
    answer = bytes([0, 0x82, 0, d.admin_key_ref, 16]) + admin.cryptogram(admin.card_key(model, card.serial), rnd)
    assert tx(card, answer)[1] == 0x9000
    card.reset()
    assert tx(card, answer)[1] == 0x6985            # no fresh challenge
    tx(card, bytes.fromhex("0084000010"))            # a fresh one: the old answer does not fit it
    assert tx(card, answer)[1] & 0xFFF0 == 0x63C0
    assert not card.admin_authenticated


def test_a_serial_the_scheme_cannot_diversify_is_refused():
    with pytest.raises(DiversificationError, match="16 printable ASCII"):
        diversification_block("aes128-ecb-serial", "SHORT")
    with pytest.raises(DiversificationError, match="unknown admin key scheme"):
        diversification_block("sp800-108", "A" * 16)


def test_a_transport_keyed_card_takes_its_own_key_with_put_key(model):
    d = model.dialect
    card = EmulatedCard(model, transport_key=d.transport_test_key)
    card.power_on()
    assert tx(card, bytes.fromhex("80CA000400"))[0] == b"\x00"                  # transport key
    own = admin.card_key(model, card.serial)
    put = bytes([0x80, d.ins_put_key, 0, d.admin_key_ref, 24])
    assert tx(card, put + admin.wrap(d.transport_test_key, own))[1] == 0x6982   # not authenticated
    assert _auth(card, own) & 0xFFF0 == 0x63C0                                   # its own key: not yet
    assert _auth(card, d.transport_test_key) == 0x9000
    assert tx(card, put + admin.wrap(bytes(16), own))[1] == 0x6A80               # wrapped under another key
    assert tx(card, put + admin.wrap(d.transport_test_key, own))[1] == 0x9000
    assert not card.admin_authenticated and tx(card, bytes.fromhex("80CA000400"))[0] == b"\x01"
    assert _auth(card, d.transport_test_key) & 0xFFF0 == 0x63C0
    assert _auth(card, own) == 0x9000


def test_put_key_pulled_or_torn_leaves_the_old_or_the_new_key(model, tmp_path):
    d = model.dialect
    own = None
    for fault in ("drop:ins=D2", "tear:ins=D2,bytes=1"):
        state = tmp_path / f"{fault[:4]}.json"
        card = EmulatedCard(model, state_path=state, transport_key=d.transport_test_key, faults=[fault])
        card.power_on()
        own = admin.card_key(model, card.serial)
        assert _auth(card, d.transport_test_key) == 0x9000
        try:
            tx(card, bytes([0x80, d.ins_put_key, 0, d.admin_key_ref, 24]) + admin.wrap(d.transport_test_key, own))
        except Exception:
            pass
        again = EmulatedCard(model, state_path=state)
        again.power_on()
        kvn = tx(again, bytes.fromhex("80CA000400"))[0]
        assert _auth(again, own if kvn == b"\x01" else d.transport_test_key) == 0x9000
