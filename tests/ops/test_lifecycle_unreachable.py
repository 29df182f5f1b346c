"""A suspension, reactivation or revocation that cannot reach the personalizer is reported as not
done, per certificate — never "kept" (issue 9 item 5, agent side).

The real daemon in a thread (mTLS, store, outbox, embedded CA) goes away half-way through a
command on a card's two certificates; the agent's lifecycle call says which certificate was
changed and which was NOT, and says nothing is kept or retried. An answer lost after the request
was sent is "NOT confirmed"; running the command again finishes it without a second change.
"""
from __future__ import annotations

import asyncio

import pytest

from agent.ops import lifecycle as lc
from agent.ops.errors import UplinkUnavailable
from agent.ops.journal import Journal
from agent.uplink.client import PersonalizerClient
from firmware_profiles import load_models
from firmware_profiles.emulator import EmulatedCard
from tests.ops import renewal_env as env

MODEL = load_models()["infocamere-cns-2048"]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    dep = env.make_deployment(tmp_path_factory.mktemp("lifecycle-down") / "cns", env.free_port())
    p = env.ThreadedPersonalizer(dep)
    yield p, env.station_for(dep)
    p.close()


class _Hooked:
    """The real uplink; ``after_change(n)`` runs after the n-th change_status reached the personalizer."""

    def __init__(self, inner, after_change):
        self.inner, self.after_change, self.changes = inner, after_change, 0

    def __getattr__(self, name):
        return getattr(self.inner, name)

    async def change_status(self, *a, **kw):
        resp = await self.inner.change_status(*a, **kw)
        self.changes += 1
        self.after_change(self.changes)
        return resp


def _card(world, tmp_path) -> EmulatedCard:
    p, station = world
    if not p.running:
        p.start()
    card = EmulatedCard(MODEL)

    async def go():
        j = await Journal.open(tmp_path / "journal.db")
        try:
            assert (await env.personalize(station, j, card, MODEL)).state == "done"
        finally:
            await j.close()
    asyncio.run(go())
    return card


async def _change(station, card, action, hook=None):
    _serial, targets = await lc.card_targets(env.connect_to(card), MODEL)
    async with PersonalizerClient(station) as uplink:
        life = lc.CertificateLifecycle(uplink=_Hooked(uplink, hook) if hook else uplink,
                                       requester=env.REQUESTER)
        return await life.change(action, targets)


async def _states(station, card) -> dict[str, str]:
    _serial, targets = await lc.card_targets(env.connect_to(card), MODEL)
    async with PersonalizerClient(station) as uplink:
        infos = await lc.CertificateLifecycle(uplink=uplink, requester=env.REQUESTER).status(targets)
    return {i.keyset: i.status for i in infos}


def test_personalizer_gone_half_way_says_what_was_not_done(world, tmp_path):
    p, station = world
    card = _card(world, tmp_path)
    try:
        with pytest.raises(lc.ChangeNotDone) as caught:
            asyncio.run(_change(station, card, "suspend", hook=lambda n: p.stop()))
        msg = str(caught.value)
        assert "kept" not in msg.replace("nothing is kept", "")
        assert "not done" in msg and "nothing is kept or retried" in msg
        by_ks = {r.keyset: r.message for r in caught.value.results}
        assert by_ks["CNS0"] == "suspended"
        assert by_ks["CNS1"].startswith("NOT done")
    finally:
        p.start()
    assert asyncio.run(_states(station, card)) == {"CNS0": "suspended", "CNS1": "active"}   # exactly as reported


def test_personalizer_down_nothing_done(world, tmp_path):
    p, station = world
    card = _card(world, tmp_path)
    _serial, targets = asyncio.run(lc.card_targets(env.connect_to(card), MODEL))
    p.stop()
    try:
        async def go():
            async with PersonalizerClient(station) as uplink:
                return await lc.CertificateLifecycle(uplink=uplink, requester=env.REQUESTER).change("revoke", targets,
                                                                                                   reason="keyCompromise")
        with pytest.raises(lc.ChangeNotDone) as caught:
            asyncio.run(go())
        assert [r.message.split(":")[0] for r in caught.value.results] == ["NOT done", "NOT done"]
        assert "(the operation is kept" not in str(caught.value)
    finally:
        p.start()
    assert asyncio.run(_states(station, card)) == {"CNS0": "active", "CNS1": "active"}


def test_lost_answer_is_not_confirmed_and_a_rerun_finishes(world, tmp_path):
    p, station = world
    card = _card(world, tmp_path)

    def lose_answer(n):
        if n == 1:
            raise UplinkUnavailable("personalizer: suspend: DEADLINE_EXCEEDED: Deadline Exceeded",
                                    code="DEADLINE_EXCEEDED")
    with pytest.raises(lc.ChangeNotDone) as caught:
        asyncio.run(_change(station, card, "suspend", hook=lose_answer))
    by_ks = {r.keyset: r for r in caught.value.results}
    assert by_ks["CNS0"].message.startswith("NOT confirmed") and by_ks["CNS0"].request_id.startswith("suspend-")
    assert by_ks["CNS1"].message.startswith("NOT done")
    again = asyncio.run(_change(station, card, "suspend"))
    assert {i.keyset: i.message for i in again} == {"CNS0": "already suspended", "CNS1": "suspended"}
