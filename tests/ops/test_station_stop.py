"""Issue 9 item 6 at the ``StationOps`` level: the operator's stop request and ``finish|discard``.

Ops logic, so no daemon process (issue 11 item 2): the in-memory uplink over the real broker, relay,
store and embedded CA, the emulated card in process, card administration through the emulator's
software authenticator (a test double of the central key). A stop during a renewal ends after a
journaled step with the old certificates in use; ``discard`` then undoes it. A stop during a
personalization before any request was sent leaves a blank card; ``resolve`` of an unknown operation
says so."""
from __future__ import annotations

import asyncio
import time

import pytest

from agent.ops.errors import PreconditionError
from agent.ops.journal import Journal
from agent.ops.station import StationOps
from firmware_profiles.emulator import EmulatedCard
from firmware_profiles.emulator.admin import SoftwareAuthenticator
from personalizer.outbox.windows import ServiceCalendar
from tests.broker.conftest import Env
from tests.support.uplink import InMemoryUplink
from tests.support.emulated import connect_reader
from tests.ops import renewal_env as env



def _model():
    from firmware_profiles import load_models
    return load_models()["infocamere-cns-2048"]


@pytest.fixture
def deployment(inmemory_deployment):
    return inmemory_deployment


@pytest.fixture
def station(deployment, tmp_path):
    """``(station config, deployment, personalizer dir)``: the station's config as init wrote it, its
    endpoint never dialled (the uplink is in memory; no daemon runs)."""
    from tests.ops.conftest import station_config_for
    (tmp_path / "personalizer").mkdir()
    return station_config_for(deployment, 9), deployment, tmp_path / "personalizer"


async def _with_ops(station, path, fn):
    cfg, deployment, where = station
    async with Env(deployment, where, time.time, ServiceCalendar(always_open=True), answer_wait=10.0) as pers:
        await pers.relay.start()
        uplink = InMemoryUplink(pers.broker, relay=pers.relay, card_admin=SoftwareAuthenticator(_model()))
        journal = await Journal.open(path)
        try:
            return await fn(StationOps(cfg, journal, renewal_policy=env.WIDE, watch_timeout_s=5, uplink=uplink))
        finally:
            await journal.close()


def _stop_at(ops, step_name: str):
    def progress(step, msg):
        if step == step_name:
            ops.stop("r0")
    return progress


def test_stopped_renewal_keeps_the_old_certificates_and_discard_undoes_it(station, tmp_path):
    model = _model()
    card = EmulatedCard(model)
    out = asyncio.run(_with_ops(station, tmp_path / "j.db", lambda ops: ops.personalize(
        connect=connect_reader(card), reader="r0", model=model, holder=env.HOLDER, codes=env.codes_for(model))))
    assert out.state == "done", out.message
    before = env.card_view(card, model)

    async def stopped(ops):
        return await ops.renew(connect=connect_reader(card), reader="r0", model=model, codes=env.codes_for(model),
                               progress=_stop_at(ops, "generate-key:CNS0"))
    out = asyncio.run(_with_ops(station, tmp_path / "j.db", stopped))
    assert out.state == "open" and "stopped by the operator" in out.message, out.message
    assert "keeps its current certificates" in out.message and out.op_id
    assert env.card_view(card, model)["CNS0"]["der"] == before["CNS0"]["der"]

    async def listed_then_discarded(ops):
        [op] = await ops.open_operations()
        done = await ops.resolve(op.op_id, "discard", connect=connect_reader(card), reader="r0", model=model)
        return op, done, await ops.open_operations()
    op, done, left = asyncio.run(_with_ops(station, tmp_path / "j.db", listed_then_discarded))
    assert op.op_id == out.op_id and op.kind == "renew"
    assert done.state == "undone" and left == []
    after = env.card_view(card, model)
    assert all(after[ks.name]["der"] == before[ks.name]["der"] for ks in model.keysets)


def test_stopped_personalization_before_any_request_is_blank_and_unknown_ids_are_refused(station, tmp_path):
    model = _model()
    card = EmulatedCard(model)

    async def stopped(ops):
        return await ops.personalize(connect=connect_reader(card), reader="r0", model=model, holder=env.HOLDER,
                                     codes=env.codes_for(model), progress=_stop_at(ops, "csr:CNS0"))
    out = asyncio.run(_with_ops(station, tmp_path / "j.db", stopped))
    assert out.state == "undone" and "stopped by the operator before any certificate" in out.message
    assert asyncio.run(_with_ops(station, tmp_path / "j.db", lambda ops: ops.open_operations())) == []
    with pytest.raises(PreconditionError, match="no open operation nope"):
        asyncio.run(_with_ops(station, tmp_path / "j.db", lambda ops: ops.resolve(
            "nope", "discard", connect=connect_reader(card), reader="r0", model=model)))


def test_a_stop_during_an_undo_lets_the_undo_finish(station, tmp_path):
    """Ctrl-C while a discarded renewal is being undone: the undo is not a renewal step to stop after;
    it finishes (old certificates, spare slots empty, nothing left open)."""
    model = _model()
    card = EmulatedCard(model)
    out = asyncio.run(_with_ops(station, tmp_path / "j.db", lambda ops: ops.personalize(
        connect=connect_reader(card), reader="r0", model=model, holder=env.HOLDER, codes=env.codes_for(model))))
    assert out.state == "done", out.message
    before = env.card_view(card, model)
    out = asyncio.run(_with_ops(station, tmp_path / "j.db", lambda ops: ops.renew(
        connect=connect_reader(card), reader="r0", model=model, codes=env.codes_for(model),
        progress=_stop_at(ops, "generate-key:CNS1"))))
    assert out.state == "open", out.message

    async def discarded_with_a_stop(ops):
        [op] = await ops.open_operations()
        done = await ops.resolve(op.op_id, "discard", connect=connect_reader(card), reader="r0", model=model,
                                 progress=_stop_at(ops, "undo"))
        return done, await ops.open_operations()
    done, left = asyncio.run(_with_ops(station, tmp_path / "j.db", discarded_with_a_stop))
    assert done.state == "undone" and left == [], done.message
    after = env.card_view(card, model)
    for ks in model.keysets:
        assert after[ks.name]["der"] == before[ks.name]["der"]
        assert not after[ks.name]["spare_key"] and not after[ks.name]["spare_cert"]
