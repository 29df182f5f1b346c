"""The idle check of the holders' automatic token update (issue 14 item 4): a token is updated only when it is
plugged in and running, no token operation runs on it, its journal has no open operation, and no other PC/SC
client holds its chip. The PC/SC part runs against a real pcscd with a card on vpcd."""
from __future__ import annotations

import time

from smartcard import scard

from agent.devices.pcsc import in_use
from tests.support.vpcd import RawCard, insert

ATR = bytes.fromhex("3B8F8001804F0CA000000306030001000000006A")


def test_in_use_sees_another_clients_transaction_and_nothing_else(pcscd):
    reader = pcscd.reader_names[1]
    card = insert(pcscd.vpcd_address(1), RawCard(ATR))
    try:
        hr, ctx = scard.SCardEstablishContext(scard.SCARD_SCOPE_USER)
        deadline = time.monotonic() + 10
        while True:                                           # until pcscd has seen the card
            hr, h, _ = scard.SCardConnect(ctx, reader, scard.SCARD_SHARE_SHARED,
                                          scard.SCARD_PROTOCOL_T0 | scard.SCARD_PROTOCOL_T1)
            if hr == scard.SCARD_S_SUCCESS or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        assert hr == scard.SCARD_S_SUCCESS
        assert in_use(reader) is True                         # another client holds a connection
        scard.SCardDisconnect(h, scard.SCARD_LEAVE_CARD)
        assert in_use(reader) is False                        # free: the probe leaves it so
        assert in_use(reader) is False
        hr, h, _ = scard.SCardConnect(ctx, reader, scard.SCARD_SHARE_SHARED,
                                      scard.SCARD_PROTOCOL_T0 | scard.SCARD_PROTOCOL_T1)
        assert hr == scard.SCARD_S_SUCCESS
        assert scard.SCardBeginTransaction(h) == scard.SCARD_S_SUCCESS
        try:
            assert in_use(reader) is True                     # e.g. the holder signing right now
        finally:
            scard.SCardEndTransaction(h, scard.SCARD_LEAVE_CARD)
            scard.SCardDisconnect(h, scard.SCARD_LEAVE_CARD)
            scard.SCardReleaseContext(ctx)
        assert in_use(reader) is False
    finally:
        card.stop()
    assert in_use(reader) is False                            # no card: nothing uses it
    assert in_use("no such reader 99 99") is False
