"""The fleet database's group commit (issue 15 item 6: a reconnect storm's hellos, one fsync each).

Transactions asked for together are committed together (far fewer COMMITs than callers), each is
still all-or-nothing (a failing one is rolled back alone and raises to its own caller; the others are
written), and every caller returns only once its rows are visible to another connection."""
import asyncio
import sqlite3

import pytest

from personalizer.fleet.db import SqliteDb

N = 400


def test_concurrent_transactions_share_commits_and_fail_alone(tmp_path):
    path = tmp_path / "g.db"

    async def go():
        db = await SqliteDb.open(path)
        try:
            await db.script("CREATE TABLE t (k INTEGER PRIMARY KEY, v TEXT NOT NULL)")
            commits = []
            real = db.conn.execute

            async def counted(sql, *a, **kw):
                if sql.strip().upper() == "COMMIT":
                    commits.append(sql)
                return await real(sql, *a, **kw)
            db.conn.execute = counted

            async def one(k):
                stmts = [("INSERT INTO t VALUES (?, ?)", (k, "a")), ("UPDATE t SET v = ? WHERE k = ?", ("b", k))]
                if k % 50 == 7:   # its second statement fails: its first must not stay
                    stmts.append(("INSERT INTO t VALUES (?, NULL)", (10_000 + k,)))
                await db.tx(stmts)
                with sqlite3.connect(path) as other:   # committed when tx returns
                    assert other.execute("SELECT v FROM t WHERE k = ?", (k,)).fetchone() == ("b",)
            results = await asyncio.gather(*(one(k) for k in range(N)), return_exceptions=True)
            db.conn.execute = real
            bad = {k for k, r in enumerate(results) if r is not None}
            assert bad == {k for k in range(N) if k % 50 == 7}
            assert all(isinstance(results[k], sqlite3.IntegrityError) for k in bad)
            assert len(commits) < N // 10, f"{len(commits)} commits for {N} transactions"
            with sqlite3.connect(path) as other:
                keys = {k for (k,) in other.execute("SELECT k FROM t")}
            assert keys == set(range(N)) - bad
            with pytest.raises(sqlite3.IntegrityError):   # alone, a failing transaction still raises
                await db.tx([("INSERT INTO t VALUES (?, ?)", (1, "dup"))])
        finally:
            await db.close()
    asyncio.run(go())
