"""The Registrations gRPC servicer: deferred issuance's first step (issue 19), proto ↔ rules and store.

``RegisterHolder`` (IR only, by ``identity.METHOD_ROLES``): the holder and the
form are judged by ``personalizer.rules.registrations`` before anything is written;
then the registration, its form and its audit row (``registration-add``: the
IR as actor and operator, the holder's codice fiscale, the form's SHA-256) are
one transaction. ``GetRegistration`` / ``ListRegistrations``: the caller's
chamber only (central IT: any). Every refused call writes one audit row (the
interceptor's, or ``service._translate``'s). The second step is
``SubmitIssue`` with ``registration_id`` (``broker.submit_issue``).

Imports grpc/proto (it is the edge), ``identity``, ``registrations``, the broker and the store's
dataclasses; must not import the store's SQL or anything of the agent.
"""
from __future__ import annotations

import datetime as _dt

from personalizer.edge import identity

from personalizer.rules import registrations
from personalizer.outbox.broker import Broker
from personalizer.errors import FailedPrecondition, InvalidRequest, NotFound
from personalizer.edge.service import _translate, audit_denied
from personalizer.records import AuditEntry
from proto.cns.v1 import common_pb2, registrations_pb2 as rpb, registrations_pb2_grpc as rpb_grpc

SERVICE_NAME = rpb.DESCRIPTOR.services_by_name["Registrations"].full_name
DEFAULT_LIMIT, MAX_LIMIT = 100, 1000


def to_proto(reg: registrations.Registration, now: float) -> rpb.Registration:
    return rpb.Registration(
        registration_id=reg.registration_id, chamber_code=reg.chamber_code,
        holder=common_pb2.Holder(codice_fiscale=reg.codice_fiscale, given_name=reg.given_name, surname=reg.surname,
                                 birth_date=reg.birth_date),
        form_sha256=reg.form_sha256, form_type=reg.form_type, form_size=reg.form_size, created_by=reg.created_by,
        created_at=int(reg.created_at), expires_at=int(reg.expires_at), used_by=reg.used_by or "",
        used_operator_id=reg.used_operator_id or "", used_at=int(reg.used_at or 0), request_id=reg.request_id or "",
        state=reg.state(now), sex=reg.sex, birth_town=reg.birth_town, card_id=reg.card_id or "",
        cancelled_by=reg.cancelled_by or "", cancelled_at=int(reg.cancelled_at or 0))


class RegistrationsService(rpb_grpc.RegistrationsServicer):
    def __init__(self, *, broker: Broker, clock=None):
        self._broker = broker
        self._clock = clock or broker.clock

    async def audit_refusal(self, *, actor: str, station_id: str, method: str, request, exc) -> None:
        """Called by ``identity.AuthInterceptor`` when it refuses a call to this service."""
        await audit_denied(self._broker, actor=actor, station_id=station_id, method=method, request=request,
                           exc=exc)

    @_translate
    async def RegisterHolder(self, request: rpb.RegisterHolderRequest, context) -> rpb.Registration:
        ident = identity.current_identity()
        h = request.holder
        now = self._clock()
        reg = registrations.new_registration(
            chamber_code=ident.chamber_code or "", created_by=ident.uri, cf=h.codice_fiscale,
            given_name=h.given_name, surname=h.surname, birth_date=h.birth_date, form=request.form,
            expires_days=request.expires_days, now=now, sex=request.sex, birth_town=request.birth_town)
        created = await self._broker.store.add_registration(reg, request.form, AuditEntry(
            ident.uri, "", "registration-add", None, reg.registration_id, "done",
            f"form {reg.form_type} sha256:{reg.form_sha256}", operator_id=ident.subject_id,
            holder_cf=reg.codice_fiscale))
        if created:
            return to_proto(reg, now)
        existing = await self._broker.store.open_registration(reg.chamber_code, reg.codice_fiscale, now)
        if existing is not None and registrations.same_registration(existing, reg):
            return to_proto(existing, now)   # the IR's retry: the registration it already made
        raise FailedPrecondition(
            f"holder {reg.codice_fiscale} already has an open registration"
            + (f" {existing.registration_id} (by {existing.created_by}, until "
               f"{_dt.datetime.fromtimestamp(existing.expires_at, _dt.timezone.utc).isoformat(timespec='seconds')})"
               if existing else "")
            + " with other data; cancel it first (`cnsctl registration cancel ID`) to register again")

    async def _readable(self, registration_id: str) -> registrations.Registration:
        if not registrations.REGISTRATION_ID_RE.fullmatch(registration_id):
            raise InvalidRequest("registration_id", "not a registration id (REG- and 16 hex digits)")
        reg = await self._broker.store.get_registration(registration_id)
        ident = identity.current_identity()
        # another chamber's registration reads as missing: ids of other chambers are not confirmed
        if reg is None or (ident.role in identity.CHAMBER_SCOPED and reg.chamber_code != ident.chamber_code):
            raise NotFound(f"no registration {registration_id} for chamber {ident.chamber_code or '(any)'}")
        return reg

    @_translate
    async def GetRegistration(self, request: rpb.GetRegistrationRequest, context) -> rpb.Registration:
        return to_proto(await self._readable(request.registration_id), self._clock())

    @_translate
    async def CancelRegistration(self, request: rpb.CancelRegistrationRequest, context) -> rpb.Registration:
        ident = identity.current_identity()
        reg = await self._readable(request.registration_id)
        now = self._clock()
        if reg.state(now) in (registrations.STATE_USED, registrations.STATE_CANCELLED):
            raise FailedPrecondition(f"registration {reg.registration_id} is {reg.state(now)}; only one not yet "
                                     "used for a card can be cancelled")
        done = await self._broker.store.cancel_registration(reg.registration_id, by=ident.uri, audit=AuditEntry(
            ident.uri, "", "registration-cancel", None, reg.registration_id, "done", request.reason[:200],
            operator_id=ident.subject_id, holder_cf=reg.codice_fiscale))
        if not done:   # a station bound it to a card meanwhile
            raise FailedPrecondition(f"registration {reg.registration_id} was used for a card meanwhile")
        return to_proto(await self._broker.store.get_registration(reg.registration_id), now)

    @_translate
    async def ListRegistrations(self, request: rpb.ListRegistrationsRequest, context):
        ident = identity.current_identity()
        chamber = request.chamber_code
        if ident.role in identity.CHAMBER_SCOPED:
            identity.check_chamber_access(ident, chamber or (ident.chamber_code or ""))
            chamber = ident.chamber_code or ""
        limit = min(request.limit or DEFAULT_LIMIT, MAX_LIMIT)
        now = self._clock()
        found = await self._broker.store.list_registrations(chamber, include_closed=request.include_closed, now=now,
                                                            limit=limit)
        return rpb.ListRegistrationsResponse(registrations=[to_proto(r, now) for r in found])
