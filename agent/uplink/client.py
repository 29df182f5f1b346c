"""The agent's outbound link to the personalizer: gRPC over mutual TLS.

Owns the failover between the station's two endpoints (``personalizer.primary`` and
``personalizer.dr``; the channel itself — trust anchors, client certificate, proxy, keepalive,
retries — is ``station_config.channel``): a call that fails with UNAVAILABLE or DEADLINE_EXCEEDED
is sent again, the same request with the same request id (the personalizer deduplicates by it, so
a call that did commit before the failure is never done twice), to the other endpoint, at most once
per endpoint per call. After ``FAILBACK_AFTER_S`` at the DR site the next call tries the primary
first again (it comes back when the primary does). Also deadlines on every call, and the translation of gRPC status codes
into ``agent.ops.errors``, once, by ``agent.ops.uplink.is_refusal``: a refusal
(INVALID_ARGUMENT, FAILED_PRECONDITION, PERMISSION_DENIED, ...) becomes
``UplinkError`` with the code and the server's message; anything else
(UNAVAILABLE, DEADLINE_EXCEEDED, INTERNAL, RESOURCE_EXHAUSTED ...) becomes
``UplinkUnavailable`` with the code (retry later, the journaled operation stays
resumable), a connection problem worded by
``station_config.channel.connection_problem`` (an untrusted server certificate,
a refused client certificate, nothing listening). One instance owns one
long-lived channel (the composition root builds one for the agent's life);
``close()`` closes it.

Every call answers with the domain records of ``agent.ops.uplink`` (converted once, in
``agent.uplink.records``), never a protobuf message.

Outbound only: nothing here listens. Imports ``proto``, ``station_config``, ``agent.ops.errors``,
``agent.ops.uplink`` and ``agent.uplink.records``;
never ``personalizer``.
"""
from __future__ import annotations

import time
from typing import AsyncIterator

import grpc

from agent.ops.errors import UplinkError, UplinkUnavailable
from agent.ops.uplink import is_refusal
from agent.uplink import records
from cns_spec import profiles
from proto.cns.v1 import common_pb2, personalizer_pb2, personalizer_pb2_grpc
from proto.cns.v1 import registrations_pb2, registrations_pb2_grpc
from station_config import StationConfig, channel

TRANSIENT = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED}
FAILBACK_AFTER_S = 60.0   # at the DR endpoint this long, the next call tries the primary first again

PROFILES = {
    profiles.CNS_AUTH: personalizer_pb2.CA_PROFILE_CNS_AUTH,
    profiles.QUALIFIED_SIGNATURE: personalizer_pb2.CA_PROFILE_QUALIFIED_SIGNATURE,
}


class PersonalizerClient:
    """Async client built from a station configuration; ``async with PersonalizerClient(cfg) as c: ...``.

    Credentials, keepalive, proxy and retry options come from ``station_config.channel``. Reads
    (request and certificate status) name this station and ``operator_id`` (the operator at the
    workstation) so the personalizer's audit row of each read says who read it.
    """

    def __init__(self, cfg: StationConfig, *, operator_id: str = ""):
        self.cfg = cfg
        self.operator_id = operator_id
        self._dr = False
        self._dr_since = 0.0
        self._channel: grpc.aio.Channel | None = None          # the current endpoint's
        self._channels: dict[bool, grpc.aio.Channel] = {}      # by endpoint (dr or not), built on first use

    @property
    def reader(self) -> common_pb2.Requester:
        """Who reads: this station, its chamber and the operator (none when not given)."""
        return common_pb2.Requester(station_id=self.cfg.station.id, chamber_code=self.cfg.station.chamber_code,
                                    operator_id=self.operator_id)

    @property
    def endpoint(self) -> str:
        """The endpoint calls go to now (``personalizer.primary``, or ``personalizer.dr`` after a failover)."""
        return channel.target(self.cfg, dr=self._dr)

    @property
    def deadline_s(self) -> float:
        return self.cfg.personalizer.timeout_seconds

    async def __aenter__(self) -> "PersonalizerClient":
        self._connect()
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()

    def _connect(self) -> None:
        """The channel to the current endpoint, built once: switching endpoints keeps the other's
        channel open, so calls already running on it (other operations of this agent) are not cut."""
        if self._dr in self._channels:
            self._channel = self._channels[self._dr]
            return
        try:
            self._channel = self._channels[self._dr] = channel.secure_channel(self.cfg, dr=self._dr)
        except OSError as exc:  # trust anchors or client key unreadable
            raise UplinkError(f"cannot build the personalizer channel from {self.cfg.source}: {exc}") from exc

    async def close(self) -> None:
        channels, self._channels, self._channel = list(self._channels.values()), {}, None
        for ch in channels:
            await ch.close()

    async def _use(self, dr: bool) -> None:
        """Point the calls at the DR endpoint (or back at the primary)."""
        self._dr = dr
        self._dr_since = time.monotonic()
        self._connect()

    async def _failover(self, tried: set[bool] | None = None) -> bool:
        """Move to the other endpoint unless it was already tried in this call or none is configured
        (``tried`` None: a caller that keeps no such set, ``agent.uplink.card_admin``: primary → DR only)."""
        other = not self._dr
        if tried is None:
            tried = {False}
        if (other and not self.cfg.personalizer.dr) or other in tried:
            return False
        await self._use(other)
        return True

    async def _prefer_primary(self) -> None:
        if self._dr and time.monotonic() - self._dr_since >= FAILBACK_AFTER_S:
            await self._use(False)

    async def invoke(self, stub_class, method: str, request, what: str):
        """One unary call on this channel with the failover above and our error translation
        (``stub_class``: a generated stub of any service the personalizer serves)."""
        await self._prefer_primary()
        tried: set[bool] = set()
        while True:
            if self._channel is None:
                self._connect()
            tried.add(self._dr)
            try:
                return await getattr(stub_class(self._channel), method)(request, timeout=self.deadline_s)
            except grpc.aio.AioRpcError as exc:
                if exc.code() in TRANSIENT and await self._failover(tried):
                    continue
                raise _translate(exc, what, self.cfg, self._dr) from exc

    async def _call(self, method: str, request, what: str, *, registrations: bool = False):
        stub = registrations_pb2_grpc.RegistrationsStub if registrations else personalizer_pb2_grpc.PersonalizerStub
        return await self.invoke(stub, method, request, what)

    async def submit_issue(self, *, request_id: str, profile: str, csr_der: bytes, holder: dict,
                           card_id: str, model: str, requester: dict, ef_dati_personali: bytes = b"",
                           registration_id: str = ""):
        req = personalizer_pb2.SubmitIssueRequest(
            request_id=request_id, profile=PROFILES[profile], csr_der=csr_der,
            holder=common_pb2.Holder(**holder), card=common_pb2.Card(card_id=card_id, model=model),
            requester=common_pb2.Requester(**requester), ef_dati_personali=ef_dati_personali,
            registration_id=registration_id)
        return records.request(await self._call("SubmitIssue", req, f"issue request {request_id}"))

    async def get_registration(self, registration_id: str):
        """A holder registered by the chamber's IR (deferred issuance): its data, state and expiry."""
        return records.registration(await self._call("GetRegistration", registrations_pb2.GetRegistrationRequest(
            registration_id=registration_id), f"registration {registration_id}", registrations=True))

    async def get_request(self, request_id: str):
        return records.request(await self._call("GetRequest", personalizer_pb2.GetRequestRequest(
            request_id=request_id, requester=self.reader), f"request {request_id}"))

    async def watch_request(self, request_id: str) -> AsyncIterator:
        """Server stream of a request's states until a terminal one. A stream that cannot be opened, or
        breaks, at one endpoint is opened again at the other (a read: it starts from the current state)."""
        await self._prefer_primary()
        tried: set[bool] = set()
        while True:
            if self._channel is None:
                self._connect()
            tried.add(self._dr)
            try:
                async for update in personalizer_pb2_grpc.PersonalizerStub(self._channel).WatchRequest(
                        personalizer_pb2.GetRequestRequest(request_id=request_id, requester=self.reader),
                        timeout=None):
                    yield records.request(update)
                return
            except grpc.aio.AioRpcError as exc:
                if exc.code() in TRANSIENT and await self._failover(tried):
                    continue
                raise _translate(exc, f"watching request {request_id}", self.cfg, self._dr) from exc

    async def renew(self, *, request_id: str, profile: str, csr_der: bytes, current_certificate_der: bytes,
                    proof_of_possession: bytes, requester: dict):
        """Renew: a new certificate for the same holder and card, authorised by a signature of the
        current key over SHA-256(request_id || csr_der) (``proof_of_possession``)."""
        req = personalizer_pb2.RenewRequest(
            request_id=request_id, profile=PROFILES[profile], csr_der=csr_der,
            current_certificate_der=current_certificate_der, proof_of_possession=proof_of_possession,
            requester=common_pb2.Requester(**requester))
        return records.request(await self._call("Renew", req, f"renew request {request_id}"))

    async def certificate_status(self, *, issuer_dn: str = "", serial_hex: str = "", request_id: str = ""):
        """Status of a certificate, named by issuer and serial (hex) or by the request that issued it."""
        if request_id:
            req = personalizer_pb2.GetCertificateStatusRequest(request_id=request_id, requester=self.reader)
        else:
            req = personalizer_pb2.GetCertificateStatusRequest(
                certificate=common_pb2.CertificateRef(issuer_dn=issuer_dn, serial_hex=serial_hex.upper()),
                requester=self.reader)
        return records.certificate_status(await self._call("GetCertificateStatus", req,
                                                           f"status of {serial_hex or request_id}"))

    async def change_status(self, action: str, *, request_id: str, issuer_dn: str, serial_hex: str,
                            requester: dict, reason: str = ""):
        """``action`` is suspend, reactivate or revoke (``reason``: an RFC 5280 CRLReason name)."""
        method = {"suspend": "Suspend", "reactivate": "Reactivate", "revoke": "Revoke"}.get(action)
        if method is None:
            raise ValueError(f"unknown status change {action!r}: suspend, reactivate or revoke")
        req = personalizer_pb2.ChangeStatusRequest(
            request_id=request_id, reason=reason, requester=common_pb2.Requester(**requester),
            certificate=common_pb2.CertificateRef(issuer_dn=issuer_dn, serial_hex=serial_hex.upper()))
        return records.certificate_status(await self._call(method, req, f"{action} {serial_hex}"))

    async def find_certificates(self, *, card_id: str = "", codice_fiscale: str = ""):
        """Every certificate issued for a card and/or a holder (this chamber's), oldest first."""
        req = personalizer_pb2.FindCertificatesRequest(card_id=card_id, codice_fiscale=codice_fiscale)
        return records.found(await self._call("FindCertificates", req, f"certificates of {card_id or codice_fiscale}"))

    async def ca_status(self):
        return records.ca_status(await self._call("GetCAStatus", personalizer_pb2.GetCAStatusRequest(), "CA status"))

    def card_admin(self, kind: str, requester: dict):
        """The card's issuer challenges relayed to the personalizer's CardAdmin service on this channel
        (``agent.uplink.card_admin``, issue 12); call on the event loop."""
        from agent.uplink.card_admin import CardAdminClient
        return CardAdminClient(self).for_operation(kind, requester)


def _translate(exc: grpc.aio.AioRpcError, what: str, cfg: StationConfig, dr: bool) -> UplinkError:
    """Our error for a failed call: a connection problem in words a person can act on
    (``station_config.channel.connection_problem``), else the server's code and message."""
    code = exc.code()
    problem = channel.connection_problem(code, exc.details(), cfg, dr=dr)
    msg = f"personalizer: {what}: " + (problem or f"{code.name}: {exc.details() or 'no detail'}")
    if is_refusal(code.name):
        return UplinkError(msg, code=code.name)
    # not now (unreachable, deadline, internal, overloaded): whether anything is kept is the caller's to
    # say: journaled operations are, a status change is not
    return UplinkUnavailable(msg, code=code.name)
