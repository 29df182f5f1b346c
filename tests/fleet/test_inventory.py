"""The inventory central IT reads (issue 15 item 2): filters by chamber, model, firmware, release, agent
version and last seen, certificates expiring within N days, search and paging, on the SQLite FleetStore
(the tables live in the daemon's database file, created on open, kept across a reopen)."""
from __future__ import annotations

import asyncio

import pytest

from personalizer.errors import InvalidRequest
from personalizer.fleet import store as fs

DAY = 86400
NOW = 1_800_000_000


def run(coro):
    return asyncio.run(coro)


async def _filled(path):
    clock = [NOW - 10 * DAY]
    s = await fs.SqliteFleetStore.open(path, clock=lambda: clock[0])
    for i in range(25):
        chamber = ("RM", "MI", "NA")[i % 3]
        clock[0] = NOW - i * 3600           # station i last seen i hours ago
        dev = fs.Device(serial=f"SER{i:03d}", model="cns-a" if i % 2 else "cns-b",
                        firmware_version="1.0" if i < 10 else "1.1", token_release="r1" if i % 5 else "r2",
                        certificates=(fs.Keyset("cns-auth", NOW + i * DAY),))
        await s.record_hello(f"urn:cns:station:{chamber}:ST-{i:03d}", chamber, f"ST-{i:03d}",
                             "2.0" if i % 4 else "1.9", ["r"], [dev])
    return s


def test_filters_paging_and_search(tmp_path):
    async def go():
        s = await _filled(tmp_path / "db.sqlite")
        try:
            assert (await s.list_stations(fs.Query())).total == 25
            assert (await s.list_stations(fs.Query(chamber="MI"))).total == 8
            assert (await s.list_stations(fs.Query(model="cns-a"))).total == 12
            assert (await s.list_stations(fs.Query(firmware_version="1.0", chamber="RM"))).total == 4
            assert (await s.list_stations(fs.Query(token_release="r2"))).total == 5
            assert (await s.list_stations(fs.Query(agent_version="1.9"))).total == 7
            # last seen: more than 12 h ago (12 .. 24 → 13 stations)
            assert (await s.list_stations(fs.Query(last_seen_before=NOW - 12 * 3600 + 1))).total == 13
            assert (await s.list_stations(fs.Query(last_seen_after=NOW - 2 * 3600))).total == 3
            assert [r.station_id for r in (await s.list_stations(fs.Query(search="SER017"))).rows] == ["ST-017"]
            assert (await s.list_devices(fs.Query(search="ST-00"))).total == 10
            # paging: every station exactly once, in order, across pages of 10
            seen, token = [], ""
            while True:
                page = await s.list_stations(fs.Query(page_size=10, page_token=token))
                seen += [r.station for r in page.rows]
                token = page.next_page_token
                if not token:
                    break
            assert len(seen) == len(set(seen)) == 25
            # a LIKE wildcard in the search is a character, not a pattern
            assert (await s.list_stations(fs.Query(search="%"))).total == 0
            assert (await s.list_stations(fs.Query(search="_"))).total == 0
            # expiring within 5 days: stations 0..4
            exp = await s.expiring(fs.Query(), NOW + 5 * DAY)
            assert [r.serial for r in exp.rows] == [f"SER{i:03d}" for i in range(5)]
            assert (await s.expiring(fs.Query(chamber="RM"), NOW + 5 * DAY)).total == 2
            with pytest.raises(InvalidRequest):
                await s.list_stations(fs.Query(page_size=5000))
            with pytest.raises(InvalidRequest):
                await s.list_stations(fs.Query(page_token="-1"))
        finally:
            await s.close()
        again = await fs.SqliteFleetStore.open(tmp_path / "db.sqlite")
        try:
            page = await again.list_stations(fs.Query())
            assert page.total == 25 and not any(r.connected for r in page.rows)   # a new process: none connected
        finally:
            await again.close()
    run(go())


def test_a_hello_replaces_the_inventory_and_a_delta_changes_only_what_it_names(tmp_path):
    async def go():
        s = await fs.SqliteFleetStore.open(tmp_path / "db.sqlite")
        st = "urn:cns:station:RM:X"
        try:
            await s.record_hello(st, "RM", "X", "1", ["r"], [fs.Device("A"), fs.Device("B")])
            await s.apply_delta(st, [fs.Device("C", certificates=(fs.Keyset("k", 5),))], ["A"], None)
            assert sorted(d.device.serial for d in (await s.list_devices(fs.Query())).rows) == ["B", "C"]
            await s.record_hello(st, "RM", "X", "2", ["r"], [fs.Device("D")])
            assert [d.device.serial for d in (await s.list_devices(fs.Query())).rows] == ["D"]
            assert (await s.expiring(fs.Query(), 10)).total == 0   # C's certificate went with C
        finally:
            await s.close()
    run(go())


def test_the_fleet_audit_is_append_only(tmp_path):
    async def go():
        import sqlite3
        s = await fs.SqliteFleetStore.open(tmp_path / "db.sqlite")
        await s.audit("a", "X", "refused", {"reason": "r"})
        await s.close()
        c = sqlite3.connect(tmp_path / "db.sqlite")
        with pytest.raises(sqlite3.DatabaseError, match="append-only"):
            c.execute("DELETE FROM fleet_audit")
        with pytest.raises(sqlite3.DatabaseError, match="append-only"):
            c.execute("UPDATE fleet_audit SET actor = 'b'")
        c.close()
    run(go())


def test_a_station_whose_stream_went_silent_is_not_shown_connected(tmp_path):
    """Over a shared store a killed instance never clears its stations' flags: without heartbeats for
    ``live_seconds`` a station reads as disconnected (in the list, the station, and the counts)."""
    async def go():
        clock = [NOW]
        s = await fs.SqliteFleetStore.open(tmp_path / "db.sqlite", clock=lambda: clock[0])
        try:
            s.live_seconds = 100
            await s.record_hello("urn:cns:station:RM:A", "RM", "A", "2.0", [], [])   # connected = 1
            clock[0] = NOW + 99
            assert (await s.get_station("urn:cns:station:RM:A")).connected
            assert (await s.counts()).connected == 1
            clock[0] = NOW + 101                       # no heartbeat since: its instance is gone
            assert not (await s.get_station("urn:cns:station:RM:A")).connected
            assert [st.connected for st in (await s.list_stations(fs.Query())).rows] == [False]
            assert (await s.counts()).connected == 0
            await s.seen("urn:cns:station:RM:A")       # a heartbeat: live again
            assert (await s.get_station("urn:cns:station:RM:A")).connected
        finally:
            await s.close()
    run(go())


def test_a_report_racing_another_instance_never_overwrites_its_change(tmp_path):
    """Two stores on one database (two daemon processes): a cancel written by one between the other's read
    and write of the same command stands; the late ack is refused, not written over it."""
    async def go():
        one = await fs.SqliteFleetStore.open(tmp_path / "db.sqlite")
        other = await fs.SqliteFleetStore.open(tmp_path / "db.sqlite")
        try:
            await one.record_hello("urn:cns:station:RM:A", "RM", "A", "2.0", [], [])
            cmd = await one.add_command(fs.Command(command_id="", station="urn:cns:station:RM:A", kind="renew_due",
                                                   actor="t"))
            read, raced = one._first, []

            async def read_then_the_other_cancels(sql, args=()):
                row = await read(sql, args)
                if "FROM fleet_commands" in sql and not raced:   # once: right after the first read
                    raced.append(True)
                    await other.update_command("urn:cns:station:RM:A", cmd.command_id, fs.CANCELLED)
                return row
            one._first = read_then_the_other_cancels
            with pytest.raises(fs.FailedPrecondition):
                await one.update_command("urn:cns:station:RM:A", cmd.command_id, fs.ACKED)
            one._first = read
            assert (await one.get_command(cmd.command_id)).state == fs.CANCELLED
        finally:
            await one.close()
            await other.close()
    run(go())
