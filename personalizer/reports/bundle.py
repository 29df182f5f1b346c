"""Shared by the reports: report days and months in a time zone, errors, atomic bundles.

A bundle is a directory (``cns-archive-2026-11-30``) written under a temporary name beside its
final place, every file fsynced, a ``SHA256SUMS`` file added (``sha256sum -c`` reads it), then
renamed into place in one step: a reader sees the whole bundle or none. Bundles hold holders'
personal data: folders 0750, files 0640 whatever the umask. Imports only ``errors`` and ``store``.
"""
from __future__ import annotations

import datetime as _dt
import hashlib
import os
import re
import shutil
import sqlite3
from pathlib import Path
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from personalizer.errors import PersonalizerError
from personalizer.records import SELF_RENEWAL_STATION
from personalizer.store import connect_readonly

DEFAULT_TIMEZONE = "Europe/Rome"   # the chambers' day, not UTC's
CHECKSUMS = "SHA256SUMS"
DIR_MODE, FILE_MODE = 0o750, 0o640   # holders' personal data: the daemon's user and its group (auditors)


class ReportError(PersonalizerError):
    """A report that cannot be written as asked; the message says why and what to do. Nothing is written."""

    code = "FAILED_PRECONDITION"


def zone(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ReportError(f"unknown time zone {name!r}; write e.g. Europe/Rome") from None


def parse_day(text: str) -> _dt.date:
    if not re.fullmatch(r"\d{4}-\d{2}-\d{2}", text or ""):
        raise ReportError(f"--date {text!r} is not a date; write it as YYYY-MM-DD, e.g. 2026-11-30")
    try:
        return _dt.date.fromisoformat(text)
    except ValueError:
        raise ReportError(f"--date {text!r} is not a day of the calendar; write it as YYYY-MM-DD") from None


def parse_month(text: str) -> tuple[int, int]:
    m = re.fullmatch(r"(\d{4})-(\d{2})", text or "")
    if not m or not 1 <= int(m.group(2)) <= 12:
        raise ReportError(f"--month {text!r} is not a month; write it as YYYY-MM, e.g. 2026-11")
    return int(m.group(1)), int(m.group(2))


def day_bounds(day: _dt.date, tz: ZoneInfo) -> tuple[float, float]:
    """[start, end) of a local day as timestamps (23 or 25 hours on the days the clocks change)."""
    start = _dt.datetime.combine(day, _dt.time(), tz)
    end = _dt.datetime.combine(day + _dt.timedelta(days=1), _dt.time(), tz)
    return start.timestamp(), end.timestamp()


def month_bounds(year: int, month: int, tz: ZoneInfo) -> tuple[float, float]:
    nxt = (year + 1, 1) if month == 12 else (year, month + 1)
    start = _dt.datetime(year, month, 1, tzinfo=tz)
    return start.timestamp(), _dt.datetime(nxt[0], nxt[1], 1, tzinfo=tz).timestamp()


def previous_month(year: int, month: int) -> tuple[int, int]:
    return (year - 1, 12) if month == 1 else (year, month - 1)


def iso(ts: float | None, tz: ZoneInfo) -> str | None:
    if ts is None:
        return None
    return _dt.datetime.fromtimestamp(ts, tz).isoformat(timespec="seconds")


def open_store(database: Path) -> sqlite3.Connection:
    if not database.is_file():
        raise ReportError(f"no request store at {database}; give the daemon's --config or --database FILE")
    return connect_readonly(database, "the request store")


MODE_IMMEDIATE, MODE_DEFERRED, MODE_SELF_RENEWAL = "immediate", "deferred", "self-renewal"
MODES = (MODE_IMMEDIATE, MODE_DEFERRED, MODE_SELF_RENEWAL)


def mode_sql(conn: sqlite3.Connection) -> str:
    """The SQL expression of a request's mode (over ``requests r``): a holder's own request is
    self-renewal, an issuance completing a registration is deferred (decentrata differita), the rest
    immediate. A store from before registrations existed has no deferred requests."""
    deferred = ("WHEN EXISTS (SELECT 1 FROM registrations g WHERE g.request_id = r.request_id) "
                f"THEN '{MODE_DEFERRED}' " if has_table(conn, "registrations") else "")
    return (f"CASE WHEN r.station_id = '{SELF_RENEWAL_STATION}' THEN '{MODE_SELF_RENEWAL}' {deferred}"
            f"ELSE '{MODE_IMMEDIATE}' END")


def has_table(conn: sqlite3.Connection, name: str) -> bool:
    """Stores written before a table existed are read as they are (the table then counts as empty)."""
    return conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (name,)).fetchone() is not None


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_bundle(out_dir: Path, name: str, files: dict[str, bytes], *, replace: bool = False) -> Path:
    """Write ``files`` as the bundle ``out_dir/name`` atomically, with their SHA256SUMS. An existing
    bundle is kept unless ``replace`` (then swapped in one rename, the old one removed after)."""
    out_dir = Path(out_dir)
    final = out_dir / name
    if final.exists() and not replace:
        raise ReportError(f"{final} already exists; nothing written (pass --replace to write it again)")
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ReportError(f"cannot create the report folder {out_dir}: {exc.strerror}") from None
    tmp = out_dir / f".{name}.tmp-{os.getpid()}"
    old = out_dir / f".{name}.old-{os.getpid()}"
    sums = "".join(f"{hashlib.sha256(data).hexdigest()}  {fname}\n" for fname, data in sorted(files.items()))
    try:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(mode=DIR_MODE)
        os.chmod(tmp, DIR_MODE)   # whatever the umask: holders' personal data
        for fname, data in {**files, CHECKSUMS: sums.encode()}.items():
            fd = os.open(tmp / fname, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE)
            os.fchmod(fd, FILE_MODE)
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
        _fsync_dir(tmp)
        if final.exists():
            os.rename(final, old)
        os.rename(tmp, final)
        _fsync_dir(out_dir)
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        if old.exists() and not final.exists():
            os.rename(old, final)   # put the previous bundle back
        raise ReportError(f"cannot write {final}: {exc.strerror or exc}; nothing written") from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if old.exists() and not final.exists():
            os.rename(old, final)
        raise
    shutil.rmtree(old, ignore_errors=True)
    return final


def prune(out_dir: Path, pattern: str, keep: int) -> list[Path]:
    """Delete the oldest bundles whose names match ``pattern`` (a regex; names sort by date) beyond ``keep``."""
    if keep <= 0 or not Path(out_dir).is_dir():
        return []
    bundles = sorted(p for p in Path(out_dir).iterdir() if p.is_dir() and re.fullmatch(pattern, p.name))
    gone = bundles[:-keep] if len(bundles) > keep else []
    for p in gone:
        shutil.rmtree(p)
    return gone


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of a non-empty list."""
    s = sorted(values)
    rank = max(1, -(-len(s) * q // 100))
    return s[int(rank) - 1]
