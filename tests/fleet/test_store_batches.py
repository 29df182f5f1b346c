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


def test_a_storm_of_hellos_is_written_in_batches_and_a_bad_one_fails_alone(tmp_path):
    """A daemon restart: thousands of agents say hello at once. Each hello was its own transaction of several
    statements (a thread hop each, ~8 per hello), so the store's queue, not TLS, set the reconnect time (the
    bench measured a mean 8-10 s in ``record`` at 5,000 agents). Concurrent hellos are now written together,
    one ``executemany`` per table; each caller still returns only once its rows are committed, a repeated
    station ends with its last hello's inventory, and a hello the database refuses fails alone."""
    path = tmp_path / "fleet.db"

    async def go():
        store = await fs.SqliteFleetStore.open(path)
        try:
            await store.record_hello("urn:cns:station:RM:S0", "RM", "S0", "old", ["r"], [fs.Device("GONE")])
            jobs = []
            real_one, real_many = store.db.conn.execute, store.db.conn.executemany

            async def one(*a, **kw):
                jobs.append(a[0])
                return await real_one(*a, **kw)

            async def many(*a, **kw):
                jobs.append(a[0])
                return await real_many(*a, **kw)
            store.db.conn.execute, store.db.conn.executemany = one, many

            def dev(i, k):
                return fs.Device(f"S{i}-{k}", kind="token", model="m",
                                 certificates=(fs.Keyset("cns-auth", 2_000_000_000 + i),))

            async def hello(i, version="2"):
                serial_bad = i == 77   # NOT NULL: the database refuses this one
                devices = [fs.Device(None)] if serial_bad else [dev(i, 0), dev(i, 1)]
                await store.record_hello(f"urn:cns:station:RM:S{i}", "RM", f"S{i}", version, ["r"], devices)
                with sqlite3.connect(path) as other:   # committed when it returns
                    assert other.execute("SELECT agent_version FROM fleet_stations WHERE station = ?",
                                         (f"urn:cns:station:RM:S{i}",)).fetchone() == (version,)
            calls = [hello(i) for i in range(N)] + [hello(5, "3")]   # S5 twice: its last hello wins
            results = await asyncio.gather(*calls, return_exceptions=True)
            store.db.conn.execute, store.db.conn.executemany = real_one, real_many
            bad = {k for k, r in enumerate(results) if r is not None}
            assert bad == {77}, [results[k] for k in sorted(bad)][:3]
            assert isinstance(results[77], sqlite3.IntegrityError)
            assert len(jobs) < N // 10, f"{len(jobs)} database jobs for {N} hellos"
            assert (await store.get_station("urn:cns:station:RM:S77")) is None   # nothing of the refused one
            s0 = await store.get_station("urn:cns:station:RM:S0")
            assert s0.agent_version == "2" and s0.device_count == 2   # the hello replaced S0's inventory
            page = await store.list_devices(fs.Query(search="S5-"))
            assert sorted(d.device.serial for d in page.rows) == ["S5-0", "S5-1"]
            assert (await store.get_station("urn:cns:station:RM:S5")).agent_version == "3"
            exp = await store.expiring(fs.Query(), 2_000_000_000 + N)
            assert exp.total == 2 * (N - 1)   # every device's certificate, none of the refused hello's
        finally:
            await store.close()
    asyncio.run(go())


def test_marking_nothing_sent_costs_no_database_job(tmp_path):
    """Every stream's first delivery looked for open commands and then marked the (usually none) sent:
    one empty transaction per connecting agent, queued with the hellos."""
    async def go():
        store = await fs.SqliteFleetStore.open(tmp_path / "fleet.db")
        try:
            jobs = []
            real = store.db.conn.execute

            async def one(*a, **kw):
                jobs.append(a[0])
                return await real(*a, **kw)
            store.db.conn.execute = one
            await store.mark_sent([])
            store.db.conn.execute = real
            assert jobs == []
        finally:
            await store.close()
    asyncio.run(go())


def test_a_storms_audit_rows_and_disconnect_flags_share_the_group_commit(tmp_path):
    """A reconnect storm's refusals (each audited) and ended streams (each flagged disconnected) were single
    autocommitted writes under the store's write lock, one fsync each, and the hellos queued behind them
    (bench fleet at 5,000: a mean 7.8 s per hello in ``record`` during the reconnect, 0.14 s during the first
    connect). They now go through the group commit with the hellos; each still returns once committed."""
    path = tmp_path / "fleet.db"

    async def go():
        store = await fs.SqliteFleetStore.open(path)
        try:
            for i in range(50):
                await _hello(store, i)
            outside, in_tx = [], [False]
            real = store.db.conn.execute

            async def watched(sql, *a, **kw):
                word = sql.split()[0].upper()
                if word == "BEGIN":
                    in_tx[0] = True
                elif word in ("COMMIT", "ROLLBACK"):
                    in_tx[0] = False
                elif word in ("INSERT", "UPDATE") and not in_tx[0]:
                    outside.append(sql)
                return await real(sql, *a, **kw)
            store.db.conn.execute = watched

            async def audit(i):
                await store.audit(f"urn:cns:station:RM:S{i}", "Connect", "refused", {"reason": "no hello"})
                with sqlite3.connect(path) as other:   # committed when it returns
                    assert other.execute("SELECT COUNT(*) FROM fleet_audit WHERE actor = ?",
                                         (f"urn:cns:station:RM:S{i}",)).fetchone() == (1,)
            await asyncio.gather(*(audit(i) for i in range(200)),
                                 *(store.set_connected(f"urn:cns:station:RM:S{i}", False) for i in range(50)))
            store.db.conn.execute = real
            assert outside == [], f"{len(outside)} writes committed one by one"
            flags = [(await store.get_station(f"urn:cns:station:RM:S{i}")).connected for i in range(50)]
            assert not any(flags)
            with sqlite3.connect(path) as other:
                assert other.execute("SELECT COUNT(*) FROM fleet_audit").fetchone() == (200,)
        finally:
            await store.close()
    asyncio.run(go())
