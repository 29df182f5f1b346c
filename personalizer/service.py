"""The Personalizer gRPC servicer: proto ↔ broker, errors → status codes.

This is the boundary where our exceptions become gRPC statuses (``ERROR_CODES``)
and unexpected ones become INTERNAL without details. Identity comes from
``identity.current_identity()`` (set by the interceptor). Must not import the
store's SQL, the CA's key stores or anything of the agent.
"""
from __future__ import annotations

import functools
import inspect
import logging

import grpc

from personalizer import identity, validation
from personalizer.broker import Broker, IssueInput
from personalizer.ca.base import CertRef, CertState
from personalizer.errors import InvalidRequest, NotFound, NotSupported, PersonalizerError
from personalizer.store import RequestRecord
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
}
CERT_STATE_ENUMS = {
    CertState.ACTIVE: pb.CERTIFICATE_STATUS_ACTIVE, CertState.SUSPENDED: pb.CERTIFICATE_STATUS_SUSPENDED,
    CertState.REVOKED: pb.CERTIFICATE_STATUS_REVOKED, CertState.EXPIRED: pb.CERTIFICATE_STATUS_EXPIRED,
}
ERROR_CODES = {name: getattr(grpc.StatusCode, name) for name in (
    "INVALID_ARGUMENT", "ALREADY_EXISTS", "NOT_FOUND", "PERMISSION_DENIED", "UNAUTHENTICATED",
    "UNIMPLEMENTED", "UNAVAILABLE", "FAILED_PRECONDITION", "INTERNAL")}


def _translate(fn):
    """Map PersonalizerError → status; anything else → INTERNAL (logged, never sent)."""
    if inspect.isasyncgenfunction(fn):
        @functools.wraps(fn)
        async def stream(self, request, context):
            try:
                async for item in fn(self, request, context):
                    yield item
            except PersonalizerError as exc:
                await context.abort(ERROR_CODES.get(exc.code, grpc.StatusCode.INTERNAL), str(exc))
        return stream

    @functools.wraps(fn)
    async def unary(self, request, context):
        try:
            return await fn(self, request, context)
        except PersonalizerError as exc:
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


def record_to_proto(rec: RequestRecord) -> pb.IssueResponse:
    out = pb.IssueResponse(request_id=rec.request_id, state=STATE_ENUMS[rec.state],
                           profile=PROFILE_ENUMS.get(rec.profile, pb.CA_PROFILE_UNSPECIFIED),
                           created_at=int(rec.created_at), updated_at=int(rec.updated_at))
    if rec.certificate_der:
        out.certificate_der = rec.certificate_der
        out.chain_der.extend(rec.chain_der)
    if rec.issuer_dn:
        out.certificate.CopyFrom(common_pb2.CertificateRef(issuer_dn=rec.issuer_dn, serial_hex=rec.serial_hex))
    if rec.error_code:
        out.error.CopyFrom(common_pb2.ErrorDetail(code=rec.error_code, field=rec.error_field or "",
                                                  message=rec.error_message or ""))
    return out


class PersonalizerService(pb_grpc.PersonalizerServicer):
    def __init__(self, *, broker: Broker):
        self._broker = broker

    @_translate
    async def SubmitIssue(self, request: pb.SubmitIssueRequest, context) -> pb.IssueResponse:
        ident = identity.current_identity()
        r, h = request.requester, request.holder
        identity.check_requester(ident, r.chamber_code, r.station_id)
        inp = IssueInput(
            request_id=request.request_id, profile=profile_name(request.profile), csr_der=request.csr_der,
            codice_fiscale=h.codice_fiscale, given_name=h.given_name, surname=h.surname, birth_date=h.birth_date,
            card_id=request.card.card_id, card_model=request.card.model, station_id=r.station_id,
            chamber_code=r.chamber_code, operator_id=r.operator_id, ef_dati_personali=request.ef_dati_personali)
        return record_to_proto(await self._broker.submit_issue(inp))

    async def _readable(self, request_id: str) -> RequestRecord:
        rec = await self._broker.get(request_id)
        identity.check_chamber_access(identity.current_identity(), rec.chamber_code)
        return rec

    @_translate
    async def GetRequest(self, request: pb.GetRequestRequest, context) -> pb.IssueResponse:
        return record_to_proto(await self._readable(request.request_id))

    @_translate
    async def WatchRequest(self, request: pb.GetRequestRequest, context):
        await self._readable(request.request_id)
        async for rec in self._broker.watch(request.request_id):
            yield record_to_proto(rec)

    @_translate
    async def GetCertificateStatus(self, request: pb.GetCertificateStatusRequest, context):
        which = request.WhichOneof("ref")
        if which == "request_id":
            rec = await self._readable(request.request_id)
            if not rec.issuer_dn:
                raise NotFound(f"request {request.request_id!r} has no certificate (state {rec.state})")
            ref = CertRef(rec.issuer_dn, rec.serial_hex)
        elif which == "certificate":
            if not request.certificate.issuer_dn or not request.certificate.serial_hex:
                raise InvalidRequest("certificate", "issuer_dn and serial_hex are required")
            ref = CertRef(request.certificate.issuer_dn, request.certificate.serial_hex.upper().lstrip("0") or "0")
        else:
            raise InvalidRequest("ref", "give a certificate reference or a request id")
        info = await self._broker.ca.status(ref)
        if info is None:
            raise NotFound(f"no certificate {ref.serial_hex} from {ref.issuer_dn!r}")
        return pb.CertificateStatusResponse(
            certificate=common_pb2.CertificateRef(issuer_dn=info.ref.issuer_dn, serial_hex=info.ref.serial_hex),
            status=CERT_STATE_ENUMS[info.state], not_before=int(info.not_before.timestamp()),
            not_after=int(info.not_after.timestamp()), revocation_reason=info.revocation_reason,
            revoked_at=int(info.revoked_at.timestamp()) if info.revoked_at else 0, request_id=info.request_id)

    @_translate
    async def GetCAStatus(self, request, context) -> pb.CAStatusResponse:
        ca = self._broker.ca
        health = await ca.health()
        count, mean_ms = await self._broker.issuance_stats()
        return pb.CAStatusResponse(
            connector=health.connector, operational=health.operational, detail=health.detail,
            reactivation_at=int(health.reactivation_at.timestamp()) if health.reactivation_at else 0,
            chain_der=list(ca.chain_der()), profiles=list(PROFILE_ENUMS.values()),
            issued_last_10_min=count, mean_issue_ms_last_10_min=mean_ms)

    @_translate
    async def Renew(self, request, context):
        raise NotSupported("Renew is declared for the renewal issue and not implemented by this server version")

    @_translate
    async def Suspend(self, request, context):
        raise NotSupported("Suspend is not implemented by this server version")

    @_translate
    async def Reactivate(self, request, context):
        raise NotSupported("Reactivate is not implemented by this server version")

    @_translate
    async def Revoke(self, request, context):
        raise NotSupported("Revoke is not implemented by this server version")
