"""APDU builder and the transport processors (chaining, GET RESPONSE, 6Cxx)."""
from __future__ import annotations

import pytest

from agent.card import INS, SW, Apdu, ChainingProcessor, MalformedResponseError, ResponseProcessor, processed, sw_name
from agent.card.errors import ApduError, WrongPinError
from agent.card.transport import RecordingTransport, split_response
from tests.agent.scripted import ScriptedTransport


def test_apdu_encode_decode_cases():
    assert Apdu(0, INS.SELECT, 8, 0, b"\x10\x00", le=256).encode().hex() == "00a40800021000" + "00"
    assert Apdu(0, INS.VERIFY, 0, 0x10).encode().hex() == "00200010"
    assert Apdu(0, INS.READ_BINARY, 0, 0, le=0xFF).encode().hex() == "00b00000ff"
    for apdu in (Apdu(0, 0xA4, 8, 0, b"\x10\x00", 256), Apdu(0, 0x20, 0, 0x10), Apdu(0x80, 0xB0, 1, 2, le=7),
                 Apdu(0, 0xD6, 0, 0, bytes(range(200)))):
        assert Apdu.decode(apdu.encode()) == apdu
    long = Apdu(0, INS.PERFORM_SECURITY_OPERATION, 0x80, 0x86, bytes(600), le=256)
    assert Apdu.decode(long.encode_long()) == long
    with pytest.raises(ValueError):
        long.encode()
    with pytest.raises(ValueError):
        Apdu.decode(bytes.fromhex("00a4080005" + "1000"))  # Lc says 5, two bytes follow


def test_status_words_print_symbolically():
    assert sw_name(0x6A82) == "FILE_NOT_FOUND"
    assert sw_name(0x6282) == "END_OF_FILE"
    assert sw_name(0x63C1) == "VERIFY_FAILED[1 tries left]"
    assert sw_name(0x6110) == "BYTES_REMAINING[16]"
    assert "FILE_NOT_FOUND (6A82)" in str(ApduError(0x6A82))
    err = WrongPinError(0x63C2, 2)
    assert err.tries_left == 2 and "VERIFY_FAILED" in str(err)


def test_get_response_collects_all_parts():
    card = ScriptedTransport([
        ("00a40800", "6110"),
        ("00c0000010", "11" * 16 + "6105"),
        ("00c0000005", "22" * 5 + "9000"),
    ])
    data, sw = ResponseProcessor(card).transmit(Apdu(0, INS.SELECT, 8, 0, b"\x10\x00", 256).encode())
    assert sw == SW.OK and data == b"\x11" * 16 + b"\x22" * 5 and card.done()


def test_wrong_le_is_resent_with_the_cards_length():
    card = ScriptedTransport([("00b00000ff", "6c08"), ("00b0000008", "0102030405060708" + "9000")])
    data, sw = ResponseProcessor(card).transmit(bytes.fromhex("00b00000ff"))
    assert (data, sw) == (bytes(range(1, 9)), 0x9000) and card.done()


def test_endless_61xx_is_malformed_not_a_hang():
    class Endless:
        def transmit(self, apdu):
            return b"\x00", 0x6101

    with pytest.raises(MalformedResponseError):
        ResponseProcessor(Endless()).transmit(bytes.fromhex("00c0000001"))


def test_chaining_splits_long_data_and_sets_cla_bit():
    payload = bytes(range(256)) * 2 + b"\xAA" * 88  # 600 bytes: 255 + 255 + 90
    card = ScriptedTransport([
        ("102a8086ff" + payload[:255].hex(), "9000"),
        ("102a8086ff" + payload[255:510].hex(), "9000"),
        ("002a80865a" + payload[510:].hex() + "00", "6102"),
        ("00c0000002", "beef9000"),
    ])
    stack = processed(card)
    data, sw = stack.transmit(Apdu(0, INS.PERFORM_SECURITY_OPERATION, 0x80, 0x86, payload, 256).encode_long())
    assert (data, sw) == (b"\xbe\xef", 0x9000) and card.done()


def test_chaining_stops_at_the_first_refused_part():
    card = ScriptedTransport([("102a8086ff", "6884")])
    data, sw = ChainingProcessor(card).transmit(Apdu(0, 0x2A, 0x80, 0x86, bytes(300)).encode_long())
    assert sw == 0x6884 and card.done()


def test_short_commands_pass_through_unchanged():
    card = ScriptedTransport([("00200010", "63c3")])
    assert processed(card).transmit(bytes.fromhex("00200010")) == (b"", 0x63C3)


def test_split_response_needs_a_status_word():
    with pytest.raises(MalformedResponseError):
        split_response(b"\x90")
    assert split_response(b"\x01\x90\x00") == (b"\x01", 0x9000)


def test_recorder_redacts_pins():
    card = ScriptedTransport([("0020001008", "9000")])
    rec = RecordingTransport(card)
    rec.transmit(bytes.fromhex("0020001008") + b"12345678")
    assert b"12345678" not in rec.exchanges[0][0]
    assert rec.exchanges[0][2] == 0x9000
