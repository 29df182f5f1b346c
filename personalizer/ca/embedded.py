"""The embedded CA: an issuing CA inside the daemon, signing through a key store.

Implements ``base.CAConnector`` and ``pki.RevocationAuthority``. The CA owns
its records: its index (``index.CertificateIndex``: in the daemon, the CA's
tables in the SQLite request store's file, issue 16; on its own, ``ca.db`` in
the CA directory; ``index_postgres`` with PostgreSQL) holds every certificate
it issued, the request id it issued it for, its status and the CRL number. Signatures run where ``signing.SigningPool`` puts them
(``signing_workers`` threads; 0 = inline, or a thread per call with
``sign_in_thread``). Lifecycle::

    active ──suspend──▶ suspended ──reactivate──▶ active
      │                    │
      └──revoke(reason)────┴──revoke(reason)──▶ revoked (final)

Anything else raises ``InvalidTransition`` (FAILED_PRECONDITION); certificates
past notAfter report ``expired`` and accept no change. ``issue`` is idempotent
per request id: a second call returns the first certificate (``record`` keeps it), and concurrent
calls for one id in one process share one signature. ``issue`` never looks in the index first: the relay
calls ``find_issued`` before every retry (the one rule, issue 16). Every index declares
``recorded_by_store`` (``index.CAIndex``; an index that does not is refused at ``open``). With True
(PostgreSQL, issue 17, and the SQLite store's file, issue 16: the request store's ``complete_issue``
writes the row in the request's transaction) ``issue`` does not write it: a certificate is on record once its request is ISSUED (a
certificate signed for a delivery that never completes is on record nowhere and was given to no one),
and one certificate per request is the store's refusal of a second.
With ``ca_dir=None`` the index lives in memory (tests, or a daemon not yet wired to give a directory).
Must not import grpc, proto, the store or ``personalizer.pki``.
"""
from __future__ import annotations

import asyncio
import datetime as _dt
import logging
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from personalizer.ca import profiles
from personalizer.ca.base import (CAHealth, CertificateRegistry, CertificateSubject, CertRef, CertState,
                                  CertStatusInfo, IssuedCertificate)
from personalizer.ca.errors import InvalidTransition
from personalizer.ca.index import (DB_NAME, MEMORY, STATUS_ACTIVE, STATUS_REVOKED, STATUS_SUSPENDED, CAIndex,
                                   CertificateIndex, IndexRow, missing_members)
from personalizer.ca.keys import Signer
from personalizer.ca.reasons import PERMANENT_REASONS, parse_reason
from personalizer.ca.responder import ResponderIdentity, ensure_responder
from personalizer.ca.signing import SigningPool
from personalizer.errors import CAError, InvalidRequest, NotFound, RequestConflict

log = logging.getLogger(__name__)

CONNECTOR_NAME = "embedded"
HOLD = x509.ReasonFlags.certificate_hold.value


def normalize_serial(serial_hex: str) -> str:
    """Upper-case hex without leading zeros (the form ``ref_of`` produces)."""
    try:
        return f"{int(serial_hex, 16):X}"
    except (TypeError, ValueError) as exc:
        raise InvalidRequest("serial_hex", f"not a hexadecimal serial number: {serial_hex!r}") from exc


class _Pending:
    """The calls for one request id in flight here: one at a time, the first result shared."""

    __slots__ = ("lock", "done")

    def __init__(self):
        self.lock = asyncio.Lock()
        self.done: tuple[str, IssuedCertificate] | None = None


class EmbeddedCA:
    name = CONNECTOR_NAME

    def __init__(self, *, signer: Signer, issuing_cert: x509.Certificate, root_cert: x509.Certificate,
                 urls: profiles.CAUrls = profiles.CAUrls(), registry: CertificateRegistry | None = None,
                 sign_in_thread: bool = False, ca_dir: Path | None = None, signing_workers: int = 0,
                 index_opener=None, shared_index: bool = False):
        if signer.public_key().public_numbers() != issuing_cert.public_key().public_numbers():
            raise CAError("the CA key does not match the issuing CA certificate")
        self._signer = signer
        self._issuing = issuing_cert
        self._root = root_cert
        self._issuer_dn = issuing_cert.subject.rfc4514_string()
        self._chain = tuple(c.public_bytes(serialization.Encoding.DER) for c in (issuing_cert, root_cert))
        self._urls = urls
        self._registry = registry
        self._sign_in_thread = sign_in_thread
        self._signing = SigningPool(signing_workers)
        self._ca_dir = Path(ca_dir) if ca_dir is not None else None
        self._index: CAIndex | None = None
        # issue 17: an async callable returning the index (PgCertificateIndex in the replicated database)
        self._index_opener = index_opener
        self._shared_index = shared_index   # other processes of this daemon write ca.db too
        self._responder: ResponderIdentity | None = None
        self._open_lock = asyncio.Lock()
        self._request_locks: dict[str, _Pending] = {}
        self._state_lock = asyncio.Lock()

    # -- set-up --------------------------------------------------------------------

    def attach_registry(self, registry: CertificateRegistry) -> None:
        """The daemon's store: consulted by ``status`` for certificates issued before ``ca.db`` existed."""
        self._registry = registry

    async def open(self) -> "EmbeddedCA":
        """Open ``ca.db`` and load (or issue) the OCSP responder. Called lazily by every method."""
        async with self._open_lock:
            if self._index is None:
                path = self._ca_dir / DB_NAME if self._ca_dir else MEMORY
                if self._ca_dir is None:
                    log.warning("embedded CA has no directory: its certificate index is in memory only")
                self._responder = await self._run(ensure_responder, self._ca_dir, self._issuing, self._signer)
                index = await (self._index_opener() if self._index_opener
                               else CertificateIndex.open(path, shared=self._shared_index))
                missing = missing_members(index)
                if missing:   # e.g. an index that does not say whether the store records its rows
                    await index.close() if hasattr(index, "close") else None
                    raise CAError(f"the CA index {type(index).__name__} does not implement ca.index.CAIndex: "
                                  f"missing {', '.join(missing)}")
                self._index = index
        return self

    async def _db(self) -> CAIndex:
        if self._index is None:
            await self.open()
        return self._index

    async def _run(self, fn, *args):
        if self._signing.workers:
            return await self._signing.run(fn, *args)
        if self._sign_in_thread:
            return await asyncio.to_thread(fn, *args)
        return fn(*args)

    # -- identity ------------------------------------------------------------------

    def chain_der(self) -> tuple[bytes, ...]:
        return self._chain

    @property
    def issuing_certificate(self) -> x509.Certificate:
        return self._issuing

    @property
    def root_certificate(self) -> x509.Certificate:
        return self._root

    @property
    def urls(self) -> profiles.CAUrls:
        return self._urls

    async def ocsp_responder(self) -> ResponderIdentity:
        await self._db()
        return self._responder

    # -- issuance ------------------------------------------------------------------

    def issue_sync(self, profile: str, csr: x509.CertificateSigningRequest, subject: CertificateSubject,
                   request_id: str) -> IssuedCertificate:
        """Sign only (no index, no idempotency): for benchmarks of the raw signing path."""
        build = profiles.BUILDERS.get(profile)
        if build is None:
            raise InvalidRequest("profile", f"profile {profile!r} is not offered by the embedded CA")
        now = _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0)
        serial = x509.random_serial_number()
        builder = build(subject, csr.public_key(), issuer=self._issuing, urls=self._urls, now=now, serial=serial)
        cert = self._signer.sign_certificate(builder)
        # the builder's issuer is this CA's subject: its DN string is known (ref_of would re-encode it per call)
        return IssuedCertificate(
            ref=CertRef(self._issuer_dn, f"{serial:X}"), certificate_der=cert.public_bytes(serialization.Encoding.DER), chain_der=self._chain,
            not_before=cert.not_valid_before_utc, not_after=cert.not_valid_after_utc)

    def _issued(self, row: IndexRow) -> IssuedCertificate:
        return IssuedCertificate(ref=CertRef(row.issuer_dn, row.serial_hex), certificate_der=row.certificate_der,
                                 chain_der=self._chain, not_before=row.not_before, not_after=row.not_after)

    async def issue(self, profile: str, csr: x509.CertificateSigningRequest, subject: CertificateSubject,
                    request_id: str) -> IssuedCertificate:
        """Sign, and record unless the index is ``recorded_by_store``. No look-up first: the relay looks
        (``find_issued``) before every retry, the one place that decides it (issue 16). One certificate per
        request id still holds: ``record`` keeps the first (UNIQUE) and returns it, or the store refuses a
        second (``recorded_by_store``); concurrent calls for one id in this process share one signature."""
        db = await self._db()
        pending = self._request_locks.setdefault(request_id, _Pending())
        try:
            async with pending.lock:
                if pending.done is not None:   # a concurrent call for this id signed while this one waited
                    first_profile, issued = pending.done
                    if first_profile != profile:
                        raise RequestConflict(request_id)
                    return issued
                issued = await self._run(self.issue_sync, profile, csr, subject, request_id)
                if not db.recorded_by_store:
                    row = await db.record(serial_hex=issued.ref.serial_hex, issuer_dn=issued.ref.issuer_dn,
                                          request_id=request_id, profile=profile, not_before=issued.not_before,
                                          not_after=issued.not_after, certificate_der=issued.certificate_der)
                    if row.profile != profile:
                        raise RequestConflict(request_id)
                    issued = self._issued(row)
                pending.done = (profile, issued)
                return issued
        finally:   # drop the entry once nobody holds or awaits it (asyncio.Lock keeps waiters in _waiters)
            if not pending.lock.locked() and not getattr(pending.lock, "_waiters", None):
                self._request_locks.pop(request_id, None)

    async def find_issued(self, request_id: str) -> IssuedCertificate | None:
        row = await (await self._db()).by_request(request_id)
        return self._issued(row) if row else None

    # -- status and lifecycle ------------------------------------------------------

    @staticmethod
    def _info(row: IndexRow, now: _dt.datetime | None = None) -> CertStatusInfo:
        now = now or _dt.datetime.now(_dt.timezone.utc)
        state = {STATUS_ACTIVE: CertState.ACTIVE, STATUS_SUSPENDED: CertState.SUSPENDED,
                 STATUS_REVOKED: CertState.REVOKED}[row.status]
        if state is not CertState.REVOKED and row.not_after < now:
            state = CertState.EXPIRED
        return CertStatusInfo(ref=CertRef(row.issuer_dn, row.serial_hex), state=state, not_before=row.not_before,
                              not_after=row.not_after, request_id=row.request_id,
                              revocation_reason=row.revocation_reason or "", revoked_at=row.revoked_at)

    async def _row(self, ref: CertRef) -> IndexRow | None:
        if ref.issuer_dn != self._issuer_dn:
            return None
        return await (await self._db()).by_serial(normalize_serial(ref.serial_hex))

    async def status(self, ref: CertRef) -> CertStatusInfo | None:
        row = await self._row(ref)
        if row is not None:
            return self._info(row)
        if self._registry is None:
            return None
        info = await self._registry.get_certificate_status(ref)
        if info and info.state is CertState.ACTIVE and info.not_after < _dt.datetime.now(_dt.timezone.utc):
            info = CertStatusInfo(info.ref, CertState.EXPIRED, info.not_before, info.not_after, info.request_id)
        return info

    async def status_by_serial(self, serial: int) -> CertStatusInfo | None:
        """OCSP lookup: a serial under this issuing CA."""
        return await self.status(CertRef(self._issuer_dn, f"{serial:X}"))

    async def _change(self, ref: CertRef, operation: str, allowed: dict[CertState, str], to_status: str,
                      reason: str | None, hint: str = "") -> CertStatusInfo:
        async with self._state_lock:
            row = await self._row(ref)
            if row is None:
                raise NotFound(f"no certificate {ref.serial_hex} from {ref.issuer_dn!r} in the embedded CA")
            info = self._info(row)
            if info.state not in allowed:
                raise InvalidTransition(row.serial_hex, info.state.value, operation, hint)
            at = None if to_status == STATUS_ACTIVE else _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0)
            ok = await (await self._db()).transition(row.serial_hex, from_status=allowed[info.state],
                                                     to_status=to_status, reason=reason, at=at)
            if not ok:
                raise CAError(f"certificate {row.serial_hex} changed state concurrently; retry")
            log.info("certificate %s: %s → %s (%s)", row.serial_hex, info.state.value, to_status, reason or "-")
            return self._info(await (await self._db()).by_serial(row.serial_hex))

    async def revoke(self, ref: CertRef, reason: str) -> CertStatusInfo:
        flag = parse_reason(reason)
        if flag not in PERMANENT_REASONS:
            raise InvalidRequest("reason", f"{flag.value} is not a revocation reason here: use suspend() for "
                                           "certificateHold and reactivate() to lift a hold")
        return await self._change(ref, "revoke", {CertState.ACTIVE: STATUS_ACTIVE,
                                                  CertState.SUSPENDED: STATUS_SUSPENDED},
                                  STATUS_REVOKED, flag.value)

    async def suspend(self, ref: CertRef) -> CertStatusInfo:
        return await self._change(ref, "suspend", {CertState.ACTIVE: STATUS_ACTIVE}, STATUS_SUSPENDED, HOLD)

    async def reactivate(self, ref: CertRef) -> CertStatusInfo:
        return await self._change(ref, "reactivate", {CertState.SUSPENDED: STATUS_SUSPENDED}, STATUS_ACTIVE, None,
                                  hint="only a suspended (certificateHold) certificate can be reactivated")

    # -- what the CRL publisher needs (pki.RevocationAuthority) --------------------

    async def revoked_entries(self) -> list[CertStatusInfo]:
        """Every revoked or suspended certificate, expired ones included (ExpiredCertsOnCRL)."""
        now = _dt.datetime.now(_dt.timezone.utc)
        return [self._info(r, now) for r in await (await self._db()).not_active()]

    async def next_crl_number(self) -> int:
        return await (await self._db()).next_crl_number()

    async def revocation_version(self) -> int | None:
        """A number that changes with every suspension, reactivation or revocation committed to this CA's
        index by any process or site (None: an index that does not count them)."""
        counter = getattr(await self._db(), "status_changes", None)
        return None if counter is None else await counter()

    async def sign_crl(self, builder: x509.CertificateRevocationListBuilder) -> x509.CertificateRevocationList:
        return await self._run(self._signer.sign_crl, builder)

    # -- health --------------------------------------------------------------------

    async def health(self) -> CAHealth:
        try:
            await self._db()
        except CAError as exc:
            return CAHealth(connector=self.name, operational=False, detail=str(exc))
        return CAHealth(connector=self.name, operational=True, detail="issuing CA key loaded, CA database open")

    async def close(self) -> None:
        if self._index is not None:
            await self._index.close()
            self._index = None
        self._signing.close()
        self._signer.close()
