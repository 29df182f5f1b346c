"""The journal's SQLite side files (``-wal``, ``-shm``) are private like the database (issue 10 item 9):
they hold the same operation records (holder, requests) until a checkpoint."""
from __future__ import annotations

import asyncio
import os
import stat

from agent.ops.journal import Journal


def _modes(db):
    return {p.name: stat.S_IMODE(p.stat().st_mode) for p in db.parent.iterdir() if p.name.startswith(db.name)}


def test_database_and_side_files_are_0600_under_a_lax_umask(tmp_path):
    db = tmp_path / "data" / "journal.db"
    old = os.umask(0o022)
    try:
        async def scenario():
            j = await Journal.open(db)
            try:
                await j.begin_operation(kind="personalize", card_serial="S1", model_id="m", reader="r")
                return _modes(db)
            finally:
                await j.close()
        modes = asyncio.run(scenario())
    finally:
        os.umask(old)
    assert set(modes) == {"journal.db", "journal.db-wal", "journal.db-shm"}, modes
    assert all(m == 0o600 for m in modes.values()), {k: oct(v) for k, v in modes.items()}


def test_files_left_readable_by_an_older_agent_are_made_private(tmp_path):
    db = tmp_path / "journal.db"
    asyncio.run(_open_close(db))
    db.chmod(0o644)
    for name in ("journal.db-wal", "journal.db-shm"):   # as a crashed older agent left them
        (tmp_path / name).touch()
        (tmp_path / name).chmod(0o644)

    async def scenario():
        j = await Journal.open(db)
        try:
            await j.begin_operation(kind="personalize", card_serial="S1", model_id="m", reader="r")
            return _modes(db)
        finally:
            await j.close()
    modes = asyncio.run(scenario())
    assert set(modes) == {"journal.db", "journal.db-wal", "journal.db-shm"}, modes
    assert all(m == 0o600 for m in modes.values()), {k: oct(v) for k, v in modes.items()}


async def _open_close(db):
    j = await Journal.open(db)
    await j.close()
