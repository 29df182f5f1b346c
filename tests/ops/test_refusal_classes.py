"""How a personalization ends when the personalizer answers its submit with an error, by the error's class: the
operations ask ``agent.ops.uplink.refused`` (errors are classified once, by the uplink), they keep no code list.

A refusal (an ``UplinkError`` with a code of ``REFUSED_CODES``) undoes the operation: the card is blank again.
"Not now" (``UplinkUnavailable``) and an ``UplinkError`` without a code (the uplink could not even build its
channel: an unreadable client key) keep it open, to be finished after the fix. The error is raised by the in-memory
uplink over a real broker (tests/support/uplink.py) on the first submit, as the gRPC uplink raises it.
"""
from __future__ import annotations

import asyncio
import time

import pytest

from agent.card.cns import CnsSession
from agent.ops.errors import UplinkError, UplinkUnavailable
from agent.ops.journal import Journal
from agent.ops.personalize import Personalizer
from agent.ops.uplink import REFUSED_CODES
from firmware_profiles import load_models
from firmware_profiles.emulator.admin import SoftwareAuthenticator
from firmware_profiles.emulator import EmulatedCard
from personalizer import deploy
from personalizer.outbox.windows import ServiceCalendar
from tests.broker.conftest import Env
from tests.ops.test_personalize import HOLDER, REQUESTER, codes_for
from tests.support.emulated import EmulatedTransport, connect_to
from tests.support.uplink import InMemoryUplink

MODEL = load_models()["infocamere-cns-2048"]


@pytest.fixture(scope="module")
def deployment(tmp_path_factory):
    root = tmp_path_factory.mktemp("refusal-deploy") / "cns"
    return deploy.init_deployment(root, chamber="RM", station_id="RM-STATION-01", listen="127.0.0.1:0")


class AnsweringWith(InMemoryUplink):
    """The in-memory uplink whose submits fail with ``error`` (as the gRPC uplink classifies a status)."""
    error: BaseException

    async def submit_issue(self, **kw):
        self.calls.append("submit_issue")
        raise self.error


async def _personalize(deployment, tmp_path, card, error):
    async with Env(deployment, tmp_path, time.time, ServiceCalendar(always_open=True)) as env:
        uplink = AnsweringWith(env.broker, relay=env.relay)
        uplink.error = error
        journal = await Journal.open(tmp_path / "journal.db")
        try:
            p = Personalizer(journal=journal, uplink=uplink, requester=REQUESTER,
                             card_admin=SoftwareAuthenticator(MODEL), watch_timeout_s=5)
            out = await p.start(connect=connect_to(card), reader="in-process", model=MODEL, holder=HOLDER,
                                codes=codes_for(MODEL))
            return out, await journal.open_operations()
        finally:
            await journal.close()


def _blank(card) -> bool:
    card.power_off()
    card.power_on()
    return CnsSession(EmulatedTransport(card), MODEL).summary().personal is None


@pytest.mark.parametrize("code", ["INVALID_ARGUMENT", "NOT_FOUND", "UNAUTHENTICATED"])
def test_a_refusal_undoes_the_personalization(deployment, tmp_path, code):
    assert code in REFUSED_CODES
    card = EmulatedCard(MODEL)
    out, still_open = asyncio.run(_personalize(deployment, tmp_path, card,
                                               UplinkError(f"personalizer: issue request: {code}: no", code=code)))
    assert out.state == "undone" and code in out.message, out.message
    assert not still_open and _blank(card)


@pytest.mark.parametrize("error", [UplinkUnavailable("personalizer: unreachable", code="UNAVAILABLE"),
                                   UplinkError("cannot build the personalizer channel: key unreadable")],
                         ids=["unavailable", "no-code"])
def test_not_now_keeps_the_personalization_open(deployment, tmp_path, error):
    card = EmulatedCard(MODEL)
    out, still_open = asyncio.run(_personalize(deployment, tmp_path, card, error))
    assert out.state == "open" and str(error) in out.message, out.message
    assert [op.op_id for op in still_open] == [out.op_id]
