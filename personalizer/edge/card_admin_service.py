"""The ``CardAdmin`` gRPC servicer (issue 12): proto ↔ ``personalizer.cardadmin.service.CardAdmin``.

``Authenticate`` and ``ChangeCardKey`` (station role), ``LoadBatch`` and
``ListBatches`` (admin role), by ``identity.METHOD_ROLES``; every refusal writes one
audit row (the interceptor's, or ``service._translate``'s). ``register`` adds the
service to the daemon's server when ``[card_admin]`` is configured
(``personalizer.cardadmin.setup``). Imports grpc/proto (it is the edge),
``identity``, ``service`` (status mapping) and ``cardadmin``.
"""
from __future__ import annotations

import asyncio
import time

from personalizer.cardadmin import setup
from personalizer.cardadmin.keys import KVN_CARD, KVN_TRANSPORT
from personalizer.cardadmin.service import DEFAULT_PER_MINUTE, CardAdmin
from personalizer.edge import identity
from personalizer.edge.service import _translate, audit_denied
from proto.cns.v1 import card_admin_pb2 as pb, card_admin_pb2_grpc as pb_grpc

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["CardAdmin"].full_name
OPERATIONS = {pb.CARD_OPERATION_PERSONALIZE: "personalize", pb.CARD_OPERATION_RENEW: "renew"}


class CardAdminService(pb_grpc.CardAdminServicer):
    def __init__(self, *, broker, token, per_minute: int = DEFAULT_PER_MINUTE, models=None,
                 clock=time.monotonic, allow_unlisted_blank: bool = False, rate=None):
        self._broker = broker
        self.core = CardAdmin(records=broker, token=token, per_minute=per_minute, models=models, clock=clock,
                              allow_unlisted_blank=allow_unlisted_blank, rate=rate)

    async def audit_refusal(self, *, actor: str, station_id: str, method: str, request, exc) -> None:
        """Called by ``identity.AuthInterceptor`` when it refuses a call to this service."""
        await audit_denied(self._broker, actor=actor, station_id=station_id, method=method, request=request, exc=exc)

    @_translate
    async def Authenticate(self, request: pb.CardAuthRequest, context) -> pb.CardAuthResponse:  # noqa: N802
        ident = identity.current_identity()
        r = request.requester
        return pb.CardAuthResponse(cryptogram=await self.core.answer(
            actor=ident.uri, station_id=ident.subject_id, chamber_code=r.chamber_code, operator_id=r.operator_id,
            serial=request.card_serial, model_id=request.card_model, challenge=request.challenge,
            operation=OPERATIONS.get(request.operation, ""), operation_id=request.operation_id,
            key_version=KVN_TRANSPORT if request.transport_key else KVN_CARD))

    @_translate
    async def ChangeCardKey(self, request: pb.CardKeyChangeRequest, context) -> pb.CardKeyChangeResponse:  # noqa: N802
        ident = identity.current_identity()
        r = request.requester
        return pb.CardKeyChangeResponse(wrapped_key=await self.core.change_key(
            actor=ident.uri, station_id=ident.subject_id, chamber_code=r.chamber_code, operator_id=r.operator_id,
            serial=request.card_serial, model_id=request.card_model, operation_id=request.operation_id))

    @_translate
    async def LoadBatch(self, request: pb.LoadBatchRequest, context) -> pb.CardBatch:  # noqa: N802
        b = await self.core.load_batch(actor=identity.current_identity().uri, batch=request.batch_id,
                                       chamber=request.chamber_code, model_id=request.card_model,
                                       first=request.first_serial, last=request.last_serial,
                                       key=request.transport_key)
        return _batch(b)

    @_translate
    async def ListBatches(self, request: pb.ListBatchesRequest, context) -> pb.ListBatchesResponse:  # noqa: N802
        return pb.ListBatchesResponse(batches=[_batch(b) for b in await asyncio.to_thread(self.core.token.batches)])


def _batch(b: dict) -> pb.CardBatch:
    return pb.CardBatch(batch_id=b["batch"], chamber_code=b["chamber"], card_model=b["model"],
                        first_serial=b["first"], last_serial=b["last"])


def register(daemon_cfg, broker, server, *, shared: bool | None = None) -> CardAdminService | None:
    """Add the CardAdmin service to ``server`` when ``[card_admin]`` is configured: the servicer (its
    ``core`` answers; ``core.close()`` closes the token), or None. ``shared``: the daemon's processes share
    the per-station buckets (default: ``[server] processes`` > 1)."""
    cfg = setup.load(daemon_cfg.source)
    if cfg is None:
        return None
    rate = None
    if daemon_cfg.server.processes > 1 if shared is None else shared:   # one bucket per station (issue 16)
        from personalizer.cardadmin.service import StationRate
        from personalizer.rate import FILE_NAME, SharedRate
        rate = SharedRate(daemon_cfg.store.data_dir / FILE_NAME, "card_admin", cfg.per_minute,
                          fallback=StationRate(cfg.per_minute))
    servicer = CardAdminService(broker=broker, token=setup.open_token(cfg, daemon_cfg.source),
                                per_minute=cfg.per_minute, allow_unlisted_blank=cfg.allow_unlisted_blank_cards,
                                rate=rate)
    pb_grpc.add_CardAdminServicer_to_server(servicer, server)
    return servicer
