"""The agent's outbound link to the personalizer: gRPC over mutual TLS.

Owns the channel (trust anchors, client certificate, proxy via grpcio's own
``https_proxy``/``grpc_proxy`` handling, keepalive), the primary → DR endpoint
fallback, deadlines on every call, and the translation of gRPC status codes
into ``agent.ops.errors``: UNAVAILABLE and DEADLINE_EXCEEDED become
``UplinkUnavailable`` (retry later, the journaled operation stays resumable);
anything else becomes ``UplinkError`` with the server's message.

Outbound only: nothing here listens. Imports ``proto`` and ``agent.ops.errors``;
never ``personalizer``.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import AsyncIterator

import grpc

from agent.ops.errors import UplinkError, UplinkUnavailable
from proto.cns.v1 import common_pb2, personalizer_pb2, personalizer_pb2_grpc

TRANSIENT = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED}

# Retries of idempotent calls on UNAVAILABLE, done by grpcio (request ids make them safe).
_SERVICE_CONFIG = json.dumps({
    "methodConfig": [{
        "name": [{"service": "cns.v1.Personalizer"}],
        "retryPolicy": {
            "maxAttempts": 4,
            "initialBackoff": "0.2s",
            "maxBackoff": "2s",
            "backoffMultiplier": 2,
            "retryableStatusCodes": ["UNAVAILABLE"],
        },
    }]
})

PROFILES = {
    "cns-auth": personalizer_pb2.CA_PROFILE_CNS_AUTH,
    "qualified-signature": personalizer_pb2.CA_PROFILE_QUALIFIED_SIGNATURE,
}


@dataclass(frozen=True)
class UplinkSettings:
    endpoints: tuple[str, ...]            # "host:port", primary first, then DR
    ca_pem: bytes                         # trust anchors for the personalizer's server certificate
    cert_pem: bytes                       # this station's client certificate
    key_pem: bytes = field(repr=False)    # its key: never printed
    server_name: str | None = None        # TLS name override (tests, IP endpoints)
    deadline_s: float = 15.0
    keepalive_ms: int = 30_000            # below any proxy idle timeout

    @classmethod
    def from_files(cls, endpoints, ca: Path, cert: Path, key: Path, **kw) -> "UplinkSettings":
        return cls(tuple(endpoints), Path(ca).read_bytes(), Path(cert).read_bytes(), Path(key).read_bytes(), **kw)


class PersonalizerClient:
    """Async client; ``async with PersonalizerClient(settings) as c: ...``."""

    def __init__(self, settings: UplinkSettings):
        if not settings.endpoints:
            raise UplinkError("no personalizer endpoint configured")
        self.settings = settings
        self._index = 0
        self._channel: grpc.aio.Channel | None = None
        self._stub: personalizer_pb2_grpc.PersonalizerStub | None = None

    async def __aenter__(self) -> "PersonalizerClient":
        self._connect()
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()

    def _connect(self) -> None:
        s = self.settings
        creds = grpc.ssl_channel_credentials(root_certificates=s.ca_pem, private_key=s.key_pem,
                                             certificate_chain=s.cert_pem)
        options = [
            ("grpc.enable_retries", 1),
            ("grpc.service_config", _SERVICE_CONFIG),
            ("grpc.keepalive_time_ms", s.keepalive_ms),
            ("grpc.keepalive_timeout_ms", 10_000),
            ("grpc.keepalive_permit_without_calls", 1),
        ]
        if s.server_name:
            options.append(("grpc.ssl_target_name_override", s.server_name))
        self._channel = grpc.aio.secure_channel(s.endpoints[self._index], creds, options=options)
        self._stub = personalizer_pb2_grpc.PersonalizerStub(self._channel)

    async def close(self) -> None:
        if self._channel is not None:
            await self._channel.close()
            self._channel = None

    async def _failover(self) -> bool:
        """Move to the next endpoint (primary → DR); False when none is left."""
        if self._index + 1 >= len(self.settings.endpoints):
            return False
        await self.close()
        self._index += 1
        self._connect()
        return True

    async def _call(self, method: str, request, what: str):
        while True:
            if self._stub is None:
                self._connect()
            try:
                return await getattr(self._stub, method)(request, timeout=self.settings.deadline_s)
            except grpc.aio.AioRpcError as exc:
                if exc.code() in TRANSIENT and await self._failover():
                    continue
                raise _translate(exc, what) from exc

    async def submit_issue(self, *, request_id: str, profile: str, csr_der: bytes, holder: dict,
                           card_id: str, model: str, requester: dict, ef_dati_personali: bytes = b""):
        req = personalizer_pb2.SubmitIssueRequest(
            request_id=request_id, profile=PROFILES[profile], csr_der=csr_der,
            holder=common_pb2.Holder(**holder), card=common_pb2.Card(card_id=card_id, model=model),
            requester=common_pb2.Requester(**requester), ef_dati_personali=ef_dati_personali)
        return await self._call("SubmitIssue", req, f"issue request {request_id}")

    async def get_request(self, request_id: str):
        return await self._call("GetRequest", personalizer_pb2.GetRequestRequest(request_id=request_id),
                                f"request {request_id}")

    async def watch_request(self, request_id: str) -> AsyncIterator:
        """Server stream of a request's states until a terminal one."""
        if self._stub is None:
            self._connect()
        try:
            async for update in self._stub.WatchRequest(personalizer_pb2.GetRequestRequest(request_id=request_id),
                                                        timeout=None):
                yield update
        except grpc.aio.AioRpcError as exc:
            raise _translate(exc, f"watching request {request_id}") from exc

    async def ca_status(self):
        return await self._call("GetCAStatus", personalizer_pb2.GetCAStatusRequest(), "CA status")


def _translate(exc: grpc.aio.AioRpcError, what: str) -> UplinkError:
    code = exc.code()
    msg = f"personalizer: {what}: {code.name}: {exc.details() or 'no detail'}"
    if code in TRANSIENT:
        return UplinkUnavailable(msg + " (the operation is kept and can be resumed)", code=code.name)
    return UplinkError(msg, code=code.name)
