"""EF_DatiPersonali: the CNS holder-data file, parsed and serialized.

Layout (REFERENCE §3): 6 hex-ASCII characters giving the length of what
follows, then fields in a fixed order, each prefixed by its length as 2
hex-ASCII characters (an empty field is ``00``). Trailing fields may be absent.
Pure: bytes in, ``PersonalData`` out; imports only ``agent.card.errors``.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields

from agent.card.errors import MalformedResponseError

HEADER_LEN = 6
FIELD_LEN_CHARS = 2
MAX_FIELD = 0xFF


@dataclass(frozen=True)
class PersonalData:
    """Holder fields in file order. Dates as on the card (ddmmyyyy)."""

    issuer: str = ""
    issue_date: str = ""
    expiry_date: str = ""
    surname: str = ""
    given_name: str = ""
    birth_date: str = ""
    sex: str = ""
    height: str = ""
    codice_fiscale: str = ""
    citizenship: str = ""
    birth_town: str = ""
    birth_country: str = ""
    birth_act: str = ""
    residence_town: str = ""
    residence_address: str = ""
    notes: str = ""

    @property
    def holder_label(self) -> str:
        """"Given Surname", as OpenSC labels the token; empty when both are empty."""
        return " ".join(p for p in (self.given_name.strip(), self.surname.strip()) if p)

    def as_dict(self) -> dict[str, str]:
        return asdict(self)


FIELD_NAMES = tuple(f.name for f in fields(PersonalData))


def _hex(raw: bytes, what: str) -> int:
    try:
        text = raw.decode("ascii")
        if not all(c in "0123456789abcdefABCDEF" for c in text):
            raise ValueError
        return int(text, 16)
    except (UnicodeDecodeError, ValueError):
        raise MalformedResponseError(f"EF_DatiPersonali: {what} is not hex ASCII: {raw!r}") from None


def is_blank(raw: bytes) -> bool:
    """A never-written file: empty, all 00 or all FF, or a zero total length."""
    stripped = raw.rstrip(b"\x00\xff")
    return not stripped or stripped[:HEADER_LEN] == b"0" * HEADER_LEN


def parse(raw: bytes) -> PersonalData:
    """Parse the file's content; raises ``MalformedResponseError`` on any inconsistency."""
    if len(raw) < HEADER_LEN:
        raise MalformedResponseError(f"EF_DatiPersonali: {len(raw)} bytes, shorter than its header")
    total = _hex(raw[:HEADER_LEN], "total length")
    body = raw[HEADER_LEN:HEADER_LEN + total]
    if len(body) < total:
        raise MalformedResponseError(f"EF_DatiPersonali: header says {total} bytes, file has {len(body)}")
    values: list[str] = []
    pos = 0
    while pos < len(body) and len(values) < len(FIELD_NAMES):
        if pos + FIELD_LEN_CHARS > len(body):
            raise MalformedResponseError("EF_DatiPersonali: truncated field length")
        n = _hex(body[pos:pos + FIELD_LEN_CHARS], f"length of field {FIELD_NAMES[len(values)]}")
        pos += FIELD_LEN_CHARS
        if pos + n > len(body):
            raise MalformedResponseError(f"EF_DatiPersonali: field {FIELD_NAMES[len(values)]} runs past the end")
        try:
            values.append(body[pos:pos + n].decode("latin-1"))
        except UnicodeDecodeError as exc:  # latin-1 decodes everything; kept for clarity
            raise MalformedResponseError("EF_DatiPersonali: undecodable field") from exc
        pos += n
    return PersonalData(**dict(zip(FIELD_NAMES, values)))


def serialize(data: PersonalData) -> bytes:
    """The file content for ``data``: every field written, empty ones as ``00``."""
    body = bytearray()
    for name in FIELD_NAMES:
        value = getattr(data, name).encode("latin-1")
        if len(value) > MAX_FIELD:
            raise ValueError(f"EF_DatiPersonali field {name} longer than {MAX_FIELD} bytes")
        body += f"{len(value):02X}".encode("ascii") + value
    return f"{len(body):06X}".encode("ascii") + bytes(body)
