"""A personalization holds the card's PC/SC transaction for each card step, and never while it waits for the CA.

Real pcscd + vpcd (tests/support/pcscd.py), an emulated card that logs which step's commands reach it and in what
order, the operation on a ``PcscLink`` (the agent's DeviceLink) with the in-memory uplink over a real broker and
embedded CA (tests/support/uplink.py), and another PC/SC client in its own process (its own context and card
handle, as OpenSC in a browser has; like OpenSC it takes a transaction for each command):

- a client sending commands all along the operation never lands between two commands of one step, and does
  land between steps (the card is not held for the whole operation);
- a client that connects and sends a command while the operation waits for the CA gets its answer then.

Without the per-step transaction the first test sees the other client mid-step (test_pcsc_transaction shows the
rig can see an interleave); holding the card across the CA wait fails the second.
"""
from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from pathlib import Path

import pytest

from agent.devices.pcsc import PcscLink
from agent.ops.journal import Journal
from agent.ops.personalize import Personalizer
from firmware_profiles import load_models
from firmware_profiles.emulator.admin import SoftwareAuthenticator
from personalizer import deploy
from personalizer.outbox.windows import ServiceCalendar
from tests.broker.conftest import Env
from tests.ops.test_personalize import HOLDER, REQUESTER, codes_for
from tests.support.uplink import InMemoryUplink
from tests.support.vpcd import insert, pull

pytestmark = pytest.mark.pcscd

ROOT = Path(__file__).resolve().parents[2]
READER = "Virtual PCD 00 01"
MODEL = load_models()["infocamere-cns-2048"]
OTHER = bytes.fromhex("00ff0000")     # the other client's command: unknown INS, 6D00, changes nothing
CARD_STEPS = ("generate-key", "csr", "write-dati-personali", "write-cert", "verify")

# The other client: connects, then sends OTHER in a transaction of its own, once ("once") or every few
# milliseconds until the stop file exists ("loop"); prints how many it sent.
OTHER_CLIENT = """
import os, sys, time
from agent.devices.pcsc import PcscLink
reader, apdu, mode, stop = sys.argv[1], bytes.fromhex(sys.argv[2]), sys.argv[3], sys.argv[4]
link = PcscLink(reader)
print("connected", flush=True)
n = 0
while True:
    with link.transaction():
        data, sw = link.transmit(apdu)
    assert sw == 0x6D00, hex(sw)
    n += 1
    if mode == "once" or os.path.exists(stop):
        break
    time.sleep(0.003)
link.close()
print("sent", n, flush=True)
"""


@pytest.fixture(scope="module")
def deployment(tmp_path_factory):
    root = tmp_path_factory.mktemp("txn-deploy") / "cns"
    return deploy.init_deployment(root, chamber="RM", station_id="RM-STATION-01", listen="127.0.0.1:0")


class LoggedCard:
    """A blank emulated card on vpcd whose log says, per command, which step sent it (``other``: the other
    client; ``pre``: the checks before the first step)."""

    def __init__(self, pcscd):
        from firmware_profiles.emulator import EmulatedCard
        self.card = EmulatedCard(MODEL)
        self.step = "pre"
        self.seen: list[str] = []
        inner = self.card.transmit

        def transmit(apdu: bytes) -> bytes:
            self.seen.append("other" if bytes(apdu) == OTHER else self.step)
            return inner(apdu)

        self.card.transmit = transmit
        self.client = insert(pcscd.vpcd_address(1), self.card)
        deadline = time.monotonic() + 10
        while True:   # pcscd sees the card a poll period after the connect
            try:
                PcscLink(READER).close()
                break
            except Exception:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        self.seen.clear()

    def on_step(self, step: str, phase: str) -> None:
        if phase == "begun":
            self.step = step

    def stop(self) -> None:
        pull(self.client, READER)   # pcscd has seen it go before the next test's card comes


@pytest.fixture
def card(pcscd):
    c = LoggedCard(pcscd)
    yield c
    c.stop()


def _other_client(pcscd, mode: str, stop: Path) -> subprocess.Popen:
    p = subprocess.Popen([sys.executable, "-c", OTHER_CLIENT, READER, OTHER.hex(), mode, str(stop)], cwd=ROOT,
                         env=pcscd.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "connected", p.stderr.read()
    return p


async def _personalize(deployment, tmp_path, card: LoggedCard, uplink_around=lambda u: u):
    async with Env(deployment, tmp_path, time.time, ServiceCalendar(always_open=True), answer_wait=10.0) as env:
        await env.relay.start()
        uplink = uplink_around(InMemoryUplink(env.broker, relay=env.relay))
        journal = await Journal.open(tmp_path / "journal.db")
        links: list[PcscLink] = []

        def connect() -> PcscLink:
            links.append(PcscLink(READER))
            return links[-1]
        try:
            p = Personalizer(journal=journal, uplink=uplink, requester=REQUESTER, on_step=card.on_step,
                             card_admin=SoftwareAuthenticator(MODEL), watch_timeout_s=20)
            return await p.start(connect=connect, reader=READER, model=MODEL, holder=HOLDER, codes=codes_for(MODEL))
        finally:
            for link in links:
                await asyncio.to_thread(link.close)
            await journal.close()


def _runs(seen: list[str]) -> list[tuple[str, int]]:
    out: list[tuple[str, int]] = []
    for who in seen:
        if out and out[-1][0] == who:
            out[-1] = (who, out[-1][1] + 1)
        else:
            out.append((who, 1))
    return out


def test_no_other_client_command_lands_mid_step(deployment, tmp_path, card, pcscd):
    stop = tmp_path / "stop"
    other = _other_client(pcscd, "loop", stop)
    try:
        out = asyncio.run(_personalize(deployment, tmp_path, card))
    except Exception as exc:       # an interleaved command can break the step (an admin login lost): judged below
        out = exc
    finally:
        stop.touch()
        sent, err = other.communicate(timeout=30)
    assert other.returncode == 0 and sent.startswith("sent"), err
    runs = _runs(card.seen)
    steps = [who for who, _ in runs if who not in ("other", "pre")]
    # each step's commands are one uninterrupted run: a step seen twice had someone else's command inside it
    split = sorted({s for s in steps if steps.count(s) > 1})
    assert not split, f"another client's command landed inside step(s) {split}: {runs}"
    assert {s.partition(':')[0] for s in steps} >= set(CARD_STEPS), runs
    # the other client was at work all along: before the first step and again right after the last one (its
    # commands in between waited for the step that held the card; pcsc-lite retries a waiting begin every 100 ms)
    first = next(i for i, (who, _) in enumerate(runs) if who not in ("other", "pre"))
    assert any(who == "other" for who, _ in runs[:first]) and runs[-1][0] == "other", runs
    assert not isinstance(out, Exception) and out.state == "done", out


def test_another_client_works_the_card_while_the_operation_waits_for_the_ca(deployment, tmp_path, card, pcscd):
    probes: list[str] = []

    def probe() -> str:
        """Another application connects and sends a command while the submit waits for the CA."""
        try:
            r = subprocess.run([sys.executable, "-c", OTHER_CLIENT, READER, OTHER.hex(), "once", "-"], cwd=ROOT,
                               env=pcscd.env, capture_output=True, text=True, timeout=15)
        except subprocess.TimeoutExpired:
            return "blocked: the card was held while the operation waited for the CA"
        return r.stdout.strip().replace("\n", " ") if r.returncode == 0 else f"failed: {r.stderr.strip()}"

    class WaitingForTheCA:
        """The in-memory uplink, whose first submit lets another client work the card before the CA answers."""

        def __init__(self, inner):
            self.inner = inner

        def __getattr__(self, name):
            return getattr(self.inner, name)

        async def submit_issue(self, **kw):
            if not probes:
                probes.append("")
                probes[0] = await asyncio.to_thread(probe)
            return await self.inner.submit_issue(**kw)

    out = asyncio.run(_personalize(deployment, tmp_path, card, WaitingForTheCA))
    assert probes == ["connected sent 1"], probes
    assert "other" in card.seen, card.seen
    assert out.state == "done", out.message
