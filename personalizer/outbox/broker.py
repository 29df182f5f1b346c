"""The request broker: the outbox's front door, idempotency, request watchers.

Every accepted request (issue, renew, suspend, reactivate, revoke) is
validated, then committed — request row, outbox row and audit row in ONE
transaction — before anything answers; the relay (``relay.py``) delivers it.
The caller then waits up to ``answer_wait`` seconds for the relay's result
(so a quick CA still answers ISSUED directly) and otherwise gets the durable
state (RECEIVED / PENDING) to follow with GetRequest or WatchRequest. The
commit runs in a task of its own (``_commit``, shielded): a caller that cancels
or whose deadline expires stops only its wait. While the relay has a free slot
(the immediate path, issue 16) the rows are committed already claimed and that
same task delivers the request (``relay.deliver_claimed``): the caller is
answered with the outcome its completing transaction read back, with no
delivery task, relay wake-up or read of its own. When the CA's records are
written by the request store's own transaction (the embedded CA's index in
the SQLite store's file: ``sign_first``, set by the daemon) an issuance on
that path is signed first (``relay.sign_first``, within ``SIGN_FIRST_SECONDS``)
and committed ONCE with its certificate (``store.enqueue_issued``): still
committed before it is answered, and a signature whose request is refused or
never committed is on record nowhere and given to no one. A slower or failing
CA, or a caller that does not wait (answer_wait 0), gets the commit first.

Idempotency: the payload fingerprint is SHA-256 over a length-prefixed
canonical encoding of every request field except the request id. Same id +
same fingerprint → the stored (or in-flight) request; same id + other
fingerprint → RequestConflict. Validation runs first, so an invalid payload
is reported as INVALID_ARGUMENT even when its id is known.

One key, one certification (issue 10 item 6): an accepted issue or renew binds
the SHA-256 of its CSR's public key to its holder and profile in the same
commit (``store.enqueue(key=)``); a new request presenting a key another
request holds — another holder, the other profile, or the same holder and
profile again (a renewal generates new keys in the card's spare slots) — is
INVALID_ARGUMENT on ``csr_der``, without naming the other holder.

Watchers: the relay calls ``notify(record)`` on every state change of a watched request
(``watched``: it reads the outcome back only then); ``watch``
streams them. With several processes of the daemon on one store (``[server]
processes`` > 1) another process's relay may deliver a watched request:
``follow_store`` (started by the daemon) then looks every ``FOLLOW_SECONDS`` at
the store's ``data_version`` (SQLite's ``PRAGMA data_version``: changed by
another connection's commit, no disk I/O) and, when it moved, has every watcher
of a request this process's relay does not hold read it again; a store without
``data_version`` (PostgreSQL) is read again every ``FOLLOW_FALLBACK_SECONDS``. No grpc or proto here; the service maps both directions. The
store only through the ``RequestStore`` protocol; the CA through ``CAConnector``.
The gRPC servicers reach requests, certificates, the queue, maintenance,
registrations, stock and the CA status only through the broker's methods
(the last section), never the store.
"""
from __future__ import annotations

import asyncio
import dataclasses
import datetime as _dt
import hashlib
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

from cryptography import x509

from personalizer.rules import lifecycle, registrations, validation
from personalizer.outbox.audit import RefusalLimiter
from personalizer.ca import profiles
from personalizer.ca.base import CAConnector, CertRef
from personalizer.errors import (CAError, FailedPrecondition, InvalidRequest, NotFound, PersonalizerError, RequestConflict,
                                 StoreError)
from personalizer.outbox.payloads import (CHANGE_KINDS, ISSUANCE_KINDS, KIND_ISSUE, KIND_RENEW, KIND_REVOKE, LANE_OF, ChangePayload,
                                 IssuancePayload)
from personalizer.outbox.ca_status import CAStatus, read_ca_status
from personalizer.records import (STATE_PENDING, STATE_RECEIVED, AuditEntry, CertificateRow, FoundCertificate,
                                  HolderRecord, KeyAlreadyCertified, KeyBinding, OutboxPayload, RequestRecord,
                                  StockBalance, StockEntry)
from personalizer.store.protocol import RequestStore

log = logging.getLogger(__name__)
STATS_WINDOW_SECONDS = 600
DEFAULT_ANSWER_WAIT = 2.0


def _holder_of(p: IssuancePayload) -> HolderRecord:
    """The holder record an issuance or renewal keeps for later renewals (request id set by the store)."""
    return HolderRecord("", p.card_id, p.codice_fiscale, p.given_name, p.surname, p.birth_date, p.card_model)


def _retrieved(fut: asyncio.Future) -> None:
    if not fut.cancelled():
        fut.exception()


def _fingerprint(*values) -> bytes:
    h = hashlib.sha256()
    for value in values:
        raw = value if isinstance(value, bytes) else str(value).encode("utf-8")
        h.update(len(raw).to_bytes(8, "big"))
        h.update(raw)
    return h.digest()


@dataclass(frozen=True)
class IssueInput:
    """One SubmitIssue as plain values."""

    request_id: str
    profile: str
    csr_der: bytes
    codice_fiscale: str
    given_name: str
    surname: str
    birth_date: str
    card_id: str
    card_model: str
    station_id: str
    chamber_code: str
    operator_id: str
    ef_dati_personali: bytes
    registration_id: str = ""    # deferred issuance: the registration this completes

    def fingerprint(self) -> bytes:
        extra = (self.registration_id,) if self.registration_id else ()   # unchanged for immediate issuance
        return _fingerprint(*(getattr(self, n) for n in (
            "profile", "csr_der", "codice_fiscale", "given_name", "surname", "birth_date", "card_id",
            "card_model", "station_id", "chamber_code", "operator_id", "ef_dati_personali")), *extra)


@dataclass(frozen=True)
class RenewInput:
    request_id: str
    profile: str
    csr_der: bytes
    current_certificate_der: bytes
    proof_of_possession: bytes
    station_id: str
    chamber_code: str
    operator_id: str

    def fingerprint(self) -> bytes:
        return _fingerprint(KIND_RENEW, self.profile, self.csr_der, self.current_certificate_der,
                            self.proof_of_possession, self.station_id, self.chamber_code, self.operator_id)


@dataclass(frozen=True)
class ChangeInput:
    request_id: str
    kind: str            # suspend | reactivate | revoke
    ref: CertRef
    reason: str
    station_id: str
    chamber_code: str
    operator_id: str

    def fingerprint(self) -> bytes:
        return _fingerprint(self.kind, self.ref.issuer_dn, self.ref.serial_hex, self.reason, self.station_id,
                            self.chamber_code, self.operator_id)


@dataclass(frozen=True)
class RenewalRules:
    window_days: int = 90
    device_life_years: int = lifecycle.DEVICE_LIFE_YEARS


SIGN_FIRST_SECONDS = 0.25     # sign_first: a signature slower than this is not waited for uncommitted
FOLLOW_SECONDS = 0.05          # a request delivered by another process reaches its watchers within this
FOLLOW_FALLBACK_SECONDS = 1.0  # ... or this, over a store that cannot tell cheaply whether anything changed


class Broker:
    def __init__(self, *, store: RequestStore, ca: CAConnector, min_rsa_bits: dict[str, int],
                 answer_wait: float = DEFAULT_ANSWER_WAIT, renewal: RenewalRules = RenewalRules(),
                 clock: Callable[[], float] = time.time):
        self._store = store
        self._ca = ca
        self._min_rsa_bits = dict(min_rsa_bits)
        self._answer_wait = answer_wait
        self._renewal = renewal
        self._clock = clock
        self._watchers: dict[str, set[asyncio.Queue]] = {}
        self.refusals = RefusalLimiter()   # audit rows of refused calls, per identity
        self.wake_relay: Callable[[], None] = lambda: None
        self.relay = None   # the running Relay (set by the daemon): requests accepted while it has a free
                            # slot are committed claimed and handed to it directly
        self.waiting_reason: Callable[[RequestRecord], str] = lambda rec: ""
        self._handoffs: set[asyncio.Task] = set()   # commits in progress (a caller that left does not stop them)
        # issue 16, set by the daemon when the embedded CA's records are written by the request store's own
        # transaction (its index in the SQLite store's file): on the immediate path an issuance is signed
        # first and committed ONCE with its certificate (store.enqueue_issued), instead of committed, signed
        # and committed again. A signature no transaction recorded was given to no one and is on record nowhere.
        self.sign_first = False
        self._follower: asyncio.Task | None = None

    @property
    def ca(self) -> CAConnector:
        return self._ca

    @property
    def clock(self) -> Callable[[], float]:
        return self._clock

    # -- issuance ----------------------------------------------------------------

    def _validate(self, inp: IssueInput) -> validation.ValidIssue:
        validation.check_request_id(inp.request_id)
        validation.check_profile(inp.profile)
        holder = validation.check_holder(inp.codice_fiscale, inp.given_name, inp.surname, inp.birth_date)
        _check_requester(inp.station_id, inp.chamber_code, inp.operator_id)
        return validation.check_issue(
            request_id=inp.request_id, profile=inp.profile, csr_der=inp.csr_der, holder=holder,
            card_id=inp.card_id, ef_dati_personali=inp.ef_dati_personali, min_rsa_bits=self._min_rsa_bits)

    async def submit_issue(self, inp: IssueInput, *, actor: str = "") -> RequestRecord:
        valid = self._validate(inp)
        payload = IssuancePayload(
            profile=valid.profile, csr_der=inp.csr_der, codice_fiscale=valid.holder.codice_fiscale,
            given_name=valid.holder.given_name, surname=valid.holder.surname,
            birth_date=valid.holder.birth_date.isoformat(), card_id=valid.card_id,
            dati_personali_hash=valid.dati_personali_hash, card_model=inp.card_model[:64])
        rec = RequestRecord(request_id=inp.request_id, kind=KIND_ISSUE, profile=valid.profile,
                            payload_sha256=inp.fingerprint(), chamber_code=inp.chamber_code,
                            station_id=inp.station_id, operator_id=inp.operator_id)
        key = KeyBinding(validation.public_key_sha256(valid.csr.public_key()), valid.holder.codice_fiscale,
                         valid.profile)
        rid = inp.registration_id
        if rid:
            if not registrations.REGISTRATION_ID_RE.fullmatch(rid):
                raise InvalidRequest("registration_id", "not a registration id (REG- and 16 hex digits)")
            reg = await self._store.get_registration(rid)
            if reg is None:
                raise NotFound(f"no registration {rid!r}; check the id on the IR's receipt")
            registrations.check_usable(reg, chamber_code=inp.chamber_code, holder=valid.holder,
                                       card_id=valid.card_id, now=self._clock())
        try:
            return await self._accept(rec, payload.encode(), actor=actor, target=valid.card_id,
                                      card_id=valid.card_id, holder_cf=valid.holder.codice_fiscale, key=key,
                                      registration_id=rid, holder=_holder_of(payload))
        except StoreError as exc:
            if rid and "registration already used" in str(exc):   # another request won the race: nothing written
                raise FailedPrecondition(f"registration {rid} was already used by another request") from None
            raise

    async def submit_renew(self, inp: RenewInput, *, actor: str = "", mode: str = "") -> RequestRecord:
        """``mode``: "" for an operator's renewal, "self-renewal" for a holder's (``self_renewal``); audited."""
        validation.check_request_id(inp.request_id)
        validation.check_profile(inp.profile)
        _check_requester(inp.station_id, inp.chamber_code, inp.operator_id)
        csr = validation.check_csr(inp.csr_der, inp.profile, self._min_rsa_bits[inp.profile])
        try:
            current = x509.load_der_x509_certificate(inp.current_certificate_der)
        except ValueError:
            raise InvalidRequest("current_certificate_der", "not a DER-encoded X.509 certificate") from None
        fp = inp.fingerprint()
        existing = await self._store.get_request(inp.request_id)
        if existing is not None:   # a retry: do not re-judge the window, return the stored request
            return await self._accept(existing, b"", actor=actor, target="", fingerprint=fp)
        ref = CertRef(current.issuer.rfc4514_string(), f"{current.serial_number:X}")
        row = await self._store.get_certificate(ref)
        info = await self._ca.status(ref)
        issuing = x509.load_der_x509_certificate(self._ca.chain_der()[0])
        card_id = row.card_id if row and row.card_id else ""
        if not card_id:
            raise FailedPrecondition("the current certificate has no device on record; renew by issuance")
        first = await self._store.get_holder(row.request_id)
        if first is None:
            raise FailedPrecondition("the holder data of the current certificate is not on record; renew by issuance")
        validation.check_subject_matches(csr, validation.Holder(   # the CSR names the certificate's holder
            first.codice_fiscale, first.given_name, first.surname, _dt.date.fromisoformat(first.birth_date)))
        key = KeyBinding(validation.public_key_sha256(csr.public_key()), first.codice_fiscale, inp.profile)
        if key.key_sha256 == validation.public_key_sha256(current.public_key()):   # also when not yet bound
            raise validation.key_reuse_refusal(bound_cf=first.codice_fiscale, bound_profile=row.profile,
                                               cf=first.codice_fiscale, profile=inp.profile)
        now = _dt.datetime.fromtimestamp(self._clock(), _dt.timezone.utc)
        lifecycle.check_renewal(
            request_id=inp.request_id, csr_der=inp.csr_der, proof=inp.proof_of_possession, csr=csr,
            current=current, issuing=issuing, state=info.state if info else None,
            first_issued=await self._store.first_issued_for_card(card_id), now=now,
            new_validity=profiles.EE_VALIDITY, renewal_window=_dt.timedelta(days=self._renewal.window_days),
            device_life_years=self._renewal.device_life_years)
        payload = IssuancePayload(
            profile=inp.profile, csr_der=inp.csr_der, codice_fiscale=first.codice_fiscale,
            given_name=first.given_name, surname=first.surname, birth_date=first.birth_date,
            card_id=card_id, dati_personali_hash=_cn_hash(current) if inp.profile == validation.PROFILE_CNS_AUTH else None,
            card_model=first.card_model)
        rec = RequestRecord(request_id=inp.request_id, kind=KIND_RENEW, profile=inp.profile, payload_sha256=fp,
                            chamber_code=inp.chamber_code, station_id=inp.station_id, operator_id=inp.operator_id,
                            issuer_dn=None, serial_hex=None)
        return await self._accept(rec, payload.encode(), actor=actor, target=f"{ref.issuer_dn}#{ref.serial_hex}",
                                  card_id=card_id, holder_cf=first.codice_fiscale, key=key, mode=mode,
                                  holder=_holder_of(payload))

    async def submit_change(self, inp: ChangeInput, *, actor: str = "") -> RequestRecord:
        validation.check_request_id(inp.request_id)
        if inp.kind not in CHANGE_KINDS:
            raise InvalidRequest("kind", f"unknown status change {inp.kind!r}")
        if not inp.ref.issuer_dn or not inp.ref.serial_hex:
            raise InvalidRequest("certificate", "issuer_dn and serial_hex are required")
        reason = lifecycle.check_reason(inp.reason) if inp.kind == KIND_REVOKE else ""
        fp = inp.fingerprint()
        existing = await self._store.get_request(inp.request_id)
        if existing is None:
            info = await self._ca.status(inp.ref)
            if info is None:
                raise NotFound(f"no certificate {inp.ref.serial_hex} from {inp.ref.issuer_dn!r}")
            lifecycle.check_transition(inp.kind, info.state)
        rec = RequestRecord(request_id=inp.request_id, kind=inp.kind, profile="", payload_sha256=fp,
                            chamber_code=inp.chamber_code, station_id=inp.station_id, operator_id=inp.operator_id,
                            issuer_dn=inp.ref.issuer_dn, serial_hex=inp.ref.serial_hex)
        payload = ChangePayload(inp.ref.issuer_dn, inp.ref.serial_hex, reason).encode()
        return await self._accept(existing or rec, payload, actor=actor,
                                  target=f"{inp.ref.issuer_dn}#{inp.ref.serial_hex}", fingerprint=fp)

    async def _accept(self, rec: RequestRecord, payload: bytes, *, actor: str, target: str,
                      fingerprint: bytes | None = None, card_id: str = "", holder_cf: str = "",
                      key: KeyBinding | None = None, registration_id: str = "", mode: str = "",
                      holder: HolderRecord | None = None) -> RequestRecord:
        """Commit (request + outbox + audit) or find the existing request; then wait briefly for the relay."""
        rid = rec.request_id
        fp = fingerprint or rec.payload_sha256
        created = False
        if rec.created_at == 0.0 and payload:   # a fresh record, not one read back from the store
            # The commit, and the delivery of a request committed claimed (the immediate path: signed in
            # this same task, issue 16), run as their own task, shielded from the caller: a client that
            # cancels or whose deadline expires interrupts only its own wait, never a request committed
            # claimed but not yet delivered (it would stay PENDING). ``accepted`` answers as soon as the
            # rows are committed (or refused); the task's result is the delivered outcome.
            accepted = asyncio.get_running_loop().create_future()
            accepted.add_done_callback(_retrieved)   # a caller that left never reads a refusal set on it
            task = asyncio.ensure_future(self._commit(rec, payload, accepted, actor=actor, target=target,
                                                      card_id=card_id, holder_cf=holder_cf, key=key,
                                                      registration_id=registration_id, mode=mode,
                                                      holder=holder))
            self._handoffs.add(task)
            task.add_done_callback(self._handoff_done)
            deadline = time.monotonic() + self._answer_wait
            created = await asyncio.shield(accepted)
            if created:
                outcome = None
                try:
                    async with asyncio.timeout(max(0.0, deadline - time.monotonic())):
                        outcome = await asyncio.shield(task)
                except TimeoutError:   # the CA is slow: the caller gets the durable state, the task goes on
                    pass
                if outcome is not None:
                    settled, final = outcome
                    if final is not None and final.terminal:
                        return final   # as the completing transaction read it back: no read of our own
                    if settled:        # failed for good (not read back): the stored row says how
                        return await self.get(rid)
                # queued for the relay (no free slot), or waiting for a retry: follow it for what is left
                return await self.wait(rid, max(0.0, deadline - time.monotonic()))
        if not created:
            existing = await self._store.get_request(rid)
            if existing is None:
                raise CAError("request row vanished")
            if existing.payload_sha256 != fp:   # audited by the caller, as every refused call: one row
                raise RequestConflict(rid)
            if existing.terminal:
                return existing
            if existing.outbox_status is None and payload:   # left by a version without the outbox
                log.info("resuming request %s left in state %s", rid, existing.state)
                await self._store.ensure_outbox(rid, lane=LANE_OF[existing.kind], kind=existing.kind,
                                                payload=payload)
                self.wake_relay()
        return await self.wait(rid, self._answer_wait)

    async def _commit(self, rec: RequestRecord, payload: bytes, accepted: asyncio.Future, *, actor: str,
                      target: str, card_id: str = "", holder_cf: str = "", key: KeyBinding | None = None,
                      registration_id: str = "", mode: str = "", holder: HolderRecord | None = None
                      ) -> tuple[bool, RequestRecord | None] | None:
        """Write a new request (``accepted``: True; False, nothing written, if its id exists) and, when it
        was committed claimed, deliver it here: (settled, the outcome as read back, or None). None: nothing
        delivered here (not created, or queued for the relay).

        ``key`` is bound in the same commit; if another request holds it nothing is written and the
        refusal (INVALID_ARGUMENT on csr_der) is set on ``accepted``.

        While the relay has a free slot the rows are committed already claimed and delivered in this task
        (``relay.deliver_claimed``: no queue scan, no delivery task); the slot is reserved before the
        commit and released if nothing was written. Otherwise the row is queued and the relay woken.
        """
        try:
            created, claim, final = await self._enqueue(rec, payload, actor=actor, target=target, card_id=card_id,
                                                        holder_cf=holder_cf, key=key, registration_id=registration_id,
                                                        mode=mode, holder=holder)
        except BaseException as exc:
            if not accepted.done():
                if isinstance(exc, asyncio.CancelledError):
                    accepted.cancel()
                else:
                    accepted.set_exception(exc)
            raise
        accepted.set_result(created)
        if final is not None:   # signed first and committed with its certificate: settled
            if self.watched(rec.request_id):
                self.notify(final)
            return True, final
        if not (created and claim):
            return None
        lane = LANE_OF[rec.kind]
        return await self.relay.deliver_claimed(
            dataclasses.replace(rec, state=STATE_PENDING, lane=lane, outbox_status="sending", attempts=1),
            OutboxPayload(lane, rec.kind, payload, "sending", 1))

    async def _enqueue(self, rec: RequestRecord, payload: bytes, *, actor: str, target: str, card_id: str,
                       holder_cf: str, key: KeyBinding | None, registration_id: str, mode: str,
                       holder: HolderRecord | None) -> tuple[bool, bool, RequestRecord | None]:
        """The commit: (created, committed claimed by this process's relay, the request as committed when it
        was signed first and committed ISSUED with its certificate, ``sign_first``)."""
        rid = rec.request_id
        lane = LANE_OF[rec.kind]
        relay = self.relay
        claim = relay is not None and relay.reserve(lane, rid)
        final = None
        try:
            audit = AuditEntry(actor, rec.station_id, rec.kind, rid, target, "accepted",
                               f"registration {registration_id}" if registration_id else (f"mode {mode}" if mode else ""),
                               operator_id=rec.operator_id, card_id=card_id, holder_cf=holder_cf)
            # only for a caller that waits for the outcome (answer_wait > 0): one that wants the durable state
            # at once gets it committed first, as before
            signed = (await relay.sign_first(rec, payload, min(SIGN_FIRST_SECONDS, self._answer_wait))
                      if claim and self.sign_first and rec.kind in ISSUANCE_KINDS and self._answer_wait > 0
                      else None)
            if signed is not None:
                final = await self._store.enqueue_issued(rec, lane=lane, payload=payload, claimer=relay.claimer,
                                                         key=key, holder=holder, audit=audit,
                                                         registration_id=registration_id, **signed)
                created = final is not None
                relay.release(rid)   # settled here: the slot is free (deliver_claimed would free it otherwise)
            else:
                created = await self._store.enqueue(rec, lane=lane, payload=payload,
                                                    claimer=relay.claimer if claim else None, key=key, holder=holder,
                                                    audit=audit, registration_id=registration_id)
        except KeyAlreadyCertified:
            if claim:
                relay.release(rid)
            bound = await self._store.key_binding(key.key_sha256)
            raise validation.key_reuse_refusal(bound_cf=bound.holder_cf if bound else None,
                                               bound_profile=bound.profile if bound else None,
                                               cf=key.holder_cf, profile=key.profile) from None
        except BaseException:
            if claim:
                relay.release(rid)
            raise
        if claim and not created:
            relay.release(rid)
        if created and final is None:
            if not claim:
                self.wake_relay()
            self.notify(rec)   # watchers re-read the stored row; a fresh request is not terminal
        return created, claim, final

    def _handoff_done(self, task: asyncio.Task) -> None:
        self._handoffs.discard(task)
        if not task.cancelled() and task.exception() is not None and not isinstance(task.exception(),
                                                                                     PersonalizerError):
            log.error("committing a request failed: %r", task.exception())

    async def audit_refusal(self, *, actor: str, station_id: str, operation: str, request_id: str,
                            exc: PersonalizerError, operator_id: str = "") -> None:
        """One row per refused call, rate-limited per identity (``audit.RefusalLimiter``)."""
        skipped = self.refusals.admit(actor)
        if skipped is None:
            return
        detail = str(exc)[:500] if not skipped else f"[{skipped} earlier refusal(s) not recorded] {exc}"[:500]
        try:
            await self._store.append_audit(AuditEntry(actor, station_id, operation, request_id or None, "",
                                                      f"refused:{exc.code}", detail, operator_id=operator_id))
        except PersonalizerError:
            log.exception("could not write the audit row of a refused %s", operation)

    # -- reads and watches -------------------------------------------------------

    async def get(self, request_id: str) -> RequestRecord:
        validation.check_request_id(request_id)
        rec = await self._store.get_request(request_id)
        if rec is None:
            raise NotFound(f"no request with id {request_id!r}")
        return rec

    def notify(self, rec: RequestRecord) -> None:
        for q in self._watchers.get(rec.request_id, ()):
            q.put_nowait(rec)

    def watched(self, request_id: str) -> bool:
        """True while a caller waits on or watches the request (the relay reads its outcome only then)."""
        return request_id in self._watchers

    # -- watchers of requests another process delivers ([server] processes > 1) ---------------------
    def follow_store(self) -> None:
        """Start following the store for watchers of requests other processes deliver (see the docstring)."""
        if self._follower is None:
            self._follower = asyncio.get_running_loop().create_task(self._follow(), name="broker-follow-store")

    async def stop_following(self) -> None:
        if self._follower is not None:
            self._follower.cancel()
            await asyncio.gather(self._follower, return_exceptions=True)
            self._follower = None

    async def _follow(self) -> None:
        version = getattr(self._store, "data_version", None)
        last = None
        while True:
            await asyncio.sleep(FOLLOW_SECONDS if version is not None else FOLLOW_FALLBACK_SECONDS)
            held = self.relay.holds if self.relay is not None else (lambda _rid: False)
            remote = [rid for rid in self._watchers if not held(rid)]
            if not remote:
                continue
            try:
                now = await version() if version is not None else None
            except Exception as exc:   # the next look tries again; watchers also time out on their own
                log.warning("could not look for requests delivered by other processes: %s", exc)
                continue
            if now is not None and now == last:
                continue
            last = now
            for rid in remote:
                for q in self._watchers.get(rid, ()):
                    q.put_nowait(None)   # "read it again": wait() and watch() reread the store

    def _subscribe(self, request_id: str) -> asyncio.Queue:
        q: asyncio.Queue = asyncio.Queue()
        self._watchers.setdefault(request_id, set()).add(q)
        return q

    def _unsubscribe(self, request_id: str, q: asyncio.Queue) -> None:
        ws = self._watchers.get(request_id)
        if ws is not None:
            ws.discard(q)
            if not ws:
                del self._watchers[request_id]

    async def wait(self, request_id: str, timeout: float) -> RequestRecord:
        """The request once terminal, or its state after ``timeout`` seconds."""
        q = self._subscribe(request_id)
        try:
            return await self._wait_on(q, request_id, await self.get(request_id), timeout, read=True)
        finally:
            self._unsubscribe(request_id, q)

    async def _wait_on(self, q: asyncio.Queue, request_id: str, rec: RequestRecord, timeout: float, *,
                       read: bool) -> RequestRecord:
        """Wait on the subscription ``q`` from ``rec`` (``read``: as stored; else as the caller knows it).

        A pushed terminal record (the relay read it as committed) ends the wait; a pushed intermediate
        one (a delivery starting) is no reason to read the row; ``None`` (another process may have
        changed it) is. A wait that runs out answers the stored state, read then if not read last."""
        deadline = time.monotonic() + timeout
        while not rec.terminal:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            try:   # asyncio.timeout, not wait_for: no task per wait (3.11's wait_for wraps q.get() in one)
                async with asyncio.timeout(left):
                    pushed = await q.get()
            except TimeoutError:
                break
            if pushed is not None and pushed.terminal:
                return pushed
            if pushed is None:
                rec, read = await self.get(request_id), True
            else:   # the row moved on since it was last read: a wait that runs out reads it again
                read = False
        return rec if read else await self.get(request_id)

    async def watch(self, request_id: str) -> AsyncIterator[RequestRecord]:
        """The current state, then every change (as the relay makes it), until a terminal state."""
        q = self._subscribe(request_id)
        try:
            rec = await self.get(request_id)
            yield rec
            last = (rec.state, rec.attempts, rec.outbox_status)
            while not rec.terminal:
                await q.get()
                while not q.empty():
                    q.get_nowait()
                rec = await self.get(request_id)
                now = (rec.state, rec.attempts, rec.outbox_status)
                if now != last:
                    last = now
                    yield rec
        finally:
            self._unsubscribe(request_id, q)

    async def issuance_stats(self) -> tuple[int, float]:
        return await self._store.recent_issuance_stats(STATS_WINDOW_SECONDS)

    async def ca_status(self) -> CAStatus:
        """One reading of the CA's status (GetCAStatus and the Prometheus endpoint both show it)."""
        if self.relay is not None:   # windows added through another process of the daemon count at once
            await self.relay.refresh_maintenance()
        return await read_ca_status(ca=self._ca, relay=self.relay, store=self._store,
                                    stats_window=STATS_WINDOW_SECONDS)

    # -- what the gRPC edge reads and administers (servicers never hold the store) --------

    async def find_request(self, request_id: str) -> RequestRecord | None:
        """The request, or None (no id check: the caller holds an id from a record)."""
        return await self._store.get_request(request_id)

    async def certificate(self, ref: CertRef) -> CertificateRow | None:
        """The certificate as this personalizer recorded it (its request, card and holder)."""
        return await self._store.get_certificate(ref)

    async def find_certificates(self, *, card_id: str = "", holder_cf: str = "") -> list[FoundCertificate]:
        return await self._store.find_certificates(card_id=card_id, holder_cf=holder_cf)

    async def record_audit(self, entry: AuditEntry) -> None:
        """An audit row for a call that changes nothing (a status read, a certificate search)."""
        await self._store.append_audit(entry)

    async def queue_depth(self) -> dict[str, int]:
        return await self._store.queue_depth()

    async def list_queue(self, limit: int) -> list[RequestRecord]:
        return await self._store.list_queue(limit)

    async def retry_now(self, request_id: str, audit: AuditEntry, *, orphaned_claim: bool = False) -> bool:
        """Make a waiting request due now (an orphaned claim too, when the caller checked no delivery
        holds it) and wake the relay; False when it was not waiting."""
        done = await self._store.retry_now(request_id, audit, orphaned_claim=orphaned_claim)
        if done:
            self.wake_relay()
        return done

    async def cancel(self, request_id: str, audit: AuditEntry) -> bool:
        """Cancel a request that never reached the CA; False (nothing changed) otherwise."""
        done = await self._store.cancel(request_id, audit)
        if done:
            rec = await self._store.get_request(request_id)
            if rec is not None:
                self.notify(rec)   # watchers see CANCELLED now
        return done

    async def add_maintenance(self, id_: str, starts_at: float, ends_at: float, reason: str, source: str,
                              audit: AuditEntry) -> None:
        """Committed; with several processes on the store, answered only once each of them has reread the
        windows (their relays reread every ``maintenance_refresh_seconds``): when central IT hears the
        window is added, no process of the daemon sends to the CA inside it."""
        await self._store.add_maintenance(id_, starts_at, ends_at, reason, source, audit=audit)
        refresh = getattr(self.relay, "maintenance_refresh_seconds", None)
        if refresh:
            await asyncio.sleep(2 * refresh)

    async def add_stock(self, chamber_code: str, quantity: int, note: str, audit: AuditEntry, *,
                        device_model: str = "") -> StockEntry:
        return await self._store.add_stock(chamber_code, quantity, note, audit, device_model=device_model)

    async def stock(self, chamber_code: str = "") -> tuple[list[StockEntry], dict[tuple[str, str], StockBalance]]:
        """The ledger rows (of one chamber, or all) and the balance of every chamber and model."""
        return await self._store.list_stock(chamber_code), await self._store.stock_balance()

    async def add_registration(self, reg: registrations.Registration, form: bytes, audit: AuditEntry) -> bool:
        return await self._store.add_registration(reg, form, audit)

    async def open_registration(self, chamber_code: str, codice_fiscale: str,
                                now: float) -> registrations.Registration | None:
        return await self._store.open_registration(chamber_code, codice_fiscale, now)

    async def get_registration(self, registration_id: str) -> registrations.Registration | None:
        return await self._store.get_registration(registration_id)

    async def cancel_registration(self, registration_id: str, *, by: str, audit: AuditEntry) -> bool:
        return await self._store.cancel_registration(registration_id, by=by, audit=audit)

    async def list_registrations(self, chamber_code: str, *, include_closed: bool, now: float,
                                 limit: int) -> list[registrations.Registration]:
        return await self._store.list_registrations(chamber_code, include_closed=include_closed, now=now,
                                                    limit=limit)


def _check_requester(station_id: str, chamber_code: str, operator_id: str) -> None:
    if not station_id or not chamber_code:
        raise InvalidRequest("requester", "station_id and chamber_code are required")
    if not operator_id:
        raise InvalidRequest("requester.operator_id", "is required")


def _cn_hash(cert: x509.Certificate) -> str | None:
    cn = cert.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)
    value = cn[0].value if cn else ""
    return value.split(".", 1)[1] if "." in value else None


__all__ = ["Broker", "IssueInput", "RenewInput", "ChangeInput", "RenewalRules", "STATE_RECEIVED"]
