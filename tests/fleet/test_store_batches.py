"""The fleet store's batch writes at fleet scale (issue 15 item 6): a broadcast, marking sent, heartbeats.

A broadcast to thousands of stations is written as one ``executemany`` in one transaction (one database
job, not one per station) and is durable before the call returns: a second connection on the file sees
every command PENDING. Marking sent moves only what is still pending (an ack that overtook the batch
stays); heartbeats never move ``last_seen`` backwards. These are what the hot path relies on."""
import asyncio
import sqlite3

from personalizer.fleet import store as fs

N = 3000


def _hello(store, i, chamber="RM"):
    return store.record_hello(f"urn:cns:station:{chamber}:S{i}", chamber, f"S{i}", "bench", [], [])


def test_a_broadcast_is_durable_before_it_returns_and_marking_sent_keeps_later_states(tmp_path):
    path = tmp_path / "fleet.db"

    async def go():
        store = await fs.SqliteFleetStore.open(path)
        try:
            await store.db.tx(many=[("INSERT INTO fleet_stations (station, chamber, station_id, first_seen,"
                                     " last_seen) VALUES (?,?,?,?,?)",
                                     [(f"urn:cns:station:{'RM' if i % 10 else 'MI'}:S{i}", "RM" if i % 10 else "MI",
                                       f"S{i}", 1.0, 1.0) for i in range(N)])])
            jobs = []
            real = store.db.conn.execute

            async def counted(*a, **kw):   # database jobs on the shared connection during the broadcast
                jobs.append(a[0])
                return await real(*a, **kw)
            store.db.conn.execute = counted
            cmds = await store.broadcast(fs.Query(chamber="RM"), fs.Command(command_id="", station="",
                                                                            kind="refresh_inventory", actor="t"))
            store.db.conn.execute = real
            assert len(cmds) == N - N // 10 and all(c.station.split(":")[3] == "RM" for c in cmds)
            assert len(jobs) <= 4, f"{len(jobs)} single statements for one broadcast"   # BEGIN, COMMIT, ...
            with sqlite3.connect(path) as other:   # durable: another connection sees all of them
                rows = dict(other.execute("SELECT state, COUNT(*) FROM fleet_commands GROUP BY state").fetchall())
            assert rows == {fs.PENDING: N - N // 10}
            first = cmds[0]
            await store.update_command(first.station, first.command_id, fs.ACKED)   # the ack overtook the batch
            await store.mark_sent([c.command_id for c in cmds])
            assert (await store.get_command(first.command_id)).state == fs.ACKED
            assert {(await store.get_command(c.command_id)).state for c in cmds[1:50]} == {fs.SENT}
            st = cmds[1].station
            await store.seen_many({st: 100.0})
            await store.seen_many({st: 50.0})   # a late batch: last_seen stays at the newer heartbeat
            assert (await store.get_station(st)).last_seen == 100.0
        finally:
            await store.close()
    asyncio.run(go())
