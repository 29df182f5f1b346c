"""What only the PostgreSQL store has to show: two daemons on one database, and a lost connection."""
from __future__ import annotations

import asyncio

from personalizer.records import LANE_PRIORITY, LANE_STANDARD
from personalizer.store.postgres import PostgresRequestStore
from tests.store.test_contract import put
from tests.support import pg_cluster

LANES = (LANE_PRIORITY, LANE_STANDARD)


def test_two_daemons_on_one_database_never_claim_one_row(pg_session_cluster):
    dsn = pg_cluster.fresh_dsn(pg_session_cluster)

    async def go():
        a = await PostgresRequestStore.open(dsn, clock=lambda: 1000.0, max_connections=4)
        b = await PostgresRequestStore.open(dsn, clock=lambda: 1000.0, max_connections=4)
        try:
            for i in range(120):
                assert await put(a, f"r{i:03d}", lane=LANES[i % 2])

            async def drain(store, name):
                got = []
                while True:
                    batch = await store.claim_due(2000.0, LANES, 7, name)
                    if not batch:
                        return got
                    got += [c.record.request_id for c in batch]
            claims = await asyncio.gather(*(drain(s, f"relay-{k}") for k in range(3) for s in (a, b)))
        finally:
            await a.close()
            await b.close()
        return claims
    claims = asyncio.run(go())
    flat = [rid for c in claims for rid in c]
    assert len(flat) == len(set(flat)) == 120          # every row claimed exactly once
    assert sum(1 for c in claims if c) >= 2            # and the work was shared (SKIP LOCKED, no waiting)


def test_a_retried_request_id_writes_nothing_twice(pg_session_cluster):
    """A client that saw an error retries with the same id: nothing is written twice, the first is found."""
    dsn = pg_cluster.fresh_dsn(pg_session_cluster)

    async def go():
        s = await PostgresRequestStore.open(dsn, max_connections=2)
        try:
            assert await put(s, "lost-answer")
            assert await put(s, "lost-answer") is False
            return await s.get_request("lost-answer"), await s.list_audit()
        finally:
            await s.close()
    rec, audit = asyncio.run(go())
    assert rec is not None and rec.state == "RECEIVED"
    assert [a.request_id for a in audit] == ["lost-answer"]
