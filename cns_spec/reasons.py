"""Revocation reasons: the RFC 5280 §5.3.1 CRLReason names and codes, and which of them a revocation may carry.

The names are RFC 5280's (``keyCompromise``), which are also the values of ``cryptography``'s
``x509.ReasonFlags``; the personalizer maps them to that enum and to a CA's own spelling. The agent offers
exactly ``REVOCATION_REASONS`` to the operator and the personalizer accepts exactly those.

Pure: standard library only, nothing of ours, no I/O.
"""
from __future__ import annotations

DEFAULT_REASON = "unspecified"
SUPERSEDED = "superseded"                       # a renewal replaced the certificate
CESSATION_OF_OPERATION = "cessationOfOperation"  # an undone operation, a retired station or card

# RFC 5280 CRLReason codes (value 7 is not used).
CRL_REASON_CODES: dict[str, int] = {
    "unspecified": 0,
    "keyCompromise": 1,
    "cACompromise": 2,
    "affiliationChanged": 3,
    "superseded": 4,
    "cessationOfOperation": 5,
    "certificateHold": 6,
    "removeFromCRL": 8,
    "privilegeWithdrawn": 9,
    "aACompromise": 10,
}

# Reasons a permanent revocation may carry: hold and removeFromCRL are suspend and reactivate, not revoke.
REVOCATION_REASONS: tuple[str, ...] = tuple(n for n in CRL_REASON_CODES if n not in ("certificateHold",
                                                                                     "removeFromCRL"))


def check_revocation_reason(reason: str) -> str:
    """``reason`` (empty → ``unspecified``) if a revocation may carry it, else ``ValueError`` naming the known ones."""
    reason = reason or DEFAULT_REASON
    if reason not in REVOCATION_REASONS:
        raise ValueError(f"unknown revocation reason {reason!r}: one of {', '.join(REVOCATION_REASONS)}")
    return reason


__all__ = ["CESSATION_OF_OPERATION", "CRL_REASON_CODES", "DEFAULT_REASON", "REVOCATION_REASONS", "SUPERSEDED",
           "check_revocation_reason"]
