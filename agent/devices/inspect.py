"""What the agent reads from a card it has just seen: serial and holder.

``inspect_card(transport, model)`` runs a ``CnsSession`` over any
``ApduTransport`` (PC/SC or in-process) and returns an ``Inspection``; card
errors propagate as ``agent.card.errors`` for the caller to report.
``reread_card`` reads a card again after an operation changed it and updates
the registry's view. Imports ``agent.card`` only (the registry is passed in).
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from collections.abc import Callable
from typing import Any

from agent.card import ApduTransport, CnsSession


@dataclass(frozen=True)
class Inspection:
    serial: str
    holder_label: str
    blank: bool


def inspect_card(transport: ApduTransport, model: Any) -> Inspection:
    session = CnsSession(transport, model)
    summary = session.summary()
    return Inspection(summary.serial, summary.holder_label, summary.personal is None)


def reread_card(registry: Any, name: str, connect: Callable[[str], Any], model: Any) -> None:
    """Read the card in reader ``name`` again through ``connect(name)`` (a ``DeviceLink``, or any link with
    ``transmit`` and ``close``) and update ``registry``'s view of it. Blocking: call it from a worker thread. Raises what
    reading raises; the view is then left as it was."""
    link = connect(name)
    try:
        hold = getattr(link, "transaction", None)   # a DeviceLink: one transaction for the whole read
        with hold() if hold is not None else contextlib.nullcontext():
            found = inspect_card(link, model)
    finally:
        link.close()
    registry.card_read(name, serial=found.serial, holder_label=found.holder_label, blank=found.blank)
