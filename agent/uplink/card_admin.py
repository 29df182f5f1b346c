"""The agent's side of central card administration (issue 12): relay a card's challenge, get the answer.

``CardAdminClient(client)`` wraps an open ``PersonalizerClient`` (same channel,
deadlines, DR fallback and error translation): ``authenticate(...)`` sends the
card's serial, model and fresh challenge with this station's requester and
returns the cryptogram the personalizer's token computed. ``for_operation(kind,
requester)`` gives the synchronous ``agent.card.issuer.CardAuthenticator`` the card
code (which runs in a worker thread) calls: it runs the call on the event loop
it was made on. The agent never holds a card key; unreachable personalizer →
``UplinkUnavailable`` (the journaled operation stays open, nothing is tried
with any other key). Nothing here logs a challenge or an answer.

Imports ``proto`` and, for its channel and error translation, ``agent.uplink.client``; never ``personalizer``.
"""
from __future__ import annotations

import asyncio

from proto.cns.v1 import card_admin_pb2, card_admin_pb2_grpc, common_pb2

OPERATIONS = {"personalize": card_admin_pb2.CARD_OPERATION_PERSONALIZE,
              "renew": card_admin_pb2.CARD_OPERATION_RENEW}


class CardAdminClient:
    def __init__(self, client) -> None:
        self.client = client

    async def _call(self, method: str, req, what: str):
        """The client's own DR fallback and error translation, on this service's stub."""
        import grpc

        from agent.uplink.client import TRANSIENT, _translate
        c = self.client
        while True:
            if c._channel is None:
                c._connect()
            try:
                return await getattr(card_admin_pb2_grpc.CardAdminStub(c._channel), method)(req, timeout=c.deadline_s)
            except grpc.aio.AioRpcError as exc:
                if exc.code() in TRANSIENT and await c._failover():
                    continue
                raise _translate(exc, what, c.cfg, c._dr) from exc

    async def authenticate(self, *, serial: str, model_id: str, challenge: bytes, kind: str, op_id: str,
                           requester: dict, transport_key: bool = False) -> bytes:
        req = card_admin_pb2.CardAuthRequest(
            requester=common_pb2.Requester(**requester), card_serial=serial, card_model=model_id,
            challenge=challenge, operation=OPERATIONS[kind], operation_id=op_id, transport_key=transport_key)
        return bytes((await self._call("Authenticate", req, f"card administration of card {serial}")).cryptogram)

    async def wrapped_card_key(self, *, serial: str, model_id: str, op_id: str, requester: dict) -> bytes:
        req = card_admin_pb2.CardKeyChangeRequest(requester=common_pb2.Requester(**requester), card_serial=serial,
                                                  card_model=model_id, operation_id=op_id)
        return bytes((await self._call("ChangeCardKey", req, f"the issuer key of card {serial}")).wrapped_key)

    def for_operation(self, kind: str, requester: dict, op_id: str = "") -> "_Relay":
        """Call on the event loop; the result is called from the card's worker thread."""
        return _Relay(self, kind, op_id, requester, asyncio.get_running_loop())


class _Relay:
    """A ``CardAuthenticator`` for one operation, called from the card's worker thread."""

    def __init__(self, admin: CardAdminClient, kind: str, op_id: str, requester: dict, loop) -> None:
        self._admin, self._kind, self._op_id, self._requester, self._loop = admin, kind, op_id, requester, loop

    def _run(self, coro):
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is self._loop:
            coro.close()
            raise RuntimeError("card administration must be called from the card's worker thread")
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result()

    def cryptogram(self, *, model_id: str, serial: str, challenge: bytes, transport_key: bool = False) -> bytes:
        return self._run(self._admin.authenticate(
            serial=serial, model_id=model_id, challenge=challenge, kind=self._kind, op_id=self._op_id,
            requester=self._requester, transport_key=transport_key))

    def wrapped_card_key(self, *, model_id: str, serial: str) -> bytes:
        return self._run(self._admin.wrapped_card_key(serial=serial, model_id=model_id, op_id=self._op_id,
                                                      requester=self._requester))


class HolderCardAdmin(CardAdminClient):
    """Card administration during a holder's self-renewal (``HolderUplink``, no station certificate): the
    personalizer answers for the card a certificate it has on record was issued for. ``certificates``:
    the card's live certificates, read from it before the renewal (the uplink's learned ones are tried
    too)."""

    def __init__(self, uplink, certificates=()) -> None:
        super().__init__(uplink)
        self._certs = [c for c in certificates if c]

    async def authenticate(self, *, serial: str, model_id: str, challenge: bytes, kind: str, op_id: str,
                           requester: dict, transport_key: bool = False) -> bytes:
        from agent.ops.errors import UplinkError
        from proto.cns.v1 import self_renewal_pb2

        if transport_key:
            raise UplinkError(f"card {serial} still holds its transport key: it was never personalized, there "
                              "is nothing to renew", code="FAILED_PRECONDITION")
        certs = self._certs + [c for c in getattr(self.client, "_certs", []) if c not in self._certs]
        if not certs:
            raise UplinkError("personalizer: card administration: no certificate of the card to show; the card "
                              "must carry the certificates being renewed", code="FAILED_PRECONDITION")
        resp = await self.client._call("AuthenticateCard", self_renewal_pb2.SelfCardAuthRequest(
            current_certificate_der=certs[0], card_serial=serial, card_model=model_id, challenge=challenge,
            operation_id=op_id), f"card administration of card {serial}")
        return bytes(resp.cryptogram)
