"""The embedded CA's index in the SQLite request store's file (issue 16), and the one-time import of ca.db.

An existing deployment keeps its CA records in ``ca/ca.db``. The daemon now keeps them in the store's
file (tables ``ca_certificates``, ``ca_meta``); on open, the old file's certificates, revocations, CRL
number and count of status changes are copied over in one transaction, and ``ca.db`` is renamed
``ca.db.imported``. The CA's answers are the same before and after, the CRL number continues (a CRL
number must only increase, RFC 5280 §5.2.3), and nothing is imported twice. A clash leaves both files
as they were, with a message saying what to do.
"""
from __future__ import annotations

import asyncio
import datetime as dt
import sqlite3
from pathlib import Path

import pytest

from personalizer.ca.index import (DB_NAME, IMPORTED_SUFFIX, STATUS_ACTIVE, STATUS_REVOKED, CertificateIndex)
from personalizer.errors import CAError
from personalizer.store import SqliteRequestStore

NOW = dt.datetime(2026, 12, 1, tzinfo=dt.timezone.utc)
LATER = NOW + dt.timedelta(days=365)


def _record(index, i: int, request: str | None = None):
    return index.record(serial_hex=f"{0xABC000 + i:X}", issuer_dn="CN=Test CA", request_id=request or f"req-{i}",
                        profile="cns-auth", not_before=NOW, not_after=LATER, certificate_der=b"\x30" + bytes([i]))


async def _old_deployment(ca_dir: Path) -> list:
    """ca.db as the previous release left it: 3 certificates, one revoked, CRL number 4."""
    old = await CertificateIndex.open(ca_dir / DB_NAME)
    try:
        rows = [await _record(old, i) for i in range(3)]
        assert await old.transition(rows[1].serial_hex, from_status=STATUS_ACTIVE, to_status=STATUS_REVOKED,
                                    reason="keyCompromise", at=NOW)
        for _ in range(4):
            await old.next_crl_number()
        return rows
    finally:
        await old.close()


async def _store_file(tmp: Path) -> Path:
    path = tmp / "data" / "requests.sqlite"
    store = await SqliteRequestStore.open(path)
    await store.close()
    return path


def test_an_existing_ca_db_is_imported_once_and_its_sequences_continue(tmp_path):
    async def go():
        ca_dir = tmp_path / "ca"
        rows = await _old_deployment(ca_dir)
        store_path = await _store_file(tmp_path)
        index = await CertificateIndex.open_in_store(store_path, import_from=ca_dir / DB_NAME)
        try:
            assert index.recorded_by_store
            for r in rows:   # the same certificates, by request and by serial
                assert await index.by_request(r.request_id) == (await index.by_serial(r.serial_hex))
                assert (await index.by_request(r.request_id)).certificate_der == r.certificate_der
            assert [r.serial_hex for r in await index.not_active()] == [rows[1].serial_hex]
            assert (await index.by_serial(rows[1].serial_hex)).revocation_reason == "keyCompromise"
            assert await index.status_changes() == 1
            assert await index.next_crl_number() == 5                    # continues
        finally:
            await index.close()
        assert not (ca_dir / DB_NAME).exists() and (ca_dir / (DB_NAME + IMPORTED_SUFFIX)).exists()

        again = await CertificateIndex.open_in_store(store_path, import_from=ca_dir / DB_NAME)
        try:
            assert await again.next_crl_number() == 6
            assert len(await again.not_active()) == 1
        finally:
            await again.close()
        with sqlite3.connect(store_path) as c:   # in the store's own file, next to its tables, once
            assert c.execute("SELECT count(*) FROM ca_certificates").fetchone()[0] == 3
            assert c.execute("SELECT count(*) FROM requests").fetchone()[0] == 0
    asyncio.run(go())


def test_a_ca_db_put_back_after_the_import_is_not_merged_nor_overwritten(tmp_path):
    async def go():
        ca_dir = tmp_path / "ca"
        await _old_deployment(ca_dir)
        store_path = await _store_file(tmp_path)
        await (await CertificateIndex.open_in_store(store_path, import_from=ca_dir / DB_NAME)).close()
        imported = (ca_dir / (DB_NAME + IMPORTED_SUFFIX)).read_bytes()
        later = await CertificateIndex.open(ca_dir / DB_NAME)        # someone restores an old ca.db
        await _record(later, 9)
        await later.close()
        index = await CertificateIndex.open_in_store(store_path, import_from=ca_dir / DB_NAME)
        try:
            assert await index.by_request("req-9") is None
            assert await index.next_crl_number() == 5
        finally:
            await index.close()
        assert (ca_dir / DB_NAME).exists() and (ca_dir / (DB_NAME + IMPORTED_SUFFIX)).read_bytes() == imported
    asyncio.run(go())


def test_a_clashing_import_changes_nothing_and_says_what_to_do(tmp_path):
    async def go():
        ca_dir = tmp_path / "ca"
        await _old_deployment(ca_dir)
        store_path = await _store_file(tmp_path)
        index = await CertificateIndex.open_in_store(store_path)   # a row with ca.db's first serial, another request
        await _record(index, 0, request="another-request")
        await index.close()
        before = (ca_dir / DB_NAME).read_bytes()
        with pytest.raises(CAError, match=r"cannot import .*ca\.db: 1 of its certificates clash.*move .* away"):
            await CertificateIndex.open_in_store(store_path, import_from=ca_dir / DB_NAME)
        assert (ca_dir / DB_NAME).read_bytes() == before
        with sqlite3.connect(store_path) as c:
            assert c.execute("SELECT request_id FROM ca_certificates").fetchall() == [("another-request",)]
            assert c.execute("SELECT count(*) FROM ca_meta WHERE key = 'imported_ca_db'").fetchone()[0] == 0
    asyncio.run(go())


def test_the_stores_row_refuses_a_second_certificate_for_a_request(tmp_path):
    """``record_statement`` (run by the store's complete_issue): the same serial again writes nothing;
    another serial for the same request fails (request_id UNIQUE), so the first stays the one on record."""
    async def go():
        store_path = await _store_file(tmp_path)
        index = await CertificateIndex.open_in_store(store_path)
        await index.close()
        kw = dict(issuer_dn="CN=Test CA", request_id="r1", profile="cns-auth", not_before=NOW, not_after=LATER)
        first = index.record_statement(serial_hex="A1", certificate_der=b"\x30\x01", **kw)
        second = index.record_statement(serial_hex="B2", certificate_der=b"\x30\x02", **kw)
        with sqlite3.connect(store_path) as c:
            c.execute(*first)
            c.execute(*first)
            with pytest.raises(sqlite3.IntegrityError, match="UNIQUE"):
                c.execute(*second)
            assert c.execute("SELECT serial_hex FROM ca_certificates").fetchall() == [("A1",)]
    asyncio.run(go())
