"""Versioned schema migrations for both store backends: ordered SQL files and a version table.

``postgresql/NNNN_name.sql`` and ``sqlite/NNNN_name.sql`` are applied in order, each in ONE transaction
together with its row in ``schema_migrations(version, name, sha256, applied_at)``. A file already applied
must not change (its SHA-256 is compared at every open: an edited migration is refused, never re-run),
and a database with a version this code does not know (written by a newer release) is refused too.
On PostgreSQL the runner holds a transaction-scoped advisory lock, so two sites' daemons starting at
once apply each migration exactly once.

Why SQL files rather than alembic: the stores speak SQL directly (aiosqlite, psycopg; no SQLAlchemy,
which alembic requires), the schema is small, and plain files are what a chamber's DBA reviews and can
apply by hand with psql in an emergency. Pure: imports no driver; callers pass a connection.
"""
from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from importlib import resources

from personalizer.errors import StoreError

BACKENDS = ("postgresql", "sqlite")
ADVISORY_LOCK = 0x636E73_17   # "cns" + issue 17: one constant per application
_NAME = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")

PG_TABLE = """CREATE TABLE IF NOT EXISTS schema_migrations (
    version INTEGER PRIMARY KEY, name TEXT NOT NULL, sha256 TEXT NOT NULL,
    applied_at TIMESTAMPTZ NOT NULL DEFAULT now())"""
SQLITE_TABLE = """CREATE TABLE IF NOT EXISTS schema_migrations (
    version INTEGER PRIMARY KEY, name TEXT NOT NULL, sha256 TEXT NOT NULL,
    applied_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%SZ', 'now')))"""


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()


def migrations(backend: str) -> list[Migration]:
    """The backend's migrations in order; versions are 1, 2, 3 … without gaps."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}")
    out = []
    for entry in resources.files(__name__).joinpath(backend).iterdir():
        m = _NAME.match(entry.name)
        if m:
            out.append(Migration(int(m.group(1)), m.group(2), entry.read_text(encoding="utf-8")))
    out.sort(key=lambda m: m.version)
    if [m.version for m in out] != list(range(1, len(out) + 1)):
        raise StoreError(f"the {backend} migrations are not numbered 1..{len(out)}: {[m.version for m in out]}")
    return out


def plan(backend: str, applied: dict[int, str]) -> list[Migration]:
    """What to apply given ``applied`` (version → sha256); StoreError when the database is not ours to move."""
    known = migrations(backend)
    by_version = {m.version: m for m in known}
    newer = sorted(v for v in applied if v not in by_version)
    if newer:
        raise StoreError(f"the database has schema version {newer[-1]}, newer than this release knows "
                         f"({len(known)}): run the release that wrote it, or a newer one")
    for v, digest in applied.items():
        if by_version[v].sha256 != digest:
            raise StoreError(f"migration {v:04d}_{by_version[v].name} was changed after it was applied to this "
                             f"database: restore the released file; a schema change is a new migration")
    return [m for m in known if m.version not in applied]


async def migrate_postgresql(conn) -> int:
    """Apply pending migrations on a psycopg ``AsyncConnection`` (autocommit off); returns the version."""
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock(%s)", (ADVISORY_LOCK,))
        await conn.execute(PG_TABLE)
        cur = await conn.execute("SELECT version, sha256 FROM schema_migrations")
        todo = plan("postgresql", {v: d for v, d in await cur.fetchall()})
        for m in todo:
            await conn.execute(m.sql)
            await conn.execute("INSERT INTO schema_migrations (version, name, sha256) VALUES (%s, %s, %s)",
                               (m.version, m.name, m.sha256))
    return len(migrations("postgresql"))


def migrate_sqlite(conn) -> int:
    """Apply pending migrations on a ``sqlite3.Connection`` (isolation_level=None); returns the version.

    Each migration runs as one script inside BEGIN IMMEDIATE … COMMIT (a concurrent opener waits on the
    write lock, then finds the migration applied)."""
    conn.execute(SQLITE_TABLE)
    conn.execute("BEGIN IMMEDIATE")
    try:
        applied = {v: d for v, d in conn.execute("SELECT version, sha256 FROM schema_migrations").fetchall()}
        todo = plan("sqlite", applied)
    finally:
        conn.execute("COMMIT")
    for m in todo:
        script = (f"BEGIN IMMEDIATE;\n{m.sql}\n"
                  f"INSERT OR IGNORE INTO schema_migrations (version, name, sha256) "
                  f"VALUES ({m.version}, '{m.name}', '{m.sha256}');\nCOMMIT;")
        try:
            conn.executescript(script)
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
    return len(migrations("sqlite"))
