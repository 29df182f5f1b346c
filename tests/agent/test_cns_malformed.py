"""CnsSession against cards that answer badly: every case is a CardError, never a crash."""
from __future__ import annotations

import pytest

from agent.card import ApduError, CnsSession, MalformedResponseError, PinBlockedError, WrongPinError
from agent.card.errors import FileNotFoundOnCardError
from tests.agent.scripted import ScriptedTransport

SELECT_IDCARTA = "00a408000410001003"
FCP_16 = "620a" + "8302" + "1003" + "8201" + "01" + "8001" + "10"


def session(steps):
    return CnsSession(ScriptedTransport(steps))


def test_serial_is_read_to_the_size_in_the_fcp():
    s = session([(SELECT_IDCARTA, FCP_16 + "9000"), ("00b0000010", b"1234567890ABCDEF".hex() + "9000")])
    assert s.read_serial() == "1234567890ABCDEF"


def test_read_to_end_of_file_without_a_size():
    s = session([(SELECT_IDCARTA, "9000"), ("00b00000ff", b"1234567890ABCDEF".hex() + "6282")])
    assert s.read_serial() == "1234567890ABCDEF"


@pytest.mark.parametrize("content", [b"123", b"1234567890ABCDE\x01", b"\xff" * 16])
def test_bad_serial_is_malformed(content):
    s = session([(SELECT_IDCARTA, "9000"), ("00b00000ff", content.hex() + "6282")])
    with pytest.raises(MalformedResponseError):
        s.read_serial()


def test_more_data_than_asked_is_malformed():
    s = session([(SELECT_IDCARTA, FCP_16 + "9000"), ("00b0000010", "00" * 40 + "9000")])
    with pytest.raises(MalformedResponseError):
        s.read_serial()


def test_a_file_that_never_ends_is_malformed_not_a_hang():
    class Endless:
        def transmit(self, apdu):
            return (b"\x30" * 255, 0x9000) if apdu[1] == 0xB0 else (b"", 0x9000)

    with pytest.raises(MalformedResponseError):
        CnsSession(Endless()).read_serial()


def test_no_status_word_is_malformed():
    class Mute:
        def transmit(self, apdu):
            from agent.card.transport import split_response
            return split_response(b"\x90")

    with pytest.raises(MalformedResponseError):
        CnsSession(Mute()).read_serial()


def test_missing_file_and_unexpected_status():
    with pytest.raises(FileNotFoundOnCardError) as err:
        session([(SELECT_IDCARTA, "6a82")]).read_serial()
    assert err.value.path == "3F00/1000/1003" and "FILE_NOT_FOUND" in str(err.value)
    with pytest.raises(ApduError, match="MEMORY_FAILURE"):
        session([(SELECT_IDCARTA, "9000"), ("00b00000ff", "6581")]).read_serial()


def test_blank_personal_data_means_no_holder():
    s = session([("00a408000411001102", "6a82")])
    assert s.read_personal_data() is None
    s = session([("00a408000411001102", "9000"), ("00b00000ff", "00" * 20 + "6282")])
    assert s.read_personal_data() is None


def test_garbage_personal_data_is_malformed():
    s = session([("00a408000411001102", "9000"), ("00b00000ff", b"00ZZ0102".hex() + "6282")])
    with pytest.raises(MalformedResponseError):
        s.read_personal_data()


def test_pin_status_words():
    assert session([("00200010", "63c3")]).pin_tries_left() == 3
    assert session([("00200010", "6983")]).pin_tries_left() == 0
    assert session([("00200010", "9000")]).pin_tries_left() is None
    with pytest.raises(WrongPinError) as err:
        session([("0020001008" + b"12345678".hex(), "63c2")]).verify_pin("12345678")
    assert err.value.tries_left == 2 and "12345678" not in str(err.value)
    with pytest.raises(PinBlockedError):
        session([("0020001008", "63c0")]).verify_pin("12345678")
    with pytest.raises(ValueError) as bad:
        session([]).verify_pin("12ab")
    assert "12ab" not in str(bad.value)


def test_pin_commands_use_the_profile_references():
    model = {"keysets": [{"name": "CNS0", "pin_ref": 0x90, "puk_ref": 0x91},
                         {"name": "CNS1", "pin_ref": 0x9A, "puk_ref": 0x9B, "pin_df": "3F00/1400/8110"}]}
    pad = "ffff"
    s = CnsSession(ScriptedTransport([
        ("00a40800041400811000", "9000"),
        ("0024009a10" + b"123456".hex() + pad + b"654321".hex() + pad, "9000"),
        ("002c009010" + b"87654321".hex() + b"11112222".hex(), "9000"),
    ]), model)
    s.change_pin("123456", "654321", "CNS1")
    s.unblock_pin("87654321", "11112222", "CNS0")
