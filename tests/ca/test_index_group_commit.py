"""The CA index (ca.db) group-commits: certificates recorded together share one transaction (issue 16).

Before, every ``record`` was its own autocommit INSERT (one fsync each, one thread hand-off each), so a
queue drain paid one fsync per certificate on the CA's side. Now what is queued while a batch runs
becomes the next batch: still committed before ``record`` returns, one failing row undone alone, and
two processes' indexes on one file (``shared``) take turns on the write lock instead of SQLite's
sleeping busy handler.
"""
from __future__ import annotations

import asyncio
import datetime as dt

import pytest

from personalizer.ca.index import CertificateIndex

NOW = dt.datetime(2026, 12, 1, tzinfo=dt.timezone.utc)
LATER = NOW + dt.timedelta(days=365)


def _record(index: CertificateIndex, i: int, *, serial: str | None = None, request: str | None = None):
    return index.record(serial_hex=serial or f"{i + 1:X}", issuer_dn="CN=Test CA", request_id=request or f"req-{i}",
                        profile="cns-auth", not_before=NOW, not_after=LATER, certificate_der=b"\x30" + bytes([i % 256]))


def test_concurrent_records_share_transactions_and_are_committed_when_returned(tmp_path):
    async def go():
        index = await CertificateIndex.open(tmp_path / "ca.db")
        try:
            rows = await asyncio.gather(*(_record(index, i) for i in range(64)))
            commits = index.commits
        finally:
            await index.close()
        again = await CertificateIndex.open(tmp_path / "ca.db")   # durable: a new connection sees them all
        try:
            found = [await again.by_request(f"req-{i}") for i in range(64)]
        finally:
            await again.close()
        return rows, commits, found

    rows, commits, found = asyncio.run(go())
    assert [r.request_id for r in rows] == [f"req-{i}" for i in range(64)]
    assert all(f is not None and f.serial_hex == r.serial_hex for f, r in zip(found, rows))
    assert 1 <= commits <= 8, f"64 concurrent records took {commits} transactions"


def test_a_failing_write_is_undone_alone(tmp_path):
    """A write that fails inside a batch (here a statement SQLite refuses) is rolled back to its savepoint;
    the certificates recorded in the same transaction stay committed."""
    def bad(conn):
        conn.execute("INSERT INTO certificates (serial_hex) VALUES ('FF')")   # NOT NULL columns missing
        return "unreachable"

    async def go():
        index = await CertificateIndex.open(tmp_path / "ca.db")
        try:
            await _record(index, 0)
            commits = index.commits
            out = await asyncio.gather(_record(index, 1), index._conn.call(bad, writes=True), _record(index, 3),
                                       _record(index, 0, request="req-0"), return_exceptions=True)
            return out, index.commits - commits, [await index.by_serial(s) for s in ("2", "FF", "4")]
        finally:
            await index.close()

    out, commits, found = asyncio.run(go())
    assert out[0].request_id == "req-1" and out[2].request_id == "req-3"
    assert isinstance(out[1], Exception) and "NOT NULL" in str(out[1])
    assert out[3].serial_hex == "1"          # the same request id again: its first certificate, no second row
    assert commits == 1                       # one transaction for the four calls
    assert found[0] is not None and found[1] is None and found[2] is not None


@pytest.mark.parametrize("shared", [True])
def test_two_indexes_on_one_file_take_turns(tmp_path, shared):
    async def go():
        a = await CertificateIndex.open(tmp_path / "ca.db", shared=shared)
        b = await CertificateIndex.open(tmp_path / "ca.db", shared=shared)
        try:
            await asyncio.gather(*(_record(a if i % 2 else b, i) for i in range(200)))
            return [await a.by_request(f"req-{i}") for i in range(200)]
        finally:
            await a.close()
            await b.close()

    assert all(r is not None for r in asyncio.run(go()))
    assert (tmp_path / "ca.db.writelock").exists()
