"""Agent operations over the in-memory uplink (tests/support/uplink.py): a real broker, store, relay and embedded
CA in this event loop, no daemon process and no gRPC. The operation's logic is the same as over the wire: a blank
emulated card is personalized with certificates the CA signed, and a request the personalizer refuses leaves the
card blank, the refusal's code reaching the operation."""
from __future__ import annotations

import asyncio
import time

import pytest

from agent.ops.holder import HolderRecord
from agent.ops.journal import Journal
from agent.ops.personalize import Personalizer
from firmware_profiles import load_models
from firmware_profiles.emulator import EmulatedCard
from firmware_profiles.emulator.admin import SoftwareAuthenticator
from personalizer import deploy
from personalizer.outbox.windows import ServiceCalendar
from tests.broker.conftest import Env
from tests.ops.test_personalize import HOLDER, REQUESTER, assert_personalized, codes_for
from tests.support.emulated import connect_to
from tests.support.uplink import InMemoryUplink

MODEL = load_models()["infocamere-cns-2048"]


@pytest.fixture(scope="module")
def deployment(tmp_path_factory):
    root = tmp_path_factory.mktemp("inmem-deploy") / "cns"
    return deploy.init_deployment(root, chamber="RM", station_id="RM-STATION-01", listen="127.0.0.1:0")


async def _personalize(deployment, tmp_path, card, holder, model=MODEL):
    async with Env(deployment, tmp_path, time.time, ServiceCalendar(always_open=True), answer_wait=10.0) as env:
        await env.relay.start()
        # the emulator's software derivation stands in for the personalizer's token (a test double)
        uplink = InMemoryUplink(env.broker, relay=env.relay, card_admin=SoftwareAuthenticator(model))
        journal = await Journal.open(tmp_path / "journal.db")
        try:
            p = Personalizer(journal=journal, uplink=uplink, requester=REQUESTER,
                             card_admin=uplink.card_admin("personalize", REQUESTER), watch_timeout_s=20)
            out = await p.start(connect=connect_to(card), reader="in-process", model=model, holder=holder,
                                codes=codes_for(model))
            return out, uplink.calls, await journal.open_operations()
        finally:
            await journal.close()


def test_a_blank_card_is_personalized_through_the_broker(deployment, tmp_path):
    card = EmulatedCard(MODEL)
    t0 = time.perf_counter()
    out, calls, still_open = asyncio.run(_personalize(deployment, tmp_path, card, HOLDER))
    took = time.perf_counter() - t0
    assert out.state == "done" and out.test_signatures, out.message
    assert calls.count("submit_issue") == len(MODEL.keysets) and not still_open
    assert_personalized(card, MODEL, codes_for(MODEL), deployment.issuing_cert.read_bytes())
    print(f"in-memory personalization: {took:.2f} s")


def test_a_refusal_reaches_the_operation_and_the_card_stays_blank(deployment, tmp_path):
    """A 1024-bit card model: the deployment's policy (min_rsa_bits = 2048) refuses its requests at the broker
    (INVALID_ARGUMENT); the operation undoes what it wrote and the card is blank again."""
    legacy = load_models()["oberthur-cns-1024"]
    card = EmulatedCard(legacy)
    out, calls, still_open = asyncio.run(_personalize(deployment, tmp_path, card, HOLDER, legacy))
    assert out.state == "undone" and "refused" in out.message and "INVALID_ARGUMENT" in out.message, out.message
    assert "submit_issue" in calls and not still_open
    from agent.card.cns import CnsSession
    from tests.support.emulated import EmulatedTransport
    card.power_off()
    card.power_on()
    assert CnsSession(EmulatedTransport(card), legacy).summary().personal is None   # blank again
