"""Holder data rules shared by the agent (before any card is touched) and the personalizer (again, on receipt).

``check_holder`` judges the fields a holder is identified by: character policy,
X.520 upper bounds of the certificate attributes they become, and consistency
with the codice fiscale. It raises ``HolderDataError`` whose ``field`` is the
bare field name (``given_name``, ``codice_fiscale`` …); each side prefixes it
the way its callers expect (``holder.given_name``).

Attribute bounds (RFC 5280 Appendix A, X.520 upper bounds, which
``cryptography`` also enforces for the CN): commonName and serialNumber 64;
surname and givenName are bounded at 64 here as well (the AgID profile keeps
them within the CN's bound, and a longer one could not fit the qualified CN).

Pure; imports only the standard library and ``cns_spec``.
"""
from __future__ import annotations

import datetime as _dt

from cns_spec import codice_fiscale
from cns_spec.text import TextPolicyError, check_name, check_text, normalize

ATTRIBUTE_UPPER_BOUNDS = {"common_name": 64, "given_name": 64, "surname": 64, "serial_number": 64,
                          "country_name": 2, "dn_qualifier": 64}
SERIAL_PREFIX = "TINIT-"            # ETSI EN 319 412-1 semantics identifier, natural person


class HolderDataError(ValueError):
    """``field`` (bare name) is wrong; ``reason`` says how and what to do."""

    def __init__(self, field: str, reason: str):
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason


def qualified_common_name(given_name: str, surname: str) -> str:
    """The qualified-signature certificate's CN: "GIVEN SURNAME", upper case."""
    return f"{given_name.strip().upper()} {surname.strip().upper()}"


def check_attribute(attribute: str, value: str) -> None:
    """A certificate subject attribute within its upper bound and the character policy."""
    bound = ATTRIBUTE_UPPER_BOUNDS.get(attribute)
    try:
        check_text(value)
    except TextPolicyError as exc:
        raise HolderDataError(attribute, exc.reason) from None
    if bound is not None and not 1 <= len(value) <= bound:
        raise HolderDataError(attribute, f"{len(value)} characters; the certificate attribute holds 1 to {bound}")


def check_name_field(field: str, value: object) -> str:
    """A surname or given name: a string, policy-clean, within 64 characters; returned NFC and stripped."""
    if not isinstance(value, str) or not value.strip():
        raise HolderDataError(field, "is required: a non-empty string")
    try:
        check_name(value)
    except TextPolicyError as exc:
        raise HolderDataError(field, exc.reason) from None
    clean = normalize(value.strip())
    bound = ATTRIBUTE_UPPER_BOUNDS[field]
    if len(clean) > bound:
        raise HolderDataError(field, f"{len(clean)} characters, longer than the {bound} a certificate "
                                     f"{field.replace('_', ' ')} holds")
    return clean


def check_holder(*, codice_fiscale_code: str, given_name: object, surname: object, birth_date: _dt.date,
                 sex: str | None = None, birth_place: str | None = None,
                 qualified: bool = True) -> codice_fiscale.CodiceFiscale:
    """Judge a holder; return the parsed codice fiscale. ``qualified``: a qualified-signature certificate
    ("GIVEN SURNAME" as its CN) will be issued, so that CN must fit its bound too."""
    try:
        parsed = codice_fiscale.parse(codice_fiscale_code)
    except codice_fiscale.CodiceFiscaleError as exc:
        raise HolderDataError("codice_fiscale", f"invalid codice fiscale: {exc.reason}") from None
    given = check_name_field("given_name", given_name)
    family = check_name_field("surname", surname)
    if qualified:
        cn = qualified_common_name(given, family)
        bound = ATTRIBUTE_UPPER_BOUNDS["common_name"]
        if len(cn) > bound:
            longer = "given_name" if len(given) >= len(family) else "surname"
            raise HolderDataError(longer, f"\"GIVEN SURNAME\" is {len(cn)} characters, longer than the {bound} "
                                          "of the qualified certificate's common name; shorten the names "
                                          "(e.g. drop a middle name)")
    try:
        codice_fiscale.check_consistency(parsed, surname=family, given_name=given, birth_date=birth_date,
                                         sex=sex or None, birth_place_code=birth_place or None)
    except codice_fiscale.CodiceFiscaleError as exc:
        raise HolderDataError(exc.field, exc.reason) from None
    return parsed
