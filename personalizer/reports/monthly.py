"""The monthly report (tender §6.2, §6.4.2; issue 19 item 4) as a dict (JSON), read from the store.

Sections: ``issued`` (devices, per model, and certificates per profile), ``renewals`` (per profile and mode),
``status_changes`` (suspensions, reactivations, revocations), ``processing_seconds`` per request kind
(count, mean, min, max, p95; and the same for the ``previous`` months), ``failed`` (requests the CA
refused or that failed, per kind and code, and cancelled ones), ``outages`` (the relay's circuit
breaker open → closed, from ``ca_breaker_events``) and ``maintenance`` (planned windows in the month),
``queue_depth`` (hourly: requests accepted and not finished at that instant, derived exactly from
``created_at`` and the finishing ``updated_at`` of terminal requests) and ``stock`` per chamber
(ledger sent minus cards first issued, at the end of the month).

A month in the future, or one with no request at all (unless ``allow_empty``), refuses with a clear
message; the current month is reported so far (``partial``). Imports ``bundle``, ``store`` and,
for the PDF, ``pdf``.
"""
from __future__ import annotations

import datetime as _dt
import json
import sqlite3
import time
from pathlib import Path

from personalizer.outbox.payloads import KINDS
from personalizer.reports import bundle
from personalizer.reports.bundle import ReportError
from personalizer.store import Q_LIST_STOCK, Q_STOCK_USED, StockEntry, stock_balance

FORMAT = "cns-monthly-report/1"
PREVIOUS_MONTHS = 3
QUEUE_SAMPLE_SECONDS = 3600
NAME_PATTERN = r"cns-monthly-\d{4}-\d{2}"

Q_FINISHED = """SELECT r.kind, r.profile, r.state, r.error_code, r.created_at, r.updated_at, r.request_id,
    r.chamber_code, c.card_id, r.error_message,
    CASE WHEN r.kind = 'issue' THEN json_extract(CAST(o.payload AS TEXT), '$.card_model') END, {mode}
    FROM requests r LEFT JOIN certificates c ON c.issuer_dn = r.issuer_dn AND c.serial_hex = r.serial_hex
    LEFT JOIN outbox o ON o.request_id = r.request_id
    WHERE r.state IN ('ISSUED', 'DONE', 'FAILED', 'CANCELLED') AND r.updated_at >= ? AND r.updated_at < ?"""
# Every request that was in the queue at some point of [start, end): accepted before the end, and
# not finished before the start. Non-terminal requests are still waiting.
Q_OVERLAP = """SELECT created_at, CASE WHEN state IN ('ISSUED', 'DONE', 'FAILED', 'CANCELLED') THEN updated_at END
    FROM requests WHERE created_at < ? AND (state NOT IN ('ISSUED', 'DONE', 'FAILED', 'CANCELLED') OR updated_at >= ?)"""
Q_ANY = "SELECT COUNT(*) FROM requests WHERE created_at < ? AND updated_at >= ?"
Q_BREAKER = "SELECT at, state, detail FROM ca_breaker_events WHERE at < ? ORDER BY seq"
Q_MAINTENANCE = "SELECT id, starts_at, ends_at, reason, source FROM maintenance WHERE starts_at < ? AND ends_at > ? ORDER BY starts_at"


def bundle_name(year: int, month: int) -> str:
    return f"cns-monthly-{year:04d}-{month:02d}"


def _by_model(devices: dict[str, str]) -> dict[str, int]:
    """Devices per type: the model the station reported ("unknown" for requests from before it was kept)."""
    out: dict[str, int] = {}
    for model in devices.values():
        out[model or "unknown"] = out.get(model or "unknown", 0) + 1
    return dict(sorted(out.items()))


def _times(values: list[float]) -> dict:
    if not values:
        return {"count": 0, "mean": None, "min": None, "max": None, "p95": None}
    return {"count": len(values), "mean": round(sum(values) / len(values), 3), "min": round(min(values), 3),
            "max": round(max(values), 3), "p95": round(bundle.percentile(values, 95), 3)}


def _processing(conn, start: float, end: float) -> dict:
    by_kind: dict[str, list[float]] = {k: [] for k in KINDS}
    for kind, _p, state, _c, created, updated, *_ in conn.execute(Q_FINISHED.format(mode=bundle.mode_sql(conn)), (start, end)):
        if state in ("ISSUED", "DONE"):
            by_kind.setdefault(kind, []).append(updated - created)
    return {k: _times(v) for k, v in by_kind.items()}


def _outages(conn, start: float, end: float, now: float, tz) -> list[dict]:
    """Intervals the circuit was not closed (open or half-open), clipped to the month."""
    if not bundle.has_table(conn, "ca_breaker_events"):
        return []
    out, opened, detail = [], None, ""
    for at, state, why in conn.execute(Q_BREAKER, (end,)):
        if state == "open" and opened is None:
            opened, detail = at, why
        elif state == "closed" and opened is not None:
            if at > start:
                out.append((opened, at, detail))
            opened = None
    if opened is not None:
        out.append((opened, None, detail))
    rows = []
    for a, b, why in out:
        s, e = max(a, start), min(b if b is not None else min(now, end), end)
        rows.append({"started_at": bundle.iso(a, tz), "ended_at": bundle.iso(b, tz), "ongoing": b is None,
                     "seconds_in_month": round(max(0.0, e - s), 1), "detail": why})
    return rows


def _maintenance(conn, start: float, end: float, tz) -> list[dict]:
    return [{"id": i, "starts_at": bundle.iso(s, tz), "ends_at": bundle.iso(e, tz), "reason": r, "source": src,
             "seconds_in_month": round(min(e, end) - max(s, start), 1)}
            for i, s, e, r, src in conn.execute(Q_MAINTENANCE, (end, start))]


def _queue_depth(conn, start: float, end: float, tz) -> dict:
    """Hourly samples and the peak, in one sweep over the accept (+1) and finish (-1) events: O(n log n)."""
    spans = conn.execute(Q_OVERLAP, (end, start)).fetchall()
    # a finish sorts before an accept at the same instant: a request answered at once never waited
    events = sorted([(c, 1) for c, _ in spans] + [(f, -1) for _, f in spans if f is not None],
                    key=lambda e: (e[0], e[1]))
    samples, depth, peak, i = [], 0, 0, 0
    t = start
    while i < len(events) and events[i][0] <= start:   # the queue as the month starts
        depth += events[i][1]
        i += 1
    peak = depth
    while t < end:
        while i < len(events) and events[i][0] <= t:
            depth += events[i][1]
            peak = max(peak, depth)
            i += 1
        samples.append({"at": bundle.iso(t, tz), "depth": depth})
        t += QUEUE_SAMPLE_SECONDS
    while i < len(events) and events[i][0] < end:
        depth += events[i][1]
        peak = max(peak, depth)
        i += 1
    return {"sample_seconds": QUEUE_SAMPLE_SECONDS, "peak": peak, "samples": samples,
            "method": "derived: requests accepted (created_at) and not yet finished (terminal updated_at)"}


def _stock(conn, end: float, month_start: float) -> list[dict]:
    if not bundle.has_table(conn, "stock_ledger"):
        return []
    entries = [StockEntry(*r) for r in conn.execute(Q_LIST_STOCK, ("", ""))]
    at_end = stock_balance(entries, conn.execute(Q_STOCK_USED, (end,)).fetchall(), end)
    at_start = stock_balance(entries, conn.execute(Q_STOCK_USED, (month_start,)).fetchall(), month_start)
    return [{"chamber_code": b.chamber_code, "device_model": b.device_model, "sent": b.sent, "used": b.used,
             "left": b.left, "sent_in_month": b.sent - (at_start[k].sent if k in at_start else 0),
             "used_in_month": b.used - (at_start[k].used if k in at_start else 0)} for k, b in at_end.items()]


def build(conn: sqlite3.Connection, year: int, month: int, tz_name: str = bundle.DEFAULT_TIMEZONE, *,
          now: float | None = None, allow_empty: bool = False) -> dict:
    tz = bundle.zone(tz_name)
    now = time.time() if now is None else now
    start, end = bundle.month_bounds(year, month, tz)
    label = f"{year:04d}-{month:02d}"
    if start > now:
        today = _dt.datetime.fromtimestamp(now, tz).strftime("%Y-%m")
        raise ReportError(f"the month {label} is in the future (it is {today} in {tz_name}); nothing written")
    until = min(end, now)
    try:
        if not conn.execute(Q_ANY, (until, start)).fetchone()[0] and not allow_empty:
            raise ReportError(f"no request was in the store during {label} ({tz_name}): no data for that month, "
                              "nothing written (check the month; --allow-empty writes an empty report)")
        issued: dict[str, int] = {}
        renewals: dict[str, int] = {}
        changes = {"suspend": 0, "reactivate": 0, "revoke": 0}
        failed: dict[str, dict[str, int]] = {}
        cancelled = 0
        devices: dict[str, str] = {}   # card → model
        refused = []
        modes = {"issue": dict.fromkeys(bundle.MODES, 0), "renew": dict.fromkeys(bundle.MODES, 0)}
        for kind, profile, state, code, created, updated, rid, chamber, card, message, model, mode in conn.execute(
                Q_FINISHED.format(mode=bundle.mode_sql(conn)), (start, until)):
            if state == "ISSUED" and kind in modes:
                modes[kind][mode] += 1
            if state == "ISSUED" and kind == "issue":
                issued[profile] = issued.get(profile, 0) + 1
                if card:
                    devices[card] = model or devices.get(card, "")
            elif state == "ISSUED" and kind == "renew":
                renewals[profile] = renewals.get(profile, 0) + 1
            elif state == "DONE" and kind in changes:
                changes[kind] += 1
            elif state == "FAILED":
                failed.setdefault(kind, {})
                failed[kind][code or "UNKNOWN"] = failed[kind].get(code or "UNKNOWN", 0) + 1
                refused.append({"request_id": rid, "kind": kind, "code": code or "", "chamber_code": chamber,
                                "at": bundle.iso(updated, tz), "message": (message or "")[:200]})
            elif state == "CANCELLED":
                cancelled += 1
        previous = []
        y, m = year, month
        for _ in range(PREVIOUS_MONTHS):
            y, m = bundle.previous_month(y, m)
            ps, pe = bundle.month_bounds(y, m, tz)
            previous.append({"month": f"{y:04d}-{m:02d}", "processing_seconds": _processing(conn, ps, pe)})
        report = {
            "format": FORMAT, "month": label, "timezone": tz_name, "generated_at": bundle.iso(now, tz),
            "partial": end > now,
            "issued": {"devices": len(devices), "devices_by_model": _by_model(devices),
                       "certificates": dict(sorted(issued.items())),
                       "certificates_total": sum(issued.values())},
            "renewals": {"by_profile": dict(sorted(renewals.items())), "total": sum(renewals.values()),
                         "by_mode": modes["renew"]},
            "issuance_modes": modes["issue"],
            "status_changes": {"suspensions": changes["suspend"], "reactivations": changes["reactivate"],
                               "revocations": changes["revoke"]},
            "processing_seconds": _processing(conn, start, until),
            "previous": previous,
            "failed": {"by_kind": failed, "total": sum(sum(v.values()) for v in failed.values()),
                       "cancelled": cancelled, "requests": refused[:1000]},
            "outages": _outages(conn, start, until, now, tz),
            "maintenance": _maintenance(conn, start, end, tz) if bundle.has_table(conn, "maintenance") else [],
            "queue_depth": _queue_depth(conn, start, until, tz),
            "stock": _stock(conn, until, start),
        }
    except sqlite3.Error as exc:
        raise ReportError(f"cannot read the request store: {exc}") from None
    return report


def write_monthly(database: Path, out_dir: Path, year: int, month: int, *, tz_name: str = bundle.DEFAULT_TIMEZONE,
                  now: float | None = None, pdf: bool = True, allow_empty: bool = False,
                  replace: bool = False) -> tuple[Path, dict]:
    """Build the month's report and write its bundle (report.json, and report.pdf unless ``pdf`` is False)."""
    conn = bundle.open_store(Path(database))
    try:
        report = build(conn, year, month, tz_name, now=now, allow_empty=allow_empty)
    finally:
        conn.close()
    files = {"report.json": json.dumps(report, indent=1, ensure_ascii=False, sort_keys=True).encode() + b"\n"}
    if pdf:
        from personalizer.reports import pdf as pdf_mod   # matplotlib and reportlab only when asked
        files["report.pdf"] = pdf_mod.render(report)
    return bundle.write_bundle(Path(out_dir), bundle_name(year, month), files, replace=replace), report
