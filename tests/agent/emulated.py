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


def admin_login(session, model) -> None:
    """Issuer (admin) authentication on the EMULATED card with its own TEST key (the model's test master
    key diversified with its serial): GET CHALLENGE, then EXTERNAL AUTHENTICATE with AES-ECB(challenge).
    Tests only; the personalizer owns the real flow."""
    from agent.card.apdu import Apdu
    from firmware_profiles.emulator import admin

    d = model.dialect
    challenge, sw = session.transport.transmit(Apdu(0, 0x84, 0, 0, le=d.challenge_bytes).encode())
    assert sw == 0x9000, hex(sw)
    response = admin.cryptogram(admin.card_key(model, session.read_serial()), challenge)
    _, sw = session.transport.transmit(Apdu(0, 0x82, 0, d.admin_key_ref, response).encode())
    assert sw == 0x9000, hex(sw)


def personalized_card(model, data, **kwargs):
    """An EmulatedCard (powered) whose EF_DatiPersonali holds ``data``."""
    from agent.card.cns import CnsSession
    from firmware_profiles.emulator import CardRemovedError, EmulatedCard

    card = EmulatedCard(model, **kwargs)
    card.power_on()
    session = CnsSession(EmulatedTransport(card, (CardRemovedError,)), model)
    admin_login(session, model)
    session.write_personal_data(data)
    return card
