"""Italian codice fiscale (personal tax code) validation, omocodia included.

Pure functions, no I/O, imports nothing of ours. Layout of the 16 characters
(DM 23/12/1976): surname (3 letters), given name (3 letters), birth year
(2 digits), birth month (1 letter), birth day (2 digits, +40 for women),
municipality (1 letter + 3 digits), check character. When two people would
get the same code, the Agenzia delle Entrate replaces digits from the right
with letters (omocodia: 0-9 → L M N P Q R S T U V); the check character is
computed on the substituted form.
"""
from __future__ import annotations

import datetime as _dt
import re
from dataclasses import dataclass

LENGTH = 16
MONTH_LETTERS = "ABCDEHLMPRST"          # January .. December
OMOCODIA_LETTERS = "LMNPQRSTUV"         # replace digits 0..9
OMOCODIA_POSITIONS = (6, 7, 9, 10, 12, 13, 14)  # digit positions, 0-based
FEMALE_DAY_OFFSET = 40

# Values of characters in odd positions (1st, 3rd, ... i.e. 0-based even index).
_ODD_VALUES = dict(zip(
    "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ",
    [1, 0, 5, 7, 9, 13, 15, 17, 19, 21,
     1, 0, 5, 7, 9, 13, 15, 17, 19, 21, 2, 4, 18, 20, 11, 3, 6, 8, 12, 14, 16, 10, 22, 25, 24, 23],
))
_EVEN_VALUES = {**{str(d): d for d in range(10)}, **{chr(ord("A") + i): i for i in range(26)}}
_SHAPE = re.compile(r"^[A-Z]{6}[0-9LMNPQRSTUV]{2}[A-Z][0-9LMNPQRSTUV]{2}[A-Z][0-9LMNPQRSTUV]{3}[A-Z]$")


class CodiceFiscaleError(ValueError):
    """The code is malformed; ``reason`` says exactly how."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


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
