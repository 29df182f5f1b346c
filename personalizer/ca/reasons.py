"""Revocation reasons: RFC 5280 §5.3.1 names and codes, and EJBCA's spelling of them.

Pure data. ``parse_reason`` accepts the RFC 5280 name ("keyCompromise") or the
EJBCA/enum spelling ("KEY_COMPROMISE"), case-insensitively, and returns the
``cryptography`` flag. The RFC 5280 names and codes are ``cns_spec.reasons``'s; this module
adds the ``cryptography`` flags and EJBCA's spelling. Imports nothing of ours but ``cns_spec`` and ``errors``.
"""
from __future__ import annotations

from cryptography import x509

from cns_spec import reasons as spec
from personalizer.errors import InvalidRequest

# RFC 5280 CRLReason codes, by cryptography's flag (the names and codes live in cns_spec.reasons).
CRL_REASON_CODES: dict[x509.ReasonFlags, int] = {x509.ReasonFlags(name): code
                                                  for name, code in spec.CRL_REASON_CODES.items()}

# EJBCA REST ``reason`` query values (RevocationReasons CLI values).
EJBCA_REASON_NAMES: dict[x509.ReasonFlags, str] = {
    x509.ReasonFlags.unspecified: "UNSPECIFIED",
    x509.ReasonFlags.key_compromise: "KEY_COMPROMISE",
    x509.ReasonFlags.ca_compromise: "CA_COMPROMISE",
    x509.ReasonFlags.affiliation_changed: "AFFILIATION_CHANGED",
    x509.ReasonFlags.superseded: "SUPERSEDED",
    x509.ReasonFlags.cessation_of_operation: "CESSATION_OF_OPERATION",
    x509.ReasonFlags.certificate_hold: "CERTIFICATE_HOLD",
    x509.ReasonFlags.remove_from_crl: "REMOVE_FROM_CRL",
    x509.ReasonFlags.privilege_withdrawn: "PRIVILEGES_WITHDRAWN",
    x509.ReasonFlags.aa_compromise: "AA_COMPROMISE",
}
EJBCA_NOT_REVOKED = "NOT_REVOKED"

# Reasons a permanent revocation may carry (hold and removeFromCRL have their own operations).
PERMANENT_REASONS = frozenset(x509.ReasonFlags(name) for name in spec.REVOCATION_REASONS)

_BY_NAME: dict[str, x509.ReasonFlags] = {}
for _flag, _ejbca in EJBCA_REASON_NAMES.items():
    _BY_NAME[_flag.value.lower()] = _flag
    _BY_NAME[_ejbca.lower()] = _flag


def parse_reason(name: str) -> x509.ReasonFlags:
    flag = _BY_NAME.get((name or "").strip().lower())
    if flag is None:
        known = ", ".join(f.value for f in CRL_REASON_CODES)
        raise InvalidRequest("reason", f"unknown revocation reason {name!r}; RFC 5280 names: {known}")
    return flag


def from_ejbca(name: str) -> x509.ReasonFlags | None:
    """EJBCA's reason string → flag; None for NOT_REVOKED or an empty value."""
    if not name or name.upper() == EJBCA_NOT_REVOKED:
        return None
    return parse_reason(name)
