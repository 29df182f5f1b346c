"""What the agent reads from a card it has just seen: serial and holder.

``inspect_card(transport, model)`` runs a ``CnsSession`` over any
``ApduTransport`` (PC/SC or in-process) and returns an ``Inspection``; card
errors propagate as ``agent.card.errors`` for the caller to report.
Imports ``agent.card`` only.
"""
from __future__ import annotations

from dataclasses import dataclass
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
