"""PC/SC through pyscard's ``smartcard.scard``: the context, the card transport and the link, and
``in_use`` (is another client holding a reader's card: the token updater's idle check).

Owns every pyscard call of the agent's card I/O (the monitor's status loop in
``agent.devices.monitor`` is the other caller). PC/SC return codes become
``agent.card.errors`` exceptions here (``from`` the original where one exists),
so nothing above sees pyscard. Imports ``agent.card`` only; never the emulator.
"""
from __future__ import annotations

import logging
import threading
import time
from contextlib import contextmanager
from typing import Iterator

from smartcard import scard

from agent.card.errors import CardError, CardRemovedError, ReaderError
from agent.card.transport import split_response

log = logging.getLogger(__name__)

PNP_READER = "\\\\?PnP?\\Notification"
REMOVAL_SETTLE_S = 1.5  # how long an empty answer waits for the reader to report a removal
_PCSC_ABSENT = 0x0002  # SCardStatus state bit (pcsc-lite), not exported by pyscard

_REMOVED = {scard.SCARD_W_REMOVED_CARD, scard.SCARD_E_NO_SMARTCARD, scard.SCARD_W_RESET_CARD,
            scard.SCARD_W_UNPOWERED_CARD, scard.SCARD_W_UNRESPONSIVE_CARD}
_SERVICE_GONE = {scard.SCARD_E_NO_SERVICE, scard.SCARD_E_SERVICE_STOPPED, scard.SCARD_E_INVALID_HANDLE}


def pcsc_message(hresult: int) -> str:
    try:
        return f"{scard.SCardGetErrorMessage(hresult).strip()} (0x{hresult & 0xFFFFFFFF:08X})"
    except Exception:  # pragma: no cover - pyscard always has a message
        return f"PC/SC error 0x{hresult & 0xFFFFFFFF:08X}"


def check(hresult: int, what: str) -> None:
    """Raise the card-layer exception for a PC/SC return code."""
    if hresult == scard.SCARD_S_SUCCESS:
        return
    if hresult in _REMOVED:
        raise CardRemovedError(f"{what}: {pcsc_message(hresult)}")
    raise ReaderError(f"{what}: {pcsc_message(hresult)}")


def is_service_gone(hresult: int) -> bool:
    return hresult in _SERVICE_GONE


class PcscContext:
    """An established PC/SC context; ``close()`` releases it."""

    def __init__(self) -> None:
        try:
            hresult, self.handle = scard.SCardEstablishContext(scard.SCARD_SCOPE_USER)
        except scard.error as exc:  # pragma: no cover - pyscard raises only on bad arguments
            raise ReaderError(f"SCardEstablishContext: {exc}") from exc
        check(hresult, "SCardEstablishContext")

    def readers(self) -> list[str]:
        hresult, readers = scard.SCardListReaders(self.handle, [])
        if hresult in (scard.SCARD_E_NO_READERS_AVAILABLE,):
            return []
        check(hresult, "SCardListReaders")
        return list(readers)

    def cancel(self) -> None:
        scard.SCardCancel(self.handle)

    def close(self) -> None:
        scard.SCardReleaseContext(self.handle)


class PcscTransport:
    """An ``ApduTransport`` on one card in one reader, shared mode, T=1 or T=0."""

    def __init__(self, context: PcscContext, reader: str) -> None:
        self.reader = reader
        hresult, self.hcard, self.protocol = scard.SCardConnect(
            context.handle, reader, scard.SCARD_SHARE_SHARED, scard.SCARD_PROTOCOL_T0 | scard.SCARD_PROTOCOL_T1)
        check(hresult, f"connect to {reader!r}")
        self._pci = scard.SCARD_PCI_T1 if self.protocol == scard.SCARD_PROTOCOL_T1 else scard.SCARD_PCI_T0

    def transmit(self, apdu: bytes) -> tuple[bytes, int]:
        hresult, response = scard.SCardTransmit(self.hcard, self._pci, list(apdu))
        check(hresult, f"transmit on {self.reader!r}")
        if len(response) < 2 and self._card_gone():
            # vpcd (and some readers) answer a card pulled mid-command with an empty
            # response and success; the reader state tells removal from a mute card.
            raise CardRemovedError(f"transmit on {self.reader!r}: card removed during the command")
        return split_response(bytes(response))

    def _card_gone(self, wait_s: float = REMOVAL_SETTLE_S) -> bool:
        deadline = time.monotonic() + wait_s
        while True:
            hresult, _reader, state, _proto, _atr = scard.SCardStatus(self.hcard)
            if hresult in _REMOVED or (hresult == scard.SCARD_S_SUCCESS and state & _PCSC_ABSENT):
                return True
            if hresult != scard.SCARD_S_SUCCESS or time.monotonic() >= deadline:
                return False
            time.sleep(0.05)

    def begin(self) -> None:
        check(scard.SCardBeginTransaction(self.hcard), f"begin transaction on {self.reader!r}")

    def end(self) -> None:
        scard.SCardEndTransaction(self.hcard, scard.SCARD_LEAVE_CARD)

    def close(self) -> None:
        scard.SCardDisconnect(self.hcard, scard.SCARD_LEAVE_CARD)

    def __enter__(self) -> "PcscTransport":
        try:
            self.begin()
        except CardError:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            self.end()
        finally:
            self.close()


class PcscLink:
    """The PC/SC ``DeviceLink`` (``agent.devices.backend``): a connection owning its own context, so that
    operations can run it from worker threads while the monitor keeps its own.

    ``transaction()`` holds ``SCardBeginTransaction`` … ``SCardEndTransaction`` for the ``with`` block:
    pcscd then queues every other client's commands to this card (another application, OpenSC's PKCS#11
    module) until the block ends, so the commands of one step are never interleaved with someone else's
    (which could select another file or reset a verified PIN mid-step). Re-entrant: a nested block is part
    of the outer one. Only the outermost block ends the transaction, with ``SCARD_LEAVE_CARD``."""

    def __init__(self, reader: str) -> None:
        self.reader = reader
        self.context = PcscContext()
        try:
            self.transport = PcscTransport(self.context, reader)
        except Exception:
            self.context.close()
            raise
        self._depth = 0
        self._lock = threading.Lock()

    def transmit(self, apdu: bytes) -> tuple[bytes, int]:
        return self.transport.transmit(apdu)

    @contextmanager
    def transaction(self) -> Iterator[None]:
        with self._lock:
            if self._depth == 0:
                self.transport.begin()
            self._depth += 1
        try:
            yield
        finally:
            with self._lock:
                self._depth -= 1
                if self._depth == 0:
                    self.transport.end()

    def close(self) -> None:
        try:
            self.transport.close()
        finally:
            self.context.close()


def in_use(reader: str) -> bool:
    """True when another PC/SC client holds the card in ``reader``: a connection of its own, or the
    transaction it runs over one (pcscd's reader state ``INUSE`` / ``EXCLUSIVE``, read without waiting: an
    exclusive connect would block behind another client's transaction). False when the card is free or
    absent, or pcscd does not know the reader. Touches nothing."""
    ctx = PcscContext()
    try:
        hresult, states = scard.SCardGetStatusChange(ctx.handle, 0, [(reader, scard.SCARD_STATE_UNAWARE)])
        if hresult != scard.SCARD_S_SUCCESS or not states:
            return False
        return bool(states[0][1] & (scard.SCARD_STATE_INUSE | scard.SCARD_STATE_EXCLUSIVE))
    finally:
        ctx.close()
