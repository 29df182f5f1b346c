"""The monthly report (issue 19 items 4 and 6): figures, outages, queue depth, stock, the PDF
rendered with pdftoppm, and bad months."""
from __future__ import annotations

import json
import shutil
import subprocess

import pytest
from PIL import Image

from personalizer import cli
from personalizer.reports import monthly, pdf

NOV = (2026, 11)


@pytest.fixture(scope="module")
def report(history, tmp_path_factory):
    out = tmp_path_factory.mktemp("monthly")
    path, data = monthly.write_monthly(history["database"], out, *NOV, now=history["after"])
    return path, data


def test_volumes_modes_and_status_changes(report):
    path, r = report
    assert json.loads((path / "report.json").read_text()) == r
    assert r["month"] == "2026-11" and r["partial"] is True   # "now" is 26 November
    assert r["issued"] == {"devices": 3, "devices_by_model": {"alpha": 1, "beta": 1, "test": 1},
                           "certificates": {"cns-auth": 3}, "certificates_total": 3}
    assert r["issuance_modes"] == {"immediate": 3, "deferred": 0, "self-renewal": 0}
    assert r["renewals"]["total"] == 0 and r["renewals"]["by_mode"] == {"immediate": 0, "deferred": 0,
                                                                        "self-renewal": 0}
    assert r["status_changes"] == {"suspensions": 1, "reactivations": 1, "revocations": 1}
    assert r["failed"]["by_kind"] == {"issue": {"INVALID_ARGUMENT": 1}} and r["failed"]["cancelled"] == 1
    assert r["failed"]["requests"][0]["message"] == "the CA refused the CSR"


def test_processing_times_against_previous_months(report):
    _, r = report
    issue = r["processing_seconds"]["issue"]
    # two issuances answered in 2 s, one that waited out a 10-minute outage (600 s)
    assert (issue["count"], issue["min"], issue["max"], issue["p95"]) == (3, 2.0, 600.0, 600.0)
    assert issue["mean"] == pytest.approx((2 + 2 + 600) / 3, abs=1e-3)
    assert r["processing_seconds"]["suspend"]["count"] == 1
    october = r["previous"][0]
    assert october["month"] == "2026-10" and october["processing_seconds"]["issue"]["mean"] == 1.0
    assert [p["month"] for p in r["previous"]] == ["2026-10", "2026-09", "2026-08"]


def test_outages_queue_depth_and_stock(report):
    _, r = report
    assert len(r["outages"]) == 1
    o = r["outages"][0]
    assert o["started_at"].startswith("2026-11-24T14:0") and o["ended_at"] == "2026-11-24T14:10:00+01:00"
    assert not o["ongoing"] and 0 < o["seconds_in_month"] <= 600
    assert o["detail"] == "CAUnavailable: CA unreachable (test double)"   # why it opened
    q = r["queue_depth"]
    assert len(q["samples"]) == 24 * 25 + 12    # hourly from 1 November to the 26th at noon
    at = {s["at"]: s["depth"] for s in q["samples"]}
    assert at["2026-11-24T14:00:00+01:00"] == 1 and at["2026-11-24T15:00:00+01:00"] == 2
    assert at["2026-11-24T16:00:00+01:00"] == 0   # the refused and the cancelled are finished
    assert q["peak"] == 2
    # sent on 23 November: 10 of any type, 5 "alpha". Used (the ledger is cumulative): October's card
    # ("test") and November's "beta" and "test" count against the untyped row, the "alpha" card against its own
    assert r["stock"] == [
        {"chamber_code": "RM", "device_model": "", "sent": 10, "used": 3, "left": 7, "sent_in_month": 10,
         "used_in_month": 2},
        {"chamber_code": "RM", "device_model": "alpha", "sent": 5, "used": 1, "left": 4, "sent_in_month": 5,
         "used_in_month": 1}]


def _non_white(img, colour_hex, tol=40):
    want = tuple(int(colour_hex[i:i + 2], 16) for i in (1, 3, 5))
    raw = img.tobytes()   # RGB triples
    return sum(1 for i in range(0, len(raw), 3) if all(abs(raw[i + k] - want[k]) <= tol for k in range(3)))


def test_the_pdf_renders_with_its_charts(report, tmp_path):
    path, r = report
    for tool in ("pdftoppm", "pdftotext"):
        assert shutil.which(tool), f"{tool} missing: scripts/setup installs poppler-utils"
    done = subprocess.run(["pdftoppm", "-png", "-r", "60", str(path / "report.pdf"), str(tmp_path / "page")],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    pages = sorted(tmp_path.glob("page*.png"))
    assert 1 <= len(pages) <= 4
    images = [Image.open(p).convert("RGB") for p in pages]
    assert images[0].size[0] > 400
    # each chart is there, in its colour (the bars, the current month's times, the queue line)
    assert sum(_non_white(i, pdf.VOLUME_COLOUR) for i in images) > 200
    assert sum(_non_white(i, pdf.CURRENT_COLOUR) for i in images) > 20
    assert sum(_non_white(i, pdf.QUEUE_COLOUR) for i in images) > 20
    text = subprocess.run(["pdftotext", "-layout", str(path / "report.pdf"), "-"], capture_output=True,
                          text=True, timeout=60).stdout
    assert "CNS monthly report 2026-11" in text and "the month is not over" in text
    assert "INVALID_ARGUMENT" in text and "RM" in text and "devices alpha" in text


def _cli(capsys, *args):
    rc = cli.main(["report", "monthly", *args])
    cap = capsys.readouterr()
    return rc, cap.out, cap.err


@pytest.mark.parametrize("month, message", [
    ("2027-02", "is in the future"),
    ("2026-07", "no request was in the store during 2026-07"),
    ("2026-13", "is not a month"),
    ("11/2026", "write it as YYYY-MM"),
])
def test_bad_month_gives_one_clear_line_and_writes_nothing(history, tmp_path, capsys, monkeypatch, month, message):
    monkeypatch.setattr(monthly.time, "time", lambda: history["after"])
    out = tmp_path / "out"
    rc, _, err = _cli(capsys, "--database", str(history["database"]), "--out", str(out), "--month", month)
    assert rc == 1 and message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert not out.exists() or list(out.iterdir()) == []


def test_cli_json_only(history, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(monthly.time, "time", lambda: history["after"])
    rc, out, err = _cli(capsys, "--database", str(history["database"]), "--out", str(tmp_path), "--month",
                        "2026-10", "--no-pdf", "--json")
    assert rc == 0, err
    res = json.loads(out)
    assert res["month"] == "2026-10" and res["partial"] is False
    assert sorted(p.name for p in (tmp_path / "cns-monthly-2026-10").iterdir()) == ["SHA256SUMS", "report.json"]
