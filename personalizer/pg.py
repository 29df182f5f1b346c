"""One PostgreSQL database that follows the primary across a failover: a psycopg async pool + retries.

Used by the PostgreSQL request store and the embedded CA's PostgreSQL index (both share one database,
so a site that takes over has every request, certificate, serial and CRL number). The DSN lists both
sites with ``target_session_attrs=read-write`` (libpq tries each host until one is the primary).

``run(fn)`` calls ``fn(conn)`` inside one transaction on a pooled connection; ``run(fn, pipeline=True)``
does so in psycopg's pipeline mode (BEGIN, the statements and COMMIT leave in one network round trip
unless ``fn`` reads a result: a ``fetch*`` flushes; a cursor's ``rowcount`` is known only once ``run``
returns, so such an ``fn`` returns its cursors); ``read(fn)`` runs a read-only ``fn`` without BEGIN/COMMIT
(autocommit: one round trip per statement instead of three); ``statement(fn)`` the same for one statement
that writes (it is its own transaction); ``write(statements)`` runs a list of
statements that need no decision in Python as one transaction shared with the other callers' (group
commit: while ``GROUP_COMMITTERS`` transactions are committing, the statements asked for meanwhile wait and
go together in the next one, up to ``GROUP_MAX`` callers; if a shared transaction fails, each caller's
statements run again alone, so one caller's error never fails another's). With the synchronous standby every commit
waits for the standby's flush, so a request's transactions are few and short, and the pool lets
concurrent requests share one flush (PostgreSQL's group commit needs concurrent transactions). When the
connection breaks
(the primary died, Patroni demoted it: ``OperationalError``, or a node that is now read-only) the
transaction's outcome is unknown, so ``fn`` must be idempotent (every caller writes by request id or
compare-and-set); it is called again on a fresh connection until ``failover_timeout`` has passed, then the
error is raised as ``error_cls`` with one line saying what to check. ``open(migrate=)`` runs the caller's
schema migration once (the store passes ``store.migrations.migrate_postgresql``). Imports psycopg and
psycopg_pool only.
"""
from __future__ import annotations

import asyncio
import contextvars
import logging
import time

import psycopg
from psycopg import errors as pgerrors
from psycopg_pool import AsyncConnectionPool, PoolTimeout

log = logging.getLogger(__name__)

FAILOVER_TIMEOUT_S = 45.0   # above Patroni's ttl (20 s) + promotion: a whole-site loss is ridden out
RETRY_PAUSE_S = 0.2
GROUP_MAX = 64          # callers per shared transaction (write)
# shared transactions committing at once; callers arriving meanwhile wait and go together in the next one.
# One: with the synchronous standby a commit costs a chain of process wake-ups (backend, walsender, the
# standby's walreceiver and its flush, back) that on a loaded 2-core machine takes ~20 ms whatever it carries;
# measured in one run (bench issue --phases, 16 clients, 2 repetitions): 1 committer -> 3.7 callers per
# commit, PostgreSQL p99 206 ms; 2 -> 2.3 callers, p99 262-288 ms; 4 -> 1.5 callers, p99 worse again.
GROUP_COMMITTERS = 1
RETRYABLE = (psycopg.OperationalError, pgerrors.ReadOnlySqlTransaction, pgerrors.AdminShutdown,
             pgerrors.CannotConnectNow, PoolTimeout)


def redact(dsn: str) -> str:
    """The DSN without its password (for messages and logs)."""
    try:
        params = psycopg.conninfo.conninfo_to_dict(dsn)
    except psycopg.ProgrammingError:
        return "<unparsable DSN>"
    params.pop("password", None)
    return psycopg.conninfo.make_conninfo(**params)


class Database:
    """Open with ``await Database.open(dsn, error_cls=...)``; ``await close()``."""

    def __init__(self, pool: AsyncConnectionPool, dsn: str, error_cls: type[Exception], failover_timeout: float,
                 pool_args: dict | None = None):
        self._pool = pool
        self._dsn = dsn
        self._dsn_shown = redact(dsn)
        self._error = error_cls
        self.failover_timeout = failover_timeout
        self._pool_args = pool_args or {}
        self._generation = 0
        self._recover_lock = asyncio.Lock()
        # a connection broke and no primary answered the probe yet: callers probe (one at a time, at most every
        # RETRY_PAUSE_S) instead of waiting on the old pool, so a promotion is found within one pause
        self._primary_lost = False
        self._probe_failed_at = -1e9
        self._retired: set[asyncio.Task] = set()
        self.failovers = 0   # pools replaced after the primary moved
        self._queued: list = []           # (statements, future, what) waiting for a shared transaction
        self._committers: set[asyncio.Task] = set()
        self.group_commits = 0            # shared transactions committed (write)
        # measured by benchmarks (issue 17 item 6): where a request's PostgreSQL time goes
        self.transactions = 0             # transactions committed (each one standby flush with the sync standby)
        self.group_callers = 0            # write() callers served by the shared transactions
        self.reads = 0                    # read() calls (no transaction)
        self.statements = 0               # statement() calls (one statement, its own transaction)
        self.pool_wait_s = 0.0            # time spent waiting for a pooled connection
        # a list (store.phases turns it on for benchmarks): one (start, end, callers) per shared transaction;
        # and, per caller of write(), (queued, transaction start, end) for take_write_timing()
        self.trace: list | None = None
        self._write_timing: contextvars.ContextVar = contextvars.ContextVar("write_timing", default=None)

    @staticmethod
    def _new_pool(dsn: str, min_size: int, max_size: int, failover_timeout: float) -> AsyncConnectionPool:
        # no check on checkout: it is one more round trip per transaction (with the synchronous standby,
        # half the commits of an issuance). A connection that broke fails at its first statement, before
        # anything ran, which run() treats as any lost connection: a fresh pool, the transaction again.
        return AsyncConnectionPool(dsn, min_size=min_size, max_size=max_size, open=False, timeout=5.0,
                                   reconnect_timeout=failover_timeout, kwargs={"autocommit": True})

    async def _recover(self, generation: int) -> None:
        """After a lost connection: once a primary accepts a connection, replace the pool.

        The pool's own reconnection backs off exponentially (1 s, 2 s, 4 s …), which after a 20 s failover
        would add seconds to the recovery, and a caller waiting on the old pool waits its whole checkout
        timeout (5 s) before probing again; a direct probe finds the new primary as soon as it is promoted.
        While no primary answers, callers probe one at a time and at most every ``RETRY_PAUSE_S`` (a probe is a
        connection attempt to every host): within a pause of another caller's failed probe this raises
        without probing. Raises OperationalError while no primary answers."""
        async with self._recover_lock:
            if generation != self._generation:
                return   # another caller already replaced the pool
            if time.monotonic() - self._probe_failed_at < RETRY_PAUSE_S:
                raise psycopg.OperationalError("no PostgreSQL primary yet (probed just now)")
            try:
                probe = await psycopg.AsyncConnection.connect(self._dsn)
            except psycopg.OperationalError:
                self._probe_failed_at = time.monotonic()
                self._primary_lost = True
                raise
            await probe.close()
            old, self._pool = self._pool, self._new_pool(self._dsn, **self._pool_args)
            await self._pool.open(wait=False)
            self._generation += 1
            self._primary_lost = False
            self.failovers += 1
            task = asyncio.create_task(old.close(timeout=1.0))
            self._retired.add(task)
            task.add_done_callback(self._retired.discard)
            log.warning("PostgreSQL primary found again at %s; connection pool renewed", self._dsn_shown)

    @classmethod
    async def open(cls, dsn: str, *, error_cls: type[Exception], min_size: int = 1, max_size: int = 8,
                   failover_timeout: float = FAILOVER_TIMEOUT_S, migrate=None) -> "Database":
        try:
            params = psycopg.conninfo.conninfo_to_dict(dsn)
        except psycopg.ProgrammingError as exc:
            raise error_cls(f"the PostgreSQL DSN is not valid ({exc}): expected "
                            f"'host=a,b port=p1,p2 dbname=... user=... target_session_attrs=read-write'") from None
        params.setdefault("target_session_attrs", "read-write")
        params.setdefault("connect_timeout", "3")
        dsn = psycopg.conninfo.make_conninfo(**params)
        pool_args = dict(min_size=min_size, max_size=max_size, failover_timeout=failover_timeout)
        pool = cls._new_pool(dsn, **pool_args)
        db = cls(pool, dsn, error_cls, failover_timeout, pool_args)
        deadline = time.monotonic() + failover_timeout
        while True:
            try:
                await pool.open(wait=True, timeout=min(10.0, failover_timeout))
                break
            except PoolTimeout as exc:
                if time.monotonic() >= deadline:
                    await pool.close()
                    raise error_cls(f"cannot reach a PostgreSQL primary at {db._dsn_shown}: check that the "
                                    f"cluster is up (scripts/cluster status) and the DSN's hosts and ports") from exc
        if migrate:
            try:
                await db.run(migrate, what="the schema migration")
            except BaseException:
                await pool.close()
                raise
        return db

    async def close(self) -> None:
        if self._committers:
            await asyncio.gather(*self._committers, return_exceptions=True)
        await self._pool.close()
        for task in list(self._retired):
            await task

    async def run(self, fn, *, what: str = "PostgreSQL", pipeline: bool = False):
        """``await fn(conn)`` in one transaction; retried on a fresh connection while the primary moves."""
        return await self._attempt(fn, what, transaction=True, pipeline=pipeline)

    async def read(self, fn, *, what: str = "PostgreSQL"):
        """``await fn(conn)`` for reads: each statement on its own (autocommit), no BEGIN/COMMIT round trips."""
        self.reads += 1
        return await self._attempt(fn, what, transaction=False, pipeline=False)

    async def statement(self, fn, *, what: str = "PostgreSQL"):
        """``await fn(conn)`` where ``fn`` runs ONE statement that writes (e.g. data-modifying CTEs): in autocommit
        it is its own transaction, atomic, in one round trip instead of three (BEGIN, it, COMMIT)."""
        self.statements += 1
        return await self._attempt(fn, what, transaction=False, pipeline=False)

    async def write(self, statements: list[tuple[str, object]], *, what: str = "PostgreSQL") -> list:
        """Run ``statements`` (idempotent: see ``run``) in one transaction, shared with concurrent callers;
        their cursors (rowcount, fetched rows) once committed. A caller cancelled meanwhile still has its
        statements committed or refused."""
        fut = asyncio.get_running_loop().create_future()
        timing = [time.time(), 0.0, 0.0]   # queued, its transaction's start and end
        self._queued.append((statements, fut, what, timing))
        if len(self._committers) < GROUP_COMMITTERS:
            task = asyncio.get_running_loop().create_task(self._commit_queued())
            self._committers.add(task)
            task.add_done_callback(self._committers.discard)
        try:
            return await asyncio.shield(fut)
        finally:
            if self.trace is not None:
                self._write_timing.set(tuple(timing))

    def take_write_timing(self) -> tuple[float, float, float] | None:
        """(queued, transaction start, end) of this task's last ``write`` since the last take (trace on)."""
        timing = self._write_timing.get()
        self._write_timing.set(None)
        return timing

    @staticmethod
    async def _execute_all(conn, batch) -> list[list]:
        return [[await conn.execute(sql, params) for sql, params in statements] for statements, _, _, _ in batch]

    async def _commit_queued(self) -> None:
        while self._queued:
            batch, self._queued = self._queued[:GROUP_MAX], self._queued[GROUP_MAX:]
            started = time.time()
            for item in batch:
                item[3][1] = started
            try:
                results = await self.run(lambda conn: self._execute_all(conn, batch), what=batch[0][2], pipeline=True)
            except Exception as exc:
                if len(batch) == 1:
                    _settle(batch[0][1], exc=exc)
                    continue
                for item in batch:   # alone, each in its own transaction: one caller's error is its own
                    item[3][1] = time.time()
                    try:
                        _settle(item[1], (await self.run(lambda conn, item=item: self._execute_all(conn, [item]),
                                                         what=item[2], pipeline=True))[0])
                    except Exception as exc2:
                        _settle(item[1], exc=exc2)
                continue
            self.group_commits += 1
            self.group_callers += len(batch)
            ended = time.time()
            if self.trace is not None and len(self.trace) < 100_000:
                self.trace.append((started, ended, len(batch)))
            for (_, fut, _, timing), cursors in zip(batch, results):
                timing[2] = ended
                _settle(fut, cursors)

    async def _attempt(self, fn, what: str, *, transaction: bool, pipeline: bool):
        deadline = time.monotonic() + self.failover_timeout
        attempt = 0
        while True:
            attempt += 1
            generation = self._generation
            if self._primary_lost:   # the primary is gone: find the new one rather than wait on the old pool
                try:
                    await self._recover(generation)
                except psycopg.OperationalError:
                    if time.monotonic() >= deadline:
                        raise self._error(f"{what}: no PostgreSQL primary answered within "
                                          f"{self.failover_timeout:.0f} s; check scripts/cluster status") from None
                    await asyncio.sleep(RETRY_PAUSE_S)
                    continue
                generation = self._generation
            waited = time.perf_counter()
            try:
                async with self._pool.connection() as conn:
                    self.pool_wait_s += time.perf_counter() - waited
                    if not transaction:
                        return await fn(conn)
                    if not pipeline:
                        async with conn.transaction():
                            result = await fn(conn)
                        self.transactions += 1
                        return result
                    async with conn.pipeline():
                        async with conn.transaction():
                            result = await fn(conn)
                    self.transactions += 1
                    return result   # after the pipeline's sync: every result (and rowcount) is known
            except RETRYABLE as exc:
                if time.monotonic() >= deadline:
                    raise self._error(f"{what}: no PostgreSQL primary answered within {self.failover_timeout:.0f} s "
                                      f"({type(exc).__name__}); check scripts/cluster status") from exc
                if attempt == 1:
                    log.warning("%s: connection to the primary lost (%s); retrying on the new primary",
                                what, type(exc).__name__)
                if isinstance(exc, PoolTimeout) and not self._pool.get_stats().get("connections_errors", 0):
                    continue   # only busy (every connection in use, none failing): wait for one again
                try:
                    await self._recover(generation)
                except psycopg.OperationalError:
                    await asyncio.sleep(RETRY_PAUSE_S)   # no primary yet (promotion under way)
            except psycopg.Error as exc:
                raise self._error(f"{what} failed: {str(exc).strip().splitlines()[0] if str(exc) else type(exc).__name__}") from exc


def _settle(fut: asyncio.Future, result=None, *, exc: BaseException | None = None) -> None:
    if not fut.done():
        if exc is not None:
            fut.set_exception(exc)
        else:
            fut.set_result(result)
