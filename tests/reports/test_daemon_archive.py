"""The daemon writes the daily archive on its own (issue 19 item 3): ``cns-personalizer serve`` with a
``[reports]`` section, over a store with history, leaves the last ``keep`` archives of the days
that are over, each whole and matching its checksums; a bad ``[reports]`` value stops the start
with one line."""
from __future__ import annotations

import datetime as dt
import json
import shutil
import subprocess
import time

import jsonschema

from personalizer import deploy
from personalizer.reports import archive, bundle
from tests.cli.conftest import one_line_error, run
from tests.personalizer import helpers
from tests.reports.conftest import ROME


def _deployment_with_history(tmp_path, history, reports: str):
    dep = deploy.init_deployment(tmp_path / "cns", chamber="RM", station_id="RM-STATION-01", listen="127.0.0.1:0")
    (dep.root / "data").mkdir(exist_ok=True)
    shutil.copy(history["database"], dep.root / "data" / "requests.sqlite")
    cfg = dep.root / "personalizer-reports.toml"
    cfg.write_text(dep.server_config.read_text() + "\n[reports]\n" + reports)
    return dep, cfg


def test_the_daemon_writes_the_last_days_and_keeps_n(history, tmp_path):
    dep, cfg = _deployment_with_history(tmp_path, history, 'dir = "archive"\nkeep = 3\nhour = 0\n')
    out = dep.root / "archive"
    today = dt.datetime.now(ROME).date()
    want = [archive.bundle_name(today - dt.timedelta(days=n)) for n in (3, 2, 1)]
    d = helpers.DaemonProcess(cfg)
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and sorted(p.name for p in out.glob("cns-archive-*")) != want:
            time.sleep(0.2)
    finally:
        assert d.stop() == 0, d.proc.stderr.read()
    assert sorted(p.name for p in out.iterdir()) == want   # nothing half-written beside them
    schema = json.loads(archive.schema_bytes())
    for name in want:
        done = subprocess.run(["sha256sum", "-c", "--quiet", "SHA256SUMS"], cwd=out / name, capture_output=True)
        assert done.returncode == 0, done.stdout
        written = json.loads((out / name / "archive.json").read_text())
        jsonschema.validate(written, schema)
        # the same content as the CLI would write for that day
        conn = bundle.open_store(dep.root / "data" / "requests.sqlite")
        try:
            expected = archive.build(conn, dt.date.fromisoformat(written["date"]), allow_empty=True)
        finally:
            conn.close()
        assert written["operations"] == expected["operations"] and written["revoked"] == expected["revoked"]


def test_a_bad_reports_section_stops_the_start_with_one_line(history, tmp_path):
    _, cfg = _deployment_with_history(tmp_path, history, "keep = 0\n")
    r = run("cns-personalizer", "serve", "--config", str(cfg), timeout=60)
    assert r.returncode == 1
    assert "reports.keep" in one_line_error(r)


def test_cli_with_the_daemon_config_defaults_to_yesterday_and_its_reports_dir(history, tmp_path):
    dep, cfg = _deployment_with_history(tmp_path, history, 'dir = "archive"\nenabled = false\n')
    yesterday = (dt.datetime.now(ROME) - dt.timedelta(days=1)).date().isoformat()
    r = run("cns-personalizer", "report", "archive", "--config", str(cfg))
    if r.returncode == 1:   # nothing happened yesterday in this store (the usual case): said, nothing written
        assert f"no operation was completed on {yesterday}" in one_line_error(r)
        assert not (dep.root / "archive").exists()
    r = run("cns-personalizer", "report", "archive", "--config", str(cfg), "--allow-empty", "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["archive"] == str(dep.root / "archive" / f"cns-archive-{yesterday}")
    r = run("cns-personalizer", "report", "archive", "--config", str(cfg), "--date", "2026-11-23", "--timezone",
            "Mars/Olympus")
    assert r.returncode == 1 and "unknown time zone 'Mars/Olympus'" in one_line_error(r)
    r = run("cns-personalizer", "report", "monthly", "--config", str(cfg), "--month", "2026-11", "--json")
    assert r.returncode == 0, r.stderr
    assert (dep.root / "archive" / "cns-monthly-2026-11" / "report.pdf").read_bytes().startswith(b"%PDF-")
