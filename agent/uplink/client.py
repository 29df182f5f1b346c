"""The agent's outbound link to the personalizer: gRPC over mutual TLS.

Owns the primary → DR endpoint fallback (the channel itself — trust anchors,
client certificate, proxy, keepalive, retries — is ``station_config.channel``), deadlines on every call, and the translation of gRPC status codes
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
        self._channel: grpc.aio.Channel | None = None
        self._stub: personalizer_pb2_grpc.PersonalizerStub | None = None
        self._registrations: registrations_pb2_grpc.RegistrationsStub | None = None

    @property
    def reader(self) -> common_pb2.Requester:
        """Who reads: this station, its chamber and the operator (none when not given)."""
        return common_pb2.Requester(station_id=self.cfg.station.id, chamber_code=self.cfg.station.chamber_code,
                                    operator_id=self.operator_id)

    @property
    def deadline_s(self) -> float:
        return self.cfg.personalizer.timeout_seconds

    async def __aenter__(self) -> "PersonalizerClient":
        self._connect()
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()

    def _connect(self) -> None:
        try:
            self._channel = channel.secure_channel(self.cfg, dr=self._dr)
        except OSError as exc:  # trust anchors or client key unreadable
            raise UplinkError(f"cannot build the personalizer channel from {self.cfg.source}: {exc}") from exc
        self._stub = personalizer_pb2_grpc.PersonalizerStub(self._channel)
        self._registrations = registrations_pb2_grpc.RegistrationsStub(self._channel)

    async def close(self) -> None:
        if self._channel is not None:
            await self._channel.close()
            self._channel = None

    async def _failover(self) -> bool:
        """Move from the primary to the DR endpoint; False when already there or none is configured."""
        if self._dr or not self.cfg.personalizer.dr:
            return False
        await self.close()
        self._dr = True
        self._connect()
        return True

    async def _call(self, method: str, request, what: str, *, registrations: bool = False):
        while True:
            if self._stub is None:
                self._connect()
            stub = self._registrations if registrations else self._stub
            try:
                return await getattr(stub, method)(request, timeout=self.deadline_s)
            except grpc.aio.AioRpcError as exc:
                if exc.code() in TRANSIENT and await self._failover():
                    continue
                raise _translate(exc, what, self.cfg, self._dr) from exc

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
        """Server stream of a request's states until a terminal one."""
        if self._stub is None:
            self._connect()
        try:
            async for update in self._stub.WatchRequest(personalizer_pb2.GetRequestRequest(
                    request_id=request_id, requester=self.reader), timeout=None):
                yield records.request(update)
        except grpc.aio.AioRpcError as exc:
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
