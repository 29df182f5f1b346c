"""The agent's operation journal: durable record of multi-step device operations.

Owns the SQLite file (WAL) that says, for every personalization, renewal or
update, which step is about to run or has run on which card. The rule of
DESIGN.md "Safety rules for devices": a step is recorded *before* it runs, so
after a crash the agent knows exactly what it may have done to the card.

Never stored here: PINs, PUKs, private keys, admin keys. ``_check_no_secrets``
refuses any detail whose keys look like one, as a second line of defence.

Imports nothing of ours but ``agent.ops.errors``. One SQLite connection owned by
one worker thread; every journal call (a step record is a whole transaction) is
ONE call on that thread: no statement of another coroutine can run inside it,
and a personalization's ~20 step records cost ~20 handoffs, not ~120.
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import json
import os
import sqlite3
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agent.ops.errors import JournalError

SCHEMA = """
CREATE TABLE IF NOT EXISTS operations (
    op_id        TEXT PRIMARY KEY,
    kind         TEXT NOT NULL,              -- personalize | renew | pin-unblock ...
    card_serial  TEXT NOT NULL,
    model_id     TEXT NOT NULL,
    reader       TEXT NOT NULL,
    state        TEXT NOT NULL,              -- running | done | undone | failed
    step         TEXT,                       -- last step begun
    step_phase   TEXT,                       -- begun | done
    data         TEXT NOT NULL DEFAULT '{}', -- JSON, public values only
    error        TEXT,
    created_at   REAL NOT NULL,
    updated_at   REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS operations_open ON operations(card_serial) WHERE state = 'running';
CREATE TABLE IF NOT EXISTS steps (
    op_id   TEXT NOT NULL REFERENCES operations(op_id),
    seq     INTEGER NOT NULL,
    step    TEXT NOT NULL,
    phase   TEXT NOT NULL,                   -- begun | done | undone
    detail  TEXT NOT NULL DEFAULT '{}',
    at      REAL NOT NULL,
    PRIMARY KEY (op_id, seq)
);
"""

_SECRET_WORDS = ("pin", "puk", "private", "secret", "password", "admin_key")

OPEN, DONE, UNDONE, FAILED = "running", "done", "undone", "failed"


def _check_no_secrets(detail: dict[str, Any]) -> None:
    for key, value in detail.items():
        low = key.lower()
        if any(w in low for w in _SECRET_WORDS) and not low.endswith(("_tries", "_ref", "_mode")):
            raise JournalError(f"refusing to journal {key!r}: secrets never reach the journal")
        if isinstance(value, dict):
            _check_no_secrets(value)


@dataclass
class Operation:
    op_id: str
    kind: str
    card_serial: str
    model_id: str
    reader: str
    state: str
    step: str | None
    step_phase: str | None
    data: dict[str, Any] = field(default_factory=dict)
    error: str | None = None
    created_at: float = 0.0
    updated_at: float = 0.0

    def step_done(self, name: str) -> bool:
        return name in self.data.get("_done", [])


def _private_files(path: Path) -> None:
    """Create the database 0600 before SQLite opens it (SQLite gives ``-wal``/``-shm`` the database's
    mode), and make an existing database and side files 0600: they hold the same records."""
    os.close(os.open(path, os.O_RDWR | os.O_CREAT, 0o600))
    for p in (path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
        if p.exists():
            p.chmod(0o600)


class Journal:
    """Async journal over one SQLite file. Use ``await Journal.open(path)``."""

    def __init__(self, conn: sqlite3.Connection, pool: concurrent.futures.ThreadPoolExecutor, path: Path):
        self._conn = conn
        self._pool = pool
        self.path = path

    @classmethod
    async def open(cls, path: Path, *, synchronous: str = "FULL") -> "Journal":
        """``synchronous``: FULL (default: a step record must survive power loss); benchmarks on tmpfs may
        pass OFF."""
        if synchronous not in ("FULL", "NORMAL", "OFF"):
            raise ValueError(f"synchronous must be FULL, NORMAL or OFF, not {synchronous!r}")
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        try:
            _private_files(path)
        except OSError as exc:
            raise JournalError(f"cannot open the operation journal {path}: {exc}") from exc
        pool = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="journal")

        def connect() -> sqlite3.Connection:
            conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
            try:
                conn.execute("PRAGMA journal_mode=WAL")
                conn.execute(f"PRAGMA synchronous={synchronous}")
                conn.executescript(SCHEMA)
            except BaseException:
                conn.close()
                raise
            return conn

        try:
            conn = await asyncio.get_running_loop().run_in_executor(pool, connect)
        except Exception as exc:  # sqlite3.Error and OS errors
            pool.shutdown(wait=False)
            raise JournalError(f"cannot open the operation journal {path}: {exc}") from exc
        path.chmod(0o600)
        return cls(conn, pool, path)

    async def close(self) -> None:
        await self._run(self._conn.close)
        self._pool.shutdown(wait=True)

    async def _run(self, fn, *args):
        try:
            return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)
        except sqlite3.Error as exc:
            raise JournalError(f"operation journal {self.path}: {exc}") from exc

    def _transaction(self, statements: list[tuple[str, tuple]]) -> None:
        """Runs on the journal's thread: the statements, atomically."""
        c = self._conn
        c.execute("BEGIN IMMEDIATE")
        try:
            for sql, args in statements:
                c.execute(sql, args)
            c.execute("COMMIT")
        except BaseException:
            c.execute("ROLLBACK")
            raise

    async def begin_operation(self, *, kind: str, card_serial: str, model_id: str, reader: str,
                              data: dict[str, Any] | None = None) -> Operation:
        data = dict(data or {})
        _check_no_secrets(data)
        now = time.time()
        op = Operation(op_id=str(uuid.uuid4()), kind=kind, card_serial=card_serial, model_id=model_id,
                       reader=reader, state=OPEN, step=None, step_phase=None, data=data,
                       created_at=now, updated_at=now)

        def insert_unless_open() -> Operation | None:
            c = self._conn
            c.execute("BEGIN IMMEDIATE")
            try:
                row = c.execute("SELECT * FROM operations WHERE state = ? AND card_serial = ? ORDER BY created_at",
                                (OPEN, card_serial)).fetchone()
                if row is None:
                    c.execute("INSERT INTO operations(op_id, kind, card_serial, model_id, reader, state, data,"
                              " created_at, updated_at) VALUES (?,?,?,?,?,?,?,?,?)",
                              (op.op_id, kind, card_serial, model_id, reader, OPEN, json.dumps(data), now, now))
                c.execute("COMMIT")
            except BaseException:
                c.execute("ROLLBACK")
                raise
            return None if row is None else self._row(row)

        existing = await self._run(insert_unless_open)
        if existing is not None:
            raise JournalError(f"card {card_serial} already has an unfinished {existing.kind} "
                               f"operation {existing.op_id}; it must be resumed or undone first")
        return op

    async def _log_step(self, op: Operation, step: str, phase: str, detail: dict[str, Any]) -> None:
        _check_no_secrets(detail)
        now = time.time()
        await self._run(self._transaction, [
            ("INSERT INTO steps(op_id, seq, step, phase, detail, at)"
             " SELECT ?, COALESCE(MAX(seq), 0) + 1, ?, ?, ?, ? FROM steps WHERE op_id = ?",
             (op.op_id, step, phase, json.dumps(detail), now, op.op_id)),
            ("UPDATE operations SET step = ?, step_phase = ?, data = ?, updated_at = ? WHERE op_id = ?",
             (step, phase, json.dumps(op.data), now, op.op_id)),
        ])
        op.step, op.step_phase, op.updated_at = step, phase, now

    async def advance(self, op: Operation, done: dict[str, dict[str, Any]], begin: dict[str, dict[str, Any]]) -> None:
        """Record steps ``done`` (step → results) and steps about to run ``begin`` (step → detail) in ONE
        transaction: the same guarantees as step_done(...) then step_begun(...) — the journal never shows
        a later step begun without the earlier one done — for one commit instead of several."""
        for results in done.values():
            _check_no_secrets(results)
        for detail in begin.values():
            _check_no_secrets(detail)
        for step, results in done.items():
            op.data.update(results)
            op.data.setdefault("_done", [])
            if step not in op.data["_done"]:
                op.data["_done"].append(step)
        now = time.time()
        records = [(step, "done", results) for step, results in done.items()]
        records += [(step, "begun", detail) for step, detail in begin.items()]
        if not records:
            return
        statements = [("INSERT INTO steps(op_id, seq, step, phase, detail, at)"
                       " SELECT ?, COALESCE(MAX(seq), 0) + 1, ?, ?, ?, ? FROM steps WHERE op_id = ?",
                       (op.op_id, step, phase, json.dumps(detail), now, op.op_id)) for step, phase, detail in records]
        last_step, last_phase, _ = records[-1]
        statements.append(("UPDATE operations SET step = ?, step_phase = ?, data = ?, updated_at = ? WHERE op_id = ?",
                           (last_step, last_phase, json.dumps(op.data), now, op.op_id)))
        await self._run(self._transaction, statements)
        op.step, op.step_phase, op.updated_at = last_step, last_phase, now

    async def step_begun(self, op: Operation, step: str, **detail: Any) -> None:
        """Record that ``step`` is about to run. Call before touching the card or the network."""
        await self._log_step(op, step, "begun", detail)

    async def step_done(self, op: Operation, step: str, **results: Any) -> None:
        """Record that ``step`` completed, merging ``results`` (public values) into the operation's data."""
        _check_no_secrets(results)
        op.data.update(results)
        op.data.setdefault("_done", [])
        if step not in op.data["_done"]:
            op.data["_done"].append(step)
        await self._log_step(op, step, "done", results)

    async def step_undone(self, op: Operation, step: str, **detail: Any) -> None:
        if step in op.data.get("_done", []):
            op.data["_done"].remove(step)
        await self._log_step(op, step, "undone", detail)

    async def finish(self, op: Operation, state: str, error: str | None = None) -> None:
        if state not in (DONE, UNDONE, FAILED):
            raise ValueError(f"not a final state: {state}")
        now = time.time()
        await self._run(self._transaction, [
            ("UPDATE operations SET state = ?, error = ?, data = ?, updated_at = ? WHERE op_id = ?",
             (state, error, json.dumps(op.data), now, op.op_id))])
        op.state, op.error, op.updated_at = state, error, now

    async def open_operations(self, card_serial: str | None = None) -> list[Operation]:
        sql = "SELECT * FROM operations WHERE state = 'running'"
        args: tuple = ()
        if card_serial is not None:
            sql += " AND card_serial = ?"
            args = (card_serial,)
        return [self._row(r) for r in await self._fetch(sql + " ORDER BY created_at", args)]

    async def get(self, op_id: str) -> Operation | None:
        rows = await self._fetch("SELECT * FROM operations WHERE op_id = ?", (op_id,))
        return self._row(rows[0]) if rows else None

    async def history(self, op_id: str) -> list[tuple[str, str, dict[str, Any]]]:
        rows = await self._fetch("SELECT step, phase, detail FROM steps WHERE op_id = ? ORDER BY seq", (op_id,))
        return [(r[0], r[1], json.loads(r[2])) for r in rows]

    async def _fetch(self, sql: str, args: tuple) -> list[tuple]:
        return await self._run(lambda: self._conn.execute(sql, args).fetchall())

    @staticmethod
    def _row(r: tuple) -> Operation:
        return Operation(op_id=r[0], kind=r[1], card_serial=r[2], model_id=r[3], reader=r[4], state=r[5],
                         step=r[6], step_phase=r[7], data=json.loads(r[8]), error=r[9],
                         created_at=r[10], updated_at=r[11])
