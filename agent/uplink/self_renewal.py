"""The holder's link to the personalizer for self-renewal: ``HolderRenewal`` on the enrollment port.

Server-authenticated TLS only (no client certificate: the holder's computer has
none); the only trust anchor is the CA file the holder was given (``--trust``).
``HolderUplink`` has the methods ``agent.ops.renew.Renewer`` calls on an uplink
— ``renew``, ``get_request``, ``watch_request``, ``certificate_status``,
``change_status`` (revoke only) — so a holder's renewal runs on the same step
engine, journal and fault handling as an operator's. The card is the authority:
each ``renew`` carries the certificate being renewed and the proof of
possession the Renewer made on the card after the PIN. Reads name the request
id and a certificate of the holder (the personalizer shows a self-renewal
request only to its holder): the uplink keeps the certificates it was given
(``holder_certificates``, read from the card) and those it renewed.

Errors translate like ``client.PersonalizerClient``'s: UNAVAILABLE and
DEADLINE_EXCEEDED → ``UplinkUnavailable`` (the journaled operation stays
resumable), anything else → ``UplinkError`` with the server's message.
Answers are ``agent.ops.uplink``'s records (``agent.uplink.records``), as the operator's uplink gives.
Outbound only. Imports grpc, ``proto``, ``agent.ops.errors`` and ``agent.uplink``; never ``personalizer``.
"""
from __future__ import annotations

from typing import AsyncIterator

import grpc

from agent.ops.errors import UplinkError, UplinkUnavailable
from agent.uplink import records
from agent.uplink.client import PROFILES, TRANSIENT
from proto.cns.v1 import common_pb2, self_renewal_pb2 as spb, self_renewal_pb2_grpc as spb_grpc

DEFAULT_TIMEOUT_S = 30.0
HOLDER_STATION = "self-renewal"    # the requester a holder's renewal is journaled with (the server decides)


class HolderUplink:
    """``async with HolderUplink("host:port", trust_pem) as u: ...``"""

    def __init__(self, endpoint: str, trust_pem: bytes, *, server_name: str | None = None,
                 holder_certificates: list[bytes] = (), timeout_s: float = DEFAULT_TIMEOUT_S):
        self.endpoint = endpoint
        self._trust = trust_pem
        self._options = [("grpc.ssl_target_name_override", server_name)] if server_name else []
        self._certs = [c for c in holder_certificates if c]
        self.timeout_s = timeout_s
        self._channel: grpc.aio.Channel | None = None
        self._stub: spb_grpc.HolderRenewalStub | None = None

    async def __aenter__(self) -> "HolderUplink":
        self._connect()
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()

    def _connect(self) -> None:
        creds = grpc.ssl_channel_credentials(root_certificates=self._trust)
        self._channel = grpc.aio.secure_channel(self.endpoint, creds, options=self._options)
        self._stub = spb_grpc.HolderRenewalStub(self._channel)

    async def close(self) -> None:
        if self._channel is not None:
            await self._channel.close()
            self._channel = self._stub = None

    def _learn(self, der: bytes) -> None:
        if der and der not in self._certs:
            self._certs.append(der)

    async def _call(self, method: str, request, what: str):
        if self._stub is None:
            self._connect()
        try:
            return await getattr(self._stub, method)(request, timeout=self.timeout_s)
        except grpc.aio.AioRpcError as exc:
            raise _translate(exc, what, self.endpoint) from exc

    async def renew(self, *, request_id: str, profile: str, csr_der: bytes, current_certificate_der: bytes,
                    proof_of_possession: bytes, requester: dict | None = None):
        """``requester`` is ignored: the personalizer takes the holder from the certificate."""
        self._learn(current_certificate_der)
        return records.request(await self._call("SelfRenew", spb.SelfRenewRequest(
            request_id=request_id, profile=PROFILES[profile], csr_der=csr_der,
            current_certificate_der=current_certificate_der, proof_of_possession=proof_of_possession),
            f"self-renewal request {request_id}"))

    def _ref(self, request_id: str) -> spb.SelfRequestRef:
        if not self._certs:
            raise UplinkError(f"personalizer: request {request_id}: no certificate of the holder to read it with",
                              code="FAILED_PRECONDITION")
        return spb.SelfRequestRef(request_id=request_id, current_certificate_der=self._certs[0])

    async def get_request(self, request_id: str):
        return records.request(await self._call("GetRequest", self._ref(request_id), f"request {request_id}"))

    async def watch_request(self, request_id: str) -> AsyncIterator:
        ref = self._ref(request_id)
        if self._stub is None:
            self._connect()
        try:
            async for update in self._stub.WatchRequest(ref, timeout=None):
                yield records.request(update)
        except grpc.aio.AioRpcError as exc:
            raise _translate(exc, f"watching request {request_id}", self.endpoint) from exc

    async def certificate_status(self, *, issuer_dn: str = "", serial_hex: str = "", request_id: str = ""):
        if request_id:
            resp = await self.get_request(request_id)
            issuer_dn, serial_hex = resp.certificate.issuer_dn, resp.certificate.serial_hex
        return records.certificate_status(await self._call("GetCertificateStatus", common_pb2.CertificateRef(
            issuer_dn=issuer_dn, serial_hex=serial_hex.upper()), f"status of {serial_hex}"))

    async def change_status(self, action: str, *, request_id: str, issuer_dn: str, serial_hex: str,
                            requester: dict | None = None, reason: str = ""):
        """Only the renewal's own revocations (superseded, or an undone renewal's certificates)."""
        if action != "revoke":
            raise UplinkError(f"a holder cannot {action} a certificate; ask the chamber", code="PERMISSION_DENIED")
        return records.certificate_status(await self._call("RevokeOwn", spb.SelfRevokeRequest(
            request_id=request_id, reason=reason,
            certificate=common_pb2.CertificateRef(issuer_dn=issuer_dn, serial_hex=serial_hex.upper())),
            f"revoke {serial_hex}"))


def _translate(exc: grpc.aio.AioRpcError, what: str, endpoint: str) -> UplinkError:
    code = exc.code()
    detail = exc.details() or "no detail"
    if code in TRANSIENT:
        if "CERTIFICATE_VERIFY_FAILED" in detail or "handshake" in detail.lower():
            return UplinkError(f"personalizer {endpoint}: {what}: its certificate is not trusted by the CA file "
                               "given with --trust (ask your chamber for the right one)", code=code.name)
        return UplinkUnavailable(f"personalizer {endpoint}: {what}: not reachable ({detail}); the renewal is kept "
                                 "and resumes when you run the command again", code=code.name)
    return UplinkError(f"personalizer: {what}: {code.name}: {detail}", code=code.name)
