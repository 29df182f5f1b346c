"""Cards on pcscd's vpcd reader for tests: the emulator's ``VpcdClient`` (its one vpcd client) serving any card.

``insert(address, card)`` puts ``card`` (an ``EmulatedCard``, or anything with its
``atr``/``serial``/``powered``/``power_on``/``power_off``/``reset``/``transmit``)
into the vpcd reader at ``HOST:PORT`` and returns the started ``VpcdClient``
once connected; ``client.stop()`` pulls it. ``RawCard`` is the simplest card: a
fixed ATR and 6D00 to everything (an unsupported card).
"""
from __future__ import annotations

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
