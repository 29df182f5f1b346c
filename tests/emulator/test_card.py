"""The in-process emulated card: ISO behaviour OpenSC relies on, PIN counters,
dialect, renewal switch, persistence, faults, and no exception on bad input."""
from __future__ import annotations

import json
import random

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed

from firmware_profiles import load_models
from firmware_profiles.emulator import CardRemovedError, EmulatedCard, StateFileError
from firmware_profiles.emulator.check import run_checks
from tests.support import cardprep

MODELS = load_models()


@pytest.fixture(params=sorted(MODELS))
def model(request):
    return MODELS[request.param]


def tx(card, hexstr: str | bytes) -> tuple[bytes, int]:
    r = card.transmit(bytes.fromhex(hexstr) if isinstance(hexstr, str) else hexstr)
    return r[:-2], int.from_bytes(r[-2:], "big")


def test_conformance_check_passes(model):
    results = run_checks(model)
    assert all(r.ok for r in results), [(r.name, r.detail) for r in results if not r.ok]


def test_read_binary_answers_6282_at_end_of_file(model):
    card = EmulatedCard(model)
    card.power_on()
    data, sw = tx(card, "00a4080c0410001003")
    assert sw == 0x9000 and data == b""
    data, sw = tx(card, "00b00000ff")
    assert (data, sw) == (card.serial.encode(), 0x6282)
    assert tx(card, "00b0000010") == (card.serial.encode(), 0x9000)
    assert tx(card, "00b0001001") == (b"", 0x6282)
    assert tx(card, "00b0001101") == (b"", 0x6B00)


def test_select_fcp_and_absent_keyset(model):
    card = EmulatedCard(model)
    card.power_on()
    fcp, sw = tx(card, "00a408040411001102" + "00")
    assert sw == 0x9000 and fcp[0] == 0x62
    assert bytes.fromhex("83021102") in fcp and bytes.fromhex("820101") in fcp and bytes.fromhex("80020190") in fcp
    assert tx(card, "00a408040411001101")[1] == 0x6A82  # no certificate yet
    assert tx(card, "00a4080c0314008110")[1] == 0x6700  # Lc 3, four bytes follow
    assert tx(card, "00a4080c03140081")[1] == 0x6700  # odd path length
    assert tx(card, "00a40000023f00")[1] == 0x9000


def test_access_conditions(model):
    card = EmulatedCard(model)
    card.power_on()
    tx(card, "00a4080c0410001003")
    assert tx(card, "00d6000001ff")[1] == 0x6982  # EF_IDCarta: never
    tx(card, "00a4080c0411001102")
    assert tx(card, "00d6000001ff")[1] == 0x6982  # EF_DatiPersonali: admin
    cardprep.admin_authenticate(card)
    assert tx(card, "00d6000001ff")[1] == 0x9000
    card.power_off()
    card.power_on()
    tx(card, "00a4080c0411001102")
    assert tx(card, "00d6000001ff")[1] == 0x6982  # admin state gone with the power


def test_pin_counters_and_lockout():
    model = MODELS["infocamere-cns-2048"]  # preset codes
    card = EmulatedCard(model)
    card.power_on()
    assert tx(card, "0020001000")[1] == 0x63C3
    wrong = bytes.fromhex("00200010083030303030303030")
    assert tx(card, wrong)[1] == 0x63C2
    assert tx(card, wrong)[1] == 0x63C1
    assert tx(card, "0020001000")[1] == 0x63C1  # status does not count
    assert tx(card, wrong)[1] == 0x6983
    right = bytes.fromhex("0020001008") + b"12345678"
    assert tx(card, right)[1] == 0x6983
    assert card.state.pins[0x10].tries_left == 0
    # PUK unblock (P2 = the PIN reference), new PIN
    assert tx(card, bytes.fromhex("002c001010") + b"87654321" + b"11223344")[1] == 0x9000
    assert tx(card, bytes.fromhex("0020009008") + b"11223344")[1] == 0x9000  # STIncard bit 8
    assert tx(card, "0020001000")[1] == 0x9000


def test_set_at_personalization_codes():
    model = MODELS["oberthur-cns-1024"]
    card = EmulatedCard(model)
    card.power_on()
    assert tx(card, "0020001000")[1] == 0x6984
    assert tx(card, bytes.fromhex("0024011008") + b"24681357")[1] == 0x6982  # needs admin
    cardprep.admin_authenticate(card)
    assert tx(card, bytes.fromhex("0024011008") + b"2468" + b"\xff" * 4)[1] == 0x6A80  # 8 digits
    assert tx(card, bytes.fromhex("0024011008") + b"24681357")[1] == 0x9000
    card.reset()
    assert tx(card, "0020001000")[1] == 0x63C3


def test_preset_codes_cannot_be_overwritten():
    card = EmulatedCard(MODELS["infocamere-cns-2048"])
    card.power_on()
    cardprep.admin_authenticate(card)
    assert tx(card, bytes.fromhex("0024011008") + b"24681357")[1] == 0x6985


def test_admin_authentication_counts_and_needs_a_challenge(model):
    card = EmulatedCard(model)
    card.power_on()
    assert tx(card, "008200" + f"{model.dialect.admin_key_ref:02x}" + "10" + "00" * 16)[1] == 0x6985
    tx(card, "0084000010")
    sw = tx(card, "008200" + f"{model.dialect.admin_key_ref:02x}" + "10" + "00" * 16)[1]
    assert sw == 0x63C0 | (model.dialect.admin_tries - 1)
    cardprep.admin_authenticate(card)
    assert card.admin_authenticated and card.state.admin_tries_left == model.dialect.admin_tries


def test_generate_returns_public_key_with_get_response(model):
    card = EmulatedCard(model)
    card.power_on()
    cardprep.admin_authenticate(card)
    data, sw = tx(card, bytes([0, 0x46, 0, model.keysets[0].key_ref, 0]))
    if model.rsa_bits == 2048:
        assert len(data) == 256 and sw == 0x610E
        rest, sw = tx(card, "00c000000e")
        data += rest
    assert sw == 0x9000 and data[:2] == b"\x7f\x49"
    pub = cardprep.parse_public_key(data)
    assert pub.key_size == model.rsa_bits


def test_personalized_card_signs_like_pkcs1(model):
    card = EmulatedCard(model)
    p = cardprep.personalize(card)
    card.power_on()
    digest_info = bytes.fromhex("3031300d060960864801650304020105000420") + bytes(32)
    k = model.rsa_bits // 8
    block = b"\x00\x01" + b"\xff" * (k - 3 - len(digest_info)) + b"\x00" + digest_info
    for ks in model.keysets:
        if ks.pin_df:
            cardprep.select_path(card, ks.pin_df)
        cardprep.send(card, bytes([0, 0x20, 0, ks.pin_ref, 8]) + p.pin.encode(), "VERIFY")
        cardprep.send(card, bytes.fromhex("0022f30300"), "MSE RESTORE")
        cardprep.send(card, bytes([0, 0x22, 0xF1, 0xB6, 3, 0x83, 1, ks.key_ref]), "MSE SET")
        if k > 255:
            assert tx(card, bytes([0x10, 0x2A, 0x9E, 0x9A, 255]) + block[:255]) == (b"", 0x9000)
            sig, sw = tx(card, bytes([0x00, 0x2A, 0x9E, 0x9A, k - 255]) + block[255:] + b"\x00")
        else:
            sig, sw = tx(card, bytes([0x00, 0x2A, 0x9E, 0x9A, k]) + block + b"\x00")
        assert sw == 0x9000
        p.certs[ks.name].public_key().verify(sig, bytes(32), padding.PKCS1v15(), Prehashed(hashes.SHA256()))


def test_chain_interrupted_and_unchainable(model):
    card = EmulatedCard(model)
    card.power_on()
    assert tx(card, "102a9e9a0101")[1] == 0x9000
    assert tx(card, "00a40000023f00")[1] == 0x6883
    assert tx(card, "10b0000001")[1] == 0x6884


def test_malformed_apdus_never_raise(model):
    card = EmulatedCard(model)
    card.power_on()
    rnd = random.Random(7)
    cases = [b"", b"\x00", b"\x00\xa4", b"\x00\xa4\x08", b"\xff\xff\xff\xff", b"\x00\xa4\x08\x04\x00\x00\x02\x3f\x00"]
    cases += [bytes(rnd.randrange(256) for _ in range(rnd.randrange(1, 300))) for _ in range(2000)]
    for apdu in cases:
        r = card.transmit(apdu)
        assert len(r) >= 2 and r[-2] in (0x90, 0x61, 0x62, 0x63, 0x67, 0x68, 0x69, 0x6A, 0x6B, 0x6D, 0x6E), (
            apdu.hex(), r.hex())


def test_eeprom_budget(model):
    card = EmulatedCard(model)
    card.power_on()
    cardprep.admin_authenticate(card)
    cardprep.select_path(card, "3F00/1000")
    free = card.eeprom_free()
    size = free - model.eeprom.ef_header_bytes + 1
    body = b"\x83\x02\x50\x00\x82\x01\x01\x80\x02" + min(size, 0x7FFF).to_bytes(2, "big")
    sw = tx(card, b"\x00\xe0\x00\x00" + bytes([len(body) + 2, 0x62, len(body)]) + body)[1]
    assert sw in (0x6A84, 0x9000)
    while sw == 0x9000:  # fill with 32 KB files until full
        cardprep.select_path(card, "3F00/1000")
        fid = 0x5001 + len(card.state.files)
        body = b"\x83\x02" + fid.to_bytes(2, "big") + b"\x82\x01\x01\x80\x02\x7f\xff"
        sw = tx(card, b"\x00\xe0\x00\x00" + bytes([len(body) + 2, 0x62, len(body)]) + body)[1]
    assert sw == 0x6A84
    assert card.eeprom_free() < 0x7FFF + model.eeprom.ef_header_bytes


def test_state_persists_and_never_holds_security_state(model, tmp_path):
    path = tmp_path / "card.json"
    card = EmulatedCard(model, state_path=path)
    p = cardprep.personalize(card)
    card.power_on()
    assert tx(card, bytes([0, 0x20, 0, 0x10, 8]) + p.pin.encode())[1] == 0x9000
    assert tx(card, bytes([0, 0x20, 0, 0x10, 8]) + b"00000000")[1] == 0x63C2  # persisted at once
    again = EmulatedCard(model, state_path=path)
    assert again.serial == card.serial and again.state.keys.keys() == card.state.keys.keys()
    assert again.state.pins[0x10].tries_left == 2
    raw = json.loads(path.read_text())
    assert "verified" not in json.dumps(raw) and "admin_authenticated" not in raw
    again.power_on()
    assert tx(again, "0020001000")[1] == 0x63C2


def test_broken_or_foreign_state_file_is_a_clear_error(tmp_path):
    path = tmp_path / "card.json"
    path.write_text("{not json")
    with pytest.raises(StateFileError, match="card.json: not a valid card state file.*Delete the file"):
        EmulatedCard(MODELS["oberthur-cns-1024"], state_path=path)
    EmulatedCard(MODELS["oberthur-cns-1024"], state_path=tmp_path / "other.json")
    with pytest.raises(StateFileError, match="model 'oberthur-cns-1024', not 'infocamere-cns-2048'"):
        EmulatedCard(MODELS["infocamere-cns-2048"], state_path=tmp_path / "other.json")


def test_tear_fault_leaves_partial_bytes_in_the_state_file(model, tmp_path):
    path = tmp_path / "card.json"
    card = EmulatedCard(model, state_path=path, faults=["tear:ins=D6,bytes=5"])
    card.power_on()
    cardprep.admin_authenticate(card)
    cardprep.select_path(card, model.paths.dati_personali)
    with pytest.raises(CardRemovedError):
        card.transmit(bytes.fromhex("00d6000010") + b"ABCDEFGHIJKLMNOP")
    assert not card.powered
    with pytest.raises(CardRemovedError):
        card.transmit(bytes.fromhex("00a40000023f00"))
    stored = json.loads(path.read_text())["files"][model.paths.dati_personali]["data"]
    assert bytes.fromhex(stored)[:16] == b"ABCDE" + bytes(11)
    card.power_on()  # reinserted: same card, no admin rights
    cardprep.select_path(card, model.paths.dati_personali)
    assert tx(card, "00b0000010") == (b"ABCDE" + bytes(11), 0x9000)
    assert tx(card, "00d6000001ff")[1] == 0x6982


def test_drop_after_and_sw_and_nth_faults(model):
    card = EmulatedCard(model, faults=["sw:ins=B0,sw=6581,nth=2", "drop:ins=A4,nth=3,after=1"])
    card.power_on()
    tx(card, "00a4080c0410001003")  # A4 #1
    assert tx(card, "00b0000010")[1] == 0x9000
    assert tx(card, "00b0000010")[1] == 0x6581  # B0 #2
    tx(card, "00a4000c023f00")  # A4 #2
    with pytest.raises(CardRemovedError):
        card.transmit(bytes.fromhex("00a4080c0410001003"))  # A4 #3 runs, then the card is gone
    card.power_on()
    assert tx(card, "00b0000010")[1] == 0x6986  # the select happened before the pull, but a new session


def test_switch_is_atomic_under_a_power_cut(tmp_path):
    model = MODELS["oberthur-cns-1024"]
    path = tmp_path / "card.json"
    card = EmulatedCard(model, state_path=path)
    cardprep.personalize(card)
    card.power_on()
    cardprep.admin_authenticate(card)
    for ks in model.keysets:
        cardprep.generate_key(card, ks.spare_key_ref)
        cardprep.write_new_file(card, ks.spare_cert_path, b"NEW-" + ks.name.encode())
    before = path.read_text()
    card.faults.add("tear:ins=D8")
    with pytest.raises(CardRemovedError):
        card.transmit(bytes([0x80, 0xD8, 0, 0x03]))
    assert path.read_text() == before  # all old
    card.power_on()
    cardprep.admin_authenticate(card)
    old_live = {ks.name: card.state.keys[ks.key_ref].n for ks in model.keysets}
    new_spare = {ks.name: card.state.keys[ks.spare_key_ref].n for ks in model.keysets}
    assert tx(card, bytes([0x80, 0xD8, 0, 0x03]))[1] == 0x9000
    after = EmulatedCard(model, state_path=path).state  # all new, as read from disk
    for ks in model.keysets:
        assert after.keys[ks.key_ref].n == new_spare[ks.name]
        assert after.keys[ks.spare_key_ref].n == old_live[ks.name]
        assert bytes(after.files[ks.cert_path].data) == b"NEW-" + ks.name.encode()
    assert tx(card, bytes([0x80, 0xEA, 0, model.keysets[0].spare_key_ref]))[1] == 0x9000
    assert tx(card, bytes([0x80, 0xD8, 0, 0x01]))[1] == 0x6985  # nothing to switch to any more
    assert tx(card, bytes([0x80, 0xD8, 0, 0x04]))[1] == 0x6A86


def test_get_info(model):
    card = EmulatedCard(model)
    card.power_on()
    data, sw = tx(card, "80ca000100")
    total, used, free = (int.from_bytes(data[i:i + 4], "big") for i in (0, 4, 8))
    assert sw == 0x9000 and total == 65536 and used + free == total and used == card.eeprom_used()
    data, sw = tx(card, "80ca000200")
    assert sw == 0x9000 and len(data) == 3 * len(model.key_refs) and set(data[1::3]) == {0}
    assert tx(card, "80ca000300") == (card.serial.encode(), 0x9000)


def test_apdu_log_masks_secrets(model, tmp_path):
    log = tmp_path / "apdu.jsonl"
    card = EmulatedCard(model, apdu_log=log)
    card.power_on()
    card.transmit(bytes.fromhex("0020001008") + b"13572468")
    lines = [json.loads(x) for x in log.read_text().splitlines()]
    assert lines and "13572468".encode().hex() not in log.read_text()
    assert lines[0]["c"].startswith("0020001008")


def test_transmit_before_power_on_is_an_error(model):
    from firmware_profiles.emulator import CardNotPoweredError

    with pytest.raises(CardNotPoweredError):
        EmulatedCard(model).transmit(b"\x00\xa4\x00\x00")
