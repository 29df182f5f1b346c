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


def test_claiming_a_batch_is_one_statement(pg_session_cluster, monkeypatch):
    """The relay claims a batch (outbox row, request PENDING, what to deliver) in ONE statement: the drain
    after an outage was bound by 3 statements per claimed row, one round trip each (issue 17 item 6)."""
    import psycopg

    dsn = pg_cluster.fresh_dsn(pg_session_cluster)
    statements = []
    real = psycopg.AsyncConnection.execute

    async def counted(self, query, params=None, **kw):
        statements.append(str(query))
        return await real(self, query, params, **kw)

    async def go():
        s = await PostgresRequestStore.open(dsn, clock=lambda: 1000.0, max_connections=2)
        try:
            for i in range(20):
                assert await put(s, f"b{i:02d}")
            monkeypatch.setattr(psycopg.AsyncConnection, "execute", counted)
            claimed = await s.claim_due(2000.0, LANES, 50, "relay")
            monkeypatch.undo()
            return claimed, await s.get_request("b07")
        finally:
            await s.close()
    claimed, stored = asyncio.run(go())
    assert len(statements) == 1
    assert sorted(c.record.request_id for c in claimed) == [f"b{i:02d}" for i in range(20)]
    assert {(c.record.state, c.record.outbox_status, c.record.attempts, c.payload.status, c.payload.attempts)
            for c in claimed} == {("PENDING", "sending", 1, "sending", 1)}
    assert all(c.payload.payload == b'{"card_model": "M1"}' and c.payload.kind == "issue" for c in claimed)
    assert (stored.state, stored.outbox_status, stored.updated_at) == ("PENDING", "sending", 2000.0)


def test_concurrent_writes_share_commits_and_keep_their_own_errors(pg_session_cluster):
    """Deliveries finishing together share one transaction (one standby flush for many); a caller whose
    statements fail gets its own error, and every other caller's writes are committed."""
    from personalizer.errors import StoreError

    dsn = pg_cluster.fresh_dsn(pg_session_cluster)

    async def go():
        s = await PostgresRequestStore.open(dsn, clock=lambda: 1000.0, max_connections=4)
        try:
            for i in range(40):
                assert await put(s, f"g{i:02d}")
            before = s.database.group_commits
            bad = s.database.write([("UPDATE no_such_table SET x = 1", ())], what="the request store")
            results = await asyncio.gather(bad, *(s.fail_request(f"g{i:02d}", "INVALID_ARGUMENT", "csr_der", "bad")
                                                  for i in range(40)), return_exceptions=True)
            stored = [await s.get_request(f"g{i:02d}") for i in range(40)]
            return results, stored, s.database.group_commits - before
        finally:
            await s.close()
    results, stored, commits = asyncio.run(go())
    assert isinstance(results[0], StoreError) and "no_such_table" in str(results[0])
    assert results[1:] == [None] * 40
    assert {(r.state, r.error_code, r.outbox_status) for r in stored} == {("FAILED", "INVALID_ARGUMENT", "failed")}
    assert commits < 40   # shared: fewer transactions than callers
