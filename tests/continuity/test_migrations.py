"""Versioned migrations (personalizer.store.migrations): order, refusal of edited or unknown versions, SQLite runs."""
from __future__ import annotations

import sqlite3

import pytest

from personalizer.errors import StoreError
from personalizer.store import migrations


def test_postgresql_migrations_are_numbered_without_gaps():
    ms = migrations.migrations("postgresql")
    assert [m.version for m in ms] == list(range(1, len(ms) + 1))
    assert {m.name for m in ms} >= {"request_store", "ca_index"}


def test_plan_applies_only_what_is_missing():
    ms = migrations.migrations("postgresql")
    assert migrations.plan("postgresql", {}) == ms
    assert migrations.plan("postgresql", {1: ms[0].sha256}) == ms[1:]
    assert migrations.plan("postgresql", {m.version: m.sha256 for m in ms}) == []


def test_an_edited_applied_migration_is_refused():
    with pytest.raises(StoreError, match="changed after it was applied"):
        migrations.plan("postgresql", {1: "0" * 64})


def test_a_database_from_a_newer_release_is_refused():
    ms = migrations.migrations("postgresql")
    with pytest.raises(StoreError, match="newer than this release"):
        migrations.plan("postgresql", {**{m.version: m.sha256 for m in ms}, len(ms) + 1: "x"})


def test_sqlite_runner_applies_each_migration_once(tmp_path, monkeypatch):
    fake = [migrations.Migration(1, "one", "CREATE TABLE IF NOT EXISTS a (x INTEGER);"),
            migrations.Migration(2, "two", "CREATE TABLE IF NOT EXISTS b (y INTEGER);")]
    monkeypatch.setattr(migrations, "migrations", lambda backend: fake)
    conn = sqlite3.connect(tmp_path / "db.sqlite", isolation_level=None)
    assert migrations.migrate_sqlite(conn) == 2
    assert migrations.migrate_sqlite(conn) == 2
    rows = conn.execute("SELECT version, name FROM schema_migrations ORDER BY version").fetchall()
    assert rows == [(1, "one"), (2, "two")]


def test_a_failing_sqlite_migration_leaves_nothing_of_itself(tmp_path, monkeypatch):
    fake = [migrations.Migration(1, "bad", "CREATE TABLE c (x INTEGER); INSERT INTO nope VALUES (1);")]
    monkeypatch.setattr(migrations, "migrations", lambda backend: fake)
    conn = sqlite3.connect(tmp_path / "db.sqlite", isolation_level=None)
    with pytest.raises(sqlite3.OperationalError):
        migrations.migrate_sqlite(conn)
    tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert "c" not in tables
    assert conn.execute("SELECT count(*) FROM schema_migrations").fetchone()[0] == 0


def test_the_sqlite_store_records_its_migrations(tmp_path):
    import asyncio

    from personalizer.store import SqliteRequestStore

    async def go():
        s = await SqliteRequestStore.open(tmp_path / "requests.sqlite")
        await s.close()
        s = await SqliteRequestStore.open(tmp_path / "requests.sqlite")   # a second open applies nothing
        await s.close()
    asyncio.run(go())
    conn = sqlite3.connect(tmp_path / "requests.sqlite")
    rows = conn.execute("SELECT version, name, sha256 FROM schema_migrations").fetchall()
    assert [(v, n) for v, n, _ in rows] == [(m.version, m.name) for m in migrations.migrations("sqlite")]
    assert rows[0][2] == migrations.migrations("sqlite")[0].sha256
