"""cns-personalizer backup / restore: SQLite's online backup API while the store is being written (issue 17 item 4)."""
from __future__ import annotations

import asyncio
import datetime as _dt
import json
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from personalizer.ca.index import CertificateIndex, STATUS_ACTIVE, STATUS_REVOKED
from personalizer.continuity import backup
from personalizer.store import AuditEntry, RequestRecord, SqliteRequestStore as RequestStore

ROOT = Path(__file__).resolve().parents[2]
NOW = _dt.datetime(2026, 12, 1, tzinfo=_dt.timezone.utc)


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "personalizer.cli", *args], capture_output=True, text=True,
                          cwd=ROOT, timeout=60)


def _rec(i: int) -> RequestRecord:
    return RequestRecord(request_id=f"req-{i:05d}", kind="suspend", profile="cns-auth", payload_sha256=b"x" * 32,
                         chamber_code="RM", station_id="RM-STATION-01", operator_id="op-001")


async def _enqueue(store: RequestStore, i: int) -> None:
    assert await store.enqueue(_rec(i), lane="urgent", payload=b"p",
                               audit=AuditEntry("op", "RM-STATION-01", "suspend", f"req-{i:05d}", "", "accepted"))


async def _populate(data: Path, ca_dir: Path, n: int, *, during=None) -> set[str]:
    """``n`` acknowledged requests, 3 certificates (one revoked) and CRL number 2; ``during`` runs meanwhile."""
    store = await RequestStore.open(data / "requests.sqlite")
    index = await CertificateIndex.open(ca_dir / "ca.db")
    acked: set[str] = set()
    try:
        for k in range(3):
            await index.record(serial_hex=f"0{k}", issuer_dn="CN=CA", request_id=f"ca-{k}", profile="cns-auth",
                               not_before=NOW, not_after=NOW, certificate_der=b"der")
        assert await index.transition("01", from_status=STATUS_ACTIVE, to_status=STATUS_REVOKED,
                                      reason="keyCompromise", at=NOW)
        await index.next_crl_number()
        await index.next_crl_number()
        for i in range(n // 2):
            await _enqueue(store, i)
            acked.add(f"req-{i:05d}")
        task = asyncio.get_running_loop().run_in_executor(None, during) if during else None
        for i in range(n // 2, n):   # the writer keeps going while the backup copies
            await _enqueue(store, i)
            acked.add(f"req-{i:05d}")
        if task:
            await task
    finally:
        await index.close()
        await store.close()
    return acked


def test_online_backup_while_writing_then_restore_into_a_fresh_store(tmp_path):
    data, ca_dir, out = tmp_path / "data", tmp_path / "ca", tmp_path / "backups"
    ca_dir.mkdir()
    made: list[Path] = []
    acked = asyncio.run(_populate(data, ca_dir, 400, during=lambda: made.append(
        backup.backup(backup.targets_of(data / "requests.sqlite", ca_dir), out))))
    folder = made[0]
    manifest = json.loads((folder / "manifest.json").read_text())
    in_backup = manifest["files"]["requests.sqlite"]["rows.requests"]
    assert 200 <= in_backup <= 400           # a consistent snapshot taken mid-stream
    assert manifest["files"]["ca.db"]["crl_number"] == 2
    assert not list(out.glob("*.partial"))

    # restore into a fresh deployment through the command line
    fresh_data, fresh_ca = tmp_path / "fresh" / "data", tmp_path / "fresh" / "ca"
    r = _cli("restore", str(folder), "--database", str(fresh_data / "requests.sqlite"), "--ca-dir", str(fresh_ca),
             "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["files"]["ca.db"]["rows.certificates"] == 3

    async def check():
        store = await RequestStore.open(fresh_data / "requests.sqlite")
        index = await CertificateIndex.open(fresh_ca / "ca.db")
        try:
            present = {rid for rid in acked if await store.get_request(rid) is not None}
            revoked = [row.serial_hex for row in await index.not_active()]
            crl = await index.next_crl_number()
        finally:
            await index.close()
            await store.close()
        return present, revoked, crl
    present, revoked, crl = asyncio.run(check())
    assert len(present) == in_backup and {f"req-{i:05d}" for i in range(200)} <= present
    assert revoked == ["01"]
    assert crl == 3                          # the CRL sequence continues, never reuses a number


def test_backup_command_and_restore_refuses_to_overwrite(tmp_path):
    data, ca_dir = tmp_path / "data", tmp_path / "ca"
    ca_dir.mkdir()
    asyncio.run(_populate(data, ca_dir, 10))
    r = _cli("backup", "--database", str(data / "requests.sqlite"), "--ca-dir", str(ca_dir),
             "--out", str(tmp_path / "b"), "--json")
    assert r.returncode == 0, r.stderr
    folder = json.loads(r.stdout)["backup"]
    before = (data / "requests.sqlite").read_bytes()
    r = _cli("restore", folder, "--database", str(data / "requests.sqlite"), "--ca-dir", str(ca_dir))
    assert r.returncode == 1
    assert "already exist" in r.stderr and "move them away" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr
    assert (data / "requests.sqlite").read_bytes() == before


def test_a_damaged_backup_is_refused_and_nothing_is_written(tmp_path):
    data, ca_dir = tmp_path / "data", tmp_path / "ca"
    ca_dir.mkdir()
    asyncio.run(_populate(data, ca_dir, 10))
    folder = backup.backup(backup.targets_of(data / "requests.sqlite", ca_dir), tmp_path / "b")
    with open(folder / "ca.db", "r+b") as f:
        f.seek(200)
        f.write(b"\xff\xff")
    fresh = tmp_path / "fresh"
    with pytest.raises(backup.BackupError, match="damaged"):
        backup.restore(folder, backup.targets_of(fresh / "requests.sqlite", fresh))
    assert not (fresh / "requests.sqlite").exists() and not (fresh / "ca.db").exists()


def test_restore_refuses_a_store_in_use(tmp_path):
    from personalizer.guard import StoreLock

    data, ca_dir = tmp_path / "data", tmp_path / "ca"
    ca_dir.mkdir()
    asyncio.run(_populate(data, ca_dir, 4))
    folder = backup.backup(backup.targets_of(data / "requests.sqlite", None), tmp_path / "b")
    fresh = tmp_path / "fresh"
    lock = StoreLock(fresh).acquire()   # a daemon started on the fresh folder
    try:
        with pytest.raises(backup.BackupError, match="in use"):
            backup.restore(folder, backup.targets_of(fresh / "requests.sqlite", None))
    finally:
        lock.release()
    assert not (fresh / "requests.sqlite").exists()


def test_backup_without_a_store_says_which_setting(tmp_path):
    r = _cli("backup", "--database", str(tmp_path / "nope.sqlite"), "--out", str(tmp_path / "b"))
    assert r.returncode == 1 and "no request store" in r.stderr and "store.data_dir" in r.stderr
