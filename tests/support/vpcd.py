"""Cards on pcscd's vpcd reader for tests: the emulator's ``VpcdClient`` (its one vpcd client) serving any card.

``insert(address, card)`` puts ``card`` (an ``EmulatedCard``, or anything with its
``atr``/``serial``/``powered``/``power_on``/``power_off``/``reset``/``transmit``)
into the vpcd reader at ``HOST:PORT`` and returns the started ``VpcdClient``
once connected; ``client.stop()`` pulls it, and ``pull(client, reader)`` pulls it and returns once pcscd
reports the reader empty (pcscd polls vpcd every 400 ms: a card inserted before that is seen as the old
card still present, then removed, and a connect in between fails "No smart card inserted"). ``RawCard`` is the simplest card: a
fixed ATR and 6D00 to everything (an unsupported card).
"""
from __future__ import annotations

import time

from smartcard import scard

from firmware_profiles.emulator.vpcd import VpcdClient, parse_address


class RawCard:
    serial = "raw"

    def __init__(self, atr: bytes) -> None:
        self.atr = atr
        self.powered = False

    def power_on(self) -> bytes:
        self.powered = True
        return self.atr

    def power_off(self) -> None:
        self.powered = False

    def reset(self) -> bytes:
        return self.atr

    def transmit(self, apdu: bytes) -> bytes:
        return b"\x6d\x00"


def insert(address: str, card, *, timeout: float = 10.0) -> VpcdClient:
    host, port = parse_address(address)
    client = VpcdClient(card, host, port).start()
    if not client.inserted.wait(timeout):
        client.stop()
        raise RuntimeError(f"the card never connected to vpcd at {address}")
    return client


def reader_empty(reader: str) -> bool:
    """True when the test's pcscd reports ``reader`` with no card (read without waiting)."""
    hresult, ctx = scard.SCardEstablishContext(scard.SCARD_SCOPE_USER)
    if hresult != scard.SCARD_S_SUCCESS:
        raise RuntimeError(f"no PC/SC context: {scard.SCardGetErrorMessage(hresult)}")
    try:
        hresult, states = scard.SCardGetStatusChange(ctx, 0, [(reader, scard.SCARD_STATE_UNAWARE)])
        if hresult != scard.SCARD_S_SUCCESS or not states:
            raise RuntimeError(f"pcscd does not know reader {reader!r}: {scard.SCardGetErrorMessage(hresult)}")
        return bool(states[0][1] & scard.SCARD_STATE_EMPTY)
    finally:
        scard.SCardReleaseContext(ctx)


def pull(client: VpcdClient, reader: str, *, timeout: float = 10.0) -> None:
    """Pull the card served by ``client`` and wait until pcscd has seen it go from ``reader``."""
    client.stop()
    deadline = time.monotonic() + timeout
    while not reader_empty(reader):
        if time.monotonic() > deadline:
            raise RuntimeError(f"pcscd still shows a card in {reader!r} {timeout:.0f} s after it was pulled")
        time.sleep(0.02)
