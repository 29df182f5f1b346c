"""The fleet's database connection, one interface over SQLite (aiosqlite) and PostgreSQL (``personalizer.pg``).

The fleet store and the rollout engine write their SQL once, with ``?`` placeholders and SQL both
engines accept (``ON CONFLICT … DO UPDATE``, ``TRUE``, ``LIKE … ESCAPE``); ``rows``/``first`` read, ``tx``
runs statements (and ``executemany`` batches) in one transaction, ``execute`` is one write on its own
(answering the rows it changed, for compare-and-set),
``script`` creates a schema (the caller passes the DDL of ``dialect``).

``SqliteDb``: one connection on the daemon's database file, writes serialized by ``lock`` (each read is
one aiosqlite job: stepped in one job and fetched in the next, a write queued in between on the shared
connection changed rows under the pending statement). ``PostgresDb``: the request store's
``personalizer.pg.Database`` (its pool, transactions retried across a failover); ``lock`` serializes this
process's read-modify-write sequences, other processes are kept apart by the statements themselves.
Imports aiosqlite; ``personalizer.pg`` is passed in, not imported.
"""
from __future__ import annotations

import asyncio
from pathlib import Path

import aiosqlite

BUSY_TIMEOUT_MS = 10_000
GROUP_MAX = 64   # transactions per group commit


class SqliteDb:
    dialect = "sqlite"

    def __init__(self, conn: aiosqlite.Connection):
        self.conn = conn
        self.lock = asyncio.Lock()
        self._queued: list = []   # transactions waiting for the next group commit
        self._committers: set[asyncio.Task] = set()   # referenced until done (the loop holds tasks weakly)

    @classmethod
    async def open(cls, path: Path) -> "SqliteDb":
        conn = await aiosqlite.connect(path, isolation_level=None)
        try:
            await conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            await conn.execute("PRAGMA journal_mode = WAL")
        except BaseException:
            await conn.close()
            raise
        return cls(conn)

    async def close(self) -> None:
        # group commits under way finish first (a cancelled caller's writes are still committed or refused)
        while self._committers:
            await asyncio.gather(*list(self._committers), return_exceptions=True)
        await self.conn.close()

    async def script(self, ddl: str) -> None:
        await self.conn.executescript(ddl)

    async def rows(self, sql: str, args=()) -> list:
        return list(await self.conn.execute_fetchall(sql, tuple(args)))

    async def first(self, sql: str, args=()):
        rows = await self.rows(sql, args)
        return rows[0] if rows else None

    async def execute(self, sql: str, args=()) -> int:
        """One write (the caller holds ``lock`` when it read what it writes); the rows it changed."""
        cur = await self.conn.execute(sql, tuple(args))
        return cur.rowcount

    async def tx(self, statements=(), many=()) -> None:
        """``statements`` [(sql, args)] then ``many`` [(sql, [args, …])] in one transaction.

        Group commit: the transactions asked for while one commits are written together in the next one,
        each inside a savepoint (one that fails is rolled back alone and raises to its caller), with one
        COMMIT, one fsync, for all; each caller returns only once its writes are committed. A reconnect
        storm's thousands of hellos were one fsync each, queued behind each other."""
        fut = asyncio.get_running_loop().create_future()
        self._queued.append((statements, many, fut))
        if len(self._queued) == 1:
            self._commit_later()
        await asyncio.shield(fut)   # a caller cancelled meanwhile still has its writes committed or refused

    def _commit_later(self) -> None:
        task = asyncio.get_running_loop().create_task(self._commit_queued())
        self._committers.add(task)
        task.add_done_callback(self._committers.discard)

    async def _commit_queued(self) -> None:
        async with self.lock:
            # bounded: a reconnect storm's thousands of hellos in one group held the write lock for seconds
            # (a thread hop per statement), past the agents' welcome timeout and the request store's busy_timeout
            group, self._queued = self._queued[:GROUP_MAX], self._queued[GROUP_MAX:]
            if self._queued:
                self._commit_later()
            if not group:
                return
            try:
                await self.conn.execute("BEGIN IMMEDIATE")
            except BaseException as exc:   # every caller hears it; the task itself ends quietly
                for *_x, fut in group:
                    fut.set_exception(exc)
                return
            failed: dict[int, BaseException] = {}
            try:
                for n, (statements, many, _fut) in enumerate(group):
                    await self.conn.execute(f"SAVEPOINT tx{n}")
                    try:
                        for sql, args in statements:
                            await self.conn.execute(sql, tuple(args))
                        for sql, rows in many:
                            await self.conn.executemany(sql, rows)
                    except Exception as exc:
                        failed[n] = exc
                        await self.conn.execute(f"ROLLBACK TO tx{n}")
                    await self.conn.execute(f"RELEASE tx{n}")
                await self.conn.execute("COMMIT")
            except BaseException as exc:
                try:
                    await self.conn.execute("ROLLBACK")
                finally:
                    for *_x, fut in group:
                        if not fut.done():
                            fut.set_exception(exc)
                return
            for n, (*_x, fut) in enumerate(group):
                if n in failed:
                    fut.set_exception(failed[n])
                else:
                    fut.set_result(None)


class PostgresDb:
    dialect = "postgresql"

    def __init__(self, database, *, what: str = "the fleet store"):
        """``database``: a ``personalizer.pg.Database`` (the request store's, closed by its owner)."""
        self.database = database
        self.lock = asyncio.Lock()
        self._what = what

    async def close(self) -> None:
        """The database belongs to the request store: nothing to close here."""

    @staticmethod
    def _q(sql: str) -> str:
        return sql.replace("?", "%s")

    async def script(self, ddl: str) -> None:
        async def fn(conn):
            await conn.execute(ddl)
        await self.database.run(fn, what=self._what)

    async def rows(self, sql: str, args=()) -> list:
        async def fn(conn):
            cur = await conn.execute(self._q(sql), tuple(args))
            return [tuple(r) for r in await cur.fetchall()]
        return await self.database.run(fn, what=self._what)

    async def first(self, sql: str, args=()):
        rows = await self.rows(sql, args)
        return rows[0] if rows else None

    async def execute(self, sql: str, args=()) -> int:
        async def fn(conn):
            return (await conn.execute(self._q(sql), tuple(args))).rowcount
        return await self.database.run(fn, what=self._what)

    async def tx(self, statements=(), many=()) -> None:
        async def fn(conn):
            for sql, args in statements:
                await conn.execute(self._q(sql), tuple(args))
            for sql, rows in many:
                if rows:
                    async with conn.cursor() as cur:
                        await cur.executemany(self._q(sql), rows)
        async with self.lock:
            await self.database.run(fn, what=self._what)
