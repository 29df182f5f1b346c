"""EF_DatiPersonali, the one codec (cns_spec.dati_personali): UTF-8 values, byte lengths, OpenSC's bounds."""
from __future__ import annotations

import pytest

from cns_spec import dati_personali as dp

NICOLO = dp.PersonalData(issuer="CCIAA di Forlì", issue_date="01122026", expiry_date="01122032",
                         surname="D'ANGELÒ", given_name="NICOLÒ", birth_date="12031985", sex="M",
                         codice_fiscale="DNGNCL85C12D704Y", birth_town="FORLÌ")


def test_accents_round_trip_as_utf8_with_byte_lengths():
    raw = dp.encode(NICOLO)
    assert dp.decode(raw) == NICOLO
    # the surname field: 2 hex characters of its UTF-8 byte length (Ò is 2 bytes), then the bytes
    name = "D'ANGELÒ".encode("utf-8")
    assert f"{len(name):02X}".encode() + name in raw and len(name) == 9
    assert raw[:6] == f"{len(raw) - 6:06X}".encode()


def test_label_is_what_opensc_builds():
    # OpenSC: "<first name> <last name>" from fields 5 and 4, bytes copied into a UTF-8 PKCS#11 label
    assert dp.decode(dp.encode(NICOLO)).holder_label == "NICOLÒ D'ANGELÒ"


def test_ascii_files_written_before_read_the_same():
    raw = b"000018" + b"02AB" + b"00" + b"00" + b"05ROSSI" + b"05MARIO" + b"00"
    got = dp.decode(raw)
    assert (got.issuer, got.surname, got.given_name) == ("AB", "ROSSI", "MARIO")


def test_a_latin1_file_is_refused_with_the_field_named():
    raw = b"000010" + b"00" * 3 + b"08D'ANGEL\xd2" + b"00"
    with pytest.raises(dp.DatiPersonaliError) as ei:
        dp.decode(raw)
    assert ei.value.field == "surname" and "utf-8" in str(ei.value)


@pytest.mark.parametrize("field,value,expect", [
    ("residence_address", "VIA ROMA\x00", "U+0000"),
    ("notes", "a\u202eb", "U+202E"),
    ("birth_town", "È" * 128, "256 bytes"),          # 128 characters, 256 bytes: too long for OpenSC
    ("birth_date", "1985-03-12", "ddmmyyyy"),
    ("sex", "X", "M or F"),
])
def test_encode_refuses_fields_outside_bounds(field, value, expect):
    from dataclasses import replace
    with pytest.raises(dp.DatiPersonaliError) as ei:
        dp.encode(replace(NICOLO, **{field: value}))
    assert ei.value.field == field and expect in str(ei.value)


def test_encode_refuses_a_file_opensc_would_not_read_whole():
    from dataclasses import replace
    big = replace(NICOLO, residence_address="V" * 200, notes="N" * 150)
    with pytest.raises(dp.DatiPersonaliError, match="at most 400"):
        dp.encode(big)


def test_cn_hash_is_28_base64_characters_of_the_exact_bytes():
    raw = dp.encode(NICOLO)
    assert len(dp.cn_hash(raw)) == 28 and dp.cn_hash(raw) != dp.cn_hash(raw + b"\x00")


def test_the_agent_and_the_personalizer_use_this_codec():
    from agent.card import datipersonali as agent_side
    from personalizer import dati_personali as server_side
    from tests.support import cardprep
    assert agent_side.serialize is dp.encode and server_side.encode is dp.encode and server_side.decode is dp.decode
    assert agent_side.PersonalData is dp.PersonalData is server_side.DatiPersonali
    assert dp.decode(cardprep.dati_personali("NICOLÒ", "D'ANGELÒ")).holder_label == "NICOLÒ D'ANGELÒ"
