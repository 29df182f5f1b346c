"""The embedded CA's index in the replicated database (personalizer.ca.index_postgres) across a failover."""
from __future__ import annotations

import asyncio
import datetime as _dt

import pytest

from personalizer.ca.index import STATUS_ACTIVE, STATUS_REVOKED, STATUS_SUSPENDED
from personalizer.ca.index_postgres import PgCertificateIndex
from personalizer.errors import CAError
from personalizer.store.migrations import migrate_postgresql, migrations

NOW = _dt.datetime(2026, 12, 1, 10, 0, tzinfo=_dt.timezone.utc)


def _run(coro):
    return asyncio.run(coro)


async def _open(cluster, **kw) -> PgCertificateIndex:
    return await PgCertificateIndex.open(cluster.dsn(), migrate=migrate_postgresql, **kw)


async def _record(idx, n: int):
    return await idx.record(serial_hex=f"{n:040X}", issuer_dn="CN=Issuing", request_id=f"req-{n}",
                            profile="cns-auth", not_before=NOW, not_after=NOW, certificate_der=b"der%d" % n)


def test_migrations_ran_once_on_the_replicated_database(cluster):
    async def go():
        for _ in range(2):   # a second site opening the same database applies nothing again
            idx = await _open(cluster)
            await idx.close()
    _run(go())
    out = cluster.psql("SELECT string_agg(version::text, ',' ORDER BY version) FROM schema_migrations")
    assert out.strip() == ",".join(str(m.version) for m in migrations("postgresql"))


def test_index_semantics_match_the_sqlite_index(cluster):
    async def go():
        idx = await _open(cluster)
        try:
            first = await _record(idx, 1)
            again = await idx.record(serial_hex="FF", issuer_dn="CN=Issuing", request_id="req-1", profile="cns-auth",
                                     not_before=NOW, not_after=NOW, certificate_der=b"other")
            assert again == first                     # one certificate per request, the first one kept
            assert (await idx.by_serial(first.serial_hex)).request_id == "req-1"
            assert await idx.by_request("nope") is None
            assert await idx.transition(first.serial_hex, from_status=STATUS_ACTIVE, to_status=STATUS_SUSPENDED,
                                        reason="certificateHold", at=NOW)
            assert not await idx.transition(first.serial_hex, from_status=STATUS_ACTIVE, to_status=STATUS_REVOKED,
                                            reason="keyCompromise", at=NOW)   # compare-and-set
            assert [r.serial_hex for r in await idx.not_active()] == [first.serial_hex]
            a, b = await idx.next_crl_number(), await idx.next_crl_number()
            assert b == a + 1
        finally:
            await idx.close()
    _run(go())


def test_status_changes_are_counted_for_every_site_and_process(cluster):
    """Each CRL publisher (every process of a daemon, both sites) republishes when this count moved: a
    revocation made by another process or site must move it, a refused compare-and-set must not."""
    async def go():
        a, b = await _open(cluster), await _open(cluster)   # two processes (or sites) on one database
        try:
            row = await _record(a, 9001)
            start = await b.status_changes()
            assert await a.transition(row.serial_hex, from_status=STATUS_ACTIVE, to_status=STATUS_SUSPENDED,
                                      reason="certificateHold", at=NOW)
            assert await b.status_changes() == start + 1
            assert not await a.transition(row.serial_hex, from_status=STATUS_ACTIVE, to_status=STATUS_REVOKED,
                                          reason="keyCompromise", at=NOW)   # refused: no change, no count
            assert await b.status_changes() == start + 1
            assert await b.transition(row.serial_hex, from_status=STATUS_SUSPENDED, to_status=STATUS_REVOKED,
                                      reason="keyCompromise", at=NOW)
            assert await a.status_changes() == start + 2
            assert (await a.by_serial(row.serial_hex)).status == STATUS_REVOKED
        finally:
            await a.close()
            await b.close()
    _run(go())


def test_a_serial_is_never_recorded_twice(cluster):
    async def go():
        idx = await _open(cluster)
        try:
            await _record(idx, 2)
            with pytest.raises(CAError):
                await idx.record(serial_hex=f"{2:040X}", issuer_dn="CN=Issuing", request_id="req-other",
                                 profile="cns-auth", not_before=NOW, not_after=NOW, certificate_der=b"x")
        finally:
            await idx.close()
    _run(go())


def test_after_a_primary_crash_the_new_primary_continues_revocations_and_the_crl_sequence(cluster):
    async def go():
        idx = await _open(cluster, failover_timeout=40)
        try:
            row = await _record(idx, 3)
            assert await idx.transition(row.serial_hex, from_status=STATUS_ACTIVE, to_status=STATUS_REVOKED,
                                        reason="keyCompromise", at=NOW)
            before = await idx.next_crl_number()     # acknowledged: on the synchronous standby too
            leader = cluster.cluster_json()["leader"]
            cluster.kill(leader, "postgres")
            after = await idx.next_crl_number()      # rides out the crash on a fresh connection
            # Patroni either fails over to the synchronous standby or, holding the leader key when it
            # notices, restarts the crashed postgres in place (seen in CI under load): either way the
            # index answers from the primary with nothing acknowledged lost
            for _ in range(40):   # and Patroni reports a running leader again
                if (cluster.cluster_json() or {}).get("leader"):
                    break
                await asyncio.sleep(0.25)
            else:
                raise AssertionError("Patroni reports no running leader after the crash")
            assert after > before
            assert row.serial_hex in {r.serial_hex for r in await idx.not_active()}
            assert (await _record(idx, 3)).serial_hex == row.serial_hex
        finally:
            await idx.close()
    _run(go())
    import time
    deadline = time.monotonic() + 60
    while not cluster.synchronous():
        assert time.monotonic() < deadline, "the crashed node did not rejoin as synchronous standby"
        time.sleep(0.5)


def test_an_unreachable_database_is_one_clear_error(cluster):
    async def go():
        dsn = "host=127.0.0.1 port=1 dbname=cns user=cns password=x connect_timeout=1"
        with pytest.raises(CAError, match="cannot reach a PostgreSQL primary") as e:
            await PgCertificateIndex.open(dsn, failover_timeout=2)
        assert "password" not in str(e.value)
    _run(go())
