"""Deferred issuance ("decentrata differita", issue 19): the rules of a registration.

A recognition officer (IR) registers a holder with the signed request form;
later a station of the same chamber issues to that holder on a blank card,
naming the registration. This module owns what a registration is
(``Registration``), how the form is judged (``check_form``: present, at most
``MAX_FORM_BYTES``, a PDF, PNG or JPEG by its magic bytes), how a new one is
made (``new_registration``: holder judged by ``validation.check_holder``, i.e.
``cns_spec``'s rules), and when an issuance may use one (``check_usable``:
same chamber, not expired, not used by another request, the same holder).

Marking a registration used is the store's (one statement in the issuance
request's own commit, guarded by a trigger against a second request).

Pure: no I/O, the time is passed in. Imports ``cns_spec``, ``errors`` and ``validation`` only.
"""
from __future__ import annotations

import datetime as _dt
import hashlib
import re
import secrets
from dataclasses import dataclass

from cns_spec import holder as cns_holder
from cns_spec.text import TextPolicyError, check_text, normalize
from personalizer.rules import validation
from personalizer.errors import FailedPrecondition, InvalidRequest, PermissionDenied

MAX_FORM_BYTES = 10 * 1024 * 1024
DEFAULT_EXPIRES_DAYS = 30
MAX_EXPIRES_DAYS = 365
MAX_BIRTH_TOWN = 64
# Magic bytes of the accepted form types (the signed paper form, scanned or signed as PDF).
FORM_TYPES = ((b"%PDF-", "application/pdf"), (b"\x89PNG\r\n\x1a\n", "image/png"), (b"\xff\xd8\xff", "image/jpeg"))
REGISTRATION_ID_RE = re.compile(r"REG-[0-9A-F]{16}")
STATE_OPEN, STATE_USED, STATE_EXPIRED, STATE_CANCELLED = "open", "used", "expired", "cancelled"


@dataclass(frozen=True)
class Registration:
    registration_id: str
    chamber_code: str
    codice_fiscale: str
    given_name: str
    surname: str
    birth_date: str          # ISO YYYY-MM-DD
    form_sha256: str         # hex
    form_type: str
    form_size: int
    created_by: str          # the IR's identity URI
    created_at: float
    expires_at: float
    used_by: str | None = None          # the issuing station's identity URI
    used_operator_id: str | None = None
    used_at: float | None = None
    request_id: str | None = None
    sex: str = ""
    birth_town: str = ""
    card_id: str | None = None          # the card it issued (bound by its first request)
    cancelled_by: str | None = None     # identity URI of who cancelled it (never once bound to a card)
    cancelled_at: float | None = None

    def state(self, now: float) -> str:
        if self.card_id:
            return STATE_USED
        if self.cancelled_at is not None:
            return STATE_CANCELLED
        return STATE_EXPIRED if now >= self.expires_at else STATE_OPEN


def form_type(form: bytes) -> str:
    for magic, media in FORM_TYPES:
        if form.startswith(magic):
            return media
    return ""


def check_form(form: bytes) -> str:
    """The form's media type; ``InvalidRequest("form", …)`` when missing, too large or of another type."""
    if not form:
        raise InvalidRequest("form", "the signed request form is required (a PDF, PNG or JPEG file)")
    if len(form) > MAX_FORM_BYTES:
        raise InvalidRequest("form", f"at most {MAX_FORM_BYTES // (1024 * 1024)} MiB (got {len(form)} bytes); "
                                     "scan it at a lower resolution")
    media = form_type(form)
    if not media:
        raise InvalidRequest("form", "not a PDF, PNG or JPEG file (judged by its first bytes); "
                                     "send the signed request form as one of these")
    return media


def check_expires_days(days: int) -> int:
    days = days or DEFAULT_EXPIRES_DAYS
    if not 1 <= days <= MAX_EXPIRES_DAYS:
        raise InvalidRequest("expires_days", f"must be 1..{MAX_EXPIRES_DAYS} days (got {days})")
    return days


def new_id() -> str:
    """``REG-`` and 16 random hex digits: unguessable, valid as a request id part."""
    return "REG-" + secrets.token_hex(8).upper()


def check_card_fields(holder: validation.Holder, sex: str, birth_town: str) -> tuple[str, str]:
    """Sex and birth town as EF_DatiPersonali keeps them, consistent with the codice fiscale."""
    sex = (sex or "").strip().upper()
    if sex not in ("", "M", "F"):
        raise InvalidRequest("sex", f"expected M or F (or nothing), got {sex[:8]!r}")
    town = normalize((birth_town or "").strip())
    try:
        check_text(town)
    except TextPolicyError as exc:
        raise InvalidRequest("birth_town", exc.reason) from None
    if len(town) > MAX_BIRTH_TOWN:
        raise InvalidRequest("birth_town", f"at most {MAX_BIRTH_TOWN} characters (got {len(town)})")
    try:
        cns_holder.check_holder(codice_fiscale_code=holder.codice_fiscale, given_name=holder.given_name,
                                surname=holder.surname, birth_date=holder.birth_date, sex=sex or None,
                                birth_place=town or None, qualified=False)
    except cns_holder.HolderDataError as exc:
        raise InvalidRequest(exc.field if exc.field in ("sex", "birth_town") else f"holder.{exc.field}",
                             exc.reason) from None
    return sex, town


def new_registration(*, chamber_code: str, created_by: str, cf: str, given_name: str, surname: str,
                     birth_date: str, form: bytes, expires_days: int, now: float, sex: str = "",
                     birth_town: str = "") -> Registration:
    """Judge everything first (holder, form, expiry): a refused registration writes nothing."""
    holder = validation.check_holder(cf, given_name, surname, birth_date)
    sex, birth_town = check_card_fields(holder, sex, birth_town)
    media = check_form(form)
    days = check_expires_days(expires_days)
    return Registration(
        registration_id=new_id(), chamber_code=chamber_code, codice_fiscale=holder.codice_fiscale,
        given_name=holder.given_name, surname=holder.surname, birth_date=holder.birth_date.isoformat(),
        form_sha256=hashlib.sha256(form).hexdigest(), form_type=media, form_size=len(form), created_by=created_by,
        created_at=now, expires_at=now + days * 86400, sex=sex, birth_town=birth_town)


def same_registration(a: Registration, b: Registration) -> bool:
    """``b`` asks for what ``a`` already holds (an IR's retry after a lost answer)."""
    fields = ("chamber_code", "codice_fiscale", "given_name", "surname", "birth_date", "sex", "birth_town",
              "form_sha256")
    return all(getattr(a, f) == getattr(b, f) for f in fields)


def check_usable(reg: Registration, *, chamber_code: str, holder: validation.Holder, card_id: str,
                 now: float) -> None:
    """May an issuance of ``chamber_code`` for ``holder`` on card ``card_id`` use ``reg``? Raises if not.

    A registration issues one card: once its first request bound it to a card, that card's requests
    (the other keyset's certificate, a retry, a re-personalization of the same card after an undo)
    pass, even past the expiry; any other card is refused."""
    if reg.chamber_code != chamber_code:
        raise PermissionDenied(f"registration {reg.registration_id} belongs to chamber {reg.chamber_code}; "
                               f"a station of chamber {chamber_code} may not complete it")
    used = bool(reg.card_id)
    if used and reg.card_id != card_id:
        raise FailedPrecondition(f"registration {reg.registration_id} was already used for card {reg.card_id} "
                                 f"(request {reg.request_id}); a registration issues one card: register the "
                                 "holder again")
    if not used and reg.cancelled_at is not None:
        raise FailedPrecondition(f"registration {reg.registration_id} was cancelled by {reg.cancelled_by}; "
                                 "register the holder again")
    if not used and now >= reg.expires_at:
        when = _dt.datetime.fromtimestamp(reg.expires_at, _dt.timezone.utc).isoformat(timespec="seconds")
        raise FailedPrecondition(f"registration {reg.registration_id} expired at {when}; register the holder again")
    expected = (reg.codice_fiscale, reg.given_name.casefold(), reg.surname.casefold(), reg.birth_date)
    got = (holder.codice_fiscale, holder.given_name.casefold(), holder.surname.casefold(),
           holder.birth_date.isoformat())
    if expected != got:
        names = ("codice_fiscale", "given_name", "surname", "birth_date")
        field = next(n for n, a, b in zip(names, expected, got) if a != b)
        raise InvalidRequest(f"holder.{field}", f"differs from registration {reg.registration_id}; issue to the "
                                                "registered holder (the agent fetches its data)")
