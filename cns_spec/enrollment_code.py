"""The station enrollment code bundle that central IT hands to a workstation (issue 18 item 4).

``cnsctl station add`` prints, and ``cns-agent enroll --code`` reads, one token::

    <code>-<sha256>

``code`` is the one-time secret (``CODE_BYTES`` random bytes, base32, lower
case, no padding: 32 characters, 160 bits); ``sha256`` is the SHA-256 of the
personalizer's TLS CA certificate (DER, 64 hex digits), which the agent pins
before it sends anything. The personalizer stores only the SHA-256 of the code.
Pure: standard library only.
"""
from __future__ import annotations

import base64
import hashlib
import re
import secrets

CODE_BYTES = 20
_CODE_RE = re.compile(r"[a-z2-7]{32}")
_FP_RE = re.compile(r"[0-9a-f]{64}")


class BadCode(ValueError):
    """The text is not a code bundle; the message says what was expected."""


def new_code() -> str:
    return base64.b32encode(secrets.token_bytes(CODE_BYTES)).decode().rstrip("=").lower()


def code_hash(code: str) -> str:
    """What the personalizer stores and looks up (a 160-bit random secret needs no slow hash)."""
    return hashlib.sha256(code.encode()).hexdigest()


def fingerprint(ca_der: bytes) -> str:
    return hashlib.sha256(ca_der).hexdigest()


def make_bundle(code: str, ca_der: bytes) -> str:
    return f"{code}-{fingerprint(ca_der)}"


def parse_bundle(text: str) -> tuple[str, str]:
    """(code, CA fingerprint) of a bundle; spaces and case are forgiven (people retype it)."""
    t = "".join(text.split()).lower()
    code, sep, fp = t.rpartition("-")
    if not sep or not _CODE_RE.fullmatch(code) or not _FP_RE.fullmatch(fp):
        raise BadCode("the enrollment code must be the whole text `cnsctl station add` printed: 32 letters/digits, "
                      "a dash, then 64 hex digits (the personalizer's CA fingerprint); check for a missing part")
    return code, fp
