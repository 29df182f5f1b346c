"""The Personalizer gRPC servicer: proto ↔ broker, errors → status codes.

This is the boundary where our exceptions become gRPC statuses (``ERROR_CODES``)
and unexpected ones become INTERNAL without details. Identity comes from
``identity.current_identity()`` (set by the interceptor). Must not import the
store's SQL, the CA's key stores or anything of the agent.

Audit (who, from which station, which operator, when, what, result):
accepted requests are written by the broker with the request, outcomes by the
relay; every refused call writes ONE row, here in ``_translate`` (any
PersonalizerError of a handler) or in the interceptor (``audit_refusal``),
naming the call's operation (``OPERATION_NAMES``) and the requester's operator,
rate-limited per identity by the broker; a certificate status read writes one
``status`` row, naming the operator of the read's optional ``requester`` ("" when
the station sends none). Invalid lifecycle transitions and renewals
(``personalizer.rules.lifecycle``) come back as FAILED_PRECONDITION with the reason.
"""
from __future__ import annotations

import functools
import inspect
import logging

import grpc
from cryptography import x509

from personalizer.edge import identity, limits

from personalizer.rules import validation
from personalizer.outbox.broker import Broker, ChangeInput, IssueInput, RenewInput
from personalizer.ca.base import CertRef, CertState, CertStatusInfo
from personalizer.errors import InvalidRequest, NotFound, PermissionDenied, PersonalizerError
from personalizer.outbox.payloads import KIND_REACTIVATE, KIND_REVOKE, KIND_SUSPEND
from personalizer.outbox.relay import Relay
from personalizer.records import STATE_DONE, AuditEntry, RequestRecord
from proto.cns.v1 import common_pb2, personalizer_pb2 as pb, personalizer_pb2_grpc as pb_grpc

log = logging.getLogger(__name__)

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["Personalizer"].full_name
PROFILE_NAMES = {
    pb.CA_PROFILE_CNS_AUTH: validation.PROFILE_CNS_AUTH,
    pb.CA_PROFILE_QUALIFIED_SIGNATURE: validation.PROFILE_QUALIFIED,
}
PROFILE_ENUMS = {v: k for k, v in PROFILE_NAMES.items()}
STATE_ENUMS = {
    "RECEIVED": pb.REQUEST_STATE_RECEIVED, "PENDING": pb.REQUEST_STATE_PENDING,
    "ISSUED": pb.REQUEST_STATE_ISSUED, "FAILED": pb.REQUEST_STATE_FAILED,
    "DONE": pb.REQUEST_STATE_DONE, "CANCELLED": pb.REQUEST_STATE_CANCELLED,
}
CERT_STATE_ENUMS = {
    CertState.ACTIVE: pb.CERTIFICATE_STATUS_ACTIVE, CertState.SUSPENDED: pb.CERTIFICATE_STATUS_SUSPENDED,
    CertState.REVOKED: pb.CERTIFICATE_STATUS_REVOKED, CertState.EXPIRED: pb.CERTIFICATE_STATUS_EXPIRED,
}
ERROR_CODES = {name: getattr(grpc.StatusCode, name) for name in (
    "INVALID_ARGUMENT", "ALREADY_EXISTS", "NOT_FOUND", "PERMISSION_DENIED", "UNAUTHENTICATED",
    "UNIMPLEMENTED", "UNAVAILABLE", "FAILED_PRECONDITION", "INTERNAL", "RESOURCE_EXHAUSTED")}


def _translate(fn):
    """Bound the request (``limits``); map PersonalizerError → status (after its one audit row); anything
    else → INTERNAL (logged, never sent)."""
    if inspect.isasyncgenfunction(fn):
        @functools.wraps(fn)
        async def stream(self, request, context):
            try:
                limits.check_message(request)
                async for item in fn(self, request, context):
                    yield item
            except PersonalizerError as exc:
                await audit_refused_call(self, fn.__name__, request, exc)
                await context.abort(ERROR_CODES.get(exc.code, grpc.StatusCode.INTERNAL), str(exc))
        return stream

    @functools.wraps(fn)
    async def unary(self, request, context):
        try:
            limits.check_message(request)
            return await fn(self, request, context)
        except PersonalizerError as exc:
            await audit_refused_call(self, fn.__name__, request, exc)
            await context.abort(ERROR_CODES.get(exc.code, grpc.StatusCode.INTERNAL), str(exc))
        except grpc.aio.AbortError:
            raise
        except Exception:
            log.exception("unexpected error in %s", fn.__name__)
            await context.abort(grpc.StatusCode.INTERNAL, "internal error; see the daemon's log")
    return unary


def profile_name(value: int) -> str:
    try:
        return PROFILE_NAMES[value]
    except KeyError:
        raise InvalidRequest("profile", f"unknown CA profile {value}; known: "
                             + ", ".join(f"{pb.CAProfile.Name(k)} ({v})" for k, v in PROFILE_NAMES.items())) from None


def record_to_proto(rec: RequestRecord, waiting_reason: str = "") -> pb.IssueResponse:
    out = pb.IssueResponse(request_id=rec.request_id, state=STATE_ENUMS[rec.state],
                           profile=PROFILE_ENUMS.get(rec.profile, pb.CA_PROFILE_UNSPECIFIED),
                           created_at=int(rec.created_at), updated_at=int(rec.updated_at), kind=rec.kind,
                           attempts=rec.attempts, waiting_reason=waiting_reason,
                           next_attempt_at=int(rec.next_attempt_at) if not rec.terminal else 0)
    if rec.certificate_der:
        out.certificate_der = rec.certificate_der
        out.chain_der.extend(rec.chain_der)
    if rec.issuer_dn:
        out.certificate.CopyFrom(common_pb2.CertificateRef(issuer_dn=rec.issuer_dn, serial_hex=rec.serial_hex))
    if rec.error_code:
        out.error.CopyFrom(common_pb2.ErrorDetail(code=rec.error_code, field=rec.error_field or "",
                                                  message=rec.error_message or ""))
    return out


def status_to_proto(info: CertStatusInfo) -> pb.CertificateStatusResponse:
    return pb.CertificateStatusResponse(
        certificate=common_pb2.CertificateRef(issuer_dn=info.ref.issuer_dn, serial_hex=info.ref.serial_hex),
        status=CERT_STATE_ENUMS[info.state], not_before=int(info.not_before.timestamp()),
        not_after=int(info.not_after.timestamp()), revocation_reason=info.revocation_reason,
        revoked_at=int(info.revoked_at.timestamp()) if info.revoked_at else 0, request_id=info.request_id)


# Audit names of the calls (the same as the request kinds where there is one).
OPERATION_NAMES = {"SubmitIssue": "issue", "Renew": "renew", "Suspend": KIND_SUSPEND,
                   "Reactivate": KIND_REACTIVATE, "Revoke": KIND_REVOKE, "GetCertificateStatus": "status",
                   "GetRequest": "get-request", "WatchRequest": "watch-request", "GetCAStatus": "ca-status",
                   "ListQueue": "queue-list", "ShowQueued": "queue-show", "RetryNow": "queue-retry",
                   "Cancel": "queue-cancel", "AddMaintenance": "maintenance-add",
                   "ListMaintenance": "maintenance-list", "FindCertificates": "certificate-find",
                   "RegisterHolder": "registration-add", "GetRegistration": "registration-get",
                   "ListRegistrations": "registration-list", "CancelRegistration": "registration-cancel"}


def operation_name(method: str) -> str:
    """"/cns.v1.Personalizer/Suspend" → "suspend"; unknown methods keep their gRPC name."""
    short = method.rsplit("/", 1)[-1]
    return OPERATION_NAMES.get(short, method.strip("/"))


def _operator(actor: str, request) -> str:
    """The requester's operator id; for central IT's calls (no requester) the admin's name."""
    requester = getattr(request, "requester", None) if request is not None else None
    if requester is not None and requester.operator_id:
        return requester.operator_id
    admin = identity.URI_PREFIX + identity.ROLE_ADMIN + ":"
    return actor[len(admin):] if actor.startswith(admin) else ""


async def audit_denied(broker: Broker, *, actor: str, station_id: str, method: str, request,
                       exc: PersonalizerError) -> None:
    """The one audit row of a refused call: by the interceptor (no identity, wrong role, foreign
    requester) or by a handler (``audit_refused_call``)."""
    rid = getattr(request, "request_id", "") if request is not None else ""
    await broker.audit_refusal(actor=actor, station_id=station_id, operation=operation_name(method),
                               request_id=rid if isinstance(rid, str) else "", exc=exc,
                               operator_id=_operator(actor, request))


async def audit_refused_call(servicer, method: str, request, exc: PersonalizerError) -> None:
    """The audit row of a call a handler of ``servicer`` refused; the identity is the interceptor's."""
    broker = getattr(servicer, "_broker", None)
    try:
        ident = identity.current_identity()
    except PersonalizerError:
        return
    if broker is None:
        return
    requester = getattr(request, "requester", None)
    station = requester.station_id if requester is not None and requester.station_id else (
        ident.subject_id if ident.role == identity.ROLE_STATION else "")
    await audit_denied(broker, actor=ident.uri, station_id=station, method=method, request=request, exc=exc)


def _ref(msg: common_pb2.CertificateRef) -> CertRef:
    if not msg.issuer_dn or not msg.serial_hex:
        raise InvalidRequest("certificate", "issuer_dn and serial_hex are required")
    return CertRef(msg.issuer_dn, msg.serial_hex.upper().lstrip("0") or "0")


class PersonalizerService(pb_grpc.PersonalizerServicer):
    def __init__(self, *, broker: Broker, relay: Relay | None = None):
        self._broker = broker
        self._relay = relay

    def _out(self, rec: RequestRecord) -> pb.IssueResponse:
        return record_to_proto(rec, self._relay.waiting_reason(rec) if self._relay else "")

    async def audit_refusal(self, *, actor: str, station_id: str, method: str, request, exc) -> None:
        """Called by ``identity.AuthInterceptor`` when it refuses a call to this service."""
        await audit_denied(self._broker, actor=actor, station_id=station_id, method=method, request=request,
                           exc=exc)

    @_translate
    async def SubmitIssue(self, request: pb.SubmitIssueRequest, context) -> pb.IssueResponse:
        ident = identity.current_identity()
        r, h = request.requester, request.holder

        async def go():
            identity.check_requester(ident, r.chamber_code, r.station_id)
            inp = IssueInput(
                request_id=request.request_id, profile=profile_name(request.profile), csr_der=request.csr_der,
                codice_fiscale=h.codice_fiscale, given_name=h.given_name, surname=h.surname,
                birth_date=h.birth_date, card_id=request.card.card_id, card_model=request.card.model,
                station_id=r.station_id, chamber_code=r.chamber_code, operator_id=r.operator_id,
                ef_dati_personali=request.ef_dati_personali, registration_id=request.registration_id)
            return await self._broker.submit_issue(inp, actor=ident.uri)
        return self._out(await go())

    @_translate
    async def Renew(self, request: pb.RenewRequest, context) -> pb.IssueResponse:
        ident = identity.current_identity()
        r = request.requester

        async def go():
            identity.check_requester(ident, r.chamber_code, r.station_id)
            try:   # proof of possession is not enough: only the chamber holding the certificate renews it
                current = x509.load_der_x509_certificate(request.current_certificate_der)
            except ValueError:
                current = None   # the broker refuses it with the field named
            if current is not None:
                await self._check_holder(ident, CertRef(current.issuer.rfc4514_string(),
                                                        f"{current.serial_number:X}"))
            inp = RenewInput(request_id=request.request_id, profile=profile_name(request.profile),
                             csr_der=request.csr_der, current_certificate_der=request.current_certificate_der,
                             proof_of_possession=request.proof_of_possession, station_id=r.station_id,
                             chamber_code=r.chamber_code, operator_id=r.operator_id)
            return await self._broker.submit_renew(inp, actor=ident.uri)
        return self._out(await go())

    async def _check_holder(self, ident: identity.Identity, ref: CertRef) -> None:
        """A station or tool changes or renews only certificates its own chamber requested."""
        if ident.role not in identity.CHAMBER_SCOPED:
            return
        info = await self._broker.ca.status(ref)
        if info is None:
            return   # unknown certificate: the broker says NOT_FOUND (or refuses the renewal)
        owner = await self._broker.find_request(info.request_id) if info.request_id else None
        if owner is None:
            raise PermissionDenied(f"certificate {ref.serial_hex} was not requested through this "
                                   f"personalizer by chamber {ident.chamber_code}; ask central IT")
        if owner.chamber_code != ident.chamber_code:
            raise PermissionDenied(f"certificate {ref.serial_hex} is held by chamber {owner.chamber_code}; "
                                   f"{ident.role} {ident.subject_id} of chamber {ident.chamber_code} may not "
                                   "change or renew it")

    async def _change(self, kind: str, request: pb.ChangeStatusRequest) -> pb.CertificateStatusResponse:
        ident = identity.current_identity()
        r = request.requester

        async def go():
            if request.HasField("requester"):
                identity.check_requester(ident, r.chamber_code, r.station_id)
            ref = _ref(request.certificate)
            await self._check_holder(ident, ref)
            inp = ChangeInput(request_id=request.request_id, kind=kind, ref=ref, reason=request.reason,
                              station_id=r.station_id or ident.subject_id,
                              chamber_code=r.chamber_code or (ident.chamber_code or ""),
                              operator_id=r.operator_id or ident.subject_id)
            return await self._broker.submit_change(inp, actor=ident.uri)
        rec = await go()
        info = await self._broker.ca.status(CertRef(rec.issuer_dn, rec.serial_hex))
        if info is None:
            raise NotFound(f"no certificate {rec.serial_hex} from {rec.issuer_dn!r}")
        out = status_to_proto(info)
        out.change_request_id = rec.request_id
        out.change_state = STATE_ENUMS[rec.state]
        return out

    @_translate
    async def Suspend(self, request, context):
        return await self._change(KIND_SUSPEND, request)

    @_translate
    async def Reactivate(self, request, context):
        return await self._change(KIND_REACTIVATE, request)

    @_translate
    async def Revoke(self, request, context):
        return await self._change(KIND_REVOKE, request)

    async def _readable(self, request_id: str) -> RequestRecord:
        rec = await self._broker.get(request_id)
        identity.check_chamber_access(identity.current_identity(), rec.chamber_code)
        return rec

    @_translate
    async def GetRequest(self, request: pb.GetRequestRequest, context) -> pb.IssueResponse:
        return self._out(await self._readable(request.request_id))

    @_translate
    async def WatchRequest(self, request: pb.GetRequestRequest, context):
        await self._readable(request.request_id)
        async for rec in self._broker.watch(request.request_id):
            yield self._out(rec)

    @_translate
    async def GetCertificateStatus(self, request: pb.GetCertificateStatusRequest, context):
        ident = identity.current_identity()
        r = request.requester   # optional on reads; the interceptor checked it when given
        station = r.station_id or (ident.subject_id if ident.role == identity.ROLE_STATION else "")
        info = await self._status(request)
        # the operator the station names, else none ("" and not None, which would name the request's operator)
        await self._broker.record_audit(AuditEntry(
            ident.uri, station, "status", request.request_id or None,
            f"{info.ref.issuer_dn}#{info.ref.serial_hex}", "done", info.state.value,
            operator_id=_operator(ident.uri, request)))
        return status_to_proto(info)

    async def _status(self, request: pb.GetCertificateStatusRequest) -> CertStatusInfo:
        which = request.WhichOneof("ref")
        if which == "request_id":
            rec = await self._readable(request.request_id)
            if not rec.issuer_dn:
                raise NotFound(f"request {request.request_id!r} has no certificate (state {rec.state})")
            ref = CertRef(rec.issuer_dn, rec.serial_hex)
        elif which == "certificate":
            ref = _ref(request.certificate)
        else:
            raise InvalidRequest("ref", "give a certificate reference or a request id")
        info = await self._broker.ca.status(ref)
        if info is None:
            raise NotFound(f"no certificate {ref.serial_hex} from {ref.issuer_dn!r}")
        return info

    @_translate
    async def FindCertificates(self, request: pb.FindCertificatesRequest, context) -> pb.FindCertificatesResponse:
        """A card's or a holder's certificates (lost card); one audit row per call (a refused one: _translate's)."""
        ident = identity.current_identity()
        station = ident.subject_id if ident.role == identity.ROLE_STATION else ""
        card_id, cf = request.card_id.strip(), request.codice_fiscale.strip().upper()
        target = " ".join(x for x in (f"card:{card_id}" if card_id else "", f"cf:{cf}" if cf else "") if x)

        async def go():
            if not card_id and not cf:
                raise InvalidRequest("card_id", "give a card serial (EF_IDCarta) or a codice fiscale")
            if card_id and not validation.CARD_ID_RE.match(card_id):
                raise InvalidRequest("card_id", "must be 1..16 letters or digits (EF_IDCarta)")
            if cf and not (len(cf) == 16 and cf.isalnum() and cf.isascii()):
                raise InvalidRequest("codice_fiscale", "must be 16 letters or digits")
            found = await self._broker.find_certificates(card_id=card_id, holder_cf=cf)
            if ident.role in identity.CHAMBER_SCOPED:
                found = [f for f in found if f.chamber_code == ident.chamber_code]
            return found
        found = await go()   # a refusal writes its one row in _translate
        # a read carries no requester: no operator ("" and not None, which would name a request's operator)
        await self._broker.record_audit(AuditEntry(ident.uri, station, "certificate-find", None, target[:128],
                                                         "done", f"{len(found)} certificate(s)", operator_id="",
                                                         card_id=card_id, holder_cf=cf))
        out = pb.FindCertificatesResponse()
        for f in found:
            try:
                subject = x509.load_der_x509_certificate(f.certificate_der).subject.rfc4514_string()
            except ValueError:
                subject = ""
            out.certificates.append(pb.FoundCertificate(
                status=status_to_proto(f.info), profile=PROFILE_ENUMS.get(f.profile, pb.CA_PROFILE_UNSPECIFIED),
                card_id=f.card_id, codice_fiscale=f.holder_cf, subject=subject, chamber_code=f.chamber_code))
        return out

    @_translate
    async def GetCAStatus(self, request, context) -> pb.CAStatusResponse:
        f = await self._broker.ca_status()   # the read model the Prometheus endpoint shows too
        out = pb.CAStatusResponse(
            connector=f.connector, operational=f.operational, detail=f.detail,
            reactivation_at=int(f.reactivation_at) if f.reactivation_at else 0, in_maintenance=f.in_maintenance,
            chain_der=list(self._broker.ca.chain_der()), profiles=list(PROFILE_ENUMS.values()),
            issued_last_10_min=f.issued_recent, mean_issue_ms_last_10_min=f.mean_issue_ms,
            breaker_state=f.breaker_state, service_window_open=f.window_open,
            service_window_changes_at=int(f.window_changes_at) if f.window_changes_at else 0,
            requests_last_10_min=f.load)
        out.queue_depth.extend(pb.LaneDepth(lane=lane, depth=n) for lane, n in sorted(f.queue_depth.items()))
        out.planned_maintenance.extend(pb.MaintenanceWindow(id=w.id, starts_at=int(w.starts_at),
                                                            ends_at=int(w.ends_at), reason=w.reason)
                                       for w in f.planned)
        out.response_times.extend(pb.ResponseTime(kind=k.kind, p50_ms=k.p50_ms, p95_ms=k.p95_ms, samples=k.samples)
                                  for k in f.per_kind)
        return out
