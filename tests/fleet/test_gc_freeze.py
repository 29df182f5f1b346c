"""The fleet's collector policy (issue 15 item 6, REFERENCE §8): after a ramp-up of streams the daemon freezes
what is alive (``gc.freeze()``), so no full collection walks 20,000 streams' objects in the middle of a
broadcast; when most streams are gone it unfreezes, so their cycles are collected again."""
from __future__ import annotations

import asyncio
import gc

from agent.fleet import FleetAgent
from personalizer.fleet import gc_freeze as gf
from tests.fleet import support
from tests.fleet.test_stream import FAST, run


def test_freeze_once_the_ramp_up_has_held_still_and_unfreeze_when_most_streams_are_gone():
    assert gf.decide(500, 200, 0, min_growth=1000) is None          # still small
    assert gf.decide(5000, 4000, 0, min_growth=1000) is None        # still ramping up
    assert gf.decide(5000, 5000, 0, min_growth=1000) == gf.FREEZE   # held still for a check
    assert gf.decide(5400, 5400, 5000, min_growth=1000) is None     # a few more since the freeze
    assert gf.decide(6000, 6000, 5000, min_growth=1000) == gf.FREEZE
    assert gf.decide(2600, 2600, 6000, min_growth=1000) == gf.UNFREEZE
    assert gf.decide(3000, 3000, 6000, min_growth=1000) is None     # half of it: not yet


def test_the_freezer_freezes_the_live_objects_and_gives_them_back():
    gc.unfreeze()
    n = [0]
    fz = gf.GcFreezer(lambda: n[0], min_growth=10)
    try:
        n[0] = 20
        assert fz.check() is None and gc.get_freeze_count() == 0   # first look: not yet known to be still
        assert fz.check() == gf.FREEZE and gc.get_freeze_count() > 1000 and fz.frozen_at == 20
        kept = gc.get_freeze_count()
        assert fz.check() is None and gc.get_freeze_count() == kept   # no growth: no second freeze
        n[0] = 9
        assert fz.check() == gf.UNFREEZE and gc.get_freeze_count() == 0 and fz.frozen_at == 0
    finally:
        fz.stop()
        gc.unfreeze()


def test_the_daemons_fleet_freezes_after_its_streams_ramp_up_and_unfreezes_when_it_closes(deployment, tmp_path):
    gc.unfreeze()

    async def go():
        async with support.fleet_server(deployment, tmp_path / "db.sqlite", gc_min_growth=3) as (port, fleet):
            fleet.gc.check_seconds = 0.1
            fleet._gc_task.cancel()   # the wiring's task, restarted on the short interval
            fleet._gc_task = asyncio.create_task(fleet.gc.run())
            tasks = []
            for k in range(3):
                cfg = support.station(deployment, tmp_path / f"S{k}", port, sid=f"S{k}")
                tasks.append(asyncio.create_task(FleetAgent(cfg, support.FakeInventory(), support.FakeExecutor(),
                                                            version="1", options=FAST).run()))
            try:
                await support.until(lambda: len(fleet.hub) == 3, what="three streams")
                await support.until(lambda: fleet.gc.freezes == 1, what="a freeze after the ramp-up")
                assert gc.get_freeze_count() > 0 and fleet.gc.frozen_at == 3
            finally:
                for t in tasks:
                    t.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
        assert gc.get_freeze_count() == 0   # Fleet.close gave them back
    try:
        run(go())
    finally:
        gc.unfreeze()


def test_steady_churn_unfreezes_once_half_the_frozen_streams_have_ended():
    """At a constant stream count, agents replaced by their own reconnect end streams that were frozen: measured
    (300 streams replaced, in-process daemon) ~71 cyclic objects each, which a frozen collector never frees.
    Once streams amounting to half of what was frozen have ended since the freeze, unfreeze (and collect)."""
    assert gf.decide(20000, 20000, 20000, min_growth=1000, ended=9999) is None
    assert gf.decide(20000, 20000, 20000, min_growth=1000, ended=10000) == gf.UNFREEZE
    assert gf.decide(20000, 20000, 0, min_growth=1000, ended=10000) == gf.FREEZE   # nothing frozen: freeze again


def test_an_unfreeze_collects_the_ended_streams_cycles_before_anything_is_frozen_again():
    import weakref

    class Node:
        pass

    def cycle():
        a, b = Node(), Node()
        a.other, b.other = b, a
        return a
    n, ended = [20], [0]
    fz = gf.GcFreezer(lambda: n[0], min_growth=10, ended=lambda: ended[0])
    keep = [cycle() for _ in range(20)]   # the streams' objects
    try:
        fz.check()
        assert fz.check() == gf.FREEZE
        dead = weakref.ref(keep[0])
        del keep[:10]                      # ten streams replaced by new ones: their cycles are garbage, frozen
        ended[0] = 10
        gc.collect()
        assert dead() is not None          # frozen: a full collection does not see them
        assert fz.check() == gf.UNFREEZE
        assert dead() is None              # collected by the unfreeze, not frozen again by the next freeze
        assert fz.check() == gf.FREEZE and fz.frozen_at == 20
    finally:
        fz.stop()


def test_churn_during_a_storm_waits_for_the_storm_to_end_before_a_full_collection():
    """bench fleet, 19,900 agents: while the fleet was still connecting (thousands of failed and retried
    streams), the churn rule unfroze and ran a full collection again and again: py-spy found the loop in
    ``gc.collect()`` of ``GcFreezer.check`` for 16.5 s of the connect's first 4 minutes (1.5 s and more at
    a time, every call waiting in grpc core meanwhile). Churn at a *steady* count, as the rule says, is what
    unfreezes; a count still moving (storm, ramp-up) waits one check more."""
    assert gf.decide(15000, 14200, 12000, min_growth=1000, ended=6500) is None       # still moving
    assert gf.decide(15000, 15000, 12000, min_growth=1000, ended=6500) == gf.UNFREEZE  # held still: now
    assert gf.decide(5000, 5600, 12000, min_growth=1000, ended=100) == gf.UNFREEZE   # below half: at once
