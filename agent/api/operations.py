"""Device operations on the local API: ``Personalize`` and ``Renew`` (streams) and ``ListOperations``.

A thin adapter: request messages become ``HolderRecord``/``Codes``; the work is
``agent.ops.station.StationOps``; ops errors become gRPC status codes with
their message (never a PIN). Card access is a ``connect(reader)`` callable
(PC/SC in ``cns-agent run``). After an operation the card is re-read for the device view.
Imports ``agent.ops``, ``agent.card.errors``, ``agent.devices.inspect``, ``proto``.
"""
from __future__ import annotations

import asyncio
import logging

import grpc

from agent.card.errors import CardError, CardRemovedError, WrongPinError, PinBlockedError
from agent.devices.inspect import reread_card
from agent.ops.errors import OperationError, PreconditionError, UplinkUnavailable
from agent.ops.holder import Codes, HolderFileError, HolderRecord
from proto.cns.v1 import agent_pb2 as pb

log = logging.getLogger(__name__)


def result_pb(out) -> pb.OperationResult:
    d = out.as_dict()
    return pb.OperationResult(op_id=d["op_id"], card_serial=d["card_serial"], state=d["state"],
                              holder_label=d["holder_label"], certificate_subjects=d["certificate_subjects"],
                              test_signatures=d["test_signatures"], message=d["message"],
                              stage_seconds=d["stage_seconds"], pkcs11=d.get("pkcs11", ""))


class Operations:
    """Mixed into the AgentLocal servicer when the agent runs with a station config."""

    def __init__(self, ops, catalog, registry, connect):
        self.ops, self.catalog, self.registry, self.connect = ops, catalog, registry, connect

    def _model_in(self, reader: str):
        view = self.registry.reader(reader)
        if view is None:
            return None, f"no reader named {reader!r}"
        card = getattr(view, "card", None)
        if card is None:
            return None, f"no card in {reader!r}"
        model = self.catalog.models.get(card.model_id) if card.model_id else None
        if model is None:
            return None, f"the card in {reader!r} is not a supported model"
        return model, ""

    async def personalize(self, request: pb.PersonalizeRequest, context):
        if self.ops is None:
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION,
                                "this agent runs without a station configuration: start it with `cns-agent run --config FILE`")
        h = request.holder
        try:
            holder = HolderRecord.from_dict({k: v for k, v in {
                "codice_fiscale": h.codice_fiscale, "given_name": h.given_name, "surname": h.surname,
                "birth_date": h.birth_date, "sex": h.sex, "birth_town": h.birth_town,
                "issuer": h.issuer}.items() if v}, "request")
            codes = Codes(request.pin, request.puk or None)
        except (HolderFileError, ValueError) as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        model, why = self._model_in(request.reader)
        if model is None:
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, why)
        async for message in self._stream("personalize", request.reader, context, lambda progress:
                                          self.ops.personalize(connect=self.connect, reader=request.reader,
                                                               model=model, holder=holder, codes=codes,
                                                               progress=progress)):
            yield message

    async def renew(self, request: pb.RenewCardRequest, context):
        """Renew both certificates of the card in ``request.reader``: progress messages, then the result."""
        if self.ops is None:
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION,
                                "this agent runs without a station configuration: start it with "
                                "`cns-agent run --config FILE`")
        try:
            codes = Codes(request.pin, None)
        except ValueError as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"the holder's PIN is required to renew: {exc}")
        model, why = self._model_in(request.reader)
        if model is None:
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, why)
        async for message in self._stream("renew", request.reader, context, lambda progress: self.ops.renew(
                connect=self.connect, reader=request.reader, model=model, codes=codes, progress=progress)):
            yield message

    async def _stream(self, what: str, reader: str, context, start):
        """Run ``start(progress)`` as a named task; yield its progress, then the result (errors → status codes)."""
        queue: asyncio.Queue = asyncio.Queue()
        loop = asyncio.get_running_loop()

        def progress(step: str, message: str) -> None:
            loop.call_soon_threadsafe(queue.put_nowait, pb.OperationProgress(step=step, message=message))

        task = asyncio.create_task(start(progress), name=f"{what}:{reader}")
        while not (task.done() and queue.empty()):
            try:
                yield await asyncio.wait_for(queue.get(), 0.1)
            except asyncio.TimeoutError:
                continue
        try:
            out = task.result()
        except (WrongPinError, PinBlockedError) as exc:
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, f"PIN refused: {exc}")
        except CardRemovedError as exc:
            await context.abort(grpc.StatusCode.ABORTED, f"card removed: {exc}; reinsert it: the agent finishes "
                                                         f"or undoes the {what}")
        except PreconditionError as exc:
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, str(exc))
        except UplinkUnavailable as exc:
            await context.abort(grpc.StatusCode.UNAVAILABLE, str(exc))
        except (OperationError, CardError) as exc:
            await context.abort(grpc.StatusCode.ABORTED, str(exc))
        await self._refresh_view(reader)
        yield pb.OperationProgress(step="result", message=out.state, result=result_pb(out))

    async def _refresh_view(self, reader: str) -> None:
        """Re-read the card after an operation so ``devices``/``watch`` show it as it is now (holder, blank),
        not as it was when it was inserted. A failure here only leaves the old view (logged)."""
        model, _ = self._model_in(reader)
        if model is None:
            return
        try:
            await asyncio.to_thread(reread_card, self.registry, reader, self.connect, model)
        except Exception as exc:   # the operation's answer matters more than the view
            log.info("could not re-read the card in %s after the operation: %s", reader, exc)

    async def list_operations(self, request, context):
        ops = await self.ops.open_operations() if self.ops else []
        return pb.ListOperationsResponse(operations=[
            pb.OpenOperation(op_id=o.op_id, kind=o.kind, card_serial=o.card_serial, reader=o.reader,
                             step=o.step or "", step_phase=o.step_phase or "") for o in ops])
