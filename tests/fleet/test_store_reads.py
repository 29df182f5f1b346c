"""Reads on the fleet database's one connection while its writes run (CI failure of stop 21).

A status read (``SELECT state, COUNT(*) ... GROUP BY state``) stepped in one aiosqlite job and
fetched in another; a target update queued on the same connection ran between them, and SQLite
answered a state of ``None`` (a table changed under a pending statement of the same connection).
GetRollout then failed with INTERNAL, and a rollout step deciding on such counts could abort or
complete a rollout on figures that were never true. Every read must be one job: whole rows."""
import asyncio
import json

from personalizer.fleet import rollout_rules as rr
from personalizer.fleet import rollouts as ro
from personalizer.fleet import store as fs

N = 6


def test_a_target_update_queued_during_a_status_read_never_yields_partial_counts(tmp_path):
    async def go():
        store = await fs.SqliteFleetStore.open(tmp_path / "fleet.db")
        try:
            r = await ro.Rollouts(store, hub=None, roots=None).open()
            spec = rr.RolloutSpec(name="t", release="r2")
            await store.db.conn.execute("INSERT INTO fleet_rollouts VALUES (?,?,?,?,?,?,?)",
                                    ("R", json.dumps(spec.to_json()), rr.RUNNING, "", "test", 0, 0))
            await store.db.conn.executemany(
                "INSERT INTO fleet_rollout_targets (rollout_id, station, device_serial, model, grp, state)"
                " VALUES (?,?,?,?,?,?)",
                [("R", f"S{i}", f"D{i}", "m", i // 3, rr.SENT if i < 3 else rr.WAITING) for i in range(N)])
            seen = []
            for i in range(N):
                for new in (rr.FAILED, rr.SENT):
                    # the read is queued first, the update right behind it (as a report arriving mid-read)
                    counts, _ = await asyncio.gather(r.counts("R"), r._target("R", f"S{i}", f"D{i}", new))
                    seen.append(counts)
                    assert None not in counts, f"a read saw a state of None: {counts}"
                    assert sum(counts.values()) == N, f"a read counted {sum(counts.values())} of {N}: {counts}"
            assert len(seen) == 2 * N
        finally:
            await store.close()
    asyncio.run(go())
