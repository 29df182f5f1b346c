"""The ``RequestStore`` protocol: what the broker, the relay, the servicers (through the broker), the
registrations and the embedded CA's registry need from the request store, whatever holds it.

Implementations: ``sqlite.SqliteRequestStore`` (default), ``memory.MemoryRequestStore`` (unit tests of
the broker and relay), PostgreSQL (standby/DR, issue 17). ``tests/store/test_contract.py`` runs the
same semantics over every one of them; a method's docstring here is its contract.

Groups: intake (enqueue, key bindings, holders), delivery (claim_due … fail_request), certificates,
queue administration, maintenance and the CA breaker, registrations, stock, audit. ``StationStore``
is the station-enrollment ledger (``personalizer.enrollment``).

Invariants every implementation keeps:

* every write method is atomic: all of its rows or none (request + outbox + audit, one transaction);
* a request id is written once: ``enqueue`` of a known id writes nothing and returns False;
* ``claim_due`` is the only way a waiting row becomes ``sending`` (apart from ``enqueue(claimer=)``),
  and one row is claimed by one caller even when several stores (daemons) share one database;
* texts are cut to ``records.AUDIT_LIMITS`` / ``MAX_ERROR_TEXT``; times come from the store's clock
  unless passed in.

Imports ``records``, ``ca.base`` and ``rules.registrations`` (types only).
"""
from __future__ import annotations

import datetime as _dt
from typing import Protocol, runtime_checkable

from personalizer.ca.base import CertRef, CertStatusInfo, IssuedCertificate
from personalizer.records import (AuditEntry, CertificateRow, Claimed, FoundCertificate, HolderRecord, KeyBinding,
                                  OutboxPayload, RequestRecord, StockBalance, StockEntry)
from personalizer.rules.registrations import Registration


@runtime_checkable
class RequestStore(Protocol):
    async def close(self) -> None: ...

    # -- intake ---------------------------------------------------------------------------

    async def enqueue(self, rec: RequestRecord, *, lane: str, payload: bytes, audit: AuditEntry,
                      claimer: str | None = None, key: KeyBinding | None = None, registration_id: str = "",
                      holder: HolderRecord | None = None) -> bool:
        """Request (RECEIVED) + outbox (queued, attempt 0, due now) + audit rows, and the key binding, the
        holder record and the registration's use when given: one transaction. False, nothing written,
        when the id exists. ``KeyAlreadyCertified`` (nothing written) when another request holds the key
        and that request has not ended FAILED/CANCELLED without a certificate. ``StoreError`` (nothing
        written) when the registration is bound to another card or cancelled. ``claimer``: the row is
        written claimed by it (sending, attempt 1, request PENDING)."""

    async def create_request(self, rec: RequestRecord) -> bool:
        """A request row alone (what versions before the outbox wrote); False if the id exists."""

    async def ensure_outbox(self, request_id: str, *, lane: str, kind: str, payload: bytes) -> None:
        """Give a request without an outbox row one (queued); no-op when it has one."""

    async def key_binding(self, key_sha256: bytes) -> KeyBinding | None: ...

    async def get_request(self, request_id: str) -> RequestRecord | None:
        """The request with its certificate (when issued) and its outbox row's lane, status, attempts."""

    async def get_payload(self, request_id: str) -> OutboxPayload | None: ...

    async def get_holder(self, request_id: str) -> HolderRecord | None:
        """Who an issuance/renewal request certifies, on which card (as given to ``enqueue``)."""

    # -- delivery (the relay) -------------------------------------------------------------

    async def claim_due(self, now: float, lanes: tuple[str, ...], limit: int, claimer: str) -> list[Claimed]:
        """Atomically claim up to ``limit`` queued/retry rows of ``lanes`` with next_attempt_at <= now,
        priority lane first, then by next_attempt_at: each becomes sending with one more attempt, held by
        ``claimer``, its request PENDING. Returned in that order, as read after the claim."""

    async def next_due(self, lanes: tuple[str, ...]) -> float | None:
        """The earliest next_attempt_at of a waiting row in ``lanes`` (None: none, or no lanes)."""

    async def schedule_retry(self, request_id: str, at: float, error: str) -> None:
        """A claimed row failed transiently: retry at ``at`` (only a sending row changes)."""

    async def defer(self, request_ids: list[str], at: float, reason: str) -> None:
        """Move waiting (never claimed) rows to ``at`` with ``reason`` as their last error."""

    async def reset_sending(self, claimer: str) -> int:
        """At a relay's start: rows claimed by ``claimer`` (or by no named claimer) become retry, due now."""

    async def reclaim_stale(self, claimed_before: float, held: list[str], reason: str) -> int:
        """Sending rows last touched before ``claimed_before`` and not in ``held``: retry, due now,
        attempts kept (the next attempt looks the CA up first)."""

    async def renew_claims(self, claimer: str, request_ids: list[str]) -> int:
        """The lease of a live delivery: ``claimer``'s sending rows among ``request_ids`` are touched now, so
        no relay's ``reclaim_stale`` takes them back while their holder is alive. How many were renewed."""

    async def release_claim(self, request_id: str, at: float, reason: str) -> None:
        """Give back a claim that never called the CA: one attempt fewer (queued again at 0 attempts, the
        request RECEIVED again), due at ``at``."""

    async def complete_issue(self, request_id: str, issued: IssuedCertificate, profile: str, *, card_id: str,
                             holder_cf: str, audit: AuditEntry) -> RequestRecord | None:
        """Certificate row (once), request ISSUED with its reference, outbox done, audit row, key bound.
        Returns the request as committed (what ``get_request`` would read then), or None from a store
        that does not read it back in the transaction (the caller reads it if it needs it)."""

    async def complete_change(self, request_id: str, info: CertStatusInfo, *, audit: AuditEntry) -> None:
        """Certificate status as ``info``, request DONE, outbox done, audit row."""

    async def fail_request(self, request_id: str, code: str, field: str, message: str, *,
                           audit: AuditEntry | None = None) -> None:
        """Request FAILED with code/field/message (cut), outbox failed, audit row when given."""

    # -- certificates (also the embedded CA's CertificateRegistry) ------------------------

    async def record_issued(self, request_id: str, profile: str, issued: IssuedCertificate, *,
                            card_id: str | None = None, holder_cf: str | None = None) -> None:
        """Record an issuance (idempotent: a second call for the same reference changes nothing)."""

    async def find_issued(self, request_id: str) -> list[IssuedCertificate]: ...

    async def get_certificate_status(self, ref: CertRef) -> CertStatusInfo | None:
        """By issuer DN and serial (hex, any case)."""

    async def get_certificate(self, ref: CertRef) -> CertificateRow | None: ...

    async def update_certificate_status(self, info: CertStatusInfo) -> None: ...

    async def first_issued_for_card(self, card_id: str) -> _dt.datetime | None:
        """The earliest not_before of the card's certificates (the device life starts there)."""

    async def find_certificates(self, *, card_id: str = "", holder_cf: str = "",
                                limit: int = 1000) -> list[FoundCertificate]:
        """A card's and/or a holder's certificates, oldest first; ValueError when neither is given."""

    async def recent_issuance_stats(self, seconds: float) -> tuple[int, float]:
        """(requests ISSUED in the last ``seconds``, their mean time from creation in ms)."""

    # -- queue administration -------------------------------------------------------------

    async def queue_depth(self) -> dict[str, int]:
        """Open rows (queued, retry, sending) per lane; every lane present."""

    async def list_queue(self, limit: int) -> list[RequestRecord]:
        """Open rows, priority lane first, then by next_attempt_at."""

    async def retry_now(self, request_id: str, audit: AuditEntry, *, orphaned_claim: bool = False) -> bool:
        """A waiting row due now (and, with ``orphaned_claim``, a sending one, which becomes retry); the
        audit row only when it took effect."""

    async def cancel(self, request_id: str, audit: AuditEntry) -> bool:
        """Cancel a row never attempted (queued/retry, 0 attempts): outbox cancelled, request CANCELLED with
        error code CANCELLED; False (nothing written) otherwise."""

    # -- maintenance windows and the CA circuit breaker -----------------------------------

    async def add_maintenance(self, id_: str, starts_at: float, ends_at: float, reason: str, source: str,
                              audit: AuditEntry | None = None) -> None:
        """Add or replace (same id) a planned window."""

    async def list_maintenance(self, after: float) -> list[tuple[str, float, float, str, str]]:
        """(id, starts_at, ends_at, reason, source) of windows ending after ``after``, by start."""

    async def record_breaker_event(self, at: float, state: str, detail: str = "") -> None: ...

    # -- deferred issuance ----------------------------------------------------------------

    async def add_registration(self, reg: Registration, form: bytes, audit: AuditEntry) -> bool:
        """False (nothing written) when the holder has an open registration in that chamber."""

    async def open_registration(self, chamber_code: str, codice_fiscale: str, now: float) -> Registration | None: ...

    async def get_registration(self, registration_id: str) -> Registration | None: ...

    async def list_registrations(self, chamber_code: str, *, include_closed: bool, now: float,
                                 limit: int) -> list[Registration]:
        """Newest first; ``chamber_code`` "" is every chamber; closed = used, cancelled or expired."""

    async def cancel_registration(self, registration_id: str, *, by: str, audit: AuditEntry) -> bool:
        """Only one not bound to a card and not cancelled; False otherwise."""

    # -- stock ledger ---------------------------------------------------------------------

    async def add_stock(self, chamber_code: str, quantity: int, note: str, audit: AuditEntry, *,
                        device_model: str = "") -> StockEntry: ...

    async def list_stock(self, chamber_code: str = "") -> list[StockEntry]: ...

    async def stock_balance(self, before: float | None = None) -> dict[tuple[str, str], StockBalance]:
        """Sent (ledger) and used (distinct cards first issued there, by model) per (chamber, model)."""

    # -- audit ----------------------------------------------------------------------------

    async def append_audit(self, entry: AuditEntry) -> None: ...

    async def list_audit(self, after_seq: int = 0, limit: int = 10_000) -> list[AuditEntry]:
        """Rows after ``after_seq`` in order; the audit is append-only."""


@runtime_checkable
class StationStore(Protocol):
    """Station enrollment's ledger: one-time codes (their SHA-256), stations, station certificates."""

    async def add_enrollment_code(self, code_sha256: str, chamber_code: str, station_id: str, expires_at: float,
                                  audit: AuditEntry) -> None: ...

    async def find_enrollment_code(self, code_sha256: str) -> tuple | None: ...

    async def use_enrollment_code(self, code_sha256: str, now: float, serial_hex: str, not_after: float,
                                  audit: AuditEntry) -> bool: ...

    async def station_state(self, chamber_code: str, station_id: str) -> str | None: ...

    async def record_station_renewal(self, chamber_code: str, station_id: str, serial_hex: str, not_after: float,
                                     audit: AuditEntry) -> bool: ...

    async def station_serials(self, chamber_code: str, station_id: str) -> list[str]: ...

    async def mark_station_certificates_revoked(self, serials: list[str]) -> None: ...

    async def revoke_station(self, chamber_code: str, station_id: str, audit: AuditEntry) -> bool: ...

    async def list_stations(self, chamber_code: str = "") -> list[tuple]: ...

    async def append_audit(self, entry: AuditEntry) -> None: ...
