"""A step's APDUs through ``PcscLink.transaction()`` are never interleaved with another PC/SC client's.

Real pcscd + vpcd (tests/support/pcscd.py), an emulated card that logs the order in which commands reach
it, and a second PC/SC client in its own process (its own context and card handle, as another application has).
The second client behaves like OpenSC: it takes a transaction for its own command. The control case shows
the rig can see an interleave (without our transaction the other client's command lands between the two
commands of the step), so the transaction case is a real check, not a pass by timing."""
from __future__ import annotations

import subprocess
import sys
import time
from contextlib import contextmanager, nullcontext
from pathlib import Path

import pytest

from agent.card.errors import ReaderError
from agent.devices.backend import DeviceLink
from agent.devices.pcsc import PcscLink
from tests.support.vpcd import pull

pytestmark = pytest.mark.pcscd

ROOT = Path(__file__).resolve().parents[2]

READER = "Virtual PCD 00 01"
SELECT_MF = bytes.fromhex("00a40000023f00")      # the step's commands
GET_CHALLENGE = bytes.fromhex("0084000008")      # the other client's command
SETTLE_S = 0.5                                   # how long the step pauses between its two commands


@pytest.fixture(scope="module")
def served(pcscd):
    from firmware_profiles import load_models
    from firmware_profiles.emulator import EmulatedCard
    from firmware_profiles.emulator.vpcd import VpcdClient, parse_address

    emulated = EmulatedCard(load_models()["infocamere-cns-2048"])
    seen: list[str] = []
    inner = emulated.transmit

    def logging_transmit(apdu: bytes) -> bytes:
        seen.append({SELECT_MF[1]: "step", GET_CHALLENGE[1]: "other"}.get(apdu[1], apdu.hex()))
        return inner(apdu)

    emulated.transmit = logging_transmit
    host, port = parse_address(pcscd.vpcd_address(1))
    client = VpcdClient(emulated, host, port).start()
    assert client.inserted.wait(10), "the card never connected to vpcd"
    deadline = time.monotonic() + 10
    while True:   # pcscd sees the card a poll period after the connect
        try:
            probe = PcscLink(READER)
            try:
                probe.transmit(SELECT_MF)
            finally:
                probe.close()
            break
        except Exception:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)
    yield seen
    pull(client, READER)   # pcscd has seen it go before the next module's card comes


@pytest.fixture
def card(served):
    """The order in which this test's commands reached the card."""
    served.clear()
    return served


OTHER_CLIENT = """
import sys
from agent.devices.pcsc import PcscLink
link = PcscLink(sys.argv[1])
print("connected", flush=True)
sys.stdin.readline()
with link.transaction():
    link.transmit(bytes.fromhex(sys.argv[2]))
link.close()
print("done", flush=True)
"""


def _step(pcscd, link: PcscLink, *, hold=None) -> None:
    """The step sends two commands, SETTLE_S apart; the other client (its own process, connected to the card
    before the step begins, as OpenSC in a browser is) sends its command right after the step's first."""
    other = subprocess.Popen([sys.executable, "-c", OTHER_CLIENT, READER, GET_CHALLENGE.hex()], cwd=ROOT,
                             env=pcscd.env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert other.stdout.readline().strip() == "connected"

        def commands() -> None:
            link.transmit(SELECT_MF)
            other.stdin.write("go\n")
            other.stdin.flush()
            time.sleep(SETTLE_S)        # the other client is now waiting for (or sending) its command
            link.transmit(SELECT_MF)

        with hold() if hold is not None else nullcontext():
            commands()
        out, _ = other.communicate(timeout=20)
        assert out.strip() == "done" and other.returncode == 0, "the other client never got its turn"
    finally:
        if other.poll() is None:
            other.kill()
            other.wait()


def test_the_link_is_a_device_link(card):
    link = PcscLink(READER)
    try:
        assert isinstance(link, DeviceLink)
    finally:
        link.close()


def test_without_a_transaction_another_client_interleaves(card, pcscd):
    link = PcscLink(READER)
    try:
        _step(pcscd, link)
    finally:
        link.close()
    assert card == ["step", "other", "step"]


def test_a_transaction_keeps_the_step_together(card, pcscd):
    link = PcscLink(READER)
    try:
        _step(pcscd, link, hold=link.transaction)
    finally:
        link.close()
    assert card == ["step", "step", "other"]


def test_nested_transactions_are_one(card, pcscd):
    """A step inside an operation-wide block: the inner block's end does not release the card, the outer's
    does (else the other client would never get its turn)."""
    link = PcscLink(READER)

    @contextmanager
    def outer_after_an_inner_block():
        with link.transaction():
            with link.transaction():
                pass
            yield

    try:
        _step(pcscd, link, hold=outer_after_an_inner_block)
    finally:
        link.close()
    assert card == ["step", "step", "other"]
