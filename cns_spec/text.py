"""Character policy for holder data: what a name or a card field may contain.

Refused everywhere: control characters (Cc: NUL, ESC, newline …), format
characters (Cf: the bidirectional overrides U+202A–U+202E and isolates
U+2066–U+2069, U+200E/U+200F marks, zero-width characters), surrogates,
private-use and unassigned code points, line and paragraph separators, and any
space other than U+0020. Names are stricter: letters (with their accents),
spaces, apostrophes, hyphens and dots. Text is compared in NFC, so "Ò" typed as
O + combining grave is the same name as the precomposed "Ò".

Pure; imports only the standard library.
"""
from __future__ import annotations

import unicodedata

REFUSED_CATEGORIES = {"Cc": "a control character", "Cf": "an invisible format or bidirectional-override character",
                      "Cs": "a surrogate", "Co": "a private-use character", "Cn": "an unassigned code point",
                      "Zl": "a line separator", "Zp": "a paragraph separator"}
NAME_PUNCTUATION = " '’-."


class TextPolicyError(ValueError):
    """``reason`` says which character, where, and what is allowed instead."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


def normalize(value: str) -> str:
    """The form holder text is stored, written and compared in: NFC."""
    return unicodedata.normalize("NFC", value)


def _describe(ch: str, pos: int) -> str:
    return f"character U+{ord(ch):04X} ({unicodedata.name(ch, 'unnamed')}) at position {pos + 1}"


def check_text(value: str) -> None:
    """Refuse what may not appear in any holder field; raise ``TextPolicyError``."""
    for pos, ch in enumerate(value):
        cat = unicodedata.category(ch)
        if cat in REFUSED_CATEGORIES:
            raise TextPolicyError(f"{_describe(ch, pos)} is {REFUSED_CATEGORIES[cat]}; remove it")
        if cat == "Zs" and ch != " ":
            raise TextPolicyError(f"{_describe(ch, pos)} is not a plain space; use U+0020")


def check_name(value: str) -> None:
    """A person's name: letters and their accents, spaces, apostrophes, hyphens, dots."""
    check_text(value)
    for pos, ch in enumerate(value):
        if not (unicodedata.category(ch)[0] in "LM" or ch in NAME_PUNCTUATION):
            raise TextPolicyError(f"{_describe(ch, pos)} is not allowed in a name; "
                                  "use letters, spaces, apostrophes, hyphens and dots")
    if not any(unicodedata.category(ch)[0] == "L" for ch in value):
        raise TextPolicyError("holds no letter")


def latin_letters(value: str) -> str:
    """Upper-case A–Z letters of ``value`` with accents removed (Ò → O), everything else dropped."""
    decomposed = unicodedata.normalize("NFD", value.upper())
    return "".join(ch for ch in decomposed if "A" <= ch <= "Z")
