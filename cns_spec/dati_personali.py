"""EF_DatiPersonali (CNS file 3F00/1100/1102): the one codec both the agent and the personalizer use.

Layout (REFERENCE.md §3): 6 hex-ASCII characters giving the byte length of what
follows, then 16 fields in a fixed order, each prefixed by 2 hex-ASCII
characters with its byte length (an empty field is ``00``). Trailing fields may
be absent when reading. Dates are ``ddmmyyyy``.

Encoding: field values are UTF-8 and every length counts bytes. OpenSC
(``pkcs15-itacns.c``, ``get_name_from_EF_DatiPersonali``) copies the first-name
and surname bytes unchanged into the token label, and PKCS#11 labels are
UTF-8 (``CK_UTF8CHAR``): a UTF-8 file is what makes "NICOLÒ D'ANGELÒ" show
right in ``pkcs15-tool`` and ``pkcs11-tool``, where Latin-1 bytes would be an
invalid label. ASCII data is byte-identical in both, so cards written with
ASCII names read the same. OpenSC reads at most 400 bytes of the file and
refuses a field of 256 bytes or more: ``encode`` refuses both.

The CNS authentication certificate's CN is ``<CF>/<card id>.<hash>`` where the
hash is base64(SHA-1(EF_DatiPersonali)). SHA-1 here is an identifier, not a
signature; its base64 form (28 chars) keeps the CN within the 64-character
X.520 bound with a 16-character card id (16 + 1 + 16 + 1 + 28 = 62).

Pure; imports only the standard library and ``cns_spec.text``.
"""
from __future__ import annotations

import base64
import datetime as _dt
import hashlib
import re
from dataclasses import asdict, dataclass, fields

from cns_spec.text import TextPolicyError, check_text

ENCODING = "utf-8"
HEADER_LEN = 6                 # hex-ASCII total length
FIELD_LEN_CHARS = 2            # hex-ASCII length of each field
MAX_FIELD = 0xFF               # bytes; OpenSC refuses 256 and more
MAX_FILE = 400                 # bytes, header included: all OpenSC reads (EF_personaldata_maxlen)
DATE_FORMAT = "%d%m%Y"
_HEX = re.compile(rb"^[0-9A-Fa-f]+$")
_DATE_RE = re.compile(r"^[0-9]{8}$")


class DatiPersonaliError(ValueError):
    """Malformed content or a field outside its bounds; ``field`` names it (or ``""`` for the whole file)."""

    def __init__(self, reason: str, field: str = ""):
        super().__init__(f"field {field}: {reason}" if field else reason)
        self.reason = reason
        self.field = field


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

    def birth(self) -> _dt.date | None:
        try:
            return _dt.datetime.strptime(self.birth_date, DATE_FORMAT).date()
        except ValueError:
            return None

    def as_dict(self) -> dict[str, str]:
        return asdict(self)


FIELD_NAMES = tuple(f.name for f in fields(PersonalData))
DATE_FIELDS = ("issue_date", "expiry_date", "birth_date")


def check_fields(data: PersonalData) -> None:
    """Every field within its bounds and the character policy; raise ``DatiPersonaliError`` naming the field."""
    for name in FIELD_NAMES:
        value = getattr(data, name)
        if not isinstance(value, str):
            raise DatiPersonaliError(f"expected text, got {type(value).__name__}", name)
        try:
            check_text(value)
        except TextPolicyError as exc:
            raise DatiPersonaliError(exc.reason, name) from None
        size = len(value.encode(ENCODING))
        if size > MAX_FIELD:
            raise DatiPersonaliError(f"{size} bytes in {ENCODING}, longer than the {MAX_FIELD} a field holds", name)
    for name in DATE_FIELDS:
        value = getattr(data, name)
        if value and not _DATE_RE.match(value):
            raise DatiPersonaliError(f"expected a date as ddmmyyyy, got {value!r}", name)
    if data.sex not in ("", "M", "F"):
        raise DatiPersonaliError(f"expected M or F, got {data.sex!r}", "sex")


def encode(data: PersonalData) -> bytes:
    """The file content for ``data``: every field written, empty ones as ``00``."""
    check_fields(data)
    body = bytearray()
    for name in FIELD_NAMES:
        value = getattr(data, name).encode(ENCODING)
        body += f"{len(value):02X}".encode("ascii") + value
    raw = f"{len(body):06X}".encode("ascii") + bytes(body)
    if len(raw) > MAX_FILE:
        raise DatiPersonaliError(f"the holder data take {len(raw)} bytes; EF_DatiPersonali holds at most "
                                 f"{MAX_FILE}: shorten the longest fields")
    return raw


def _hex(raw: bytes, what: str) -> int:
    if not _HEX.match(raw):
        raise DatiPersonaliError(f"{what} is not hex ASCII: {raw[:8]!r}")
    return int(raw, 16)


def is_blank(raw: bytes) -> bool:
    """A never-written file: empty, all 00 or all FF, or a zero total length."""
    stripped = raw.rstrip(b"\x00\xff")
    return not stripped or stripped[:HEADER_LEN] == b"0" * HEADER_LEN


def decode(raw: bytes) -> PersonalData:
    """Parse the file's content (padding after the declared length ignored); raise ``DatiPersonaliError``."""
    if len(raw) < HEADER_LEN:
        raise DatiPersonaliError(f"{len(raw)} bytes, shorter than its header")
    total = _hex(raw[:HEADER_LEN], "total length")
    body = raw[HEADER_LEN:HEADER_LEN + total]
    if len(body) < total:
        raise DatiPersonaliError(f"header says {total} bytes, file has {len(body)}")
    values: list[str] = []
    pos = 0
    while pos < len(body) and len(values) < len(FIELD_NAMES):
        name = FIELD_NAMES[len(values)]
        if pos + FIELD_LEN_CHARS > len(body):
            raise DatiPersonaliError("truncated field length", name)
        n = _hex(body[pos:pos + FIELD_LEN_CHARS], "length")
        pos += FIELD_LEN_CHARS
        if pos + n > len(body):
            raise DatiPersonaliError("runs past the end", name)
        try:
            values.append(body[pos:pos + n].decode(ENCODING))
        except UnicodeDecodeError:
            raise DatiPersonaliError(f"not {ENCODING} text", name) from None
        pos += n
    return PersonalData(**dict(zip(FIELD_NAMES, values)))


def cn_hash(raw: bytes) -> str:
    """base64(SHA-1(EF_DatiPersonali)), as it appears after the dot in the CN."""
    return base64.b64encode(hashlib.sha1(raw, usedforsecurity=False).digest()).decode("ascii")
