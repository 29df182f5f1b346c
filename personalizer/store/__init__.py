"""The request store: one protocol, several implementations, one contract test suite.

::

    protocol.py  RequestStore (requests, outbox, certificates, registrations, stock, audit) and
                 StationStore (enrollment) as typing.Protocol; each method's docstring is its contract
    sqlite.py    SqliteRequestStore: WAL, group commit, migrations on open (the default)
    sql.py       the SQLite schema and every statement, by name
    memory.py    MemoryRequestStore: the same semantics in dicts (broker and relay unit tests)

The records and the state, lane and outbox-status vocabulary are ``personalizer.records`` (the gRPC edge
reads those, never this package). ``tests/store/test_contract.py`` runs one suite over every
implementation. The names re-exported below keep older imports working.

Must not import grpc, proto, the outbox or the edge.
"""
from __future__ import annotations

from personalizer.records import (AUDIT_LIMITS, LANE_PRIORITY, LANE_STANDARD, LANES, MAX_ERROR_TEXT, STATE_CANCELLED,
                                  STATE_DONE, STATE_FAILED, STATE_ISSUED, STATE_PENDING, STATE_RECEIVED,
                                  TERMINAL_STATES, AuditEntry, AuditFilter, CertificateRow, Claimed, FoundCertificate,
                                  HolderRecord, KeyAlreadyCertified, KeyBinding, OutboxPayload, RequestRecord,
                                  StockBalance, StockEntry, stock_balance)
from personalizer.store.memory import MemoryRequestStore
from personalizer.store.protocol import RequestStore, StationStore
from personalizer.store.sql import Q_LIST_STOCK, Q_STOCK_USED
from personalizer.store.sqlite import SqliteRequestStore, audit_query, connect_readonly, read_audit

__all__ = ["AUDIT_LIMITS", "LANES", "LANE_PRIORITY", "LANE_STANDARD", "MAX_ERROR_TEXT", "Q_LIST_STOCK",
           "Q_STOCK_USED", "STATE_CANCELLED", "STATE_DONE", "STATE_FAILED", "STATE_ISSUED", "STATE_PENDING",
           "STATE_RECEIVED", "TERMINAL_STATES", "AuditEntry", "AuditFilter", "CertificateRow", "Claimed",
           "FoundCertificate", "HolderRecord", "KeyAlreadyCertified", "KeyBinding", "MemoryRequestStore",
           "OutboxPayload", "RequestRecord", "RequestStore", "SqliteRequestStore", "StationStore", "StockBalance",
           "StockEntry", "audit_query", "connect_readonly", "read_audit", "stock_balance"]
