"""The QueueAdmin gRPC servicer: central IT's view of the outbox, of planned CA maintenance and of
the device stock ledger (``AddStock``/``ListStock``: devices sent to each chamber).

Maintenance windows are checked by ``windows.check_window`` (INVALID_ARGUMENT naming the
field); ``EndMaintenance`` ends an active window now and ``RemoveMaintenance`` withdraws an
added one, both by storing the changed window under its id (the row stays as history).
Admin role only (``identity.METHOD_ROLES``). Every mutating call is audited
with the admin's name as operator; every refused call writes one row
(``refused:<CODE>`` with the reason), by ``_translate`` or, for a caller
without the admin role, by the interceptor through ``audit_refusal``.
Must not import the store's SQL, the CA's key stores or anything of the agent.
"""
from __future__ import annotations

import datetime as _dt
import re
import uuid

from personalizer.edge import identity

from personalizer.rules import validation

from personalizer.outbox import windows
from personalizer.outbox.broker import Broker
from personalizer.errors import FailedPrecondition, InvalidRequest, NotFound, PersonalizerError
from personalizer.outbox.relay import Relay
from personalizer.edge.service import STATE_ENUMS, _translate, audit_denied
from personalizer.records import AuditEntry, RequestRecord
from proto.cns.v1 import admin_pb2 as apb, admin_pb2_grpc as apb_grpc, personalizer_pb2 as pb

DEFAULT_LIMIT = 100
ONE_SECOND = _dt.timedelta(seconds=1)


def _window(w: windows.Maintenance) -> pb.MaintenanceWindow:
    return pb.MaintenanceWindow(id=w.id, starts_at=int(w.starts_at.timestamp()), ends_at=int(w.ends_at.timestamp()),
                                reason=w.reason)


def item(rec: RequestRecord) -> apb.QueueItem:
    return apb.QueueItem(
        request_id=rec.request_id, kind=rec.kind, lane=rec.lane or "", state=STATE_ENUMS[rec.state],
        attempts=rec.attempts, next_attempt_at=0 if rec.terminal else int(rec.next_attempt_at),
        last_error=rec.last_error or "", created_at=int(rec.created_at), updated_at=int(rec.updated_at),
        chamber_code=rec.chamber_code, station_id=rec.station_id)


class QueueAdminService(apb_grpc.QueueAdminServicer):
    def __init__(self, *, broker: Broker, relay: Relay, config_windows=()):
        self._broker = broker
        self._relay = relay
        self._config_ids = frozenset(w.id for w in config_windows)

    def _audit(self, operation: str, request_id: str | None, result: str, detail: str = "") -> AuditEntry:
        ident = identity.current_identity()
        return AuditEntry(ident.uri, "", operation, request_id, "", result, detail, operator_id=ident.subject_id)

    async def audit_refusal(self, *, actor: str, station_id: str, method: str, request, exc) -> None:
        """Called by ``identity.AuthInterceptor`` when it refuses a call to this service."""
        await audit_denied(self._broker, actor=actor, station_id=station_id, method=method, request=request,
                           exc=exc)

    @_translate
    async def ListQueue(self, request, context):
        limit = min(request.limit or DEFAULT_LIMIT, 10_000)
        return apb.ListQueueResponse(items=[item(r) for r in await self._broker.store.list_queue(limit)])

    @_translate
    async def ShowQueued(self, request, context):
        return item(await self._broker.get(request.request_id))

    @_translate
    async def RetryNow(self, request, context):
        return await self._retry_now(request)

    async def _retry_now(self, request):
        rec = await self._broker.get(request.request_id)
        if rec.outbox_status == "sending" and self._relay.holds(rec.request_id):
            raise FailedPrecondition(f"request {rec.request_id} is being delivered to the CA now; follow it with "
                                     "`cnsctl request show`")
        orphan = rec.outbox_status == "sending"   # claimed, but no live delivery holds it: take it back now
        if not await self._broker.store.retry_now(rec.request_id, self._audit("queue-retry", rec.request_id, "done"),
                                                  orphaned_claim=orphan):
            raise FailedPrecondition(f"request {rec.request_id} is {rec.state} and not waiting in the queue")
        self._relay.wake()
        return item(await self._broker.get(rec.request_id))

    @_translate
    async def Cancel(self, request, context):
        return await self._cancel(request)

    async def _cancel(self, request):
        rec = await self._broker.get(request.request_id)
        if not await self._broker.store.cancel(rec.request_id, self._audit("queue-cancel", rec.request_id, "done")):
            raise FailedPrecondition(
                f"request {rec.request_id} is {rec.state} after {rec.attempts} attempt(s); only a request that "
                "never reached the CA can be cancelled")
        done = await self._broker.get(rec.request_id)
        self._broker.notify(done)
        return item(done)

    @_translate
    async def AddMaintenance(self, request: pb.MaintenanceWindow, context):
        return await self._add_maintenance(request)

    async def _add_maintenance(self, request: pb.MaintenanceWindow):
        now = self._relay.now_dt()
        id_ = request.id or f"m-{uuid.uuid4().hex[:12]}"
        validation.check_request_id(id_)
        try:
            w = windows.check_window(id_, request.starts_at, request.ends_at, request.reason, now=now)
        except windows.WindowError as exc:
            raise InvalidRequest(exc.field, exc.message) from None
        if w.ends_at <= now:
            raise InvalidRequest("ends_at", "the window has already ended")
        await self._store_window(w, "maintenance-add", "admin")
        return _window(w)

    async def _store_window(self, w: windows.Maintenance, operation: str, source: str) -> None:
        await self._broker.store.add_maintenance(
            w.id, w.starts_at.timestamp(), w.ends_at.timestamp(), w.reason, source,
            audit=self._audit(operation, None, "done",
                              f"{w.id} {int(w.starts_at.timestamp())}..{int(w.ends_at.timestamp())}"))
        await self._relay.reload_maintenance()

    def _find_added(self, id_: str) -> windows.Maintenance:
        """A current or future window added over the API (config-file windows are the file's to change)."""
        now = self._relay.now_dt()
        for w in self._relay.maintenance:
            if w.id == id_ and w.ends_at > now:
                if w.id in self._config_ids:
                    raise FailedPrecondition(f"maintenance window {w.id!r} is defined in the daemon's config file; "
                                             "change it there and restart the daemon")
                return w
        raise NotFound(f"no current or future maintenance window {id_!r} (cnsctl maintenance list)")

    @_translate
    async def EndMaintenance(self, request: apb.MaintenanceWindowRequest, context):
        return await self._end_maintenance(request)   # refusals are audited once, by _translate

    async def _end_maintenance(self, request):
        w = self._find_added(request.id)
        now = self._relay.now_dt()
        if not w.active(now):
            raise FailedPrecondition(f"maintenance window {w.id!r} starts at {w.starts_at.isoformat()} and has not "
                                     "started; remove it instead (cnsctl maintenance remove)")
        ended = windows.Maintenance(w.id, w.starts_at, max(now, w.starts_at + ONE_SECOND), w.reason)
        await self._store_window(ended, "maintenance-end", "admin")
        return _window(ended)

    @_translate
    async def RemoveMaintenance(self, request: apb.MaintenanceWindowRequest, context):
        return await self._remove_maintenance(request)

    async def _remove_maintenance(self, request):
        w = self._find_added(request.id)
        # kept as history: a zero-length window in the past, which nothing reads again
        past = self._relay.now_dt() - 2 * ONE_SECOND
        await self._store_window(windows.Maintenance(w.id, past, past, w.reason), "maintenance-remove", "removed")
        return _window(w)

    @_translate
    async def ListMaintenance(self, request, context):
        now = self._relay.now_dt()
        return apb.ListMaintenanceResponse(windows=[_window(w) for w in self._relay.maintenance if w.ends_at > now])

    # -- the stock ledger (issue 19 item 4): devices sent to each chamber ---------------------------

    @_translate
    async def AddStock(self, request: apb.AddStockRequest, context):
        chamber, quantity, note = check_stock(request)
        model = request.device_model.strip()
        entry = await self._broker.store.add_stock(chamber, quantity, note, self._audit(
            "stock-add", None, "done", f"{chamber} {model or 'any type'} {quantity:+d}"), device_model=model)
        return _stock_entry(entry)

    @_translate
    async def ListStock(self, request: apb.ListStockRequest, context):
        chamber = request.chamber_code.strip().upper()
        store = self._broker.store
        balances = await store.stock_balance()
        return apb.ListStockResponse(
            entries=[_stock_entry(e) for e in await store.list_stock(chamber)],
            balances=[apb.StockBalance(chamber_code=b.chamber_code, device_model=b.device_model, sent=b.sent,
                                       used=b.used, left=b.left)
                      for b in balances.values() if not chamber or b.chamber_code == chamber])


CHAMBER_CODE = re.compile(r"[A-Z0-9]{2,8}")
MAX_STOCK_QUANTITY = 100_000
MAX_STOCK_NOTE = 200
MAX_STOCK_MODEL = 64   # as the card model kept from issuance


def _stock_entry(e) -> apb.StockEntry:
    return apb.StockEntry(seq=e.seq, at=int(e.at), chamber_code=e.chamber_code, device_model=e.device_model,
                          quantity=e.quantity, actor=e.actor, note=e.note)


def check_stock(request: apb.AddStockRequest) -> tuple[str, int, str]:
    chamber = request.chamber_code.strip().upper()
    if not CHAMBER_CODE.fullmatch(chamber):
        raise InvalidRequest("chamber_code", f"{request.chamber_code!r} is not a chamber code (2-8 letters or "
                                             "digits, e.g. RM)")
    if request.quantity == 0 or abs(request.quantity) > MAX_STOCK_QUANTITY:
        raise InvalidRequest("quantity", f"must be a non-zero number of devices, at most {MAX_STOCK_QUANTITY} "
                                         f"either way, got {request.quantity}")
    if len(request.device_model) > MAX_STOCK_MODEL:
        raise InvalidRequest("device_model", f"at most {MAX_STOCK_MODEL} characters, got {len(request.device_model)}")
    if len(request.note) > MAX_STOCK_NOTE:
        raise InvalidRequest("note", f"at most {MAX_STOCK_NOTE} characters, got {len(request.note)}")
    return chamber, request.quantity, request.note

