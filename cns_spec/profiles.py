"""The CA profiles' names and which keyset of a CNS card each one certifies.

``cns-auth`` (CNS authentication, keyset CNS0) and ``qualified-signature`` (keyset CNS1). The agent asks for
``PROFILE_OF_KEYSET[keyset]``; the personalizer validates and builds certificates by these names; only the
gRPC edges map them to ``cns.v1.CAProfile``.

Pure: standard library only, nothing of ours, no I/O.
"""
from __future__ import annotations

CNS_AUTH = "cns-auth"
QUALIFIED_SIGNATURE = "qualified-signature"
PROFILES: tuple[str, ...] = (CNS_AUTH, QUALIFIED_SIGNATURE)

PROFILE_OF_KEYSET: dict[str, str] = {"CNS0": CNS_AUTH, "CNS1": QUALIFIED_SIGNATURE}
KEYSET_OF_PROFILE: dict[str, str] = {p: k for k, p in PROFILE_OF_KEYSET.items()}

__all__ = ["CNS_AUTH", "KEYSET_OF_PROFILE", "PROFILES", "PROFILE_OF_KEYSET", "QUALIFIED_SIGNATURE"]
