"""``cns-agent pin``: see register()."""
from __future__ import annotations


def register(sub) -> None:
    """Add the ``pin`` commands to the ``cns-agent`` parser (filled in with the operation)."""
