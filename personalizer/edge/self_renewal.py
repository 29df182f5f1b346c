"""Holder self-renewal: ``HolderRenewal`` on the enrollment port (TLS, no client certificate).

A holder renews the certificates of their own card from their own computer.
There is no station certificate, so the authority is the card itself: each
keyset's request carries the certificate being renewed and the proof of
possession the agent's ``Renewer`` already makes on the card after the
holder's PIN — the CURRENT key's RSA PKCS#1 v1.5 SHA-256 signature over
``request_id || csr_der``. ``Broker.submit_renew`` checks, exactly as for an
operator's renewal (``lifecycle.check_renewal``): the certificate was issued by
this CA and is on record, is active (not suspended, revoked or expired), the
proof verifies with its key, the CSR names the same holder, the request is in
the renewal window and within the device's 6-year life.

Why a request-bound proof and not a server challenge: the proof is bound to
one request id and one CSR, and the request id is stored with the request, so
a replayed proof can never get a second certificate — the same bytes again are
the idempotent retry the Renewer's fault matrix relies on (a lost answer, a
killed agent) and return the same request; the proof under another request id
or CSR does not verify. A challenge would need a second card signature per
call and a server-side challenge store, and would break resume-by-request-id.

The request is the holder's: requester station ``self-renewal``, operator
``holder:<codice fiscale>`` (from the certificate), chamber = the chamber that
requested the certificate being renewed; it goes through the same broker,
outbox and audit as an operator's, with audit detail ``mode self-renewal``.
Every refusal writes one audit row (operation ``self-renew``), rate-limited
per holder by the broker's ``RefusalLimiter``. Reads (GetRequest,
WatchRequest) need the request id and a certificate of the holder this CA has
on record, and only reach self-renewal requests of that holder.

Card administration during a self-renewal (issue 12): the card's issuer
challenge is answered only for a caller that proves it holds the card and
knows its PIN — a certificate is public, so presenting one proves nothing.
``CardAuthNonce`` gives a fresh single-use nonce for the card's live CNS
authentication certificate (on record for that card, active, inside its
validity); ``AuthenticateCard`` takes that nonce (once: a replay is refused)
and checks the card's signature over it with the certificate's key
(``rules.card_proof``), then asks ``CardAdmin`` for the cryptogram.

SelfRenew calls pass a per-address ``EnrollLimiter`` first, CardAuthNonce calls a per-address
bucket (``NONCES_PER_MINUTE``); a nonce is answered only for the address it was given to. Imports
grpc, proto, ``broker``, ``lifecycle``, ``rules.card_proof``, ``enrollment`` (limiter),
``cardadmin.service`` (its token bucket), ``service`` (status mapping).
"""
from __future__ import annotations

import datetime as _dt

import grpc
from cryptography import x509

from cns_spec.profiles import CNS_AUTH

from personalizer.edge import limits
from personalizer.outbox.broker import Broker, ChangeInput, RenewInput
from personalizer.ca.base import CertRef, CertState
from personalizer.enrollment import EnrollLimiter, peer_host
from personalizer.errors import FailedPrecondition, InvalidRequest, NotFound, PermissionDenied, PersonalizerError
from personalizer.cardadmin.service import StationRate
from personalizer.records import SELF_RENEWAL_STATION
from personalizer.rules.card_proof import NonceBook, check_proof
from personalizer.rules.lifecycle import holder_cf
from cns_spec import reasons as spec_reasons
from personalizer.edge.service import ERROR_CODES, STATE_ENUMS, _ref, profile_name, record_to_proto, status_to_proto
from proto.cns.v1 import card_admin_pb2, self_renewal_pb2 as srpb, self_renewal_pb2_grpc as srpb_grpc

MODE = "self-renewal"
STATION = SELF_RENEWAL_STATION    # the requester's station_id of a holder's request
OPERATION = "self-renew"          # audit operation of a refused self-renewal call
HOLDER_PREFIX = "holder:"
NONCES_PER_MINUTE = 120           # CardAuthNonce calls per minute from one address


def _current(der: bytes) -> x509.Certificate:
    try:
        return x509.load_der_x509_certificate(der)
    except ValueError:
        raise InvalidRequest("current_certificate_der", "not a DER-encoded X.509 certificate; send the "
                             "certificate on the card being renewed") from None


class SelfRenewal:
    """The rules of the port, without gRPC (tests drive it directly)."""

    def __init__(self, broker: Broker, nonces: NonceBook | None = None):
        self._broker = broker
        self.nonces = nonces or NonceBook()

    async def _holder(self, cert: x509.Certificate) -> tuple[str, str, CertRef]:
        """(codice fiscale, chamber, ref) of a certificate this CA issued and has on record."""
        ref = CertRef(cert.issuer.rfc4514_string(), f"{cert.serial_number:X}")
        row = await self._broker.certificate(ref)
        cf = holder_cf(cert)
        if row is None or not cf:
            raise FailedPrecondition("the certificate is not one this CA issued for a holder; self-renewal is "
                                     "only for a CNS card issued here (ask your chamber)")
        original = await self._broker.find_request(row.request_id)
        if original is None or not original.chamber_code:
            raise FailedPrecondition("the certificate's issuing request is not on record; renew at your chamber")
        return cf, original.chamber_code, ref

    async def renew(self, *, request_id: str, profile: str | int, csr_der: bytes, current_certificate_der: bytes,
                    proof_of_possession: bytes):
        """``profile``: its name, or the wire enum value (refused with an audit row when unknown)."""
        actor = f"{HOLDER_PREFIX}unknown"
        try:
            if not isinstance(profile, str):
                profile = profile_name(profile)
            cf, chamber, _ = await self._holder(_current(current_certificate_der))
            actor = HOLDER_PREFIX + cf
            inp = RenewInput(request_id=request_id, profile=profile, csr_der=csr_der,
                             current_certificate_der=current_certificate_der,
                             proof_of_possession=proof_of_possession, station_id=STATION, chamber_code=chamber,
                             operator_id=actor)
            return await self._broker.submit_renew(inp, actor=actor, mode=MODE)
        except PersonalizerError as exc:
            await self._broker.audit_refusal(actor=actor, station_id=STATION, operation=OPERATION,
                                             request_id=request_id, exc=exc, operator_id=actor)
            raise

    async def readable(self, request_id: str, current_certificate_der: bytes):
        """The request, when it is a self-renewal of the holder of ``current_certificate_der``."""
        cert = _current(current_certificate_der)
        on_record = await self._broker.certificate(CertRef(cert.issuer.rfc4514_string(),
                                                                     f"{cert.serial_number:X}"))
        cf = (on_record.certificate_der == current_certificate_der and holder_cf(cert)) if on_record else ""
        rec = await self._broker.find_request(request_id)
        if rec is None or rec.station_id != STATION or rec.operator_id != HOLDER_PREFIX + cf:
            raise NotFound(f"no self-renewal request {request_id!r} for this certificate's holder")
        return rec


    async def _card_certificate(self, certificate_der: bytes, card_serial: str) -> tuple[str, str, x509.Certificate]:
        """(codice fiscale, chamber, cert) when ``certificate_der`` is this card's live CNS authentication
        certificate as this CA issued it: on record for that very card, active (not suspended or revoked)
        and inside its validity."""
        cert = _current(certificate_der)
        cf, chamber, _ = await self._holder(cert)
        mine = [f for f in await self._broker.find_certificates(card_id=card_serial)
                if f.certificate_der == certificate_der]
        if not mine:
            raise PermissionDenied(f"the certificate was not issued for card {card_serial}")
        found = mine[0]
        if found.profile != CNS_AUTH:
            raise PermissionDenied("card administration is proven with the card's CNS authentication certificate "
                                   f"(keyset CNS0), not its {found.profile} one")
        now = _dt.datetime.now(_dt.timezone.utc)
        if found.info.state is not CertState.ACTIVE or not found.info.not_before <= now <= found.info.not_after:
            raise FailedPrecondition(f"the card's certificate is {found.info.state.value}"
                                     + (" (outside its validity)" if found.info.state is CertState.ACTIVE else "")
                                     + ": this card cannot be administered for a self-renewal (ask your chamber)")
        return cf, chamber, cert

    async def card_nonce(self, *, current_certificate_der: bytes, card_serial: str, peer: str = "") -> bytes:
        """A fresh single-use nonce for the card's proof (``card_proof.NonceBook``), for the caller at ``peer``."""
        actor = f"{HOLDER_PREFIX}unknown"
        try:
            cf, _, _ = await self._card_certificate(current_certificate_der, card_serial)
            actor = HOLDER_PREFIX + cf
            return self.nonces.issue(card_serial, current_certificate_der, peer)
        except PersonalizerError as exc:
            await self._broker.audit_refusal(actor=actor, station_id=STATION, operation=OPERATION,
                                             request_id="", exc=exc, operator_id=actor)
            raise

    async def authenticate_card(self, card_admin, *, current_certificate_der: bytes, card_serial: str,
                                card_model: str, challenge: bytes, operation_id: str, nonce: bytes = b"",
                                proof: bytes = b"", rate_key: str = "", peer: str = "") -> bytes:
        """The card's issuer challenge answered (``cardadmin.service.CardAdmin``) for a caller that proved it
        holds the card: ``proof`` (``card_proof.check_proof``) by the key of ``current_certificate_der`` (the
        card's live authentication certificate, ``_card_certificate``) over a nonce of ``card_nonce``, taken
        here (a replay is refused)."""
        actor = f"{HOLDER_PREFIX}unknown"
        try:
            if card_admin is None:
                raise FailedPrecondition("this personalizer has no card administration token ([card_admin])")
            cf, chamber, cert = await self._card_certificate(current_certificate_der, card_serial)
            actor = HOLDER_PREFIX + cf
            if not nonce or not proof:
                check_proof(cert, nonce=nonce, serial=card_serial, operation_id=operation_id, proof=b"")
            self.nonces.take(nonce, card_serial, current_certificate_der, peer)
            check_proof(cert, nonce=nonce, serial=card_serial, operation_id=operation_id, proof=proof)
            return await card_admin.answer(actor=actor, station_id=STATION, chamber_code=chamber, operator_id=actor,
                                           serial=card_serial, model_id=card_model, challenge=challenge,
                                           operation="renew", operation_id=operation_id, rate_key=rate_key)
        except PersonalizerError as exc:
            await self._broker.audit_refusal(actor=actor, station_id=STATION, operation=OPERATION,
                                             request_id="", exc=exc, operator_id=actor)
            raise

    async def status(self, ref: CertRef):
        info = await self._broker.ca.status(ref)
        if info is None:
            raise NotFound(f"no certificate {ref.serial_hex} from {ref.issuer_dn!r}")
        return info

    async def revoke_own(self, *, request_id: str, ref: CertRef, reason: str):
        """The renewal's own revocations only (see the proto): superseded after a self-renewal issued the
        successor for the same card and profile; cessationOfOperation of a self-renewal's certificate the agent
        undid, named by ``undo-<that request id>``. Anything else is refused (one audit row)."""
        actor = f"{HOLDER_PREFIX}unknown"
        try:
            row = await self._broker.certificate(ref)
            if row is None or not row.holder_cf or not row.card_id:
                raise NotFound(f"no holder certificate {ref.serial_hex} from {ref.issuer_dn!r}")
            actor = HOLDER_PREFIX + row.holder_cf
            issuing = await self._broker.find_request(row.request_id)
            if reason == spec_reasons.CESSATION_OF_OPERATION:
                if not (issuing and issuing.station_id == STATION and issuing.operator_id == actor
                        and request_id == f"undo-{row.request_id}"):
                    raise PermissionDenied("a holder revokes only a certificate their own self-renewal issued and "
                                           "undid; ask your chamber to revoke any other")
            elif reason == spec_reasons.SUPERSEDED:
                others = [c for c in await self._broker.find_certificates(card_id=row.card_id)
                          if c.profile == row.profile and c.info.ref != ref]
                ok = False
                for c in others:   # a successor: requested later, by a self-renewal of this holder
                    succ = await self._broker.certificate(c.info.ref)
                    req = await self._broker.find_request(succ.request_id) if succ else None
                    ok = ok or bool(req and issuing and req.created_at > issuing.created_at
                                    and req.station_id == STATION and req.operator_id == actor)
                if not ok:
                    raise PermissionDenied("this certificate was not superseded by a self-renewal; ask your "
                                           "chamber to revoke it")
            else:
                raise InvalidRequest("reason", "a holder's revocation is superseded or cessationOfOperation")
            chamber = issuing.chamber_code if issuing else ""
            rec = await self._broker.submit_change(ChangeInput(request_id, "revoke", ref, reason, STATION, chamber,
                                                               actor), actor=actor)
            return rec, await self.status(ref)
        except PersonalizerError as exc:
            await self._broker.audit_refusal(actor=actor, station_id=STATION, operation=OPERATION + "-revoke",
                                             request_id=request_id, exc=exc, operator_id=actor)
            raise


class HolderRenewalService(srpb_grpc.HolderRenewalServicer):
    def __init__(self, broker: Broker, relay=None, limiter: EnrollLimiter | None = None, card_admin=None):
        self._rules = SelfRenewal(broker)
        self._card_admin = card_admin   # personalizer.cardadmin.service.CardAdmin, when [card_admin] is set
        self._nonce_rate = StationRate(NONCES_PER_MINUTE)   # per address: a renewal asks ~10
        self._limiter = limiter
        self._broker = broker
        self._relay = relay

    def _out(self, rec):
        return record_to_proto(rec, self._relay.waiting_reason(rec) if self._relay else "")

    async def _limit(self, context) -> None:
        if self._limiter is not None and not self._limiter.allow(peer_host(context.peer() or "")):
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED,
                                "too many renewal attempts from this address; wait a minute and try again")

    async def SelfRenew(self, request, context):
        await self._limit(context)
        try:
            limits.check_message(request)
            rec = await self._rules.renew(request_id=request.request_id, profile=request.profile,
                                          csr_der=request.csr_der,
                                          current_certificate_der=request.current_certificate_der,
                                          proof_of_possession=request.proof_of_possession)
        except PersonalizerError as exc:
            await context.abort(ERROR_CODES.get(exc.code, grpc.StatusCode.INTERNAL), str(exc))
        return self._out(rec)

    async def CardAuthNonce(self, request, context):  # noqa: N802
        peer = peer_host(context.peer() or "")
        if not self._nonce_rate.allow(peer):
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED,
                                "too many card administration nonces asked from this address; retry in a minute")
        try:   # bounded by the nonce book too (per card and address, in all)
            limits.check_message(request)
            nonce = await self._rules.card_nonce(current_certificate_der=request.current_certificate_der,
                                                 card_serial=request.card_serial, peer=peer)
        except PersonalizerError as exc:
            await context.abort(ERROR_CODES.get(exc.code, grpc.StatusCode.INTERNAL), str(exc))
        return srpb.SelfCardNonce(nonce=nonce, expires_in_s=int(self._rules.nonces.ttl_s))

    async def AuthenticateCard(self, request, context):  # noqa: N802
        try:   # rate-limited by the card admin's own buckets, per address (not the renewal attempts')
            limits.check_message(request)
            answer = await self._rules.authenticate_card(
                self._card_admin, current_certificate_der=request.current_certificate_der,
                card_serial=request.card_serial, card_model=request.card_model, challenge=request.challenge,
                operation_id=request.operation_id, nonce=request.nonce, proof=request.proof,
                rate_key="holder@" + peer_host(context.peer() or ""), peer=peer_host(context.peer() or ""))
        except PersonalizerError as exc:
            await context.abort(ERROR_CODES.get(exc.code, grpc.StatusCode.INTERNAL), str(exc))
        return card_admin_pb2.CardAuthResponse(cryptogram=answer)

    async def GetRequest(self, request, context):
        try:
            rec = await self._rules.readable(request.request_id, request.current_certificate_der)
        except PersonalizerError as exc:
            await context.abort(ERROR_CODES.get(exc.code, grpc.StatusCode.INTERNAL), str(exc))
        return self._out(rec)

    async def WatchRequest(self, request, context):
        try:
            await self._rules.readable(request.request_id, request.current_certificate_der)
        except PersonalizerError as exc:
            await context.abort(ERROR_CODES.get(exc.code, grpc.StatusCode.INTERNAL), str(exc))
        async for rec in self._broker.watch(request.request_id):
            yield self._out(rec)

    async def GetCertificateStatus(self, request, context):
        try:
            info = await self._rules.status(_ref(request))
        except PersonalizerError as exc:
            await context.abort(ERROR_CODES.get(exc.code, grpc.StatusCode.INTERNAL), str(exc))
        return status_to_proto(info)

    async def RevokeOwn(self, request, context):
        await self._limit(context)
        try:
            limits.check_message(request)
            rec, info = await self._rules.revoke_own(request_id=request.request_id, ref=_ref(request.certificate),
                                                     reason=request.reason)
        except PersonalizerError as exc:
            await context.abort(ERROR_CODES.get(exc.code, grpc.StatusCode.INTERNAL), str(exc))
        out = status_to_proto(info)
        out.change_request_id = rec.request_id
        out.change_state = STATE_ENUMS[rec.state]
        return out
