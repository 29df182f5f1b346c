"""The daily archive (tender §5.1.8, §6.2; issue 19 item 3): what was issued and changed on one day.

``build(conn, day, tz)`` reads the store (read-only) and returns the archive as a dict:
``operations`` (one per request completed that day: issuance, renewal, suspension, reactivation,
revocation; its mode, the holder's codice fiscale and data, the certificate id, public key and key
id, the device serial and model, the chamber, station and operators involved, when) and the lists of
``suspended`` and ``revoked`` certificates at the end of the day, with their key ids. ``render``
turns it into the bundle's files (archive.json, operations.csv, suspended.csv, revoked.csv,
archive.schema.json); ``write_archive`` writes the bundle atomically.

A day with no completed operation, today or a later day, refuses with a clear message (nothing
written) unless ``allow_empty`` (the daemon's daily task writes quiet days too).
Mode (``bundle.mode_sql``): "deferred" for an issuance that completed a registration, "self-renewal"
for a holder's own request, "immediate" for the rest. Imports ``bundle``, ``outbox`` and cryptography.
"""
from __future__ import annotations

import base64
import csv
import datetime as _dt
import io
import json
import sqlite3
import time
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from personalizer.outbox.payloads import ISSUANCE_KINDS, IssuancePayload
from personalizer.reports import bundle
from personalizer.reports.bundle import ReportError

FORMAT = "cns-daily-archive/1"
SCHEMA_FILE = "archive.schema.json"
NAME_PATTERN = r"cns-archive-\d{4}-\d{2}-\d{2}"
OPERATION = {"issue": "issuance", "renew": "renewal", "suspend": "suspension", "reactivate": "reactivation",
             "revoke": "revocation"}

OPERATION_COLUMNS = ("completed_at", "accepted_at", "operation", "mode", "request_id", "chamber_code", "station_id",
                     "operators", "holder_cf", "holder_given_name", "holder_surname", "holder_birth_date",
                     "device_serial", "device_model", "certificate_issuer", "certificate_serial", "profile",
                     "not_before", "not_after", "key_id", "public_key", "reason")
LIST_COLUMNS = ("since", "certificate_issuer", "certificate_serial", "key_id", "profile", "holder_cf",
                "device_serial", "chamber_code", "reason")

Q_COMPLETED = """SELECT r.request_id, r.kind, r.profile, r.chamber_code, r.station_id, r.operator_id, r.issuer_dn,
    r.serial_hex, r.created_at, r.updated_at, o.payload, {mode}
    FROM requests r LEFT JOIN outbox o ON o.request_id = r.request_id
    WHERE r.state IN ('ISSUED', 'DONE') AND r.updated_at >= ? AND r.updated_at < ?
    ORDER BY r.updated_at, r.request_id"""
Q_CERT = """SELECT c.request_id, c.profile, c.not_before, c.not_after, c.certificate_der, c.card_id, c.holder_cf,
    c.revocation_reason, r.chamber_code FROM certificates c LEFT JOIN requests r ON r.request_id = c.request_id
    WHERE c.issuer_dn = ? AND c.serial_hex = ?"""
Q_PAYLOAD = "SELECT kind, payload FROM outbox WHERE request_id = ?"
# Operators of the day's requests, in ONE pass over the audit (it has no index on request_id).
Q_OPERATORS = """SELECT DISTINCT request_id, operator_id FROM audit
    WHERE operator_id IS NOT NULL AND operator_id != '' AND request_id IN (
        SELECT request_id FROM requests WHERE state IN ('ISSUED', 'DONE') AND updated_at >= ? AND updated_at < ?)"""
# Status changes done before the end of the day, in order: the state of each certificate then.
Q_CHANGES = """SELECT r.issuer_dn, r.serial_hex, r.kind, r.updated_at, o.payload FROM requests r
    LEFT JOIN outbox o ON o.request_id = r.request_id
    WHERE r.state = 'DONE' AND r.kind IN ('suspend', 'reactivate', 'revoke') AND r.updated_at < ?
    ORDER BY r.updated_at, r.request_id"""


def bundle_name(day: _dt.date) -> str:
    return f"cns-archive-{day.isoformat()}"


def _utc_iso(ts: int | None) -> str | None:
    return None if ts is None else _dt.datetime.fromtimestamp(ts, _dt.timezone.utc).isoformat(timespec="seconds")


def _key(der: bytes) -> tuple[str, str]:
    """(key id, public key): the Subject Key Identifier in hex (RFC 5280 method 1 when absent) and the
    SubjectPublicKeyInfo in base64 DER."""
    cert = x509.load_der_x509_certificate(der)
    pub = cert.public_key()
    try:
        ski = cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value.digest
    except x509.ExtensionNotFound:
        ski = x509.SubjectKeyIdentifier.from_public_key(pub).digest
    spki = pub.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return ski.hex().upper(), base64.b64encode(spki).decode()


class _Reader:
    def __init__(self, conn: sqlite3.Connection, start: float, end: float):
        self.conn = conn
        self._operators: dict[str, set[str]] = {}
        for rid, operator in conn.execute(Q_OPERATORS, (start, end)):
            self._operators.setdefault(rid, set()).add(operator)

    def cert(self, issuer: str | None, serial: str | None):
        if not issuer or not serial:
            return None
        return self.conn.execute(Q_CERT, (issuer, serial)).fetchone()

    def holder(self, request_id: str | None) -> IssuancePayload | None:
        row = self.conn.execute(Q_PAYLOAD, (request_id,)).fetchone() if request_id else None
        if row is None or row[0] not in ISSUANCE_KINDS:
            return None
        try:
            return IssuancePayload.decode(row[1])
        except (ValueError, TypeError, KeyError):
            return None

    def operators(self, request_id: str, requester: str) -> list[str]:
        return sorted(self._operators.get(request_id, set()) | ({requester} if requester else set()))


def _reason(payload: bytes | None) -> str:
    try:
        return json.loads(payload).get("reason", "") if payload else ""
    except (ValueError, AttributeError):
        return ""


def _operation(rd: _Reader, row, tz) -> dict:
    rid, kind, profile, chamber, station, operator, issuer, serial, created, updated, payload, mode = row
    cert = rd.cert(issuer, serial)
    if kind in ISSUANCE_KINDS:
        holder = rd.holder(rid)
        reason = ""
    else:
        holder = rd.holder(cert[0]) if cert else None
        reason = _reason(payload)
    key_id, public_key = _key(cert[4]) if cert else ("", "")
    return {
        "completed_at": bundle.iso(updated, tz), "accepted_at": bundle.iso(created, tz),
        "operation": OPERATION.get(kind, kind), "mode": mode, "request_id": rid,
        "chamber_code": chamber, "station_id": station, "operators": rd.operators(rid, operator),
        "holder_cf": (holder.codice_fiscale if holder else (cert[6] if cert else "")) or "",
        "holder_given_name": holder.given_name if holder else "", "holder_surname": holder.surname if holder else "",
        "holder_birth_date": holder.birth_date if holder else "",
        "device_serial": (holder.card_id if holder else (cert[5] if cert else "")) or "",
        "device_model": holder.card_model if holder else "",
        "certificate_issuer": issuer or "", "certificate_serial": serial or "",
        "profile": profile or (cert[1] if cert else ""),
        "not_before": _utc_iso(cert[2]) if cert else None, "not_after": _utc_iso(cert[3]) if cert else None,
        "key_id": key_id, "public_key": public_key, "reason": reason,
    }


def _lists(rd: _Reader, end: float, tz) -> tuple[list[dict], list[dict]]:
    state: dict[tuple[str, str], tuple[str, float, str]] = {}
    for issuer, serial, kind, at, payload in rd.conn.execute(Q_CHANGES, (end,)).fetchall():
        if state.get((issuer, serial), ("",))[0] == "revoke":
            continue   # revocation is final
        state[(issuer, serial)] = (kind, at, _reason(payload))
    suspended, revoked = [], []
    for (issuer, serial), (kind, at, reason) in sorted(state.items(), key=lambda kv: (kv[1][1], kv[0])):
        if kind == "reactivate":
            continue
        cert = rd.cert(issuer, serial)
        entry = {"since": bundle.iso(at, tz), "certificate_issuer": issuer, "certificate_serial": serial,
                 "key_id": _key(cert[4])[0] if cert else "", "profile": cert[1] if cert else "",
                 "holder_cf": (cert[6] if cert else "") or "", "device_serial": (cert[5] if cert else "") or "",
                 "chamber_code": (cert[8] if cert else "") or "",
                 "reason": reason or ("certificateHold" if kind == "suspend" else "unspecified")}
        (suspended if kind == "suspend" else revoked).append(entry)
    return suspended, revoked


def build(conn: sqlite3.Connection, day: _dt.date, tz_name: str = bundle.DEFAULT_TIMEZONE, *,
          now: float | None = None, allow_empty: bool = False) -> dict:
    tz = bundle.zone(tz_name)
    start, end = bundle.day_bounds(day, tz)
    now = time.time() if now is None else now
    if end > now:
        first = (day + _dt.timedelta(days=1)).isoformat()
        raise ReportError(f"the day {day.isoformat()} is not over yet ({tz_name}); its archive can be written "
                          f"from {first} 00:00. Nothing written")
    try:
        rd = _Reader(conn, start, end)
        completed = conn.execute(Q_COMPLETED.format(mode=bundle.mode_sql(conn)), (start, end)).fetchall()
        ops = [_operation(rd, row, tz) for row in completed]
        suspended, revoked = _lists(rd, end, tz)
    except sqlite3.Error as exc:
        raise ReportError(f"cannot read the request store: {exc}") from None
    if not ops and not allow_empty:
        raise ReportError(f"no operation was completed on {day.isoformat()} ({tz_name}): no data for that day, "
                          "nothing written (check the date; --allow-empty writes an empty archive)")
    return {"format": FORMAT, "date": day.isoformat(), "timezone": tz_name, "generated_at": bundle.iso(now, tz),
            "operations": ops, "suspended": suspended, "revoked": revoked,
            "counts": {"operations": len(ops), "suspended": len(suspended), "revoked": len(revoked)}}


def _csv(rows: list[dict], columns: tuple[str, ...]) -> bytes:
    out = io.StringIO()
    w = csv.DictWriter(out, fieldnames=columns, lineterminator="\r\n")
    w.writeheader()
    for r in rows:
        w.writerow({c: " ".join(r[c]) if isinstance(r[c], list) else ("" if r[c] is None else r[c]) for c in columns})
    return out.getvalue().encode("utf-8")


def schema_bytes() -> bytes:
    return (Path(__file__).with_name(SCHEMA_FILE)).read_bytes()


def render(archive: dict) -> dict[str, bytes]:
    return {"archive.json": json.dumps(archive, indent=1, ensure_ascii=False, sort_keys=True).encode() + b"\n",
            "operations.csv": _csv(archive["operations"], OPERATION_COLUMNS),
            "suspended.csv": _csv(archive["suspended"], LIST_COLUMNS),
            "revoked.csv": _csv(archive["revoked"], LIST_COLUMNS),
            SCHEMA_FILE: schema_bytes()}


def write_archive(database: Path, out_dir: Path, day: _dt.date, *, tz_name: str = bundle.DEFAULT_TIMEZONE,
                  now: float | None = None, allow_empty: bool = False, replace: bool = False) -> tuple[Path, dict]:
    """Build and write one day's bundle; returns its path and the archive."""
    conn = bundle.open_store(Path(database))
    try:
        archive = build(conn, day, tz_name, now=now, allow_empty=allow_empty)
    finally:
        conn.close()
    return bundle.write_bundle(Path(out_dir), bundle_name(day), render(archive), replace=replace), archive
