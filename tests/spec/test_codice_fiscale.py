"""Codice fiscale rules (cns_spec.codice_fiscale): check character, omocodia, letters from names, consistency.

Expected codes are worked out by hand from the Italian rules (DM 23/12/1976), not by the code under test."""
from __future__ import annotations

import datetime as dt

import pytest

from cns_spec import codice_fiscale as cf


@pytest.mark.parametrize("surname,code", [
    ("Rossi", "RSS"), ("D'Angelò", "DNG"), ("Fo", "FOX"), ("Bianchi", "BNC"), ("De Luca", "DLC"),
    ("Aiello", "LLA"), ("Ré", "REX"), ("O", "OXX"),
])
def test_surname_letters(surname, code):
    assert cf.surname_code(surname) == code


@pytest.mark.parametrize("given,code", [
    ("Mario", "MRA"), ("Nicolò", "NCL"), ("Laura", "LRA"), ("Francesca", "FNC"),    # F R N C: 1st, 3rd, 4th
    ("Gianfranco", "GFR"), ("Maria Grazia", "MGR"), ("Eva", "VEA"), ("Al", "LAX"),
])
def test_given_name_letters(given, code):
    assert cf.given_name_code(given) == code


def test_check_character_of_known_codes():
    assert cf.make("RSSMRA80A01H501") == "RSSMRA80A01H501U"
    assert cf.make("DNGNCL85C12D704") == "DNGNCL85C12D704Y"


def test_omocodia_letters_decode_to_the_same_birth_data():
    # H501 → H5LM (0 → L, 1 → M), check character recomputed on the substituted form
    parsed = cf.parse("RSSMRA80A01H5LMX")
    assert parsed.municipality == "H501" and parsed.birth_day == 1 and not parsed.female
    both = cf.parse(cf.make("RSSMRAULALMH501"))     # year 80 → UL, day 01 → LM
    assert (both.birth_year_2, both.birth_day, both.municipality) == (80, 1, "H501")


def test_woman_day_plus_forty():
    parsed = cf.parse(cf.make("BNCLRA85M41H501"))
    assert parsed.female and (parsed.birth_month, parsed.birth_day) == (8, 1)


def test_months_use_abcdehlmprst():
    for month, letter in enumerate("ABCDEHLMPRST", start=1):
        assert cf.parse(cf.make(f"RSSMRA80{letter}01H501")).birth_month == month
    with pytest.raises(cf.CodiceFiscaleError, match="month letter 'F'"):
        cf.parse(cf.make("RSSMRA80F01H501"))


def test_consistency_names_each_field():
    p = cf.parse("DNGNCL85C12D704Y")
    cf.check_consistency(p, surname="D'ANGELÒ", given_name="NICOLÒ", birth_date=dt.date(1985, 3, 12), sex="M",
                         birth_place_code="D704")
    cases = [(dict(surname="DANTE"), "surname"), (dict(surname="ANGELO"), "surname"),
             (dict(given_name="NICOLA"), None), (dict(given_name="LUCA"), "given_name"),
             (dict(birth_date=dt.date(1985, 3, 13)), "birth_date"), (dict(birth_date=dt.date(1995, 3, 12)), "birth_date"),
             (dict(sex="F"), "sex"), (dict(birth_place_code="D705"), "birth_town"),
             (dict(birth_place_code="FORLÌ"), None)]   # a name, not a code: not checkable offline
    for kw, field in cases:
        if field is None:
            cf.check_consistency(p, **kw)
            continue
        with pytest.raises(cf.CodiceFiscaleError) as ei:
            cf.check_consistency(p, **kw)
        assert ei.value.field == field, (kw, ei.value)
