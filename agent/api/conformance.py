"""The tender conformance run on the local API: ``RunConformance`` (mixed into ``AgentLocalService``).

It runs in the agent because the agent owns the readers: the run takes the agent's per-device lock
(no personalization or renewal can start on the card mid-run), uses the agent's PC/SC connection
and the station's issuer key for the model (key generation needs it), and streams its progress.
The work is ``agent.conformance.checks.run`` in a worker thread; OpenSC is asked through
``agent.conformance.opensc``. The PIN and PUK in the request are used for the call only.

Imports ``agent.conformance``, ``agent.card.errors``, ``agent.ops.errors``, ``proto``; ``agent.conformance``
(cryptography, statistics) only when a run starts, not in the idle agent (issue 18: idle RSS).
"""
from __future__ import annotations

import asyncio
import logging
import threading

import grpc

from agent.card.errors import CardError
from agent.ops.errors import UplinkError
from agent.uplink.client import PersonalizerClient
from proto.cns.v1 import agent_pb2 as pb

log = logging.getLogger(__name__)

NO_CONFIG = ("this agent runs without a station configuration: start it with `cns-agent run --config FILE` "
             "(the conformance run uses the station's issuer keys and the agent's device lock)")


def report_pb(report: checks.Report) -> pb.ConformanceReport:
    d = report.as_dict()
    return pb.ConformanceReport(
        reader=d["reader"], card_serial=d["card_serial"], model_id=d["model_id"], mode=d["mode"],
        conforming=d["conforming"], seconds=d["seconds"], left_on_card=d["left_on_card"],
        checks=[pb.ConformanceCheck(id=c["id"], clause=c["clause"], requirement=c["requirement"], status=c["status"],
                                    detail=c["detail"], figures=c["figures"]) for c in d["checks"]])


def _card_model(operations, reader: str):
    """(the card model of the card in ``reader``, None) or (None, why not) from the agent's device view."""
    view = operations.registry.reader(reader)
    if view is None:
        return None, f"no reader named {reader!r} (see `cns-agent devices`)"
    card = getattr(view, "card", None)
    if card is None:
        return None, f"no card in {reader!r}: insert it"
    model = operations.catalog.models.get(card.model_id) if card.model_id else None
    if model is None:
        return None, f"the card in {reader!r} is not a known CNS model (`cns-agent devices` shows its ATR)"
    return model, ""


def _log_abandoned(task: asyncio.Task) -> None:
    """The outcome of a run whose caller went away (nobody else will read it)."""
    from agent.conformance import checks
    exc = task.exception() if not task.cancelled() else None
    if isinstance(exc, checks.ConformanceError):
        log.info("conformance run on %s: %s", task.get_name(), exc)
    elif exc is not None:
        log.warning("conformance run on %s ended after its caller left: %s", task.get_name(), exc)
    else:
        log.info("conformance run on %s finished after its caller left", task.get_name())


class _Central:
    """The personalizer's answer to the card's challenge; unreachable or refused stops the run (nothing
    was written: authentication comes before the key generation it allows)."""

    def __init__(self, relay) -> None:
        self._relay = relay

    def cryptogram(self, **kw) -> bytes:
        from agent.conformance import checks
        try:
            return self._relay.cryptogram(**kw)
        except UplinkError as exc:
            raise checks.ConformanceError(f"card administration: {exc}; the run stopped before anything was "
                                          "written") from None


class ConformanceHandlers:
    async def RunConformance(self, request, context):  # noqa: N802 (gRPC names)
        from agent.conformance import checks, opensc
        operations = getattr(self, "operations", None)
        if operations is None or operations.ops is None:
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, NO_CONFIG)
        ops = operations.ops
        model, why = _card_model(operations, request.reader)
        if model is None:
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, why)
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue = asyncio.Queue()
        cancelled = threading.Event()   # the client went away (Ctrl-C): stop between card commands, clean up

        def progress(step: str, message: str) -> None:
            loop.call_soon_threadsafe(queue.put_nowait, pb.ConformanceProgress(step=step, message=message))

        def work(admin_key) -> checks.Report:
            link = operations.connect(request.reader)
            try:
                return checks.run(link, model, reader=request.reader, pin=request.pin, puk=request.puk,
                                  admin_key=admin_key, admin_key_problem="",
                                  samples=request.samples or checks.DEFAULT_SAMPLES, opensc=opensc.probe,
                                  progress=progress, cancelled=cancelled.is_set)
            finally:
                getattr(link, "close", lambda: None)()

        async def locked() -> checks.Report:
            async with ops.device_lock(request.reader):   # per device: other readers stay free
                # the card's issuer key is central (issue 12): its challenges go to the personalizer
                async with PersonalizerClient(ops.cfg, operator_id=ops.operator_id) as client:
                    return await asyncio.to_thread(work, _Central(ops.card_admin("personalize", client)))

        # its own task: a cancelled call does not cancel it, so the device lock is held until the card is
        # put back as it was
        task = asyncio.create_task(locked(), name=f"conformance:{request.reader}")
        try:
            while not (task.done() and queue.empty()):
                try:
                    yield await asyncio.wait_for(queue.get(), 0.1)
                except asyncio.TimeoutError:
                    continue
        finally:
            if not task.done():
                cancelled.set()
                task.add_done_callback(_log_abandoned)
        try:
            report = task.result()
        except checks.ConformanceError as exc:
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, str(exc))
        except CardError as exc:
            await context.abort(grpc.StatusCode.ABORTED, f"card error: {exc}; run it again")
        yield pb.ConformanceProgress(step="report", message="conforming" if report.conforming else "not conforming",
                                     report=report_pb(report))
