"""Card administration's rules and answers (issue 12), without gRPC: ``CardAdmin``.

The gRPC servicer (``personalizer.edge.card_admin_service``) and in-process callers
(self-renewal's ``AuthenticateCard``, the renewal fault benchmark) call
``answer`` / ``change_key`` / ``load_batch``. For ``Authenticate`` (station role, by
``identity.METHOD_ROLES``; the interceptor has already checked that the requester is
this station of its own chamber):

- the model must be one this personalizer knows (``firmware_profiles``) and the
  token must hold its master key; the serial and challenge are bounded;
- a card with certificates on record for another chamber is refused (it is that
  chamber's card);
- ``operation`` must be a personalization or a renewal; a renewal needs a
  certificate of this chamber on record for the card (one it personalized);
- at most ``per_minute`` answers per station (token bucket): a station that
  asks faster gets RESOURCE_EXHAUSTED, the card is untouched (``rate``: the
  buckets shared by the daemon's processes, ``personalizer.rate``; default this
  process's own);
- a card in a batch central IT loaded (``LoadBatch``: the per-card stock) is
  answered only for the batch's chamber; a blank card (no certificate on
  record) in no loaded batch is refused, naming the ``cnsctl cards load-batch``
  to run (``allow_unlisted_blank``: TEST deployments, whose emulated cards come
  keyed with their own key and in no batch); a card reporting its transport key
  (``key_version`` 0) must be in a loaded batch, and ``ChangeCardKey`` gives
  PUT KEY's data (its own key wrapped under the transport key) to the
  personalization of such a card only;
- every answer is audited (``card-admin``, ``card-key-change``: actor, station,
  operator, card, model, operation id), ``LoadBatch`` too (``card-batch-load``,
  never the key); every refusal too (``_translate``'s audit row).

The cryptogram is computed in the token (``keys.CardKeyToken``, reached through
its own process, ``worker.TokenProcess``) from a worker thread. Only the 16-byte answer leaves; nothing of a key is logged or audited.
Imports ``keys``, ``errors``, the store's ``AuditEntry`` and ``firmware_profiles``; never
grpc, proto or the edge.
"""
from __future__ import annotations

import asyncio
import re
import threading
import time

from firmware_profiles import load_models
from personalizer.cardadmin.keys import KVN_CARD, KVN_TRANSPORT, CardKeyError
from personalizer.errors import FailedPrecondition, InvalidRequest, PermissionDenied, PersonalizerError
from personalizer.store import AuditEntry

DEFAULT_PER_MINUTE = 120        # a personalization authenticates ~5 to 8 times, a renewal ~6
OPERATIONS = ("personalize", "renew")


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

    def __init__(self, *, records, token, per_minute: int = DEFAULT_PER_MINUTE, models=None, clock=time.monotonic,
                 allow_unlisted_blank: bool = False, rate=None):
        self.records = records   # the broker: find_certificates(card_id=) and record_audit(entry)
        self._allow_unlisted = allow_unlisted_blank   # [card_admin] unlisted_blank_cards = "allow" (TEST only)
        self._token = self.token = token
        self._models = models if models is not None else load_models()
        self._rate = rate if rate is not None else StationRate(per_minute, clock)   # allow(key) -> bool

    async def answer(self, *, actor: str, station_id: str, chamber_code: str, operator_id: str, serial: str,
                     model_id: str, challenge: bytes, operation: str, operation_id: str = "",
                     rate_key: str = "", key_version: int = KVN_CARD) -> bytes:
        """``rate_key``: whose bucket the call takes (default the station; a holder's address for self-renewal)."""
        model = self._card(serial, model_id)
        if key_version not in (KVN_TRANSPORT, KVN_CARD):
            raise InvalidRequest("key_version", "0 (the batch's transport key) or 1 (the card's own key)")
        if len(challenge) != model.dialect.challenge_bytes:
            raise InvalidRequest("challenge", f"{model.dialect.challenge_bytes} bytes (the card's GET CHALLENGE)")
        if operation not in OPERATIONS:
            raise InvalidRequest("operation", "a personalization or a renewal")
        if not self._rate.allow(rate_key or station_id):
            raise RateLimited(f"{'station ' + station_id if not rate_key else 'this address'} asked for card administration too often; retry in a minute")
        found, batch = await self._stock(serial, chamber_code)
        unlisted = batch is None
        if unlisted and operation == "personalize" and not found and key_version == KVN_CARD \
                and not self._allow_unlisted:
            raise FailedPrecondition(
                f"card {serial} is a blank card of no card batch loaded here, so it is not in chamber "
                f"{chamber_code or 'CHAMBER'}'s stock: central IT loads its batch with `cnsctl cards load-batch "
                f"--batch BATCH --chamber {chamber_code or 'CHAMBER'} --model {model.id} --first FIRST-SERIAL "
                "--last LAST-SERIAL --key-file TRANSPORT-KEY-FILE`, then the card is personalized again")
        if unlisted and key_version == KVN_TRANSPORT:
            raise FailedPrecondition(
                f"card {serial} still holds a manufacturer transport key but is in no batch loaded here, so its key "
                f"is unknown: central IT loads the card's batch with `cnsctl cards load-batch --batch BATCH "
                f"--chamber {chamber_code or 'CHAMBER'} --model {model.id} --first FIRST-SERIAL --last LAST-SERIAL "
                "--key-file TRANSPORT-KEY-FILE`, then the card is personalized again")
        if operation == "renew" and not found:
            raise FailedPrecondition(f"card {serial} has no certificate on record: it is not a card this "
                                     "personalizer personalized, so there is no renewal to authenticate")
        cryptogram = await asyncio.to_thread(self._token.cryptogram, model_id=model.id,
                                             scheme=model.dialect.admin_key_scheme, serial=serial, challenge=challenge,
                                             key_version=key_version)
        await self.records.record_audit(AuditEntry(
            actor, station_id, "card-admin", None, serial, "done",
            f"{operation} {operation_id or '(no operation id)'} model {model.id}"
            + (" transport key" if key_version == KVN_TRANSPORT else ""),
            operator_id=operator_id, card_id=serial))
        return cryptogram

    def _card(self, serial: str, model_id: str):
        model = self._models.get(model_id)
        if model is None:
            raise InvalidRequest("card_model", f"unknown card model {model_id!r}")
        if len(serial) != 16 or not serial.isascii() or not serial.isprintable():
            raise InvalidRequest("card_serial", "16 printable ASCII characters (EF_IDCarta)")
        return model

    async def _chamber_card(self, serial: str, chamber_code: str) -> list:
        return (await self._stock(serial, chamber_code))[0]

    async def _stock(self, serial: str, chamber_code: str) -> tuple[list, dict | None]:
        """(the card's certificates on record, its loaded batch or None); refused when the card is another
        chamber's (by its batch, the stock central IT sent, or by the certificates issued for it)."""
        batch = await asyncio.to_thread(self._token.batch_of, serial)
        if batch is not None and batch["chamber"] != chamber_code:
            raise PermissionDenied(f"card {serial} is in batch {batch['batch']} of chamber {batch['chamber']}'s "
                                   f"stock, not {chamber_code}'s")
        found = await self.records.find_certificates(card_id=serial)
        foreign = sorted({f.chamber_code for f in found if f.chamber_code != chamber_code})
        if foreign:
            raise PermissionDenied(f"card {serial} belongs to chamber {', '.join(foreign)}, not {chamber_code}")
        return found, batch

    async def change_key(self, *, actor: str, station_id: str, chamber_code: str, operator_id: str, serial: str,
                         model_id: str, operation_id: str = "") -> bytes:
        """PUT KEY's data for a blank card of this chamber's stock still keyed with its transport key."""
        model = self._card(serial, model_id)
        if not self._rate.allow(station_id):
            raise RateLimited(f"station {station_id} asked for card administration too often; retry in a minute")
        if await asyncio.to_thread(self._token.batch_of, serial) is None:
            raise FailedPrecondition(f"card {serial} is in no batch loaded here: its transport key is unknown "
                                     "(central IT loads the batch with `cnsctl cards load-batch`)")
        if await self._chamber_card(serial, chamber_code):
            raise FailedPrecondition(f"card {serial} already has certificates: it is not a blank card")
        wrapped = await asyncio.to_thread(self._token.wrapped_card_key, model_id=model.id,
                                          scheme=model.dialect.admin_key_scheme, serial=serial)
        await self.records.record_audit(AuditEntry(
            actor, station_id, "card-key-change", None, serial, "done",
            f"personalize {operation_id or '(no operation id)'} model {model.id}", operator_id=operator_id,
            card_id=serial))
        return wrapped

    async def load_batch(self, *, actor: str, batch: str, chamber: str, model_id: str, first: str, last: str,
                         key: bytes) -> dict:
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}", batch):
            raise InvalidRequest("batch_id", "1 to 64 letters, digits, '.', '_' or '-'")
        if not re.fullmatch(r"[A-Z]{2,4}", chamber):
            raise InvalidRequest("chamber_code", "a chamber code such as RM")
        if model_id not in self._models:
            raise InvalidRequest("card_model", f"unknown card model {model_id!r}; known: {', '.join(self._models)}")
        for name, s in (("first_serial", first), ("last_serial", last)):
            if len(s) != 16 or not s.isascii() or not s.isprintable():
                raise InvalidRequest(name, "16 printable ASCII characters (EF_IDCarta)")
        if first > last:
            raise InvalidRequest("last_serial", f"not before first_serial {first}")
        if len(key) != 16:
            raise InvalidRequest("transport_key", "16 bytes (AES-128)")
        try:
            await asyncio.to_thread(self._token.load_batch, batch=batch, chamber=chamber, model_id=model_id,
                                    first=first, last=last, key=key)
        except CardKeyError as exc:
            raise FailedPrecondition(str(exc)) from None
        await self.records.record_audit(AuditEntry(actor, "", "card-batch-load", None, batch, "done",
                                                 f"{chamber} {model_id} {first}..{last}", operator_id=actor))
        return {"batch": batch, "chamber": chamber, "model": model_id, "first": first, "last": last}

    def close(self) -> None:
        self._token.close()
        close = getattr(self._rate, "close", None)   # a SharedRate holds its file open
        if close is not None:
            close()
