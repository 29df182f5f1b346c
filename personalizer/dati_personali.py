"""EF_DatiPersonali (CNS file 3F00/1100/1102): encode, decode, hash for the CN.

Pure, imports nothing of ours. Layout (REFERENCE.md §3): 6 hex-ASCII characters
giving the length of what follows, then fields, each prefixed by 2 hex-ASCII
characters with its length. Dates are ``ddmmyyyy``. An empty field is ``00``.

The CNS authentication certificate's CN is ``<CF>/<card id>.<hash>`` where the
hash is base64(SHA-1(EF_DatiPersonali)). SHA-1 here is an identifier, not a
signature; it is also the only common digest whose base64 form (28 chars)
keeps the CN within the 64-character X.520 upper bound with a 16-character
card id (16 + 1 + 16 + 1 + 28 = 62).
"""
from __future__ import annotations

import base64
import datetime as _dt
import hashlib
from dataclasses import dataclass, fields

TOTAL_LENGTH_DIGITS = 6
FIELD_LENGTH_DIGITS = 2
MAX_FIELD = 0xFF
DATE_FORMAT = "%d%m%Y"


class DatiPersonaliError(ValueError):
    pass


@dataclass(frozen=True)
class DatiPersonali:
    """Fields in file order."""

    issuer: str = ""
    issue_date: str = ""          # ddmmyyyy
    expiry_date: str = ""         # ddmmyyyy
    surname: str = ""
    given_name: str = ""
    birth_date: str = ""          # ddmmyyyy
    sex: str = ""                 # M / F
    height: str = ""
    codice_fiscale: str = ""
    citizenship: str = ""
    birth_municipality: str = ""
    birth_country: str = ""
    birth_act: str = ""
    residence_municipality: str = ""
    residence_address: str = ""
    expatriation_notes: str = ""

    def birth(self) -> _dt.date | None:
        try:
            return _dt.datetime.strptime(self.birth_date, DATE_FORMAT).date()
        except ValueError:
            return None


def encode(data: DatiPersonali) -> bytes:
    body = ""
    for f in fields(DatiPersonali):
        value = getattr(data, f.name)
        raw = value.encode("ascii")  # the card file is ASCII
        if len(raw) > MAX_FIELD:
            raise DatiPersonaliError(f"field {f.name} longer than {MAX_FIELD} bytes")
        body += f"{len(raw):0{FIELD_LENGTH_DIGITS}X}{value}"
    return f"{len(body):0{TOTAL_LENGTH_DIGITS}X}{body}".encode("ascii")


def decode(raw: bytes) -> DatiPersonali:
    try:
        text = raw.decode("ascii")
    except UnicodeDecodeError as exc:
        raise DatiPersonaliError("not ASCII") from exc
    try:
        total = int(text[:TOTAL_LENGTH_DIGITS], 16)
    except ValueError as exc:
        raise DatiPersonaliError("total length is not 6 hex characters") from exc
    body = text[TOTAL_LENGTH_DIGITS:TOTAL_LENGTH_DIGITS + total]
    if len(body) != total:
        raise DatiPersonaliError(f"declares {total} characters, has {len(body)}")
    values: list[str] = []
    pos = 0
    names = [f.name for f in fields(DatiPersonali)]
    while pos < len(body) and len(values) < len(names):
        try:
            n = int(body[pos:pos + FIELD_LENGTH_DIGITS], 16)
        except ValueError as exc:
            raise DatiPersonaliError(f"field {names[len(values)]}: length is not hex") from exc
        pos += FIELD_LENGTH_DIGITS
        if pos + n > len(body):
            raise DatiPersonaliError(f"field {names[len(values)]} runs past the end")
        values.append(body[pos:pos + n])
        pos += n
    return DatiPersonali(*values)


def cn_hash(raw: bytes) -> str:
    """base64(SHA-1(EF_DatiPersonali)), as it appears after the dot in the CN."""
    return base64.b64encode(hashlib.sha1(raw, usedforsecurity=False).digest()).decode("ascii")
