"""EF_DatiPersonali: round trip, blank files, malformed content."""
from __future__ import annotations

import pytest

from agent.card import MalformedResponseError, PersonalData
from agent.card import datipersonali as dp

MARIO = PersonalData(issuer="CCIAA Roma", issue_date="01012025", expiry_date="01012031", surname="ROSSI",
                     given_name="MARIO", birth_date="15031980", sex="M", height="", codice_fiscale="RSSMRA80C15H501U")


def test_round_trip_and_label():
    raw = dp.serialize(MARIO)
    assert raw[:6] == f"{len(raw) - 6:06X}".encode()
    assert dp.parse(raw) == MARIO
    assert dp.parse(raw).holder_label == "MARIO ROSSI"


def test_known_layout():
    raw = b"000018" + b"02AB" + b"00" + b"00" + b"05ROSSI" + b"05MARIO" + b"00"  # trailing fields absent
    assert len(raw) - 6 == 0x18
    got = dp.parse(raw)
    assert (got.issuer, got.surname, got.given_name, got.codice_fiscale) == ("AB", "ROSSI", "MARIO", "")


def test_trailing_padding_after_the_declared_length_is_ignored():
    raw = dp.serialize(MARIO) + b"\x00" * 40
    assert dp.parse(raw) == MARIO


@pytest.mark.parametrize("raw", [b"", b"\x00" * 64, b"\xff" * 64, b"000000" + b"\x00" * 10])
def test_blank(raw):
    assert dp.is_blank(raw)


@pytest.mark.parametrize("raw", [
    b"0000",                     # shorter than the header
    b"00ZZ10" + b"0" * 16,       # header not hex
    b"000010" + b"02AB",          # header longer than the file
    b"000006" + b"0XABCD",        # field length not hex
    b"000006" + b"09ABCD",        # field runs past the end
    b"000003" + b"021",           # truncated
])
def test_malformed(raw):
    with pytest.raises(MalformedResponseError):
        dp.parse(raw)


def test_field_too_long_is_refused():
    with pytest.raises(ValueError):
        dp.serialize(PersonalData(surname="X" * 256))
