"""A request store written by the previous release (schema 2, before claim owners and holder records)
opens with this one and keeps working: nothing is lost, the holder records are back-filled from the
issuance payloads once, a claim the old daemon left is taken back, and new requests go in.

``tests/fixtures/store/requests-schema2.sqlite`` was written by the code on main before issue 11's store
work: one request ISSUED (card model M1), one queued, one claimed (``sending``) by the old relay.
"""
from __future__ import annotations

import asyncio
import shutil
import sqlite3
from pathlib import Path

from personalizer.records import HolderRecord
from personalizer.store import SqliteRequestStore
from tests.store.test_contract import put

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "store" / "requests-schema2.sqlite"


def _copy(tmp_path) -> Path:
    db = tmp_path / "requests.sqlite"
    shutil.copy(FIXTURE, db)
    return db


def test_the_fixture_is_a_schema_2_database():
    with sqlite3.connect(f"file:{FIXTURE}?mode=ro", uri=True) as c:
        assert c.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone() == ("2",)
        tables = {r[0] for r in c.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        assert "request_holders" not in tables
        assert "claimed_by" not in {r[1] for r in c.execute("PRAGMA table_info(outbox)")}


def test_an_old_database_opens_and_keeps_working(tmp_path):
    db = _copy(tmp_path)

    async def go():
        store = await SqliteRequestStore.open(db)
        try:
            issued = await store.get_request("old-issued")
            assert issued.state == "ISSUED" and issued.certificate_der and issued.serial_hex == "1001"
            assert await store.get_holder("old-issued") == HolderRecord(
                "old-issued", "7420000000000001", "RSSMRA80A01H501U", "MARIO", "ROSSI", "1980-01-01", "M1")
            assert (await store.get_holder("old-queued")).card_model == ""
            assert (await store.find_certificates(card_id="7420000000000001"))[0].info.request_id == "old-issued"
            # the old relay's claim carries no owner: whichever relay starts takes it back
            assert await store.reset_sending("new-relay") == 1
            claimed = await store.claim_due(2_000_000_000.0, ("standard",), 10, "new-relay")
            assert sorted(c.record.request_id for c in claimed) == ["old-queued", "old-sending"]
            assert {c.record.request_id: c.record.attempts for c in claimed} == {"old-queued": 1, "old-sending": 2}
            assert await put(store, "new-1")
        finally:
            await store.close()
        store = await SqliteRequestStore.open(db)   # a second open changes nothing
        try:
            assert (await store.get_holder("old-issued")).card_model == "M1"
            assert (await store.get_request("new-1")).outbox_status == "queued"
            assert len(await store.list_audit()) >= 4
        finally:
            await store.close()

    asyncio.run(go())
    with sqlite3.connect(db) as c:
        assert c.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone() == ("3",)
        assert c.execute("SELECT COUNT(*) FROM request_holders").fetchone() == (3,)
