"""Renewal end to end against the real daemon (mTLS, store, embedded CA), card in process.

The rules: both keysets renewed in spare slots and switched at once; the window and
the device's life checked before the card is touched; a wrong PIN stops before
anything is written; the journal never holds the PIN; a request queued at the
personalizer (CA unavailable) is followed, and after the agent gives up waiting the
next recovery follows the SAME request id to the end — one issuance per keyset.
"""
from __future__ import annotations

import asyncio
import datetime as dt

import pytest
from cryptography import x509

from agent.card.errors import WrongPinError
from agent.ops.errors import PreconditionError
from agent.ops.holder import Codes
from agent.ops.journal import Journal
from agent.ops.renew import RenewalPolicy, parse_marker, plan
from firmware_profiles import load_models
from firmware_profiles.emulator import EmulatedCard
from tests.ops import renewal_env as env

MODELS = load_models()


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    dep = env.make_deployment(tmp_path_factory.mktemp("renew") / "cns", env.free_port())
    p = env.ThreadedPersonalizer(dep)
    yield p, env.station_for(dep)
    p.close()


def _fresh(world, tmp_path, model_id="infocamere-cns-2048"):
    p, station = world
    p.ca.reset()
    model = MODELS[model_id]
    card = EmulatedCard(model)

    async def go():
        j = await Journal.open(tmp_path / "journal.db")
        try:
            assert (await env.personalize(station, j, card, model)).state == "done"
        finally:
            await j.close()
    asyncio.run(go())
    return model, card


def _run(tmp_path, coro_fn):
    async def go():
        j = await Journal.open(tmp_path / "journal.db")
        try:
            return await coro_fn(j)
        finally:
            await j.close()
    return asyncio.run(go())


@pytest.mark.parametrize("model_id", sorted(MODELS))
def test_renewal_switches_both_keysets(model_id, world, tmp_path):
    p, station = world
    model, card = _fresh(world, tmp_path, model_id)
    codes = env.codes_for(model)
    before = env.card_view(card, model)
    out = _run(tmp_path, lambda j: env.renew(station, j, card, model))
    assert out.state == "done" and out.test_signatures, out.message
    after = env.card_view(card, model, codes.pin)
    issued = p.issued()
    for ks in model.keysets:
        assert after[ks.name]["serial"] != before[ks.name]["serial"]
        assert after[ks.name]["key_matches"]
        assert not after[ks.name]["spare_key"] and not after[ks.name]["spare_cert"]   # old ones removed
        assert after[ks.name]["der"] == issued[f"renew-{out.op_id}-{ks.name}"]        # exactly that issuance
        old = x509.load_der_x509_certificate(before[ks.name]["der"])
        new = x509.load_der_x509_certificate(after[ks.name]["der"])
        assert new.subject == old.subject
        assert after[f"pin_tries_{ks.name}"] == model.pin_policy.pin_tries        # PIN untouched
    assert after.get("marker_clear", True)
    assert len([r for r in issued if r.startswith(f"renew-{out.op_id}")]) == len(model.keysets)
    hist = _run(tmp_path, lambda j: j.history(out.op_id))
    begun = [s for s, phase, _ in hist if phase == "begun"]
    assert [s for s in plan(model) if s in begun] == plan(model)
    raw = b"".join(f.read_bytes() for f in tmp_path.glob("journal.db*"))
    assert codes.pin.encode() not in raw


def test_outside_window_refused_before_touching_the_card(world, tmp_path):
    p, station = world
    model, card = _fresh(world, tmp_path)
    writes = card._state.write_count
    with pytest.raises(PreconditionError, match="renewal opens"):
        _run(tmp_path, lambda j: env.renew(station, j, card, model, policy=RenewalPolicy()))
    assert card._state.write_count == writes
    assert _run(tmp_path, lambda j: j.open_operations()) == []


def test_beyond_device_life_refused(world, tmp_path):
    p, station = world
    model, card = _fresh(world, tmp_path)
    cert = x509.load_der_x509_certificate(env.card_view(card, model)["CNS0"]["der"])
    late = cert.not_valid_after_utc - dt.timedelta(days=10)
    # inside the 90-day window, but a new certificate would outlive a 5-year device life
    with pytest.raises(PreconditionError, match="beyond the device's 5-year life"):
        _run(tmp_path, lambda j: env.renew(station, j, card, model,
                                           policy=RenewalPolicy(window_days=90, device_life_years=5),
                                           now=lambda: late))
    with pytest.raises(PreconditionError, match="expired"):
        _run(tmp_path, lambda j: env.renew(station, j, card, model,
                                           now=lambda: cert.not_valid_after_utc + dt.timedelta(days=1)))


def test_wrong_pin_stops_before_anything_is_written(world, tmp_path):
    p, station = world
    model, card = _fresh(world, tmp_path)
    writes = card._state.write_count
    with pytest.raises(WrongPinError):
        _run(tmp_path, lambda j: env.renew(station, j, card, model, codes=Codes("00000000")))
    assert card._state.write_count == writes + 1          # only the PIN counter
    assert _run(tmp_path, lambda j: j.open_operations()) == []


def test_queued_request_followed_then_resumed_by_the_same_id(world, tmp_path):
    """CA down: the request is queued; the agent gives up waiting (operation open, card on its old
    keys), is 'restarted' (new journal connection, no PIN), the CA comes back: same ids, done."""
    p, station = world
    model, card = _fresh(world, tmp_path)
    before = env.card_view(card, model)
    p.ca.down = True
    out = _run(tmp_path, lambda j: env.renew(station, j, card, model, watch_timeout_s=1.0))
    assert out.state == "open"
    mid = env.card_view(card, model, env.codes_for(model).pin)
    assert all(mid[ks.name]["serial"] == before[ks.name]["serial"] for ks in model.keysets)   # old keys work
    assert parse_marker(card._state.files[model.paths.renewal_marker].data) == out.op_id
    p.ca.down = False
    again = _run(tmp_path, lambda j: env.recover(station, j, card, model, watch_timeout_s=30.0))
    assert again.state == "done" and again.op_id == out.op_id and not again.test_signatures
    issued = p.issued()
    after = env.card_view(card, model, env.codes_for(model).pin)
    for ks in model.keysets:
        assert after[ks.name]["der"] == issued[f"renew-{out.op_id}-{ks.name}"]
    assert after["marker_clear"]


def test_ca_refusal_undoes_and_old_keys_stay(world, tmp_path):
    p, station = world
    model, card = _fresh(world, tmp_path)
    before = env.card_view(card, model)
    p.ca.refuse = 1
    out = _run(tmp_path, lambda j: env.renew(station, j, card, model))
    assert out.state == "undone" and "refused" in out.message
    after = env.card_view(card, model, env.codes_for(model).pin)
    for ks in model.keysets:
        assert after[ks.name]["der"] == before[ks.name]["der"]
        assert not after[ks.name]["spare_key"] and not after[ks.name]["spare_cert"]
    assert after["marker_clear"]


def test_broken_watch_falls_back_to_polling_and_finishes(world, tmp_path):
    """CA outside its service window: the renewal waits on WatchRequest; the personalizer restarts
    (the stream breaks), the agent polls GetRequest and watches again; the window opens: done."""
    p, station = world
    model, card = _fresh(world, tmp_path)
    messages: list[str] = []
    p.close_window()
    try:
        async def go(j):
            task = asyncio.create_task(env.renew(station, j, card, model, watch_timeout_s=60.0,
                                                 progress=lambda step, m: messages.append(m)))
            while not any("queued" in m for m in messages):
                assert not task.done(), task.result()
                await asyncio.sleep(0.05)
            await asyncio.to_thread(p.stop)
            while not any("polling" in m for m in messages):
                await asyncio.sleep(0.05)
            await asyncio.to_thread(p.start)
            await asyncio.sleep(0.5)
            await asyncio.to_thread(p.open_window)
            return await task
        out = _run(tmp_path, go)
    finally:
        p.open_window()
    assert out.state == "done" and out.test_signatures, out.message
    issued = p.issued()
    assert [r for r in issued if r.startswith(f"renew-{out.op_id}")] == [f"renew-{out.op_id}-{ks.name}"
                                                                        for ks in model.keysets]


def test_renewal_window_comes_from_the_station_config(station, monkeypatch):
    """[renewal] window_days in the station config sets when the agent offers renewal (no env override)."""
    import station_config
    from agent.ops.station import StationOps

    path = station.source       # the test deployment's station config, with the daemon's real port
    text = path.read_text()
    cfg_path = path.with_name("station-renewal.toml")
    cfg_path.write_text(text + "\n[renewal]\nwindow_days = 30\n")
    cfg = station_config.load(cfg_path)
    monkeypatch.setenv("CNS_AGENT_RENEWAL_WINDOW_DAYS", "45")     # the retired override changes nothing
    assert StationOps(cfg, journal=None).renewal_policy.window_days == 30
    assert StationOps(station_config.load(path), journal=None).renewal_policy.window_days == 90
