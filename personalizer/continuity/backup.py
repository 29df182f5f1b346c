"""Online backup and restore of a SQLite deployment: the request store and the embedded CA's ``ca.db``.

Since issue 16 the daemon keeps the CA's tables in the request store's file (an older ``ca.db`` is
imported once and renamed): a ``ca.db`` is backed up only where one is still in use.

``backup`` copies each database with SQLite's online backup API (``sqlite3.Connection.backup``: a
consistent snapshot while the daemon keeps writing, WAL included), checks every copy
(``PRAGMA integrity_check``), and publishes one folder ``cns-backup-<UTC time>`` atomically (written as
``.partial``, fsynced, renamed) with ``manifest.json``: each file's SHA-256, size, row counts and the
highest CRL number, so a restore can be checked against what was backed up.

``restore`` refuses to overwrite anything: the target databases must not exist (move them away first),
the target store must not be in use (it holds the daemon's store lock for the whole restore), and every
file must match its manifest digest before it is put in place (copy to a temporary name, fsync, rename).

CA key material is not in these files: it stays in the PKCS#11 token (see the continuity notes in
``scripts/drill``'s report); a file-key test deployment's key is next to ``ca.db`` and is not copied.
Imports sqlite3 and our config/guard/errors only; no grpc, proto or the broker.
"""
from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import shutil
import sqlite3
from dataclasses import dataclass
from pathlib import Path

from personalizer.errors import PersonalizerError

MANIFEST = "manifest.json"
REQUESTS_DB = "requests.sqlite"
CA_DB = "ca.db"
FORMAT = 1
PAGES_PER_STEP = 1024   # the backup API copies in steps, so the daemon's writer is never held out for long


class BackupError(PersonalizerError):
    """A backup or restore refused or failed; the message says what to do."""


@dataclass(frozen=True)
class Target:
    """One database of the deployment: its name in the backup and its live path."""
    name: str
    path: Path


def targets_of(store_database: Path, ca_dir: Path | None) -> list[Target]:
    out = [Target(REQUESTS_DB, Path(store_database))]
    if ca_dir is not None:
        out.append(Target(CA_DB, Path(ca_dir) / CA_DB))
    return out


def targets_from_config(cfg) -> list[Target]:
    """The databases a daemon config uses (``ca.db`` only for the embedded connector)."""
    ca_dir = cfg.ca.issuing_cert.parent if cfg.ca.connector == "embedded" and cfg.ca.issuing_cert else None
    return targets_of(cfg.store.database, ca_dir)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _facts(conn: sqlite3.Connection) -> dict:
    """Row counts of the tables a restore is checked by, and the CA's CRL number."""
    tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    facts = {f"rows.{t}": conn.execute(f'SELECT count(*) FROM "{t}"').fetchone()[0]
             for t in sorted(tables & {"requests", "certificates", "outbox", "audit", "certified_keys",
                                       "ca_certificates"})}
    for meta in ("meta", "ca_meta"):   # ca.db's, or the CA's tables in the store's file (issue 16)
        if meta in tables:
            row = conn.execute(f"SELECT value FROM {meta} WHERE key = 'crl_number'").fetchone()
            if row:
                facts["crl_number"] = int(row[0])
    return facts


def _copy_online(source: Path, dest: Path) -> dict:
    """SQLite backup API from a read-only source connection; returns the copy's facts."""
    try:
        src = sqlite3.connect(source.resolve().as_uri() + "?mode=ro", uri=True)
    except sqlite3.Error as exc:
        raise BackupError(f"cannot open {source} to back it up: {exc}") from exc
    try:
        dst = sqlite3.connect(dest)
        try:
            src.backup(dst, pages=PAGES_PER_STEP)
            check = dst.execute("PRAGMA integrity_check").fetchone()[0]
            if check != "ok":
                raise BackupError(f"the copy of {source} failed its integrity check ({check}); nothing was published")
            facts = _facts(dst)
        finally:
            dst.close()
    except sqlite3.Error as exc:
        raise BackupError(f"backing up {source} failed: {exc}; nothing was published") from exc
    finally:
        src.close()
    _fsync(dest)
    return facts


def backup(targets: list[Target], out_dir: Path, *, now: _dt.datetime | None = None) -> Path:
    """Back up every existing target into a new folder under ``out_dir``; returns that folder."""
    now = now or _dt.datetime.now(_dt.timezone.utc)
    present = [t for t in targets if t.path.exists()]
    if not any(t.name == REQUESTS_DB for t in present):
        raise BackupError(f"no request store at {targets[0].path}: check store.data_dir in the config")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    final = out_dir / f"cns-backup-{now.strftime('%Y%m%dT%H%M%S%fZ')}"
    if final.exists():
        raise BackupError(f"{final} already exists: wait a moment and run the backup again")
    partial = final.with_name(final.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(mode=0o700)
    try:
        files = {}
        for t in present:
            dest = partial / t.name
            facts = _copy_online(t.path, dest)
            files[t.name] = {"sha256": _sha256(dest), "bytes": dest.stat().st_size, "source": str(t.path), **facts}
        manifest = {"format": FORMAT, "created_at": now.isoformat(), "sqlite": sqlite3.sqlite_version,
                    "files": files}
        (partial / MANIFEST).write_text(json.dumps(manifest, indent=1, sort_keys=True))
        _fsync(partial / MANIFEST)
        os.rename(partial, final)
        dfd = os.open(out_dir, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    return final


def read_manifest(backup_dir: Path) -> dict:
    try:
        manifest = json.loads((Path(backup_dir) / MANIFEST).read_text())
    except FileNotFoundError:
        raise BackupError(f"{backup_dir} is not a backup (no {MANIFEST}): give the cns-backup-… folder") from None
    except (OSError, ValueError) as exc:
        raise BackupError(f"{backup_dir}/{MANIFEST} is unreadable ({exc})") from exc
    if manifest.get("format") != FORMAT or not isinstance(manifest.get("files"), dict):
        raise BackupError(f"{backup_dir}/{MANIFEST} is not a backup manifest of format {FORMAT}")
    return manifest


def restore(backup_dir: Path, targets: list[Target]) -> dict:
    """Put the backup's databases in place of ``targets``; refuses if any target exists or is in use."""
    from personalizer.guard import AlreadyRunning, StoreLock

    backup_dir = Path(backup_dir)
    manifest = read_manifest(backup_dir)
    by_name = {t.name: t for t in targets}
    unknown = sorted(set(manifest["files"]) - set(by_name))
    if unknown:
        raise BackupError(f"the backup holds {', '.join(unknown)} but the config has no place for it "
                          f"(is ca.connector embedded?)")
    chosen = [by_name[n] for n in manifest["files"]]
    present = [str(t.path) for t in chosen
               if any(t.path.with_name(t.path.name + sfx).exists() for sfx in ("", "-wal", "-shm"))]
    if present:
        raise BackupError(f"{', '.join(present)} already exist: a restore overwrites nothing; move them away "
                          f"(or restore into a fresh store.data_dir) and run the restore again")
    for name, meta in manifest["files"].items():
        if _sha256(backup_dir / name) != meta["sha256"]:
            raise BackupError(f"{backup_dir / name} does not match its manifest digest: the backup is damaged; "
                              f"use another one")
    store = by_name[REQUESTS_DB].path.parent
    try:
        lock = StoreLock(store).acquire()
    except AlreadyRunning as exc:
        raise BackupError(str(exc)) from None
    try:
        for t in chosen:
            t.path.parent.mkdir(parents=True, exist_ok=True)
            tmp = t.path.with_name(t.path.name + ".restoring")
            shutil.copyfile(backup_dir / t.name, tmp)
            _fsync(tmp)
            os.rename(tmp, t.path)
    finally:
        lock.release()
    return manifest
