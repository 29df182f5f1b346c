"""The gRPC edge of station enrollment: ``StationEnrollment`` (the enrollment port) and ``StationAdmin`` (mTLS).

``StationEnrollmentService.Enroll`` is the daemon's only method reachable
without a client certificate; it is served alone on its own port
(``build_enrollment_server``), so a fault in the mTLS port's interceptor can
never expose another method, and every call passes ``EnrollLimiter`` first.
``StationAdminService`` runs behind ``identity.AuthInterceptor`` on the mTLS
port: AddStation / RevokeStation / ListStations for admins, RenewStation for a
station, always for the caller's own identity. Errors map like the other
services (``service._translate``). Imports grpc, proto and ``enrollment``.
"""
from __future__ import annotations

import grpc

from personalizer.edge import identity
from personalizer.enrollment import Enrollment, EnrollLimiter, IssuedStation, peer_host
from personalizer.edge.service import _translate
from proto.cns.v1 import enrollment_pb2 as epb, enrollment_pb2_grpc as epb_grpc
from proto.wire import DecodeInterceptor

# Tighter than the mTLS port: one small message per call, few callers at a time (merged over the daemon's options).
ENROLL_SERVER_OPTIONS = {"grpc.max_receive_message_length": 64 * 1024, "grpc.max_concurrent_streams": 4,
                         "grpc.max_allowed_incoming_connections": 64}


def _cert(issued: IssuedStation) -> epb.StationCertificate:
    return epb.StationCertificate(station_id=issued.station_id, chamber_code=issued.chamber_code,
                                  certificate_pem=issued.certificate_pem.decode(), tls_ca_pem=issued.tls_ca_pem.decode(),
                                  not_after=int(issued.not_after), serial_hex=issued.serial_hex)


class StationEnrollmentService(epb_grpc.StationEnrollmentServicer):
    def __init__(self, enrollment: Enrollment, limiter: EnrollLimiter):
        self._enrollment = enrollment
        self._limiter = limiter

    async def Enroll(self, request, context):
        peer = context.peer() or ""
        if not self._limiter.allow(peer_host(peer)):
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED,
                                "too many enrollment attempts; wait a minute and try again")
        return await self._enroll(request, context)

    @_translate
    async def _enroll(self, request, context):
        expect = ((request.expect_station_id, request.expect_chamber_code)
                  if request.expect_station_id or request.expect_chamber_code else None)
        return _cert(await self._enrollment.enroll(request.code, request.csr_der, peer=context.peer() or "",
                                                   expect=expect))


class StationAdminService(epb_grpc.StationAdminServicer):
    def __init__(self, enrollment: Enrollment, broker=None):
        self._enrollment = enrollment
        self._broker = broker            # for the audit row of a refused call (service._translate)

    async def audit_refusal(self, *, actor, station_id, method, request, exc) -> None:
        if self._broker is not None:
            from personalizer.edge.service import audit_denied
            await audit_denied(self._broker, actor=actor, station_id=station_id, method=method, request=request,
                               exc=exc)

    @_translate
    async def AddStation(self, request, context):
        bundle, expires = await self._enrollment.add_station(identity.current_identity().uri, request.station_id,
                                                             request.chamber_code, request.valid_hours)
        return epb.AddStationResponse(code_bundle=bundle, expires_at=int(expires))

    @_translate
    async def RevokeStation(self, request, context):
        await self._enrollment.revoke(identity.current_identity().uri, request.station_id, request.chamber_code,
                                      request.reason)
        return next(s for s in await self._list(request.chamber_code)
                    if s.station_id == request.station_id)

    @_translate
    async def ListStations(self, request, context):
        return epb.ListStationsResponse(stations=await self._list(request.chamber_code))

    async def _list(self, chamber: str) -> list[epb.StationRecord]:
        return [epb.StationRecord(chamber_code=c, station_id=s, state=st, updated_at=int(at), serial_hex=serial or "",
                                  not_after=int(na or 0), revoked_certificates=revoked)
                for c, s, st, at, serial, na, revoked in await self._enrollment.list(chamber)]

    @_translate
    async def RenewStation(self, request, context):
        ident = identity.current_identity()
        return _cert(await self._enrollment.renew(ident.subject_id, ident.chamber_code, request.csr_der,
                                                  current_serial=_caller_serial(context)))


def _caller_serial(context) -> str:
    """The serial (hex) of the client certificate this call came with (verified by the interceptor)."""
    from cryptography import x509
    pems = context.auth_context().get(identity.AUTH_PEM_KEY) or []
    return f"{x509.load_pem_x509_certificate(pems[0]).serial_number:X}" if pems else ""


def build_enrollment_server(enrollment: Enrollment, *, listen: str, tls_key: bytes, tls_chain: bytes,
                            attempts_per_minute: int, base_options: list | None = None, broker=None,
                            relay=None, card_admin=None) -> tuple[grpc.aio.Server, int]:
    """The enrollment port: TLS with the server certificate and its CA (the agent pins that CA), no client auth.
    ``base_options``: the mTLS port's (keepalive, handshake timeout, no SO_REUSEPORT), tightened here.
    With ``broker``, the port also serves ``HolderRenewal`` (``self_renewal``: holder self-renewal)."""
    options = dict(base_options or [])
    for key, value in ENROLL_SERVER_OPTIONS.items():
        options[key] = min(options.get(key, value), value)
    server = grpc.aio.server(interceptors=[DecodeInterceptor()], options=list(options.items()),
                             maximum_concurrent_rpcs=32)
    epb_grpc.add_StationEnrollmentServicer_to_server(
        StationEnrollmentService(enrollment, EnrollLimiter(per_peer=attempts_per_minute)), server)
    if broker is not None:
        from personalizer.edge.self_renewal import HolderRenewalService
        from proto.cns.v1 import self_renewal_pb2_grpc
        self_renewal_pb2_grpc.add_HolderRenewalServicer_to_server(
            HolderRenewalService(broker, relay, limiter=EnrollLimiter(per_peer=attempts_per_minute),
                                 card_admin=card_admin), server)
    port = server.add_secure_port(listen, grpc.ssl_server_credentials([(tls_key, tls_chain)],
                                                                      require_client_auth=False))
    return server, port
