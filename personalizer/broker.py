"""The request broker: idempotent issuance, request states, watchers.

Request states: RECEIVED (row written before the CA is called) → ISSUED or
FAILED. The row is committed before the side effect it describes (DESIGN.md),
so a crash between the two leaves a RECEIVED row that the next submission
with the same id and payload resumes.

Idempotency: the payload fingerprint is SHA-256 over a length-prefixed
canonical encoding of every request field except the request id. Same id +
same fingerprint → the stored result (or wait for the in-flight one); same
id + other fingerprint → RequestConflict. Validation runs first, so an
invalid payload is reported as INVALID_ARGUMENT even when its id is known.

No grpc or proto here; the service maps both directions. The CA is reached
only through ``CAConnector``; the store only through ``RequestStore``'s methods.
"""
from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace

from personalizer import validation
from personalizer.ca.base import CAConnector, CertificateSubject
from personalizer.errors import CAError, CAUnavailable, InvalidRequest, NotFound, PersonalizerError, RequestConflict
from personalizer.store import (STATE_FAILED, STATE_ISSUED, STATE_RECEIVED, RequestRecord, RequestStore)

log = logging.getLogger(__name__)
KIND_ISSUE = "issue"
STATS_WINDOW_SECONDS = 600


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

    def fingerprint(self) -> bytes:
        h = hashlib.sha256()
        for name in ("profile", "csr_der", "codice_fiscale", "given_name", "surname", "birth_date", "card_id",
                     "card_model", "station_id", "chamber_code", "operator_id", "ef_dati_personali"):
            value = getattr(self, name)
            raw = value if isinstance(value, bytes) else value.encode("utf-8")
            h.update(len(raw).to_bytes(8, "big"))
            h.update(raw)
        return h.digest()


class Broker:
    def __init__(self, *, store: RequestStore, ca: CAConnector, min_rsa_bits: dict[str, int]):
        self._store = store
        self._ca = ca
        self._min_rsa_bits = dict(min_rsa_bits)
        self._inflight: dict[str, asyncio.Future] = {}
        self._watchers: dict[str, set[asyncio.Queue]] = {}

    @property
    def ca(self) -> CAConnector:
        return self._ca

    # -- issuance ----------------------------------------------------------------

    def _validate(self, inp: IssueInput) -> validation.ValidIssue:
        validation.check_request_id(inp.request_id)
        validation.check_profile(inp.profile)
        holder = validation.check_holder(inp.codice_fiscale, inp.given_name, inp.surname, inp.birth_date)
        if not inp.station_id or not inp.chamber_code:
            raise InvalidRequest("requester", "station_id and chamber_code are required")
        if not inp.operator_id:
            raise InvalidRequest("requester.operator_id", "is required")
        return validation.check_issue(
            request_id=inp.request_id, profile=inp.profile, csr_der=inp.csr_der, holder=holder,
            card_id=inp.card_id, ef_dati_personali=inp.ef_dati_personali, min_rsa_bits=self._min_rsa_bits)

    async def submit_issue(self, inp: IssueInput) -> RequestRecord:
        valid = self._validate(inp)
        fp = inp.fingerprint()
        rid = inp.request_id
        pending = self._inflight.get(rid)
        if pending is not None:
            await asyncio.wait([pending])
            return await self._existing(valid, fp)
        fut = asyncio.get_running_loop().create_future()
        self._inflight[rid] = fut
        try:
            rec = RequestRecord(request_id=rid, kind=KIND_ISSUE, profile=inp.profile, payload_sha256=fp,
                                chamber_code=inp.chamber_code, station_id=inp.station_id,
                                operator_id=inp.operator_id)
            if not await self._store.create_request(rec):
                existing = await self._store.get_request(rid)
                self._check_same(existing, fp)
                if existing.terminal:
                    return existing
                log.info("resuming request %s left in state %s", rid, existing.state)
                rec = existing
            else:
                self._notify(rec)
            return await self._run_issue(valid, rec)
        finally:
            del self._inflight[rid]
            fut.set_result(None)

    @staticmethod
    def _check_same(rec: RequestRecord | None, fp: bytes) -> None:
        if rec is None:
            raise CAError("request row vanished")
        if rec.payload_sha256 != fp:
            raise RequestConflict(rec.request_id)

    async def _existing(self, valid: validation.ValidIssue, fp: bytes) -> RequestRecord:
        rec = await self._store.get_request(valid.request_id)
        if rec is None:   # the in-flight attempt failed before writing; try ourselves
            raise CAUnavailable("the first attempt with this request id did not complete; retry")
        self._check_same(rec, fp)
        if not rec.terminal:
            raise CAUnavailable("the first attempt with this request id did not complete; retry")
        return rec

    async def _run_issue(self, valid: validation.ValidIssue, rec: RequestRecord) -> RequestRecord:
        subject = CertificateSubject(valid.holder, valid.card_id, valid.dati_personali_hash)
        try:
            issued = await self._ca.issue(valid.profile, valid.csr, subject, valid.request_id)
        except InvalidRequest as exc:
            await self._store.fail_request(rec.request_id, exc.code, exc.field, exc.message)
            self._notify(replace(rec, state=STATE_FAILED, error_code=exc.code, error_field=exc.field,
                                 error_message=exc.message))
            raise
        except CAUnavailable:
            raise   # the row stays RECEIVED; a retry with the same id resumes
        except PersonalizerError:
            raise
        except Exception as exc:
            log.exception("CA connector %s failed on request %s", self._ca.name, rec.request_id)
            raise CAError("the CA failed to issue; the request can be retried") from exc
        await self._store.complete_request(rec.request_id, issued, valid.profile)
        done = replace(rec, state=STATE_ISSUED, issuer_dn=issued.ref.issuer_dn, serial_hex=issued.ref.serial_hex,
                       certificate_der=issued.certificate_der, chain_der=issued.chain_der)
        self._notify(done)
        return done

    # -- reads and watches -------------------------------------------------------

    async def get(self, request_id: str) -> RequestRecord:
        validation.check_request_id(request_id)
        rec = await self._store.get_request(request_id)
        if rec is None:
            raise NotFound(f"no request with id {request_id!r}")
        return rec

    def _notify(self, rec: RequestRecord) -> None:
        for q in self._watchers.get(rec.request_id, ()):
            q.put_nowait(rec)

    async def watch(self, request_id: str) -> AsyncIterator[RequestRecord]:
        q: asyncio.Queue = asyncio.Queue()
        self._watchers.setdefault(request_id, set()).add(q)
        try:
            rec = await self.get(request_id)
            yield rec
            last = rec.state
            while last not in (STATE_ISSUED, STATE_FAILED):
                rec = await q.get()
                if rec.state == last:
                    continue
                if rec.certificate_der is None and rec.state == STATE_ISSUED:
                    rec = await self.get(request_id)
                last = rec.state
                yield rec
        finally:
            ws = self._watchers.get(request_id)
            if ws is not None:
                ws.discard(q)
                if not ws:
                    del self._watchers[request_id]

    async def issuance_stats(self) -> tuple[int, float]:
        return await self._store.recent_issuance_stats(STATS_WINDOW_SECONDS)


__all__ = ["Broker", "IssueInput", "STATE_RECEIVED"]
