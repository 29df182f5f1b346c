"""``cns-agent renew``: see register()."""
from __future__ import annotations


def register(sub) -> None:
    """Add the ``renew`` commands to the ``cns-agent`` parser (filled in with the operation)."""
