"""The in-process emulated card as the agent sees a device (tests only: production never imports the emulator).

The one home of these adapters (tests and benchmarks import them from here):

- ``EmulatedTransport(card, removed_errors)``: an ``ApduTransport`` and ``DeviceLink``
  (``agent.devices.backend``) over any object with ``transmit(apdu) -> data+SW``
  (``EmulatedCard``); a card that raises its removal exception is reported as
  ``CardRemovedError``. ``transaction()`` is a no-op: nothing else talks to an
  in-process card.
- ``connect_to(card)``: the ``connect()`` an operation takes (powers the card on
  when needed); ``connect_reader(card)``: the same as ``connect(reader)``, as
  ``StationOps`` and the local API take it.
- ``admin_login`` and ``personalized_card``: an emulated card prepared with its
  factory TEST issuer key.
"""
from __future__ import annotations

from contextlib import nullcontext

from agent.card.errors import CardRemovedError
from agent.card.transport import split_response


class EmulatedTransport:
    def __init__(self, card, removed_errors: tuple[type[BaseException], ...] = ()) -> None:
        self.card = card
        self.removed_errors = removed_errors

    def transaction(self):
        return nullcontext()

    def close(self) -> None:
        pass

    def transmit(self, apdu: bytes) -> tuple[bytes, int]:
        try:
            raw = self.card.transmit(bytes(apdu))
        except self.removed_errors as exc:
            raise CardRemovedError(f"emulated card removed: {exc}") from exc
        return split_response(bytes(raw))


def connect_to(card):
    """``connect()`` for an operation on ``card`` (an ``EmulatedCard``), powered on when it is off."""
    from firmware_profiles.emulator import CardRemovedError as EmuRemoved

    def connect():
        if not card.powered:
            card.power_on()
        return EmulatedTransport(card, (EmuRemoved,))
    return connect


def connect_reader(card):
    """``connect(reader)`` for ``StationOps`` and the local API: every reader holds ``card``."""
    connect = connect_to(card)
    return lambda reader: connect()


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
