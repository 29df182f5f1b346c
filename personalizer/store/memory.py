"""MemoryRequestStore: the ``RequestStore`` and ``StationStore`` protocols in dicts, for unit tests.

Same semantics as the SQLite store (``tests/store/test_contract.py`` runs over both): every write
method checks first and then applies all its changes, with no ``await`` in between, so it is atomic
on the event loop; ``claim_due`` is one such step, so two relays sharing one instance never claim the
same row. Times are stored as the SQLite store stores them (certificate times in whole seconds).
Nothing survives ``close``. ``commits``/``writes`` count write calls, as the SQLite store does.

Imports ``records``, ``ca.base``, ``errors`` and the rules' key fingerprint; no I/O.
"""
from __future__ import annotations

import dataclasses
import datetime as _dt
import json
import time
from dataclasses import dataclass, field

from personalizer.ca.base import CertRef, CertState, CertStatusInfo, IssuedCertificate
from personalizer.errors import StoreError
from personalizer.records import (AUDIT_LIMITS, LANE_PRIORITY, LANES, MAX_ERROR_TEXT, OUTBOX_CANCELLED, OUTBOX_DONE,
                                  OUTBOX_FAILED, OUTBOX_OPEN, OUTBOX_QUEUED, OUTBOX_RETRY, OUTBOX_SENDING,
                                  OUTBOX_WAITING, STATE_CANCELLED, STATE_DONE, STATE_FAILED, STATE_ISSUED,
                                  STATE_PENDING, STATE_RECEIVED, AuditEntry, CertificateRow, Claimed,
                                  FoundCertificate, HolderRecord, KeyAlreadyCertified, KeyBinding, OutboxPayload,
                                  RequestRecord, StockBalance, StockEntry, cut, stock_balance)
from personalizer.rules.registrations import Registration
from personalizer.rules.validation import certificate_key_sha256


@dataclass
class _Request:
    request_id: str
    kind: str
    profile: str
    payload_sha256: bytes
    chamber_code: str
    station_id: str
    operator_id: str
    state: str
    issuer_dn: str | None
    serial_hex: str | None
    created_at: float
    updated_at: float
    error_code: str | None = None
    error_field: str | None = None
    error_message: str | None = None


@dataclass
class _Outbox:
    request_id: str
    lane: str
    kind: str
    payload: bytes
    status: str
    attempts: int
    next_attempt_at: float
    updated_at: float
    last_error: str | None = None
    claimed_by: str | None = None


@dataclass
class _Cert:
    issuer_dn: str
    serial_hex: str
    request_id: str
    profile: str
    not_before: int
    not_after: int
    status: str
    certificate_der: bytes
    chain_der: tuple[bytes, ...]
    card_id: str | None
    holder_cf: str | None
    revocation_reason: str | None = None
    revoked_at: int | None = None


@dataclass
class _Registration:
    reg: Registration
    form: bytes


@dataclass
class _Station:
    state: str
    updated_at: float
    certs: dict[str, list] = field(default_factory=dict)   # serial → [issued_at, not_after, revoked_at]


def _utc(ts: int) -> _dt.datetime:
    return _dt.datetime.fromtimestamp(ts, _dt.timezone.utc)


class MemoryRequestStore:
    def __init__(self, clock=time.time):
        self._clock = clock
        self._requests: dict[str, _Request] = {}
        self._outbox: dict[str, _Outbox] = {}
        self._certs: dict[tuple[str, str], _Cert] = {}
        self._keys: dict[bytes, KeyBinding] = {}
        self._holders: dict[str, HolderRecord] = {}
        self._registrations: dict[str, _Registration] = {}
        self._audit: list[AuditEntry] = []
        self._maintenance: dict[str, tuple[str, float, float, str, str]] = {}
        self.breaker_events: list[tuple[float, str, str]] = []
        self._stock: list[StockEntry] = []
        self._codes: dict[str, list] = {}     # sha256 → [chamber, station, created_at, expires_at, used_at, by]
        self._stations: dict[tuple[str, str], _Station] = {}
        self.commits = 0
        self.writes = 0
        self.closed = False

    @classmethod
    async def open(cls, *, clock=time.time) -> "MemoryRequestStore":
        return cls(clock)

    async def close(self) -> None:
        self.closed = True

    def _wrote(self) -> None:
        if self.closed:
            raise StoreError("write failed: the store is closed")
        self.commits += 1
        self.writes += 1

    def _add_audit(self, a: AuditEntry, now: float) -> None:
        operator = a.operator_id
        if operator is None:
            r = self._requests.get(a.request_id or "")
            operator = r.operator_id if r else ""
        seq = len(self._audit) + 1
        self._audit.append(AuditEntry(
            actor=cut(a.actor, "actor"), station_id=cut(a.station_id, "station_id"),
            operation=cut(a.operation, "operation"), request_id=cut(a.request_id, "request_id"),
            target=cut(a.target, "target") or "", result=cut(a.result, "result"), detail=cut(a.detail, "detail") or "",
            at=a.at or now, seq=seq, operator_id=cut(operator, "operator_id") or "",
            card_id=cut(a.card_id, "card_id") or "", holder_cf=cut(a.holder_cf, "holder_cf") or ""))

    # -- intake ---------------------------------------------------------------------------

    def _free_key(self, key_sha256: bytes) -> bool:
        """True when the key's binding is held by a request that ended without a certificate."""
        b = self._keys.get(key_sha256)
        if b is None:
            return False
        r = self._requests.get(b.request_id)
        return (r is not None and r.state in (STATE_FAILED, STATE_CANCELLED)
                and not any(c.request_id == b.request_id for c in self._certs.values()))

    async def create_request(self, rec: RequestRecord) -> bool:
        self._wrote()
        if rec.request_id in self._requests:
            return False
        now = self._clock()
        self._requests[rec.request_id] = _Request(rec.request_id, rec.kind, rec.profile, rec.payload_sha256,
                                                  rec.chamber_code, rec.station_id, rec.operator_id, STATE_RECEIVED,
                                                  rec.issuer_dn, rec.serial_hex, now, now)
        return True

    async def enqueue(self, rec: RequestRecord, *, lane: str, payload: bytes, audit: AuditEntry,
                      claimer: str | None = None, key: KeyBinding | None = None, registration_id: str = "",
                      holder: HolderRecord | None = None) -> bool:
        self._wrote()
        now = self._clock()
        if rec.request_id in self._requests:
            return False
        if key is not None and key.key_sha256 in self._keys and not self._free_key(key.key_sha256):
            raise KeyAlreadyCertified("the public key is already certified by another request")
        reg = self._registrations.get(registration_id) if registration_id else None
        if reg is not None:
            if reg.reg.cancelled_at is not None:
                raise StoreError("write failed: registration cancelled")
            if reg.reg.card_id is not None and reg.reg.card_id != audit.card_id:
                raise StoreError("write failed: registration already used")
        claim = claimer is not None
        self._requests[rec.request_id] = _Request(
            rec.request_id, rec.kind, rec.profile, rec.payload_sha256, rec.chamber_code, rec.station_id,
            rec.operator_id, STATE_PENDING if claim else STATE_RECEIVED, rec.issuer_dn, rec.serial_hex, now, now)
        if key is not None:
            self._keys[key.key_sha256] = KeyBinding(key.key_sha256, key.holder_cf, key.profile, rec.request_id)
        self._outbox[rec.request_id] = _Outbox(rec.request_id, lane, rec.kind, payload,
                                               OUTBOX_SENDING if claim else OUTBOX_QUEUED, 1 if claim else 0, now, now,
                                               claimed_by=claimer)
        self._add_audit(audit, now)
        if holder is not None:
            self._holders[rec.request_id] = dataclasses.replace(holder, request_id=rec.request_id)
        if reg is not None:
            r = reg.reg
            reg.reg = dataclasses.replace(
                r, used_by=r.used_by if r.used_by is not None else audit.actor,
                used_operator_id=r.used_operator_id if r.used_operator_id is not None else rec.operator_id,
                used_at=r.used_at if r.used_at is not None else now,
                request_id=r.request_id if r.request_id is not None else rec.request_id, card_id=audit.card_id)
        return True

    async def ensure_outbox(self, request_id: str, *, lane: str, kind: str, payload: bytes) -> None:
        self._wrote()
        if request_id in self._requests and request_id not in self._outbox:
            now = self._clock()
            self._outbox[request_id] = _Outbox(request_id, lane, kind, payload, OUTBOX_QUEUED, 0, now, now)

    async def key_binding(self, key_sha256: bytes) -> KeyBinding | None:
        return self._keys.get(key_sha256)

    def _record(self, rid: str) -> RequestRecord | None:
        r = self._requests.get(rid)
        if r is None:
            return None
        o = self._outbox.get(rid)
        c = self._certs.get((r.issuer_dn, r.serial_hex)) if r.issuer_dn and r.serial_hex else None
        return RequestRecord(
            r.request_id, r.kind, r.profile, r.payload_sha256, r.chamber_code, r.station_id, r.operator_id, r.state,
            r.error_code, r.error_field, r.error_message, r.issuer_dn, r.serial_hex, r.created_at, r.updated_at,
            certificate_der=c.certificate_der if c else None, chain_der=c.chain_der if c else (),
            lane=o.lane if o else None, outbox_status=o.status if o else None, attempts=o.attempts if o else 0,
            next_attempt_at=o.next_attempt_at if o else 0.0, last_error=o.last_error if o else None)

    async def get_request(self, request_id: str) -> RequestRecord | None:
        return self._record(request_id)

    async def get_payload(self, request_id: str) -> OutboxPayload | None:
        o = self._outbox.get(request_id)
        return OutboxPayload(o.lane, o.kind, o.payload, o.status, o.attempts) if o else None

    async def get_holder(self, request_id: str) -> HolderRecord | None:
        return self._holders.get(request_id)

    # -- delivery ---------------------------------------------------------------------------

    def _waiting(self, lanes) -> list[_Outbox]:
        return [o for o in self._outbox.values() if o.status in OUTBOX_WAITING and o.lane in lanes]

    async def claim_due(self, now: float, lanes: tuple[str, ...], limit: int, claimer: str) -> list[Claimed]:
        if not lanes or limit <= 0:
            return []
        self._wrote()
        due = sorted((o for o in self._waiting(lanes) if o.next_attempt_at <= now),
                     key=lambda o: (o.lane != LANE_PRIORITY, o.next_attempt_at))[:limit]
        out = []
        for o in due:
            o.status, o.attempts, o.updated_at, o.claimed_by = OUTBOX_SENDING, o.attempts + 1, now, claimer
            r = self._requests[o.request_id]
            if r.state == STATE_RECEIVED:
                r.state, r.updated_at = STATE_PENDING, now
            out.append(Claimed(self._record(o.request_id),
                               OutboxPayload(o.lane, o.kind, o.payload, o.status, o.attempts)))
        return out

    async def next_due(self, lanes: tuple[str, ...]) -> float | None:
        times = [o.next_attempt_at for o in self._waiting(lanes)] if lanes else []
        return min(times) if times else None

    async def schedule_retry(self, request_id: str, at: float, error: str) -> None:
        self._wrote()
        o = self._outbox.get(request_id)
        if o is not None and o.status == OUTBOX_SENDING:
            o.status, o.next_attempt_at, o.last_error, o.updated_at = OUTBOX_RETRY, at, error[:MAX_ERROR_TEXT], \
                self._clock()

    async def defer(self, request_ids: list[str], at: float, reason: str) -> None:
        self._wrote()
        now = self._clock()
        for rid in request_ids:
            o = self._outbox.get(rid)
            if o is not None and o.status in OUTBOX_WAITING:
                o.next_attempt_at, o.last_error, o.updated_at = at, reason[:MAX_ERROR_TEXT], now

    async def reset_sending(self, claimer: str) -> int:
        self._wrote()
        now, n = self._clock(), 0
        for o in self._outbox.values():
            if o.status == OUTBOX_SENDING and o.claimed_by in (None, claimer):
                o.status, o.next_attempt_at, o.updated_at = OUTBOX_RETRY, now, now
                n += 1
        return n

    async def reclaim_stale(self, claimed_before: float, held: list[str], reason: str) -> int:
        self._wrote()
        now, n, held_ = self._clock(), 0, set(held)
        for o in self._outbox.values():
            if o.status == OUTBOX_SENDING and o.updated_at < claimed_before and o.request_id not in held_:
                o.status, o.next_attempt_at, o.last_error, o.updated_at = OUTBOX_RETRY, now, reason, now
                n += 1
        return n

    async def renew_claims(self, claimer: str, request_ids: list[str]) -> int:
        self._wrote()
        now, n, ids = self._clock(), 0, set(request_ids)
        for o in self._outbox.values():
            if o.status == OUTBOX_SENDING and o.claimed_by == claimer and o.request_id in ids:
                o.updated_at = now
                n += 1
        return n

    async def release_claim(self, request_id: str, at: float, reason: str) -> None:
        self._wrote()
        now = self._clock()
        o = self._outbox.get(request_id)
        if o is not None and o.status == OUTBOX_SENDING:
            o.status = OUTBOX_QUEUED if o.attempts <= 1 else OUTBOX_RETRY
            o.attempts = max(o.attempts - 1, 0)
            o.next_attempt_at, o.last_error, o.updated_at = at, reason, now
        r = self._requests.get(request_id)
        if r is not None and r.state == STATE_PENDING and o is not None and o.attempts == 0:
            r.state, r.updated_at = STATE_RECEIVED, now

    def _finish_outbox(self, request_id: str, status: str, error: str | None, now: float) -> None:
        o = self._outbox.get(request_id)
        if o is not None:
            o.status, o.last_error, o.updated_at = status, error, now

    def _insert_cert(self, request_id: str, profile: str, issued: IssuedCertificate, card_id, holder_cf) -> None:
        if request_id not in self._requests:
            raise StoreError("write failed: FOREIGN KEY constraint failed")
        k = (issued.ref.issuer_dn, issued.ref.serial_hex)
        if k not in self._certs:
            self._certs[k] = _Cert(k[0], k[1], request_id, profile, int(issued.not_before.timestamp()),
                                   int(issued.not_after.timestamp()), CertState.ACTIVE.value, issued.certificate_der,
                                   tuple(issued.chain_der), card_id, holder_cf)

    async def complete_issue(self, request_id: str, issued: IssuedCertificate, profile: str, *, card_id: str,
                             holder_cf: str, audit: AuditEntry) -> None:
        self._wrote()
        now = self._clock()
        self._insert_cert(request_id, profile, issued, card_id, holder_cf)
        r = self._requests.get(request_id)
        if r is not None:
            r.state, r.issuer_dn, r.serial_hex, r.updated_at = STATE_ISSUED, issued.ref.issuer_dn, \
                issued.ref.serial_hex, now
        self._finish_outbox(request_id, OUTBOX_DONE, None, now)
        self._add_audit(audit, now)
        try:
            digest = certificate_key_sha256(issued.certificate_der)
        except ValueError:
            return self._record(request_id)
        self._keys.setdefault(digest, KeyBinding(digest, holder_cf or "", profile, request_id))
        return self._record(request_id)

    async def complete_change(self, request_id: str, info: CertStatusInfo, *, audit: AuditEntry) -> None:
        self._wrote()
        now = self._clock()
        self._set_status(info)
        r = self._requests.get(request_id)
        if r is not None:
            r.state, r.issuer_dn, r.serial_hex, r.updated_at = STATE_DONE, info.ref.issuer_dn, info.ref.serial_hex, now
        self._finish_outbox(request_id, OUTBOX_DONE, None, now)
        self._add_audit(audit, now)

    async def fail_request(self, request_id: str, code: str, field: str, message: str, *,
                           audit: AuditEntry | None = None) -> None:
        self._wrote()
        now = self._clock()
        code, field, message = code[:64], (field or "")[:128], (message or "")[:MAX_ERROR_TEXT]
        r = self._requests.get(request_id)
        if r is not None:
            r.state, r.error_code, r.error_field, r.error_message, r.updated_at = STATE_FAILED, code, field, \
                message, now
        self._finish_outbox(request_id, OUTBOX_FAILED, f"{code}: {message}"[:MAX_ERROR_TEXT], now)
        if audit is not None:
            self._add_audit(audit, now)

    # -- certificates -----------------------------------------------------------------------

    def _cert(self, ref: CertRef) -> _Cert | None:
        return self._certs.get((ref.issuer_dn, ref.serial_hex.upper()))

    def _set_status(self, info: CertStatusInfo) -> None:
        c = self._certs.get((info.ref.issuer_dn, info.ref.serial_hex))
        if c is not None:
            c.status, c.revocation_reason = info.state.value, info.revocation_reason or None
            c.revoked_at = int(info.revoked_at.timestamp()) if info.revoked_at else None

    @staticmethod
    def _info(c: _Cert) -> CertStatusInfo:
        return CertStatusInfo(CertRef(c.issuer_dn, c.serial_hex), CertState(c.status), _utc(c.not_before),
                              _utc(c.not_after), c.request_id, c.revocation_reason or "",
                              _utc(c.revoked_at) if c.revoked_at else None)

    async def record_issued(self, request_id: str, profile: str, issued: IssuedCertificate, *,
                            card_id: str | None = None, holder_cf: str | None = None) -> None:
        self._wrote()
        self._insert_cert(request_id, profile, issued, card_id, holder_cf)

    async def find_issued(self, request_id: str) -> list[IssuedCertificate]:
        return [IssuedCertificate(CertRef(c.issuer_dn, c.serial_hex), c.certificate_der, c.chain_der,
                                  _utc(c.not_before), _utc(c.not_after))
                for c in self._certs.values() if c.request_id == request_id]

    async def get_certificate_status(self, ref: CertRef) -> CertStatusInfo | None:
        c = self._cert(ref)
        return self._info(c) if c else None

    async def get_certificate(self, ref: CertRef) -> CertificateRow | None:
        c = self._cert(ref)
        if c is None:
            return None
        return CertificateRow(CertRef(c.issuer_dn, c.serial_hex), c.request_id, c.profile, _utc(c.not_before),
                              _utc(c.not_after), c.status, c.certificate_der, c.chain_der, c.card_id, c.holder_cf)

    async def update_certificate_status(self, info: CertStatusInfo) -> None:
        self._wrote()
        self._set_status(info)

    async def first_issued_for_card(self, card_id: str) -> _dt.datetime | None:
        times = [c.not_before for c in self._certs.values() if c.card_id == card_id]
        return _utc(min(times)) if times else None

    async def find_certificates(self, *, card_id: str = "", holder_cf: str = "",
                                limit: int = 1000) -> list[FoundCertificate]:
        if not card_id and not holder_cf:
            raise ValueError("give a card serial or a codice fiscale")
        cf = holder_cf.upper()
        found = sorted((c for c in self._certs.values()
                        if (not card_id or c.card_id == card_id) and (not cf or c.holder_cf == cf)),
                       key=lambda c: (c.not_before, c.serial_hex))[:limit]
        out = []
        for c in found:
            r = self._requests.get(c.request_id)
            out.append(FoundCertificate(self._info(c), c.profile, c.card_id or "", c.holder_cf or "",
                                        r.chamber_code if r else "", c.certificate_der))
        return out

    async def recent_issuance_stats(self, seconds: float) -> tuple[int, float]:
        since = self._clock() - seconds
        spans = [r.updated_at - r.created_at for r in self._requests.values()
                 if r.state == STATE_ISSUED and r.updated_at >= since]
        return len(spans), (sum(spans) / len(spans) * 1000.0) if spans else 0.0

    # -- queue administration ---------------------------------------------------------------

    async def queue_depth(self) -> dict[str, int]:
        depth = {lane: 0 for lane in LANES}
        for o in self._outbox.values():
            if o.status in OUTBOX_OPEN:
                depth[o.lane] = depth.get(o.lane, 0) + 1
        return depth

    async def list_queue(self, limit: int) -> list[RequestRecord]:
        rows = sorted((o for o in self._outbox.values() if o.status in OUTBOX_OPEN),
                      key=lambda o: (o.lane != LANE_PRIORITY, o.next_attempt_at))[:limit]
        return [rec for rec in (self._record(o.request_id) for o in rows) if rec is not None]

    async def retry_now(self, request_id: str, audit: AuditEntry, *, orphaned_claim: bool = False) -> bool:
        self._wrote()
        now = self._clock()
        o = self._outbox.get(request_id)
        allowed = OUTBOX_OPEN if orphaned_claim else OUTBOX_WAITING
        if o is None or o.status not in allowed:
            return False
        if o.status == OUTBOX_SENDING:
            o.status = OUTBOX_RETRY
        o.next_attempt_at, o.updated_at = now, now
        self._add_audit(audit, now)
        return True

    async def cancel(self, request_id: str, audit: AuditEntry) -> bool:
        self._wrote()
        now = self._clock()
        o = self._outbox.get(request_id)
        if o is None or o.status not in OUTBOX_WAITING or o.attempts != 0:
            return False
        o.status, o.updated_at = OUTBOX_CANCELLED, now
        r = self._requests.get(request_id)
        if r is not None:
            r.state, r.error_code, r.error_field, r.updated_at = STATE_CANCELLED, "CANCELLED", "", now
            r.error_message = f"cancelled by central IT ({audit.actor}) before it reached the CA"
        self._add_audit(audit, now)
        return True

    # -- maintenance, breaker ---------------------------------------------------------------

    async def add_maintenance(self, id_: str, starts_at: float, ends_at: float, reason: str, source: str,
                              audit: AuditEntry | None = None) -> None:
        self._wrote()
        self._maintenance[id_] = (id_, starts_at, ends_at, reason, source)
        if audit is not None:
            self._add_audit(audit, self._clock())

    async def list_maintenance(self, after: float) -> list[tuple[str, float, float, str, str]]:
        return sorted((m for m in self._maintenance.values() if m[2] > after), key=lambda m: m[1])

    async def record_breaker_event(self, at: float, state: str, detail: str = "") -> None:
        self._wrote()
        self.breaker_events.append((at, state[:16], (detail or "")[:MAX_ERROR_TEXT]))

    # -- registrations ----------------------------------------------------------------------

    def _open_for(self, chamber_code: str, cf: str, now: float) -> Registration | None:
        for r in self._registrations.values():
            g = r.reg
            if (g.chamber_code == chamber_code and g.codice_fiscale == cf and g.card_id is None
                    and g.cancelled_at is None and g.expires_at > now):
                return g
        return None

    async def add_registration(self, reg: Registration, form: bytes, audit: AuditEntry) -> bool:
        self._wrote()
        if reg.registration_id in self._registrations:
            raise StoreError("write failed: UNIQUE constraint failed: registrations.registration_id")
        if self._open_for(reg.chamber_code, reg.codice_fiscale, reg.created_at) is not None:
            return False
        self._registrations[reg.registration_id] = _Registration(
            dataclasses.replace(reg, form_size=len(form), used_by=None, used_operator_id=None, used_at=None,
                                request_id=None, card_id=None, cancelled_by=None, cancelled_at=None), form)
        self._add_audit(audit, self._clock())
        return True

    async def open_registration(self, chamber_code: str, codice_fiscale: str, now: float) -> Registration | None:
        return self._open_for(chamber_code, codice_fiscale, now)

    async def get_registration(self, registration_id: str) -> Registration | None:
        r = self._registrations.get(registration_id)
        return r.reg if r else None

    async def list_registrations(self, chamber_code: str, *, include_closed: bool, now: float,
                                 limit: int) -> list[Registration]:
        regs = [r.reg for r in self._registrations.values()
                if (not chamber_code or r.reg.chamber_code == chamber_code)
                and (include_closed or (r.reg.card_id is None and r.reg.cancelled_at is None
                                        and r.reg.expires_at > now))]
        return sorted(regs, key=lambda g: g.created_at, reverse=True)[:limit]

    async def cancel_registration(self, registration_id: str, *, by: str, audit: AuditEntry) -> bool:
        self._wrote()
        r = self._registrations.get(registration_id)
        if r is None or r.reg.card_id is not None or r.reg.cancelled_at is not None:
            return False
        now = self._clock()
        r.reg = dataclasses.replace(r.reg, cancelled_by=by, cancelled_at=now)
        self._add_audit(audit, now)
        return True

    # -- stock --------------------------------------------------------------------------------

    async def add_stock(self, chamber_code: str, quantity: int, note: str, audit: AuditEntry, *,
                        device_model: str = "") -> StockEntry:
        self._wrote()
        now = self._clock()
        entry = StockEntry(len(self._stock) + 1, now, chamber_code, device_model, quantity, audit.actor, note)
        self._stock.append(entry)
        self._add_audit(audit, now)
        return entry

    async def list_stock(self, chamber_code: str = "") -> list[StockEntry]:
        return [e for e in self._stock if not chamber_code or e.chamber_code == chamber_code]

    async def stock_balance(self, before: float | None = None) -> dict[tuple[str, str], StockBalance]:
        cutoff = self._clock() if before is None else before
        cards: dict[tuple[str, str], set] = {}
        for c in self._certs.values():
            r = self._requests.get(c.request_id)
            if (r is None or r.kind != "issue" or r.state != STATE_ISSUED or c.card_id is None
                    or not r.updated_at < cutoff):
                continue
            o = self._outbox.get(r.request_id)
            try:
                model = (json.loads(o.payload).get("card_model") or "") if o else ""
            except (ValueError, AttributeError):
                model = ""
            cards.setdefault((r.chamber_code, model), set()).add(c.card_id)
        return stock_balance(self._stock, [(k[0], k[1], len(v)) for k, v in cards.items()], before)

    # -- audit ----------------------------------------------------------------------------------

    async def append_audit(self, entry: AuditEntry) -> None:
        self._wrote()
        self._add_audit(entry, self._clock())

    async def list_audit(self, after_seq: int = 0, limit: int = 10_000) -> list[AuditEntry]:
        return [a for a in self._audit if a.seq > after_seq][:limit]

    # -- station enrollment (StationStore) ----------------------------------------------------

    async def add_enrollment_code(self, code_sha256: str, chamber_code: str, station_id: str, expires_at: float,
                                  audit: AuditEntry) -> None:
        self._wrote()
        if code_sha256 in self._codes:
            raise StoreError("write failed: UNIQUE constraint failed: enrollment_codes.code_sha256")
        now = self._clock()
        self._codes[code_sha256] = [chamber_code, station_id, now, expires_at, None, audit.actor]
        s = self._stations.get((chamber_code, station_id))
        if s is None:
            self._stations[(chamber_code, station_id)] = _Station("pending", now)
        else:
            s.updated_at, s.state = now, "enrolled" if s.state == "enrolled" else "pending"
        self._add_audit(audit, now)

    async def find_enrollment_code(self, code_sha256: str) -> tuple | None:
        c = self._codes.get(code_sha256)
        return (c[0], c[1], c[3], c[4]) if c else None

    async def use_enrollment_code(self, code_sha256: str, now: float, serial_hex: str, not_after: float,
                                  audit: AuditEntry) -> bool:
        self._wrote()
        c = self._codes.get(code_sha256)
        ok = c is not None and c[4] is None and c[3] > now
        if ok:
            c[4] = now
            s = self._stations.setdefault((c[0], c[1]), _Station("pending", now))
            s.certs[serial_hex] = [now, not_after, None]
            s.state, s.updated_at = "enrolled", now
        self._add_audit(audit, now)
        return ok

    async def station_state(self, chamber_code: str, station_id: str) -> str | None:
        s = self._stations.get((chamber_code, station_id))
        return s.state if s else None

    async def record_station_renewal(self, chamber_code: str, station_id: str, serial_hex: str, not_after: float,
                                     audit: AuditEntry) -> bool:
        self._wrote()
        now = self._clock()
        s = self._stations.get((chamber_code, station_id))
        ok = s is not None and s.state == "enrolled"
        if ok:
            s.updated_at = now
            s.certs[serial_hex] = [now, not_after, None]
        self._add_audit(audit, now)
        return ok

    async def station_serials(self, chamber_code: str, station_id: str) -> list[str]:
        s = self._stations.get((chamber_code, station_id))
        now = self._clock()
        return [k for k, v in sorted(s.certs.items(), key=lambda kv: kv[1][0]) if v[1] > now] if s else []

    async def mark_station_certificates_revoked(self, serials: list[str]) -> None:
        self._wrote()
        now = self._clock()
        for s in self._stations.values():
            for serial in serials:
                if serial in s.certs and s.certs[serial][2] is None:
                    s.certs[serial][2] = now

    async def revoke_station(self, chamber_code: str, station_id: str, audit: AuditEntry) -> bool:
        self._wrote()
        now = self._clock()
        s = self._stations.get((chamber_code, station_id))
        if s is not None:
            s.state, s.updated_at = "revoked", now
            for v in s.certs.values():
                if v[2] is None:
                    v[2] = now
        for c in self._codes.values():
            if c[0] == chamber_code and c[1] == station_id and c[4] is None:
                c[4] = now
        self._add_audit(audit, now)
        return s is not None

    async def list_stations(self, chamber_code: str = "") -> list[tuple]:
        out = []
        for (chamber, station), s in sorted(self._stations.items()):
            if chamber_code and chamber != chamber_code:
                continue
            newest = max(s.certs.items(), key=lambda kv: kv[1][0])[0] if s.certs else None
            out.append((chamber, station, s.state, s.updated_at, newest,
                        max((v[1] for v in s.certs.values()), default=None),
                        sum(1 for v in s.certs.values() if v[2] is not None)))
        return out


__all__ = ["MemoryRequestStore"]
