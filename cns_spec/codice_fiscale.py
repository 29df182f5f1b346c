"""Italian codice fiscale (personal tax code): shape, check character, omocodia, consistency.

Layout of the 16 characters (DM 23/12/1976): surname (3 letters), given name
(3 letters), birth year (2 digits), birth month (1 letter of ABCDEHLMPRST),
birth day (2 digits, +40 for women), birth place (cadastral code: 1 letter +
3 digits, Z### for a foreign country), check character. When two people would
get the same code, the Agenzia delle Entrate replaces digits from the right with
letters (omocodia: 0-9 → L M N P Q R S T U V); the check character is computed
on the substituted form.

Name letters: accents are dropped (Ò → O) and anything but A–Z is ignored.
Surname: its consonants, then its vowels, then X, first three. Given name: with
four or more consonants the 1st, 3rd and 4th; otherwise as the surname.

Pure; imports only the standard library and ``cns_spec.text``.
"""
from __future__ import annotations

import datetime as _dt
import re
from dataclasses import dataclass

from cns_spec.text import latin_letters

LENGTH = 16
MONTH_LETTERS = "ABCDEHLMPRST"          # January .. December
OMOCODIA_LETTERS = "LMNPQRSTUV"         # replace digits 0..9
OMOCODIA_POSITIONS = (6, 7, 9, 10, 12, 13, 14)  # digit positions, 0-based
FEMALE_DAY_OFFSET = 40
VOWELS = "AEIOU"
PLACE_CODE_RE = re.compile(r"^[A-Z][0-9]{3}$")

# Values of characters in odd positions (1st, 3rd, ... i.e. 0-based even index).
_ODD_VALUES = dict(zip(
    "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ",
    [1, 0, 5, 7, 9, 13, 15, 17, 19, 21,
     1, 0, 5, 7, 9, 13, 15, 17, 19, 21, 2, 4, 18, 20, 11, 3, 6, 8, 12, 14, 16, 10, 22, 25, 24, 23],
))
_EVEN_VALUES = {**{str(d): d for d in range(10)}, **{chr(ord("A") + i): i for i in range(26)}}
_SHAPE = re.compile(r"^[A-Z]{6}[0-9LMNPQRSTUV]{2}[A-Z][0-9LMNPQRSTUV]{2}[A-Z][0-9LMNPQRSTUV]{3}[A-Z]$")


class CodiceFiscaleError(ValueError):
    """The code is malformed or disagrees with the holder; ``field`` names the holder field at fault."""

    def __init__(self, reason: str, field: str = "codice_fiscale"):
        super().__init__(reason)
        self.reason = reason
        self.field = field


@dataclass(frozen=True)
class CodiceFiscale:
    code: str              # as given (upper case), possibly with omocodia letters
    canonical: str         # digits restored
    birth_year_2: int      # two-digit year
    birth_month: int
    birth_day: int
    female: bool
    municipality: str      # cadastral code, e.g. H501

    def matches_birth_date(self, date: _dt.date) -> bool:
        return (date.year % 100, date.month, date.day) == (self.birth_year_2, self.birth_month, self.birth_day)


def check_character(first15: str) -> str:
    """The check character for the first 15 characters (upper case)."""
    total = 0
    for i, ch in enumerate(first15):
        total += _ODD_VALUES[ch] if i % 2 == 0 else _EVEN_VALUES[ch]
    return chr(ord("A") + total % 26)


def _restore_digits(code: str) -> str:
    chars = list(code)
    for pos in OMOCODIA_POSITIONS:
        if chars[pos] in OMOCODIA_LETTERS:
            chars[pos] = str(OMOCODIA_LETTERS.index(chars[pos]))
    return "".join(chars)


def parse(code: str) -> CodiceFiscale:
    """Validate a codice fiscale and decode its birth data; raise CodiceFiscaleError."""
    if not isinstance(code, str):
        raise CodiceFiscaleError("not a string")
    cf = code.strip().upper()
    if len(cf) != LENGTH:
        raise CodiceFiscaleError(f"must be {LENGTH} characters, got {len(cf)}")
    if not _SHAPE.match(cf):
        raise CodiceFiscaleError(
            "malformed: expected 6 letters, 2 digits, month letter, 2 digits, "
            "letter + 3 digits, check letter (omocodia letters L-V allowed in digit positions)")
    expected = check_character(cf[:15])
    if cf[15] != expected:
        raise CodiceFiscaleError(f"wrong check character {cf[15]!r}, expected {expected!r}")
    canonical = _restore_digits(cf)
    if cf[8] not in MONTH_LETTERS:
        raise CodiceFiscaleError(f"invalid month letter {cf[8]!r}")
    day = int(canonical[9:11])
    female = day > FEMALE_DAY_OFFSET
    if female:
        day -= FEMALE_DAY_OFFSET
    if not 1 <= day <= 31:
        raise CodiceFiscaleError(f"invalid birth day {canonical[9:11]!r}")
    return CodiceFiscale(
        code=cf, canonical=canonical, birth_year_2=int(canonical[6:8]),
        birth_month=MONTH_LETTERS.index(cf[8]) + 1, birth_day=day, female=female,
        municipality=canonical[11:15],
    )


def is_valid(code: str) -> bool:
    try:
        parse(code)
    except CodiceFiscaleError:
        return False
    return True


def make(first15: str) -> str:
    """Append the check character (tests and demo data)."""
    return first15.upper() + check_character(first15.upper())


def _split(name: str) -> tuple[str, str]:
    letters = latin_letters(name)
    return "".join(c for c in letters if c not in VOWELS), "".join(c for c in letters if c in VOWELS)


def surname_code(surname: str) -> str:
    """The three letters a surname gives: consonants, then vowels, then X."""
    consonants, vowels = _split(surname)
    return (consonants + vowels + "XXX")[:3]


def given_name_code(given_name: str) -> str:
    """The three letters a given name gives: 1st, 3rd, 4th consonant when it has four or more."""
    consonants, vowels = _split(given_name)
    if len(consonants) >= 4:
        return consonants[0] + consonants[2] + consonants[3]
    return (consonants + vowels + "XXX")[:3]


def check_consistency(parsed: CodiceFiscale, *, surname: str | None = None, given_name: str | None = None,
                      birth_date: _dt.date | None = None, sex: str | None = None,
                      birth_place_code: str | None = None) -> None:
    """Raise ``CodiceFiscaleError`` (``field`` = the holder field) where the holder disagrees with the code.

    Each argument left ``None`` (or empty) is not checked. ``birth_place_code`` is compared only when it is a
    cadastral code (letter + 3 digits); a municipality name cannot be checked without the national table."""
    cf = parsed.code
    if surname is not None and surname_code(surname) != cf[0:3]:
        raise CodiceFiscaleError(
            f"{surname!r} gives the letters {surname_code(surname)} but the codice fiscale {cf} has {cf[0:3]}; "
            "check the surname and the codice fiscale", "surname")
    if given_name is not None and given_name_code(given_name) != cf[3:6]:
        raise CodiceFiscaleError(
            f"{given_name!r} gives the letters {given_name_code(given_name)} but the codice fiscale {cf} has "
            f"{cf[3:6]}; check the given name and the codice fiscale", "given_name")
    if birth_date is not None and not parsed.matches_birth_date(birth_date):
        raise CodiceFiscaleError(
            f"{birth_date.isoformat()} does not match the birth date encoded in the codice fiscale {cf} "
            f"(day {parsed.birth_day:02d}, month {parsed.birth_month:02d}, year ..{parsed.birth_year_2:02d})",
            "birth_date")
    if sex:
        coded = "F" if parsed.female else "M"
        if sex.upper() != coded:
            raise CodiceFiscaleError(f"{sex!r} contradicts the codice fiscale {cf}, which is a "
                                     f"{'woman' if parsed.female else 'man'}'s ({coded})", "sex")
    if birth_place_code:
        place = birth_place_code.strip().upper()
        if PLACE_CODE_RE.match(place) and place != parsed.municipality:
            raise CodiceFiscaleError(f"birth place code {place} differs from {parsed.municipality} in the "
                                     f"codice fiscale {cf}", "birth_town")
