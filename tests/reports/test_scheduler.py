"""The daemon's daily archive task: catches up the missed days that are over, keeps the last N,
writes nothing twice, and waits for the configured hour."""
from __future__ import annotations

import asyncio
import datetime as dt
import json

from personalizer.reports.scheduler import ArchiveScheduler
from tests.reports.conftest import ROME


def test_writes_missing_days_and_keeps_the_last_n(history, tmp_path):
    now = dt.datetime(2026, 11, 26, 0, 30, tzinfo=ROME).timestamp()   # before 01:00: the 25th not yet
    s = ArchiveScheduler(history["database"], tmp_path, keep=3, hour=1, tz_name="Europe/Rome", clock=lambda: now)
    written = asyncio.run(s.run_once())
    assert [p.name for p in written] == [f"cns-archive-2026-11-{d}" for d in range(18, 25)]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cns-archive-2026-11-22", "cns-archive-2026-11-23",
                                                         "cns-archive-2026-11-24"]
    day1 = json.loads((tmp_path / "cns-archive-2026-11-23" / "archive.json").read_text())
    assert day1["counts"]["operations"] == 4
    now += 3600   # 01:30: the 25th (a quiet day) is due, written empty; nothing else again
    written = asyncio.run(s.run_once())
    assert [p.name for p in written] == ["cns-archive-2026-11-25"]
    assert json.loads((tmp_path / "cns-archive-2026-11-25" / "archive.json").read_text())["operations"] == []
    assert asyncio.run(s.run_once()) == []
    assert sorted(p.name for p in tmp_path.iterdir())[0] == "cns-archive-2026-11-23"


def test_no_archive_before_the_store_has_data(tmp_path):
    s = ArchiveScheduler(tmp_path / "missing.sqlite", tmp_path / "out", keep=3, hour=1, tz_name="Europe/Rome")
    assert asyncio.run(s.run_once()) == []
    assert not (tmp_path / "out").exists()
