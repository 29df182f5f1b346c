"""Device operations on the local API: ``Personalize``, ``Renew`` and ``ResolveOperation`` (streams),
``ListOperations`` (device and PIN journals) and ``StopOperation`` (the operator's Ctrl-C).

A thin adapter: request messages become ``HolderRecord``/``Codes``; the work is
``agent.ops.station.StationOps``; ops errors become gRPC status codes with
their message (never a PIN). Card access is a ``connect(reader)`` callable
(PC/SC in ``cns-agent run``). After an operation the card is re-read for the device view.
Imports ``agent.ops``, ``agent.card.errors``, ``agent.devices.inspect``, ``proto``; the operations' modules
(cryptography, asn1crypto) only when an operation runs (``StationOps``): listing or stopping operations does
not load them (idle RSS, issue 18).
"""
from __future__ import annotations

import asyncio
import logging

import grpc

from agent.card.errors import CardError, CardRemovedError, WrongPinError, PinBlockedError
from agent.devices.inspect import reread_card
from agent.ops.errors import OperationError, PreconditionError, UplinkUnavailable
from agent.ops.holder import Codes, HolderFileError, HolderRecord, describe_holder
from agent.ops.journal import FAILED, Journal
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
        holder = None
        try:
            if request.registration_id and request.HasField("holder"):
                raise ValueError("give either holder data or a registration id, not both")
            if not request.registration_id:
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
                                                               progress=progress,
                                                               registration_id=request.registration_id)):
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

    async def _pin_journal(self) -> Journal | None:
        from agent.api.lifecycle import PIN_JOURNAL   # where the PIN operations are journaled
        path = self.ops.cfg.station.data_dir / PIN_JOURNAL
        return await Journal.open(path) if path.exists() else None

    async def list_operations(self, request, context):
        if not self.ops:
            return pb.ListOperationsResponse()
        rows = [(o, "device") for o in await self.ops.open_operations()]
        pins = await self._pin_journal()
        if pins is not None:
            try:
                rows += [(o, "pin") for o in await pins.open_operations()]
            finally:
                await pins.close()
        return pb.ListOperationsResponse(operations=[
            pb.OpenOperation(op_id=o.op_id, kind=o.kind, card_serial=o.card_serial, reader=o.reader,
                             step=o.step or "", step_phase=o.step_phase or "",
                             holder_label=describe_holder(o.data["holder"]) if o.data.get("holder") else "",
                             created_unix=int(o.created_at), updated_unix=int(o.updated_at), journal=journal,
                             note=_note(o)) for o, journal in rows])

    async def stop(self, request: pb.StopOperationRequest, context) -> pb.StopOperationResponse:
        if not self.ops:
            return pb.StopOperationResponse(stopping=False, message="no device operations on this agent")
        reader = request.reader
        if not reader and request.op_id:
            op = await self.ops.journal.get(request.op_id)
            reader = op.reader if op is not None else ""
        if reader and self.ops.stop(reader):
            return pb.StopOperationResponse(stopping=True, message=f"the operation in {reader!r} stops at its next "
                                                                   "safe point")
        return pb.StopOperationResponse(stopping=False, message=f"no operation is running in {reader or '?'!r}")

    async def resolve(self, request: pb.ResolveOperationRequest, context):
        """``operations finish|discard ID``: the card must be in a reader; PIN operations are only discarded
        (marked abandoned: nothing on the card is changed) or finished by repeating the PIN command."""
        if not self.ops:
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION,
                                "this agent runs without a station configuration: start it with "
                                "`cns-agent run --config FILE`")
        action = request.action.strip().lower()
        if action not in ("finish", "discard"):
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"unknown action {request.action!r}: finish or discard")
        op = await self.ops.journal.get(request.op_id)
        if op is None or op.state != "running":
            pin_op = await self._resolve_pin(request, action, context)
            yield pb.OperationProgress(step="result", message=pin_op.state, result=pin_op)
            return
        reader = self._reader_of(op.card_serial) or op.reader
        model, why = self._model_in(reader)
        if model is None:
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION,
                                f"operation {op.op_id} is for card {op.card_serial}: insert it in a reader ({why})")
        try:
            codes = Codes(request.pin, None) if request.pin else None
        except ValueError as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        async for message in self._stream(action, reader, context, lambda progress: self.ops.resolve(
                op.op_id, action, connect=self.connect, reader=reader, model=model, codes=codes,
                progress=progress)):
            yield message

    async def _resolve_pin(self, request, action: str, context) -> pb.OperationResult:
        """A PIN operation: ``finish`` runs it again with the codes given; ``discard`` of a PIN change that
        touched the card sets the old PIN back (both codes needed), otherwise it is only closed (nothing to
        undo: an unblock's keysets keep the new PIN, the old one was blocked)."""
        from agent.api.lifecycle import PIN_JOURNAL, _grpc_code, _message
        from agent.ops.pin import KIND_UNBLOCK, PinError, PinManager
        op_id = request.op_id
        pins = await self._pin_journal()
        op = await pins.get(op_id) if pins is not None else None
        try:
            if op is None or op.state != "running":
                await context.abort(grpc.StatusCode.NOT_FOUND, f"no open operation {op_id} (see `cns-agent operations`)")
            done = list(op.data.get("_done", []))
            touched = done + ([op.step] if op.step and op.step_phase == "begun" and op.step not in done else [])
            if action == "discard" and (not touched or op.kind == KIND_UNBLOCK):
                await pins.finish(op, FAILED, error="discarded by the operator")
                if not touched:
                    msg = f"{op.kind} {op_id} discarded; it had not changed the card"
                else:
                    msg = (f"{op.kind} {op_id} discarded; an unblock cannot be undone (the old PIN was blocked): "
                           f"{', '.join(s.partition(':')[2] for s in touched)} may have the new PIN already, the "
                           "others are as they were (`cns-agent pin status`)")
                return pb.OperationResult(op_id=op_id, card_serial=op.card_serial, state="undone", message=msg)
        finally:
            if pins is not None:
                await pins.close()
        wanted = ("puk", "new_pin") if op.kind == KIND_UNBLOCK else ("pin", "new_pin")
        if not all(getattr(request, k) for k in wanted):
            what = ("the PUK and the new PIN" if op.kind == KIND_UNBLOCK
                    else "the PIN before the change and the new PIN")
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                                f"{action} of {op.kind} {op_id} needs {what}: give them with --codes-file or "
                                f"--codes-stdin, or run on a terminal to be asked")
        reader = self._reader_of(op.card_serial) or op.reader
        model, why = self._model_in(reader)
        if model is None or self._reader_of(op.card_serial) != reader:
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION,
                                f"operation {op_id} is for card {op.card_serial}: insert it in a reader "
                                f"({why or 'not in any reader'})")
        manager = PinManager(journal_path=self.ops.cfg.station.data_dir / PIN_JOURNAL,
                             lock=self.ops.device_lock(reader))

        def connect():
            return self.connect(reader)
        try:
            if action == "finish" and op.kind == KIND_UNBLOCK:
                await manager.unblock(connect=connect, reader=reader, model=model, puk=request.puk,
                                      new=request.new_pin)
                state, msg = "done", f"{op.kind} {op_id} finished: the PIN is unblocked and set on every keyset"
            elif action == "finish":
                await manager.change(connect=connect, reader=reader, model=model, old=request.pin,
                                     new=request.new_pin)
                state, msg = "done", f"{op.kind} {op_id} finished: the new PIN is set on every keyset"
            else:
                _, back = await manager.set_back(op_id=op_id, connect=connect, model=model, old=request.pin,
                                                 new=request.new_pin)
                state, msg = "undone", (f"{op.kind} {op_id} undone: the PIN before the change is set again"
                                        + (f" on {', '.join(back)}" if back else "") + "; the card has one PIN")
        except (PinError, CardError, OperationError) as exc:
            await context.abort(_grpc_code(exc), _message(exc))
        return pb.OperationResult(op_id=op_id, card_serial=op.card_serial, state=state, message=msg)

    def _reader_of(self, card_serial: str) -> str:
        _, readers = self.registry.snapshot()
        for r in readers:
            card = getattr(r, "card", None)
            if card is not None and card.serial == card_serial:
                return r.name
        return ""


def _note(op) -> str:
    if op.data.get("undo_reason"):
        return f"being undone ({op.data['undo_reason']})"
    if op.step and op.step.startswith("submit:") and op.step_phase == "begun":
        return "certificate requests at the personalizer"
    return ""
