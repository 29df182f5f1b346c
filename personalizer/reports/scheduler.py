"""The daemon's daily archive task (issue 19 item 3): after ``hour`` (local), yesterday's archive.

``ArchiveScheduler.run_once()`` writes the archives of the days that are over since the newest one
written, at most the last ``CATCH_UP_DAYS`` (a daemon that was down catches up; a pruned day is not
written again), never for a day before the store's first request, quiet
days included (an empty archive still lists the suspended and revoked certificates); then keeps the
newest ``keep``. ``start()``/``stop()`` run it every ``check_seconds`` as a supervised task: an error is
logged and tried again at the next check, it never stops the daemon. The work runs in a thread (SQLite
reads, fsync). Imports ``bundle`` and ``archive``.
"""
from __future__ import annotations

import asyncio
import datetime as _dt
import logging
import re
import time
from pathlib import Path

from personalizer.reports import archive, bundle

log = logging.getLogger(__name__)

CATCH_UP_DAYS = 7


class ArchiveScheduler:
    def __init__(self, database: Path, out_dir: Path, *, keep: int, hour: int, tz_name: str,
                 clock=time.time, check_seconds: float = 300.0):
        self.database, self.out_dir = Path(database), Path(out_dir)
        self.keep, self.hour, self.tz_name = keep, hour, tz_name
        self._clock, self._check = clock, check_seconds
        self._task: asyncio.Task | None = None

    def due_days(self) -> list[_dt.date]:
        now = _dt.datetime.fromtimestamp(self._clock(), bundle.zone(self.tz_name))
        latest = now.date() - _dt.timedelta(days=1 if now.hour >= self.hour else 2)
        return [latest - _dt.timedelta(days=n) for n in range(CATCH_UP_DAYS - 1, -1, -1)]

    def _first_day(self) -> _dt.date | None:
        if not self.database.is_file():
            return None
        conn = bundle.open_store(self.database)
        try:
            first = conn.execute("SELECT MIN(created_at) FROM requests").fetchone()[0]
        finally:
            conn.close()
        return None if first is None else _dt.datetime.fromtimestamp(first, bundle.zone(self.tz_name)).date()

    def _newest(self) -> _dt.date | None:
        if not self.out_dir.is_dir():
            return None
        names = sorted(p.name for p in self.out_dir.iterdir() if re.fullmatch(archive.NAME_PATTERN, p.name))
        return _dt.date.fromisoformat(names[-1][len("cns-archive-"):]) if names else None

    def run_once_sync(self) -> list[Path]:
        first = self._first_day()
        written = []
        if first is not None:
            newest = self._newest()
            for day in self.due_days():
                # never before the first request, nor a day up to the newest archive (a pruned one stays gone)
                if day < first or (newest is not None and day <= newest):
                    continue
                path, data = archive.write_archive(self.database, self.out_dir, day, tz_name=self.tz_name,
                                                   now=self._clock(), allow_empty=True)
                log.info("daily archive of %s written to %s (%d operations)", day, path, data["counts"]["operations"])
                written.append(path)
        for gone in bundle.prune(self.out_dir, archive.NAME_PATTERN, self.keep):
            log.info("daily archive %s removed (keeping the last %d)", gone.name, self.keep)
        return written

    async def run_once(self) -> list[Path]:
        return await asyncio.to_thread(self.run_once_sync)

    async def _loop(self) -> None:
        while True:
            try:
                await self.run_once()
            except asyncio.CancelledError:
                raise
            except Exception as exc:   # a full disk, a locked store: try again at the next check
                log.error("daily archive not written: %s; retrying in %.0f s", exc, self._check)
            await asyncio.sleep(self._check)

    async def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name="daily-archive")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None
