"""The request store's vocabulary: states, lanes, outbox statuses and the records every store returns.

Shared by the store implementations (``personalizer.store``), the outbox (broker, relay) and the gRPC
edge, which reads records but never the store itself. Request states are ``cns_spec.requests``' (the
agent sees the same names on the wire). Bounds on stored text (``AUDIT_LIMITS``, ``MAX_ERROR_TEXT``)
are part of the contract: every implementation cuts at the same lengths.

Outbox statuses: queued (never sent) → sending (claimed; an attempt may have reached the CA) → retry
(waiting for next_attempt_at) → done | failed; queued/retry without an attempt → cancelled.

Pure: dataclasses and constants. Imports ``cns_spec``, ``personalizer.errors`` and ``personalizer.ca.base``
(certificate references) only.
"""
from __future__ import annotations

import datetime as _dt
from dataclasses import dataclass

from cns_spec import requests
from personalizer.ca.base import CertRef, CertStatusInfo
from personalizer.errors import StoreError

STATE_RECEIVED = requests.RECEIVED     # the vocabulary is cns_spec.requests'
STATE_PENDING = requests.PENDING
STATE_ISSUED = requests.ISSUED
STATE_DONE = requests.DONE
STATE_FAILED = requests.FAILED
STATE_CANCELLED = requests.CANCELLED
TERMINAL_STATES = requests.TERMINAL
# The requester's station_id of a holder's own request (self-renewal, revoking what it undid): the mode
# "self-renewal" of the archive and the monthly report (issue 19); the edge sets it, reports read it.
SELF_RENEWAL_STATION = "self-renewal"
LANE_PRIORITY = "priority"
LANE_STANDARD = "standard"
LANES = (LANE_PRIORITY, LANE_STANDARD)


@dataclass(frozen=True)
class RequestRecord:
    request_id: str
    kind: str
    profile: str
    payload_sha256: bytes
    chamber_code: str
    station_id: str
    operator_id: str
    state: str = STATE_RECEIVED
    error_code: str | None = None
    error_field: str | None = None
    error_message: str | None = None
    issuer_dn: str | None = None
    serial_hex: str | None = None
    created_at: float = 0.0
    updated_at: float = 0.0
    certificate_der: bytes | None = None
    chain_der: tuple[bytes, ...] = ()
    lane: str | None = None
    outbox_status: str | None = None
    attempts: int = 0
    next_attempt_at: float = 0.0
    last_error: str | None = None

    @property
    def terminal(self) -> bool:
        return self.state in TERMINAL_STATES


@dataclass(frozen=True)
class AuditEntry:
    actor: str            # identity URI from the client certificate, or "relay"
    station_id: str       # the requester's station, "" when none
    operation: str        # issue, renew, suspend, reactivate, revoke, queue-cancel, ...
    request_id: str | None
    target: str           # certificate "issuer_dn#serial" or card id, "" when none
    result: str           # accepted, done, failed:<code>, refused:<code>, ...
    detail: str = ""
    at: float = 0.0
    seq: int = 0
    operator_id: str | None = None   # the requester's operator; None: the operator of request_id's request
    card_id: str = ""                # the card concerned, when the writer knows it
    holder_cf: str = ""              # its holder's codice fiscale, when the writer knows it


@dataclass(frozen=True)
class StockEntry:
    seq: int
    at: float
    chamber_code: str
    device_model: str     # "" when central IT did not say which type
    quantity: int
    actor: str
    note: str


@dataclass(frozen=True)
class StockBalance:
    chamber_code: str
    device_model: str     # "": devices of no type, or of a type the ledger has no row for in that chamber
    sent: int
    used: int

    @property
    def left(self) -> int:
        return self.sent - self.used


def stock_balance(entries, used_rows, before: float | None = None) -> dict[tuple[str, str], StockBalance]:
    """Fold ledger rows and (chamber, model, used) rows into balances per (chamber, model), sorted. A card
    of a model the chamber's ledger does not name counts against the chamber's untyped row ("")."""
    sent: dict[tuple[str, str], int] = {}
    for e in entries:
        if before is None or e.at < before:
            sent[(e.chamber_code, e.device_model)] = sent.get((e.chamber_code, e.device_model), 0) + e.quantity
    used: dict[tuple[str, str], int] = {}
    for chamber, model, n in used_rows:
        key = (chamber, model) if (chamber, model) in sent else (chamber, "")
        used[key] = used.get(key, 0) + int(n)
    return {k: StockBalance(k[0], k[1], sent.get(k, 0), used.get(k, 0)) for k in sorted(set(sent) | set(used))}


@dataclass(frozen=True)
class KeyBinding:
    """A public key certified (or being certified) by one request, for one holder and profile."""

    key_sha256: bytes     # SHA-256 of the DER SubjectPublicKeyInfo
    holder_cf: str
    profile: str
    request_id: str = ""


class KeyAlreadyCertified(StoreError):
    """enqueue: another request holds the key (nothing was written)."""


@dataclass(frozen=True)
class OutboxPayload:
    lane: str
    kind: str
    payload: bytes
    status: str
    attempts: int


@dataclass(frozen=True)
class FoundCertificate:
    """One row of ``find_certificates``: the certificate's state and whom it was issued for."""
    info: CertStatusInfo
    profile: str
    card_id: str
    holder_cf: str
    chamber_code: str
    certificate_der: bytes


@dataclass(frozen=True)
class CertificateRow:
    ref: CertRef
    request_id: str
    profile: str
    not_before: _dt.datetime
    not_after: _dt.datetime
    status: str
    certificate_der: bytes
    chain_der: tuple[bytes, ...]
    card_id: str | None
    holder_cf: str | None


# Every text an audit row stores is bounded (issue 10): a caller cannot grow a row past these.
AUDIT_LIMITS = dict(actor=160, station_id=64, operation=40, request_id=128, target=600, result=64, detail=500,
                    operator_id=64, card_id=32, holder_cf=32)


MAX_ERROR_TEXT = 500   # a request's error message, an outbox row's last error (CA answers can be huge)


OUTBOX_QUEUED, OUTBOX_SENDING, OUTBOX_RETRY = "queued", "sending", "retry"
OUTBOX_DONE, OUTBOX_FAILED, OUTBOX_CANCELLED = "done", "failed", "cancelled"
OUTBOX_WAITING = (OUTBOX_QUEUED, OUTBOX_RETRY)                  # due once next_attempt_at has passed
OUTBOX_OPEN = (OUTBOX_QUEUED, OUTBOX_RETRY, OUTBOX_SENDING)     # counted in the queue depth
OUTBOX_ENDED = (OUTBOX_DONE, OUTBOX_FAILED, OUTBOX_CANCELLED)


def cut(value: str | None, field: str) -> str | None:
    """``value`` cut to ``AUDIT_LIMITS[field]`` characters (None stays None)."""
    return value if value is None or len(value) <= AUDIT_LIMITS[field] else value[:AUDIT_LIMITS[field]]


@dataclass(frozen=True)
class Claimed:
    """One row ``claim_due`` claimed for a delivery: its request (now PENDING) and what to deliver."""

    record: RequestRecord
    payload: OutboxPayload


@dataclass(frozen=True)
class HolderRecord:
    """Who an issuance or renewal request certifies, on which device: what a later renewal of the
    certificate it produced needs (holder data is never read back from an outbox payload)."""

    request_id: str
    card_id: str
    codice_fiscale: str
    given_name: str
    surname: str
    birth_date: str        # ISO date
    card_model: str = ""   # the model the station reported; "" when unknown


@dataclass(frozen=True)
class AuditFilter:
    """What an auditor asks for; every given criterion must hold. Card and codice fiscale also find the
    rows of the same requests, of the card's certificates and of changes to them."""

    after_seq: int = 0
    operator_id: str | None = None
    station_id: str | None = None
    card_id: str | None = None
    holder_cf: str | None = None
    since: float | None = None
    until: float | None = None
    limit: int = 10_000
