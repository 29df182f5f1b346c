"""Holder data is judged on the agent before any card is touched (issue 9 item 7, issue 10 items 1, 6).

``HolderRecord.from_dict`` is the one entry both the CLI (``HolderRecord.load``)
and the local API (``agent.api.operations``) go through: every refusal names the
file and the key, and says what was expected.
"""
from __future__ import annotations

import pytest

from agent.card import datipersonali
from agent.ops.holder import HolderFileError, HolderRecord
from personalizer import dati_personali as server_codec

MARIO = {"codice_fiscale": "RSSMRA80A01H501U", "given_name": "Mario", "surname": "Rossi",
         "birth_date": "1980-01-01", "sex": "M", "birth_town": "ROMA", "issuer": "CCIAA di Roma"}
NICOLO = {"codice_fiscale": "DNGNCL85C12D704Y", "given_name": "Nicolò", "surname": "D'Angelò",
          "birth_date": "1985-03-12", "sex": "M", "birth_town": "FORLÌ", "issuer": "CCIAA di Forlì"}


def _refused(**changes) -> HolderFileError:
    d = {k: v for k, v in {**MARIO, **changes}.items() if v is not None}
    with pytest.raises(HolderFileError) as ei:
        HolderRecord.from_dict(d, "holder.toml")
    msg = str(ei.value)
    assert msg.startswith("holder.toml: holder.") and "\n" not in msg
    return ei.value


def test_the_reference_holders_are_accepted():
    assert HolderRecord.from_dict(dict(MARIO)).codice_fiscale == "RSSMRA80A01H501U"
    assert HolderRecord.from_dict(dict(NICOLO)).given_name == "Nicolò"


def test_accented_holder_bytes_read_back_the_same_on_the_personalizer():
    raw = datipersonali.serialize(HolderRecord.from_dict(dict(NICOLO)).personal_data())
    # one byte string, parsed by both sides to the same names
    assert "NICOLÒ".encode("utf-8") in raw and "D'ANGELÒ".encode("utf-8") in raw and "FORLÌ".encode("utf-8") in raw
    server = server_codec.decode(raw)
    agent = datipersonali.parse(raw)
    assert (server.given_name, server.surname) == ("NICOLÒ", "D'ANGELÒ") == (agent.given_name, agent.surname)
    assert agent.holder_label == "NICOLÒ D'ANGELÒ"


@pytest.mark.parametrize("changes,key,expect", [
    ({"codice_fiscale": "RSSMRA80A01H501X"}, "codice_fiscale", "check character"),
    ({"given_name": "Luigi"}, "given_name", "codice fiscale"),
    ({"surname": "Bianchi"}, "surname", "codice fiscale"),
    ({"birth_date": "1981-01-01"}, "birth_date", "codice fiscale"),
    ({"sex": "F"}, "sex", "codice fiscale"),
    ({"birth_town": "F205"}, "birth_town", "H501"),                     # a cadastral code other than the CF's
    ({"birth_date": "1980-02-30"}, "birth_date", "YYYY-MM-DD"),
    ({"given_name": "MA\x00RIO"}, "given_name", "U+0000"),
    ({"surname": "ROSSI\u202e"}, "surname", "U+202E"),
    ({"issuer": "CCIAA\x1b[2J"}, "issuer", "U+001B"),
    ({"birth_town": "R" * 256}, "birth_town", "255"),
    ({"surname": "R" + "O" * 64}, "surname", "64"),
    ({"birth_town": 42}, "birth_town", "string"),
    ({"issuer": ["CCIAA"]}, "issuer", "string"),
    ({"validity_years": "6"}, "validity_years", "integer"),
    ({"validity_years": True}, "validity_years", "integer"),
    ({"validity_years": 0}, "validity_years", "1"),
])
def test_bad_holder_data_is_refused_with_the_key_named(changes, key, expect):
    err = _refused(**changes)
    assert err.key == f"holder.{key}", str(err)
    assert expect in str(err), str(err)


def test_qualified_common_name_beyond_64_characters_is_refused_before_any_key():
    err = _refused(codice_fiscale="RSSMGR80A41H501W", given_name="MARIAGRAZIAELISABETTAFRANCESCAANNA",
                   surname="ROSSIBIANCHIVERDINERIGIALLIBLU", sex="F")
    assert err.key in ("holder.given_name", "holder.surname") and "64" in str(err) and "common name" in str(err)


def test_omocodia_codice_fiscale_is_accepted():
    rec = HolderRecord.from_dict({**MARIO, "codice_fiscale": "RSSMRA80A01H5LMX", "birth_town": "H501"})
    assert rec.codice_fiscale == "RSSMRA80A01H5LMX"


def test_a_holder_file_with_accents_loads(tmp_path):
    p = tmp_path / "holder.toml"
    p.write_text('[holder]\ncodice_fiscale = "dngncl85c12d704y"\ngiven_name = "Nicolò"\nsurname = "D\'Angelò"\n'
                 'birth_date = "1985-03-12"\nsex = "M"\nbirth_town = "FORLÌ"\n', encoding="utf-8")
    rec = HolderRecord.load(p)
    assert rec.codice_fiscale == "DNGNCL85C12D704Y" and rec.personal_data().holder_label == "NICOLÒ D'ANGELÒ"
