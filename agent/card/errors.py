"""Exceptions of the card layer, with the data callers need.

::

    CardError                        anything that went wrong talking to a card
     ├── CardRemovedError            the card left the reader (or was reset) mid-exchange
     ├── ReaderError                 the reader or the PC/SC service failed (not the card)
     ├── MalformedResponseError      the card answered something we cannot parse
     └── ApduError(sw)               an unexpected status word, printed symbolically
          ├── FileNotFoundOnCardError(path)
          ├── SecurityStatusError    6982: the file or key needs a PIN first
          ├── WrongPinError(tries_left)
          ├── PinBlockedError        6983: PIN (or PUK) blocked
          └── PinNotSetError         6984: no PIN yet (a blank card of a set-at-personalization model)

Imports nothing but ``agent.card.apdu``. Messages never carry PINs or PUKs.
"""
from __future__ import annotations

from agent.card.apdu import sw_name


class CardError(Exception):
    """Base of every card-layer error."""


class CardRemovedError(CardError):
    """The card was removed (or reset by someone else) during the exchange."""


class ReaderError(CardError):
    """The reader or the PC/SC service failed; the card itself may be fine."""


class MalformedResponseError(CardError):
    """The card's answer does not follow the format we expect."""


class ApduError(CardError):
    """A status word the operation did not expect."""

    def __init__(self, sw: int, message: str = "") -> None:
        self.sw = sw
        text = f"{sw_name(sw)} ({sw:04X})"
        super().__init__(f"{message}: {text}" if message else text)


class FileNotFoundOnCardError(ApduError):
    def __init__(self, sw: int, path: str) -> None:
        self.path = path
        super().__init__(sw, f"file {path} not found")


class SecurityStatusError(ApduError):
    """6982: access needs a verified PIN."""


class WrongPinError(ApduError):
    """Wrong PIN or PUK; ``tries_left`` before it blocks."""

    def __init__(self, sw: int, tries_left: int) -> None:
        self.tries_left = tries_left
        super().__init__(sw, f"wrong PIN, {tries_left} tries left")


class PinBlockedError(ApduError):
    """The PIN (or the PUK) is blocked."""

    def __init__(self, sw: int, what: str = "PIN") -> None:
        super().__init__(sw, f"{what} blocked")


class PinNotSetError(ApduError):
    """6984: the PIN has no value yet (set at personalization)."""

    def __init__(self, sw: int, what: str = "PIN") -> None:
        super().__init__(sw, f"{what} not set yet")
