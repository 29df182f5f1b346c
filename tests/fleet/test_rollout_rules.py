"""The rollout's decisions (pure) and its per-device timeout on the engine with a controlled clock."""
from __future__ import annotations

import asyncio

import pytest

from personalizer.errors import InvalidRequest
from personalizer.fleet import rollout_rules as rr, store as fs
from personalizer.fleet.attestation import ModelRoots
from personalizer.fleet.hub import Hub
from personalizer.fleet.rollouts import Rollouts


def test_exponential_rate_grows_after_n_successes_and_is_capped():
    s = rr.RolloutSpec(name="x", release="r", model="m", rate_per_minute=10, rate_factor=2, grow_after_successes=5)
    assert [rr.current_rate(s, n) for n in (0, 4, 5, 10, 14)] == [10, 10, 20, 40, 40]
    assert rr.current_rate(s, 10_000) == rr.MAX_RATE
    assert rr.current_rate(rr.RolloutSpec(name="x", release="r", model="m", rate_per_minute=7), 1000) == 7


def test_abort_criteria_wait_for_the_minimum_and_count_per_kind():
    s = rr.RolloutSpec(name="x", release="r", model="m", abort=(
        rr.Criterion("timed_out", 50, 4), rr.Criterion("any", 30, 10)))
    assert rr.tripped(s, {"timed_out": 3}) is None                      # 3 executed < 4
    assert "timed_out ≥ 50%" in rr.tripped(s, {"timed_out": 2, "succeeded": 2})
    assert rr.tripped(s, {"failed": 2, "rejected": 1, "succeeded": 7}) is not None   # any: 3/10 = 30 %
    assert rr.tripped(s, {"failed": 2, "rejected": 1, "succeeded": 8}) is None
    assert rr.tripped(s, {"waiting": 100, "sent": 5}) is None           # nothing executed yet


def test_windows_wrap_past_midnight():
    w = ((22 * 60, 2 * 60),)
    assert rr.in_window(w, 23 * 60) and rr.in_window(w, 60) and not rr.in_window(w, 12 * 60)
    assert rr.in_window((), 0)


@pytest.mark.parametrize("kw, field", [
    (dict(release=""), "release"), (dict(model=""), "filter"), (dict(rate_per_minute=0.5), "rate_per_minute"),
    (dict(timeout_seconds=5), "timeout_seconds"), (dict(windows=((10, 10),)), "windows"),
    (dict(abort=(rr.Criterion("exploded", 10, 1),)), "abort.kind"),
    (dict(abort=(rr.Criterion("failed", 0, 1),)), "abort.threshold_percent")])
def test_nonsense_specs_are_refused_naming_the_field(kw, field):
    base = dict(name="x", release="r", model="m")
    with pytest.raises(InvalidRequest) as e:
        rr.validate(rr.RolloutSpec(**{**base, **kw}))
    assert e.value.field == field


def test_a_device_not_finished_in_time_is_timed_out_and_can_trip_the_rollout(tmp_path):
    async def go():
        clock = [1_800_000_000.0]
        store = await fs.SqliteFleetStore.open(tmp_path / "db.sqlite", clock=lambda: clock[0])
        engine = await Rollouts(store, Hub(), ModelRoots(), clock=lambda: clock[0]).open()
        try:
            for i in range(3):
                await store.record_hello(f"urn:cns:station:RM:S{i}", "RM", f"S{i}", "1", [],
                                         [fs.Device(f"T{i}", kind="token", model="m", token_release="r1")])
            rid = await engine.create(rr.RolloutSpec(name="x", release="r2", model="m", timeout_seconds=60,
                                                     abort=(rr.Criterion("timed_out", 50, 2),)), actor="t")
            assert (await engine.counts(rid)) == {"sent": 3}
            clock[0] += 59
            await engine.tick()
            assert (await engine.counts(rid)) == {"sent": 3}
            clock[0] += 2
            await engine.tick()
            st = await engine.status(rid, targets=True)
            assert st["state"] == rr.ABORTED and "timed_out ≥ 50%" in st["reason"]
            assert st["counts"] == {"timed_out": 3}
            cmd = await store.get_command(st["targets"][0]["command_id"])
            assert cmd.state == fs.TIMED_OUT
        finally:
            await store.close()
    asyncio.run(go())
