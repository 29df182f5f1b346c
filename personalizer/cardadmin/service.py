"""The ``CardAdmin`` gRPC servicer: a card's issuer challenge, answered from the central token (issue 12).

``Authenticate`` (station role, by ``identity.METHOD_ROLES``; the interceptor has
already checked that the requester is this station of its own chamber):

- the model must be one this personalizer knows (``firmware_profiles``) and the
  token must hold its master key; the serial and challenge are bounded;
- a card with certificates on record for another chamber is refused (it is that
  chamber's card);
- ``operation`` must be a personalization or a renewal; a renewal needs a
  certificate of this chamber on record for the card (one it personalized);
- at most ``per_minute`` answers per station (token bucket): a station that
  asks faster gets RESOURCE_EXHAUSTED, the card is untouched;
- every answer is audited (``card-admin``: actor, station, operator, card, model,
  operation id); every refusal too (``_translate``'s audit row).

The cryptogram is computed in the token (``keys.CardKeyToken``, reached through
its own process, ``worker.TokenProcess``) from a worker thread. Only the 16-byte answer leaves; nothing of a key is logged or audited.
Imports grpc/proto (it is the edge), ``identity``, the store's ``AuditEntry`` and
``keys``.
"""
from __future__ import annotations

import asyncio
import threading
import time

from firmware_profiles import load_models
from personalizer.edge import identity
from personalizer.edge.service import _translate, audit_denied
from personalizer.errors import FailedPrecondition, InvalidRequest, PermissionDenied, PersonalizerError
from personalizer.store import AuditEntry
from proto.cns.v1 import card_admin_pb2 as pb, card_admin_pb2_grpc as pb_grpc

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["CardAdmin"].full_name
DEFAULT_PER_MINUTE = 120        # a personalization authenticates ~8 times, a renewal ~6
OPERATIONS = {pb.CARD_OPERATION_PERSONALIZE: "personalize", pb.CARD_OPERATION_RENEW: "renew"}


class RateLimited(PersonalizerError):
    code = "RESOURCE_EXHAUSTED"


class StationRate:
    """One token bucket per station: ``per_minute`` answers, bursts up to the same number."""

    def __init__(self, per_minute: int = DEFAULT_PER_MINUTE, clock=time.monotonic):
        self._rate, self._cap, self._clock = per_minute / 60.0, float(per_minute), clock
        self._buckets: dict[str, tuple[float, float]] = {}
        self._lock = threading.Lock()

    def allow(self, station: str) -> bool:
        with self._lock:
            now = self._clock()
            tokens, at = self._buckets.get(station, (self._cap, now))
            tokens = min(self._cap, tokens + (now - at) * self._rate)
            ok = tokens >= 1.0
            self._buckets[station] = (tokens - 1.0 if ok else tokens, now)
            return ok


class CardAdmin:
    """The decision and the answer, without gRPC: the servicer below and in-process callers (the
    renewal fault benchmark) use this. ``answer`` raises ``PersonalizerError`` subclasses."""

    def __init__(self, *, store, token, per_minute: int = DEFAULT_PER_MINUTE, models=None, clock=time.monotonic):
        self.store = store
        self._token = token
        self._models = models if models is not None else load_models()
        self._rate = StationRate(per_minute, clock)

    async def answer(self, *, actor: str, station_id: str, chamber_code: str, operator_id: str, serial: str,
                     model_id: str, challenge: bytes, operation: str, operation_id: str = "",
                     rate_key: str = "") -> bytes:
        """``rate_key``: whose bucket the call takes (default the station; a holder's address for self-renewal)."""
        model = self._models.get(model_id)
        if model is None:
            raise InvalidRequest("card_model", f"unknown card model {model_id!r}")
        if len(serial) != 16 or not serial.isascii() or not serial.isprintable():
            raise InvalidRequest("card_serial", "16 printable ASCII characters (EF_IDCarta)")
        if len(challenge) != model.dialect.challenge_bytes:
            raise InvalidRequest("challenge", f"{model.dialect.challenge_bytes} bytes (the card's GET CHALLENGE)")
        if operation not in OPERATIONS.values():
            raise InvalidRequest("operation", "a personalization or a renewal")
        if not self._rate.allow(rate_key or station_id):
            raise RateLimited(f"{'station ' + station_id if not rate_key else 'this address'} asked for card administration too often; retry in a minute")
        found = await self.store.find_certificates(card_id=serial)
        foreign = sorted({f.chamber_code for f in found if f.chamber_code != chamber_code})
        if foreign:
            raise PermissionDenied(f"card {serial} belongs to chamber {', '.join(foreign)}, not {chamber_code}")
        if operation == "renew" and not found:
            raise FailedPrecondition(f"card {serial} has no certificate on record: it is not a card this "
                                     "personalizer personalized, so there is no renewal to authenticate")
        cryptogram = await asyncio.to_thread(self._token.cryptogram, model_id=model.id,
                                             scheme=model.dialect.admin_key_scheme, serial=serial, challenge=challenge)
        await self.store.append_audit(AuditEntry(
            actor, station_id, "card-admin", None, serial, "done",
            f"{operation} {operation_id or '(no operation id)'} model {model.id}",
            operator_id=operator_id, card_id=serial))
        return cryptogram

    def close(self) -> None:
        self._token.close()


class CardAdminService(pb_grpc.CardAdminServicer):
    def __init__(self, *, broker, token, per_minute: int = DEFAULT_PER_MINUTE, models=None,
                 clock=time.monotonic):
        self._broker = broker
        self.core = CardAdmin(store=broker.store, token=token, per_minute=per_minute, models=models, clock=clock)

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
            operation=OPERATIONS.get(request.operation, ""), operation_id=request.operation_id))
