"""EF_DatiPersonali on the card side: ``cns_spec.dati_personali`` with card errors.

The codec itself (layout, UTF-8, bounds) lives in ``cns_spec.dati_personali``,
shared with the personalizer; this module only turns a malformed file read
from a card into ``MalformedResponseError``. Imports ``cns_spec`` and
``agent.card.errors`` only.
"""
from __future__ import annotations

from agent.card.errors import MalformedResponseError
from cns_spec.dati_personali import (FIELD_NAMES, HEADER_LEN, MAX_FIELD, DatiPersonaliError, PersonalData,
                                     encode as serialize, is_blank)
from cns_spec.dati_personali import decode as _decode

__all__ = ["FIELD_NAMES", "HEADER_LEN", "MAX_FIELD", "DatiPersonaliError", "PersonalData", "is_blank", "parse",
           "serialize"]


def parse(raw: bytes) -> PersonalData:
    """Parse the file's content; raises ``MalformedResponseError`` on any inconsistency."""
    try:
        return _decode(raw)
    except DatiPersonaliError as exc:
        raise MalformedResponseError(f"EF_DatiPersonali: {exc}") from None
