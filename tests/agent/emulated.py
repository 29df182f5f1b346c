"""An ``ApduTransport`` over the in-process emulator (tests only: production never imports the emulator).

Any object with ``transmit(apdu) -> data+SW`` works (``EmulatedCard`` from
``firmware_profiles.emulator``); a card that raises its removal exception is
reported as ``CardRemovedError``.
"""
from __future__ import annotations

from agent.card.errors import CardRemovedError
from agent.card.transport import split_response


class EmulatedTransport:
    def __init__(self, card, removed_errors: tuple[type[BaseException], ...] = ()) -> None:
        self.card = card
        self.removed_errors = removed_errors

    def transmit(self, apdu: bytes) -> tuple[bytes, int]:
        try:
            raw = self.card.transmit(bytes(apdu))
        except self.removed_errors as exc:
            raise CardRemovedError(f"emulated card removed: {exc}") from exc
        return split_response(bytes(raw))
