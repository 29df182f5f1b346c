"""Several daemon processes, one fleet database (issue 15 item 8): the fleet store and the rollout engine over
PostgreSQL do what the fleet relies on with the same SQL as on SQLite, two stores on one database standing for
two daemon processes; and an interleaving of two processes written out step by step (on one SQLite file)."""
from __future__ import annotations

import asyncio

import pytest

from personalizer.errors import FailedPrecondition, StoreError
from personalizer.fleet import rollout_rules as rr, rollouts as ro, store as fs
from personalizer.fleet.db import PostgresDb
from personalizer.pg import Database
from tests.support import pg_cluster


def test_the_fleet_on_postgresql_two_processes_one_database(pg_session_cluster):
    dsn = pg_cluster.fresh_dsn(pg_session_cluster)
    clock = [1_800_000_000.0]

    async def go():
        dbs = [await Database.open(dsn, error_cls=StoreError, max_size=4) for _ in range(2)]
        one, other = [await fs.SqlFleetStore.over(PostgresDb(d), clock=lambda: clock[0]) for d in dbs]
        try:
            dev = fs.Device(serial="SER1", kind="token", model="Tok-A", token_release="r1",
                            certificates=(fs.Keyset("cns-auth", int(clock[0]) + 5 * 86400),))
            await one.record_hello("urn:cns:station:RM:ST-1", "RM", "ST-1", "2.0", ["r"], [dev])
            await one.record_hello("urn:cns:station:RM:ST-1", "RM", "ST-1", "2.1", ["r"], [dev])   # upsert
            clock[0] += 50
            await other.seen_many({"urn:cns:station:RM:ST-1": clock[0]})      # heartbeats, written elsewhere
            st = await one.get_station("urn:cns:station:RM:ST-1")
            assert st.last_seen == clock[0] and st.agent_version == "2.1" and st.connected and st.device_count == 1
            # the search ignores case as on SQLite, and is text, not a pattern
            assert (await other.list_stations(fs.Query(search="st-1"))).total == 1
            assert (await other.list_stations(fs.Query(search="ST_"))).total == 0
            [row] = (await other.list_devices(fs.Query(model="Tok-A"))).rows
            assert row.device.certificates[0].keyset == "cns-auth"
            assert (await other.expiring(fs.Query(), int(clock[0]) + 10 * 86400)).total == 1
            counts = await other.counts()
            assert (counts.stations, counts.connected, counts.devices, counts.expiring) == (1, 1, 1, 1)
            assert counts.by_chamber == (("RM", 1, 1),) and counts.by_model == (("Tok-A", 1),)
            # a command written by one process, reported on through the other; a stale report is refused
            cmd = await one.add_command(fs.Command(command_id="", station=st.station, kind="renew_due", actor="t"))
            assert [c.command_id for c in await other.open_commands(st.station)] == [cmd.command_id]
            await other.mark_sent([cmd.command_id])
            assert (await other.update_command(st.station, cmd.command_id, fs.ACKED)).state == fs.ACKED
            assert (await one.update_command(st.station, cmd.command_id, fs.SUCCEEDED)).state == fs.SUCCEEDED
            with pytest.raises(FailedPrecondition):
                await other.update_command(st.station, cmd.command_id, fs.RUNNING, percent=50)
            # the audit is append-only on PostgreSQL too
            await one.audit("urn:cns:admin:x", "SendCommand", "accepted", {"command_id": cmd.command_id})
            with pytest.raises(StoreError, match="append-only"):
                await one.db.execute("UPDATE fleet_audit SET outcome = 'refused'")
            assert (await other.audit_rows(1))[0]["outcome"] == "accepted"
            # a rollout: created and counted through one process, its snapshot read by the other's engine
            r1 = await ro.Rollouts(one, hub=_NoHub(), roots=None).open()
            r2 = await ro.Rollouts(other, hub=_NoHub(), roots=None, leader=lambda: False).open()
            rid = await r1.create(rr.RolloutSpec(name="r2 to Tok-A", release="r2", model="Tok-A"), actor="t")
            assert (await r2.status(rid))["total"] == 1
            await r2.refresh_snapshot()
            assert r2.snapshot.rollouts == {"running": 1} and r2.snapshot.targets[0][1] == "r2 to Tok-A"
        finally:
            for d in dbs:
                await d.close()
    asyncio.run(asyncio.wait_for(go(), 60))


class _NoHub:
    """No streams: the rollout's command stays pending in the store."""

    def wake(self, station, commands=None, **kw):
        return False


def test_a_command_sent_just_after_another_process_paused_the_rollout_is_withdrawn(tmp_path):
    """The stepping process read "running" and sent a device's command while another process paused the
    rollout (and withdrew what was pending): its next tick withdraws that late command too. Two stores on
    one SQLite file stand for the two processes; the interleaving is written out step by step."""
    async def go():
        one = await fs.SqliteFleetStore.open(tmp_path / "db.sqlite")
        other = await fs.SqliteFleetStore.open(tmp_path / "db.sqlite")
        try:
            for i in range(2):
                await one.record_hello(f"urn:cns:station:RM:S{i}", "RM", f"S{i}", "2", [], [
                    fs.Device(serial=f"T{i}", kind="token", model="tok", token_release="r1")])
            stepper = await ro.Rollouts(one, hub=_NoHub(), roots=None).open()
            elsewhere = await ro.Rollouts(other, hub=_NoHub(), roots=None, leader=lambda: False).open()
            rid = await stepper.create(rr.RolloutSpec(name="r2", release="r2", model="tok", rate_per_minute=1,
                                                      timeout_seconds=600), actor="t")   # T0 sent, T1 waiting
            assert await stepper.counts(rid) == {"sent": 1, "waiting": 1}
            await elsewhere.pause(rid)                      # T0's pending command withdrawn, back to waiting
            assert await stepper.counts(rid) == {"waiting": 2}
            # the stepper's send of T1, decided on its "running" read before the pause, lands now
            late = await one.add_command(fs.Command(command_id="", station="urn:cns:station:RM:S1",
                                                    kind="install_release", device_serial="T1", release="r2",
                                                    rollout_id=rid, actor=f"rollout:{rid}"))
            await stepper._target(rid, "urn:cns:station:RM:S1", "T1", rr.SENT, command_id=late.command_id)
            await stepper.tick()
            assert (await one.get_command(late.command_id)).state == fs.CANCELLED
            assert await stepper.counts(rid) == {"waiting": 2}
            assert (await stepper.status(rid))["state"] == rr.PAUSED
        finally:
            await one.close()
            await other.close()
    asyncio.run(asyncio.wait_for(go(), 30))
