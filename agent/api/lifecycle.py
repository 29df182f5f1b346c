"""Certificate lifecycle and PIN management on the local API (mixed into ``AgentLocalService``).

    GetCertificateStatus / ChangeCertificateStatus   the card's certificates (``reader``), serials, or
                                                     every certificate of a card serial / codice fiscale
                                                     (status only by codice fiscale)
    GetPinStatus / ChangePin / UnblockPin            the card in ``reader``; every answer has the tries

The work is ``agent.ops.lifecycle`` and ``agent.ops.pin``; this adapter turns
requests into their calls and their errors into gRPC status codes with a
message that says what to do. A refused PIN operation also carries the card's
``PinStatus`` (tries left after it) in the trailing metadata key
``PIN_STATUS_KEY``, so a client can show the tries on an error too. PINs and
PUKs never reach a log or a message.

Imports ``agent.ops``, ``agent.card.errors``, ``agent.uplink``, ``proto``; ``agent.ops.lifecycle``
(cryptography) only in the certificate calls, not in the idle agent (issue 18: idle RSS).
"""
from __future__ import annotations

import asyncio
import logging

import grpc

from agent.card.errors import CardError, CardRemovedError
from agent.ops.errors import OperationError, PreconditionError, UplinkError, UplinkUnavailable
from agent.ops.pin import CodeFormatError, PinError, PinManager, PinState
from agent.ops.uplink import Uplink
from proto.cns.v1 import agent_pb2 as pb

log = logging.getLogger(__name__)

PIN_STATUS_KEY = "cns-pin-status-bin"
PIN_JOURNAL = "pin-journal.db"
NO_CONFIG = ("this agent runs without a station configuration: start it with `cns-agent run --config FILE`")


def pin_status_pb(state: PinState) -> pb.PinStatus:
    return pb.PinStatus(card_serial=state.card_serial, pin_tries_left=state.pin_tries_left,
                        pin_tries_max=state.pin_tries_max, puk_tries_left=state.puk_tries_left,
                        puk_tries_max=state.puk_tries_max, pin_blocked=state.pin_blocked,
                        puk_blocked=state.puk_blocked, message=state.message)


def certificate_pb(info: lc.CertificateInfo) -> pb.CardCertificate:
    return pb.CardCertificate(keyset=info.keyset, serial_hex=info.serial_hex, subject=info.subject,
                              issuer=info.issuer, not_before_unix=info.not_before_unix,
                              not_after_unix=info.not_after_unix, status=info.status,
                              revocation_reason=info.revocation_reason,
                              status_changed_unix=info.status_changed_unix)


def _grpc_code(exc: BaseException) -> grpc.StatusCode:
    if isinstance(exc, (CodeFormatError, ValueError)):
        return grpc.StatusCode.INVALID_ARGUMENT
    if isinstance(exc, (PinError, PreconditionError)):
        return grpc.StatusCode.FAILED_PRECONDITION
    if isinstance(exc, UplinkUnavailable):
        return grpc.StatusCode.UNAVAILABLE
    if isinstance(exc, UplinkError):
        return getattr(grpc.StatusCode, exc.code or "", None) or grpc.StatusCode.ABORTED
    return grpc.StatusCode.ABORTED


def _message(exc: BaseException) -> str:
    if isinstance(exc, CardRemovedError):
        return f"card removed: {exc}; reinsert it and run the command again"
    if isinstance(exc, CardError):
        return f"card error: {exc}"
    return str(exc)


class LifecycleHandlers:
    """gRPC handlers for certificate status changes and PIN change/unblock."""

    # -- plumbing --------------------------------------------------------------------------
    async def _station(self, context):
        ops = getattr(self.operations, "ops", None) if getattr(self, "operations", None) else None
        if ops is None:
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, NO_CONFIG)
        return ops

    async def _model(self, reader: str, context):
        ops = self.operations
        view = ops.registry.reader(reader)
        why = ""
        if view is None:
            why = f"no reader named {reader!r} (see `cns-agent devices`)"
        elif getattr(view, "card", None) is None:
            why = f"no card in {reader!r}: insert it"
        else:
            card = view.card
            model = ops.catalog.models.get(card.model_id) if card.model_id else None
            if model is not None:
                return model
            why = f"the card in {reader!r} is not a supported model"
        await context.abort(grpc.StatusCode.FAILED_PRECONDITION, why)

    def _connect(self, reader: str):
        return lambda: self.operations.connect(reader)

    @staticmethod
    def _requester(ops) -> dict[str, str]:
        return {"station_id": ops.cfg.station.id, "chamber_code": ops.cfg.station.chamber_code,
                "operator_id": ops.operator_id}

    @staticmethod
    def _device_lock(ops, reader: str) -> asyncio.Lock:
        # StationOps locks per device: a call on one reader never waits for an operation on another
        return ops.device_lock(reader)

    def _pins(self, ops, reader: str) -> PinManager:
        return PinManager(journal_path=ops.cfg.station.data_dir / PIN_JOURNAL, lock=self._device_lock(ops, reader))

    async def _fail(self, context, exc: BaseException, state: PinState | None = None):
        metadata = ((PIN_STATUS_KEY, pin_status_pb(state).SerializeToString()),) if state is not None else None
        await context.abort(_grpc_code(exc), _message(exc), trailing_metadata=metadata or ())

    # -- certificates ----------------------------------------------------------------------
    async def _targets(self, ops, request, context, uplink: Uplink, *, change: bool = False):
        from agent.ops import lifecycle as lc
        given = [bool(request.reader), bool(request.certificate_serials), bool(request.card_serial),
                 bool(request.codice_fiscale)]
        if sum(given) > 1:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                                "give one of: a reader, certificate serials, a card serial, a codice fiscale")
        if change and request.codice_fiscale:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                                "a holder may have several cards: change a card's certificates by its card serial "
                                "(--card) or by certificate serials (see `cns-agent cert status --cf ...`)")
        if request.card_serial or request.codice_fiscale:
            life = lc.CertificateLifecycle(uplink=uplink, requester=self._requester(ops))
            targets = await life.targets_by_holder(card_serial=request.card_serial,
                                                   codice_fiscale=request.codice_fiscale)
            if not targets:
                raise PreconditionError(f"the personalizer knows no certificate of this chamber for "
                                        f"{request.card_serial or request.codice_fiscale.upper()}")
            return request.card_serial, targets
        if request.reader:
            model = await self._model(request.reader, context)
            async with self._device_lock(ops, request.reader):
                return await lc.card_targets(self._connect(request.reader), model)
        return "", await lc.CertificateLifecycle(uplink=uplink, requester=self._requester(ops)).targets_by_serial(
            list(request.certificate_serials))

    async def GetCertificateStatus(self, request: pb.CardCertificatesRequest, context):  # noqa: N802
        from agent.ops import lifecycle as lc
        ops = await self._station(context)
        try:
            async with ops.uplink_session() as uplink:
                card_serial, targets = await self._targets(ops, request, context, uplink)
                infos = await lc.CertificateLifecycle(uplink=uplink, requester=self._requester(ops)).status(targets)
        except (OperationError, CardError, ValueError) as exc:
            await self._fail(context, exc)
        return pb.CardCertificatesResponse(card_serial=card_serial, certificates=[certificate_pb(i) for i in infos])

    async def ChangeCertificateStatus(self, request: pb.ChangeCertificateStatusRequest, context):  # noqa: N802
        from agent.ops import lifecycle as lc
        ops = await self._station(context)
        action = request.action.strip().lower()
        try:
            if action not in lc.ACTIONS:
                raise ValueError(f"unknown action {request.action!r}: one of {', '.join(lc.ACTIONS)}")
            reason = lc.check_reason(action, request.reason)
            async with ops.uplink_session() as uplink:
                card_serial, targets = await self._targets(ops, request, context, uplink, change=True)
                life = lc.CertificateLifecycle(uplink=uplink, requester=self._requester(ops))
                infos = await life.change(action, targets, reason=reason)
        except lc.ChangeRefused as exc:
            await self._fail(context, exc)
        except (OperationError, CardError, ValueError) as exc:
            await self._fail(context, exc)
        message = "; ".join(f"{i.keyset or i.serial_hex}: {i.message}" for i in infos)
        return pb.CardCertificatesResponse(card_serial=card_serial, certificates=[certificate_pb(i) for i in infos],
                                           message=message)

    # -- PINs ------------------------------------------------------------------------------
    async def _pin_call(self, request, context, work):
        ops = await self._station(context)
        if not request.reader:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "give the reader of the card")
        model = await self._model(request.reader, context)
        try:
            state = await work(self._pins(ops, request.reader), self._connect(request.reader), model)
        except PinError as exc:
            await self._fail(context, exc, exc.state)
        except (OperationError, CardError, ValueError) as exc:
            await self._fail(context, exc)
        return pin_status_pb(state)

    async def GetPinStatus(self, request: pb.PinStatusRequest, context):  # noqa: N802
        return await self._pin_call(request, context, lambda pins, connect, model: pins.status(
            connect=connect, model=model))

    async def ChangePin(self, request: pb.ChangePinRequest, context):  # noqa: N802
        return await self._pin_call(request, context, lambda pins, connect, model: pins.change(
            connect=connect, reader=request.reader, model=model, old=request.old_pin, new=request.new_pin))

    async def UnblockPin(self, request: pb.UnblockPinRequest, context):  # noqa: N802
        return await self._pin_call(request, context, lambda pins, connect, model: pins.unblock(
            connect=connect, reader=request.reader, model=model, puk=request.puk, new=request.new_pin))
