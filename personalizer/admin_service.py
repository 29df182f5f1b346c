"""The QueueAdmin gRPC servicer: central IT's view of the outbox and of planned CA maintenance.

Maintenance windows are checked by ``windows.check_window`` (INVALID_ARGUMENT naming the
field); ``EndMaintenance`` ends an active window now and ``RemoveMaintenance`` withdraws an
added one, both by storing the changed window under its id (the row stays as history).
Admin role only (``identity.METHOD_ROLES``). Every mutating call is audited,
refused ones too (``refused:<CODE>`` with the reason); a caller without the
admin role is refused by the interceptor, which audits it through
``audit_refusal``.
Must not import the store's SQL, the CA's key stores or anything of the agent.
"""
from __future__ import annotations

import datetime as _dt
import uuid

from personalizer import identity, validation, windows
from personalizer.broker import Broker
from personalizer.errors import FailedPrecondition, InvalidRequest, NotFound, PersonalizerError
from personalizer.relay import Relay
from personalizer.service import STATE_ENUMS, _translate, audit_denied
from personalizer.store import AuditEntry, RequestRecord
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
        return AuditEntry(identity.current_identity().uri, "", operation, request_id, "", result, detail)

    async def audit_refusal(self, *, actor: str, station_id: str, method: str, request, exc) -> None:
        """Called by ``identity.AuthInterceptor`` when it refuses a call to this service."""
        await audit_denied(self._broker, actor=actor, station_id=station_id, method=method, request=request,
                           exc=exc)

    async def _audited(self, operation: str, request_id: str, coro):
        try:
            return await coro
        except PersonalizerError as exc:
            await self._broker.audit_refusal(actor=identity.current_identity().uri, station_id="",
                                             operation=operation, request_id=request_id, exc=exc)
            raise

    @_translate
    async def ListQueue(self, request, context):
        limit = min(request.limit or DEFAULT_LIMIT, 10_000)
        return apb.ListQueueResponse(items=[item(r) for r in await self._broker.store.list_queue(limit)])

    @_translate
    async def ShowQueued(self, request, context):
        return item(await self._broker.get(request.request_id))

    @_translate
    async def RetryNow(self, request, context):
        return await self._audited("queue-retry", request.request_id, self._retry_now(request))

    async def _retry_now(self, request):
        rec = await self._broker.get(request.request_id)
        if not await self._broker.store.retry_now(rec.request_id, self._audit("queue-retry", rec.request_id, "done")):
            raise FailedPrecondition(f"request {rec.request_id} is {rec.state} and not waiting in the queue")
        self._relay.wake()
        return item(await self._broker.get(rec.request_id))

    @_translate
    async def Cancel(self, request, context):
        return await self._audited("queue-cancel", request.request_id, self._cancel(request))

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
        return await self._audited("maintenance-add", "", self._add_maintenance(request))

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
        return await self._audited("maintenance-end", "", self._end_maintenance(request))

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
        return await self._audited("maintenance-remove", "", self._remove_maintenance(request))

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
