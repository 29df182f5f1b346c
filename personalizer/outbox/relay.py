"""The relay: delivers outbox rows to the CA, at least once, never issuing twice.

One supervised task (``relay``) keeps up to ``concurrency`` deliveries in
flight: whenever a slot frees or a request arrives (``wake()``), it loads the
due rows of the priority lane (suspend, reactivate, revoke: 24x7), then — only
inside the service window — of the standard lane (issue, renew), skipping rows
already in flight, and starts one delivery task per row. There are no passes:
a request that arrives while others are being delivered starts as soon as a
slot is free, not after the slowest of them. Rows are claimed in one atomic
store call (``claim_due``: ``sending``, committed before the CA is called, held
by this relay's ``claimer`` name), so two daemons sharing one database never
deliver the same row. Each delivery calls the CA and records the outcome in one
transaction (request + outbox + audit):

* success → ISSUED / DONE; after a status change the ``on_status_change``
  hook runs (CRL/OCSP publication);
* a final answer (``TERMINAL_ERRORS``: invalid request, not supported, an
  invalid transition such as suspending a certificate revoked meanwhile, not
  found, conflict) → FAILED with its code and reason, never retried;
* a sign of CA unavailability (``UNAVAILABLE_ERRORS``: ``CAUnavailable``, any
  connector ``CAError``, OS and timeout errors) → retry at ``next_attempt_at``
  (exponential backoff with jitter, persisted), and the circuit breaker
  counts the failure; while it is open nothing is sent and ``health()``
  probes decide when to close it. A store error is retried too, uncounted;
* anything else is this request's own data failing inside the CA (e.g. a
  ValueError from cryptography for an over-long subject attribute) → FAILED
  once (INVALID_ARGUMENT for a ValueError, else INTERNAL); the breaker does
  not count it, so such requests never stop the others.

Claims are never stranded: the broker reserves a slot (``reserve``) before it
commits a request already claimed and delivers it in that same task
(``deliver_claimed``, the immediate path), which its caller cannot cancel; as a safety net a row claimed longer than
``stale_claim_seconds`` ago that this relay does not hold is due again
(``_reclaim_stale``). A claimed row bounced by an open breaker is released
unclaimed (it never reached the CA, so it stays cancellable).

An issuance row whose earlier attempt may have reached the CA (attempts > 1)
is first looked up with ``find_issued(request_id)`` (the connector's, else the
store's registry), so a retry never issues a second certificate; a first
attempt is never looked up (the one place that rule lives: connectors'
``issue`` does not look first, issue 16).

During planned maintenance nothing is sent. Time comes from the injected
``clock``; tests drive ``run_once()`` directly. Must not import grpc or proto.
"""
from __future__ import annotations

import asyncio
import datetime as _dt
import logging
import time
from collections.abc import Awaitable, Callable

from cryptography import x509

from personalizer.rules import validation
from personalizer.ca.base import CAConnector, CertificateSubject, CertRef, CertState
from personalizer.ca.errors import InvalidTransition
from personalizer.errors import (CAError, FailedPrecondition, InvalidRequest, NotFound, NotSupported,
                                 PersonalizerError, RequestConflict, StoreError)
from personalizer.outbox.metrics import CAMetrics
from personalizer.outbox.payloads import (CHANGE_KINDS, ISSUANCE_KINDS, KIND_REACTIVATE, KIND_REVOKE, KIND_SUSPEND,
                                 ChangePayload, IssuancePayload)
from personalizer.outbox.policy import CircuitBreaker, RetryPolicy
from personalizer.records import LANE_PRIORITY, LANE_STANDARD, AuditEntry, OutboxPayload, RequestRecord
from personalizer.store.protocol import RequestStore
from personalizer.outbox.windows import Maintenance, ServiceCalendar, active_maintenance
from personalizer.outbox.windows import from_rows as windows_from_rows

log = logging.getLogger(__name__)
RELAY_ACTOR = "relay"
IDLE_POLL_SECONDS = 5.0
DEPTH_REFRESH_SECONDS = 1.0       # upper bound of one sleep when nothing is due (wake() cuts it short)
# The CA's answer is final: retrying cannot change it (and the CA is not failing: the breaker counts a success).
TERMINAL_ERRORS = (InvalidRequest, NotSupported, FailedPrecondition, InvalidTransition, NotFound, RequestConflict)
# Signs that the CA, or the way to it, is unavailable (CAUnavailable is a CAError; a connector's CAError
# is the CA misbehaving, e.g. refusing our credentials): retried with backoff, counted by the breaker.
# Anything else that is not one of the CA's final answers is this request's own and fails it once.
UNAVAILABLE_ERRORS = (CAError, OSError, TimeoutError)
LOCAL_TRANSIENT_ERRORS = (StoreError,)
STALE_CLAIM_SECONDS = 120.0       # a claim older than this that no live delivery holds is taken back
DEFAULT_CLAIMER = "relay"         # the name this relay's claims carry; reset at its restart (reset_sending)
TARGET_STATE = {KIND_SUSPEND: CertState.SUSPENDED, KIND_REACTIVATE: CertState.ACTIVE, KIND_REVOKE: CertState.REVOKED}


class Relay:
    def __init__(self, *, store: RequestStore, ca: CAConnector, calendar: ServiceCalendar,
                 retry: RetryPolicy = RetryPolicy(), breaker: CircuitBreaker | None = None,
                 metrics: CAMetrics | None = None, clock: Callable[[], float] = time.time,
                 concurrency: int = 32, batch: int = 256,
                 notify: Callable[[RequestRecord], None] = lambda rec: None,
                 watched: Callable[[str], bool] | None = None,
                 on_status_change: Callable[[], Awaitable[None]] | None = None,
                 maintenance: list[Maintenance] = (), stale_claim_seconds: float = STALE_CLAIM_SECONDS,
                 claimer: str = DEFAULT_CLAIMER, maintenance_refresh_seconds: float | None = None):
        self._store, self._ca, self.calendar = store, ca, calendar
        self.claimer = claimer
        self._retry = retry
        self.breaker = breaker or CircuitBreaker()
        self.metrics = metrics or CAMetrics(clock=clock)
        self._clock = clock
        self._sem = asyncio.Semaphore(concurrency)
        self.batch = batch
        self._notify = notify
        self._watched = watched   # None: always re-read a delivered row for notify
        self._on_status_change = on_status_change
        self._config_maintenance = list(maintenance)
        self.maintenance: list[Maintenance] = list(maintenance)
        # several processes on one store ([server] processes > 1): a window stored through another
        # process's QueueAdmin is seen within this many seconds (None: only reload_maintenance() rereads)
        self._maintenance_refresh = maintenance_refresh_seconds
        self._maintenance_at = float("-inf")
        self._maintenance_task: asyncio.Task | None = None
        self._concurrency = concurrency
        self._wake = asyncio.Event()
        self._backlog = True   # rows may be due that no delivery holds (see ``_delivered``)
        self._task: asyncio.Task | None = None
        self._inflight: dict[str, asyncio.Task] = {}
        self._reserved: set[str] = set()   # slots promised to requests being committed claimed
        self._stale_claim_seconds = stale_claim_seconds
        self._reclaimed_at = float("-inf")
        self._hooks: set[asyncio.Task] = set()
        self.last_health_detail = ""
        self._depth_at = 0.0
        self._breaker_recorded = len(self.breaker.transitions)   # transitions already in ca_breaker_events
        self._breaker_why = ""   # the last sign of CA unavailability: the detail of an outage

    # -- control -------------------------------------------------------------------

    def now_dt(self) -> _dt.datetime:
        return _dt.datetime.fromtimestamp(self._clock(), _dt.timezone.utc)

    def wake(self) -> None:
        self._backlog = True   # a row was queued unclaimed: the next free slot looks for it
        self._wake.set()

    def set_on_status_change(self, hook: Callable[[], Awaitable[None]] | None) -> None:
        """Run ``hook`` after every status change delivered (the PKI publisher's publish_now)."""
        self._on_status_change = hook

    async def reload_maintenance(self) -> None:
        self._maintenance_at = time.monotonic()
        rows = await self._store.list_maintenance(self._clock() - 1)
        stored, problems = windows_from_rows(rows, now=self.now_dt())   # a bad row never stops the daemon
        for problem in problems:
            log.warning("%s", problem)
        ids = {m.id for m in stored}
        windows = sorted(stored + [m for m in self._config_maintenance if m.id not in ids], key=lambda m: m.starts_at)
        if windows != self.maintenance or self._task is None:
            self.maintenance = windows
            self.wake()   # the windows changed: when to send changed (unchanged: nothing to look at again)

    async def _refresh_maintenance(self) -> None:
        """With ``maintenance_refresh_seconds``: reread the stored windows when the last read is that old."""
        if self._maintenance_refresh is not None and \
                time.monotonic() - self._maintenance_at >= self._maintenance_refresh:
            await self.reload_maintenance()

    @property
    def maintenance_refresh_seconds(self) -> float | None:
        return self._maintenance_refresh

    async def refresh_maintenance(self) -> None:
        """Before a status reading: the stored windows, reread if older than ``maintenance_refresh_seconds``."""
        await self._refresh_maintenance()

    async def _follow_maintenance(self) -> None:
        """With ``maintenance_refresh_seconds`` (several processes on one store): a window added through
        another process holds here within that time, idle or not (``reserve`` reads the cached windows)."""
        while True:
            await asyncio.sleep(self._maintenance_refresh)
            try:
                await self._refresh_maintenance()
            except asyncio.CancelledError:
                raise
            except Exception as exc:   # the next look tries again; the cached windows stay
                log.warning("could not reread the maintenance windows: %s", exc)

    async def start(self) -> None:
        await self._store.reset_sending(self.claimer)
        await self.reload_maintenance()
        self._task = asyncio.create_task(self._supervise(), name="relay")
        if self._maintenance_refresh is not None:
            self._maintenance_task = asyncio.create_task(self._follow_maintenance(), name="relay-maintenance")

    async def stop(self) -> None:
        try:
            await self._record_breaker()
        except Exception:   # the store may be closing; the event is lost, not the shutdown
            log.warning("could not record the CA circuit breaker's last transitions")
        if self._maintenance_task is not None:
            self._maintenance_task.cancel()
            await asyncio.gather(self._maintenance_task, return_exceptions=True)
            self._maintenance_task = None
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None
        for t in list(self._inflight.values()):   # claimed rows stay 'sending': retried after restart
            t.cancel()
        await asyncio.gather(*self._inflight.values(), return_exceptions=True)
        self._inflight.clear()
        for t in list(self._hooks):
            t.cancel()
        await asyncio.gather(*self._hooks, return_exceptions=True)

    async def _supervise(self) -> None:
        """Restart the loop after an unexpected error (logged), with a pause; cancellation ends it."""
        while True:
            try:
                await self._loop()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("relay loop failed; restarting in 1 s")
                await asyncio.sleep(1.0)

    async def _loop(self) -> None:
        while True:
            self._wake.clear()
            await self._pump()
            if self._wake.is_set():
                continue
            delay = await self._next_wake_delay()
            if delay > 0:
                # asyncio.timeout, not wait_for: 3.11's wait_for can swallow a cancel that arrives as the
                # event is set (stop() then waited forever; seen with the in-memory store, whose calls
                # never yield)
                try:
                    async with asyncio.timeout(delay):
                        await self._wake.wait()
                except TimeoutError:
                    pass

    async def _pump(self) -> int:
        """Start deliveries for due rows while slots are free (priority lane first). Returns how many started."""
        await self._record_breaker()
        await self._refresh_depth()
        await self._refresh_maintenance()
        m = self.active_maintenance()
        self.metrics.in_maintenance = m is not None
        self.metrics.window_open = self.calendar.is_open(self.now_dt())
        self.metrics.breaker_state = self.breaker.state
        await self._reclaim_stale()
        self._backlog = True   # until this pass has seen every open lane's due rows
        if m is not None or not await self._breaker_allows():
            return 0
        started, backlog = 0, False
        for lane in self.lanes_open():
            free = self._concurrency - len(self._inflight) - len(self._reserved)
            if free <= 0:
                backlog = True
                break
            claimed = await self._store.claim_due(self._clock(), (lane,), free, self.claimer)
            backlog = backlog or len(claimed) >= free   # a full claim: more may be due
            for c in claimed:
                rid = c.record.request_id
                task = asyncio.create_task(self._deliver(rid, claimed=(c.record, c.payload)), name=f"deliver:{rid}")
                self._inflight[rid] = task
                task.add_done_callback(lambda t, rid=rid: self._delivered(rid, t))
                started += 1
        self._backlog = backlog
        return started

    # -- fast path: a request claimed as it is accepted -------------------------------

    def reserve(self, lane: str, request_id: str) -> bool:
        """Reserve a delivery slot for a request about to be accepted into ``lane``: True when it may be
        committed already claimed and delivered with ``deliver_claimed`` (relay running, lane open, CA circuit
        closed, a slot free). The caller releases the slot with ``release`` if it commits nothing."""
        if (self._task is None or len(self._inflight) + len(self._reserved) >= self._concurrency
                or self.breaker.state != "closed" or lane not in self.lanes_open()):
            return False
        self._reserved.add(request_id)
        return True

    def release(self, request_id: str) -> None:
        self._reserved.discard(request_id)

    def holds(self, request_id: str) -> bool:
        """True while this relay delivers the request (or a slot is reserved for it)."""
        return request_id in self._inflight or request_id in self._reserved

    async def deliver_claimed(self, rec: RequestRecord, payload: OutboxPayload) -> tuple[bool, RequestRecord | None]:
        """Deliver, in the calling task, a row the broker committed already claimed (``sending``, attempt 1):
        the immediate path (issue 16: no queue scan, no second claim, no delivery task, no hand-off).
        The caller's task holds the slot ``reserve`` gave; ``stop`` cancels it like any delivery. Returns
        (settled, the request as the completing transaction read it back, or None). If the relay has
        stopped, the row stays claimed and is retried after restart: (False, None)."""
        rid = rec.request_id
        self._reserved.discard(rid)
        if self._task is None:
            return False, None
        self._inflight[rid] = asyncio.current_task()
        settled, completed = False, None
        try:
            settled, completed = await self._deliver_one(rid, (rec, payload))
        finally:
            self._inflight.pop(rid, None)
            if self._backlog or not settled:
                self._wake.set()   # as _delivered: a slot is free and rows may wait, or this row waits again
        return settled, completed

    def _delivered(self, request_id: str, task: asyncio.Task) -> None:
        """A delivery ended: its slot is free. The loop looks at the queue again only if that can find
        something: rows may wait for a slot (``_backlog``: the last pass filled every free slot, or one
        was queued unclaimed since, ``wake``), or this row did not settle (a retry is scheduled, its claim
        released, the breaker counted a failure). A request delivered at once that settled leaves
        nothing to look for (issue 16: one queue scan and one next-due read less per certificate)."""
        self._inflight.pop(request_id, None)
        settled = False
        if not task.cancelled():
            if task.exception() is not None:
                log.error("delivery of %s failed unexpectedly: %r; its claim is taken back after %.0f s",
                          request_id, task.exception(), self._stale_claim_seconds)
            else:
                settled = task.result() is True
        if self._backlog or not settled:
            self._wake.set()   # a slot is free (or this row waits again): look again, recompute when to wake

    # -- state questions --------------------------------------------------------------

    def active_maintenance(self) -> Maintenance | None:
        return active_maintenance(self.maintenance, self.now_dt())

    def lanes_open(self) -> tuple[str, ...]:
        if self.active_maintenance() is not None:
            return ()
        return (LANE_PRIORITY, LANE_STANDARD) if self.calendar.is_open(self.now_dt()) else (LANE_PRIORITY,)

    def waiting_reason(self, rec: RequestRecord) -> str:
        if rec.terminal or rec.outbox_status in (None, "done", "failed", "cancelled"):
            return ""
        m = self.active_maintenance()
        if m is not None:
            return f"CA maintenance until {m.ends_at.isoformat()}"
        if self.breaker.state != "closed":
            return f"CA unavailable (circuit {self.breaker.state}): {rec.last_error or self.last_health_detail}"
        if rec.lane == LANE_STANDARD and not self.calendar.is_open(self.now_dt()):
            nxt = self.calendar.next_change(self.now_dt())
            return "outside the CA service window" + (f"; opens {nxt.isoformat()}" if nxt else "")
        if rec.last_error:
            return f"retrying: {rec.last_error}"
        return ""

    async def _next_wake_delay(self) -> float:
        now = self._clock()
        candidates = [IDLE_POLL_SECONDS]
        m = self.active_maintenance()
        if m is not None:
            candidates.append(m.ends_at.timestamp() - now)
        else:
            upcoming = [w.starts_at.timestamp() - now for w in self.maintenance if w.starts_at.timestamp() > now]
            candidates.extend(upcoming[:1])
            if self.breaker.state == "open":
                candidates.append(self.breaker.opened_at + self.breaker.reset_seconds - now)
            nxt = await self._store.next_due(self.lanes_open())
            # a row due now while deliveries run is in flight (claimed a moment later) or waits for a
            # slot: a finishing delivery wakes the loop, so don't spin on it
            if nxt is not None and (nxt > now or not self._inflight):
                candidates.append(nxt - now)
            elif nxt is not None:   # due now, not claimed yet: the next delivery to end looks again
                self._backlog = True
            if LANE_STANDARD not in self.lanes_open():
                change = self.calendar.next_change(self.now_dt())
                if change is not None:
                    candidates.append(change.timestamp() - now)
        return max(0.0, min(candidates))

    # -- one pass ----------------------------------------------------------------------

    async def _refresh_depth(self, force: bool = False) -> None:
        """Queue depth for the metrics, at most once per DEPTH_REFRESH_SECONDS (it is a scan)."""
        now = time.monotonic()
        if force or now - self._depth_at >= DEPTH_REFRESH_SECONDS:
            self._depth_at = now
            self.metrics.queue_depth = await self._store.queue_depth()

    async def run_once(self) -> int:
        """Deliver everything due now, pass by pass (priority lane first), and return the number of rows
        attempted. For tests and tools that step the relay by hand; the running daemon uses ``_pump``."""
        await self._record_breaker()
        await self._refresh_depth()
        await self._refresh_maintenance()
        await self._reclaim_stale()
        m = self.active_maintenance()
        self.metrics.in_maintenance = m is not None
        self.metrics.window_open = self.calendar.is_open(self.now_dt())
        if m is not None:
            return 0
        if not await self._breaker_allows():
            return 0
        done = 0
        for lane in self.lanes_open():
            while True:
                claimed = await self._store.claim_due(self._clock(), (lane,), self.batch, self.claimer)
                if not claimed:
                    break
                await asyncio.gather(*(self._deliver(c.record.request_id, claimed=(c.record, c.payload))
                                       for c in claimed))
                done += len(claimed)
                if self.breaker.state != "closed":
                    break
            if self.breaker.state != "closed":
                break
        await self._refresh_depth(force=done == 0)
        self.metrics.breaker_state = self.breaker.state
        await self._record_breaker()
        return done

    async def _record_breaker(self) -> None:
        """Persist the breaker's new transitions (the outages of the monthly report, issue 19). A store
        error keeps them for the next call: recording never stops deliveries."""
        for at, state in self.breaker.transitions[self._breaker_recorded:]:
            try:
                await self._store.record_breaker_event(at, state, self._breaker_why if state != "closed" else "")
            except StoreError as exc:
                log.warning("CA circuit %s at %.0f not recorded yet: %s", state, at, exc)
                return
            self._breaker_recorded += 1

    async def _reclaim_stale(self) -> None:
        """Safety net: a row claimed (``sending``) and not renewed for ``stale_claim_seconds`` that this relay
        does not hold has lost its holder (a delivery task that died, a process gone): due again now.
        Checked at most every quarter of that bound, so a claim is reclaimed within 1.25 × the bound
        (+ one idle poll). The next attempt looks up the CA first (attempts > 1): never delivered twice."""
        now = self._clock()
        if now - self._reclaimed_at < self._stale_claim_seconds / 4:
            return
        self._reclaimed_at = now
        held = sorted(set(self._inflight) | self._reserved)
        # the lease: this relay's live claims are renewed every quarter bound, so another daemon on the same
        # database never takes one back while its delivery runs (a slow CA call, a long retry lookup)
        await self._store.renew_claims(self.claimer, held)
        n = await self._store.reclaim_stale(now - self._stale_claim_seconds, held,
                                            f"claim without a live delivery for {self._stale_claim_seconds:.0f} s")
        if n:
            log.warning("%d claimed request(s) had no live delivery for %.0f s; due again", n,
                        self._stale_claim_seconds)

    async def _breaker_allows(self) -> bool:
        now = self._clock()
        if self.breaker.allow(now):
            return True
        if not self.breaker.needs_probe(now):
            self.metrics.breaker_state = self.breaker.state
            return False
        try:
            health = await self._ca.health()
            ok, self.last_health_detail = health.operational, health.detail
        except Exception as exc:   # a probe that raises is a failed probe
            ok, self.last_health_detail = False, f"{type(exc).__name__}: {exc}"
        if ok:
            log.info("CA health probe succeeded; circuit closed")
            self.breaker.success(self._clock())
        else:
            log.warning("CA health probe failed (%s); circuit stays open", self.last_health_detail)
            self._breaker_why = f"health probe: {self.last_health_detail}"
            self.breaker.failure(self._clock())
        self.metrics.breaker_state = self.breaker.state
        await self._record_breaker()
        return self.breaker.state == "closed"

    async def _deliver(self, request_id: str, claimed: tuple[RequestRecord, OutboxPayload]) -> bool:
        """Deliver one row this relay claimed (``claim_due``) in its own task. True when it settled
        (done, or failed for good); False when it waits again (a retry, a released claim)."""
        return (await self._deliver_one(request_id, claimed))[0]

    async def _deliver_one(self, request_id: str, claimed: tuple[RequestRecord, OutboxPayload]
                           ) -> tuple[bool, RequestRecord | None]:
        """(settled, the request as its completing transaction read it back, or None)."""
        settled = False
        async with self._sem:
            rec, payload = claimed
            if self.breaker.state != "closed":   # opened since it was claimed (by a sibling in this batch,
                # say): back to the queue, unclaimed (it never reached the CA, so it stays cancellable)
                await self._store.release_claim(request_id, self._clock(), "CA circuit open")
                return False, None
            self._notify(rec)
            t0 = time.perf_counter()
            completed = None   # the request as committed, when the store read it back
            try:
                if payload.kind in ISSUANCE_KINDS:
                    completed = await self._deliver_issuance(rec, IssuancePayload.decode(payload.payload))
                elif payload.kind in CHANGE_KINDS:
                    await self._deliver_change(rec, payload.kind, ChangePayload.decode(payload.payload))
                else:
                    raise InvalidRequest("kind", f"unknown outbox kind {payload.kind!r}")
            except TERMINAL_ERRORS as exc:   # the CA's final answer: it is up and said no
                self.metrics.record(payload.kind, (time.perf_counter() - t0) * 1000, True)
                self.breaker.success(self._clock())
                await self._fail(rec, payload.kind, exc.code, getattr(exc, "field", ""),
                                 getattr(exc, "message", str(exc)))
                settled = True
            except UNAVAILABLE_ERRORS as exc:   # signs of CA unavailability: retry, and the breaker counts
                self.metrics.record(payload.kind, (time.perf_counter() - t0) * 1000, False)
                self._breaker_why = f"{type(exc).__name__}: {exc}"
                self.breaker.failure(self._clock())
                await self._retry_later(rec, str(exc) if isinstance(exc, PersonalizerError) else
                                        f"{type(exc).__name__}: {exc}")
            except LOCAL_TRANSIENT_ERRORS as exc:   # our store, not the CA: retry, the breaker does not count
                log.warning("store error delivering %s: %s; will retry", request_id, exc)
                await self._retry_later(rec, str(exc))
            except Exception as exc:   # deterministic: this request's data fails inside the CA every time
                code, message = _deterministic_failure(exc)
                if code == "INTERNAL":
                    log.exception("unexpected error delivering %s; failing it (retrying cannot help)", request_id)
                await self._fail(rec, payload.kind, code, "", message)
                settled = True
            else:
                self.metrics.record(payload.kind, (time.perf_counter() - t0) * 1000, True)
                self.breaker.success(self._clock())
                settled = True
            if self._watched is None or self._watched(request_id):   # a read per delivery only if someone waits
                final = completed if completed is not None else await self._store.get_request(request_id)
                if final is not None:
                    self._notify(final)
        return settled, completed

    async def _fail(self, rec: RequestRecord, kind: str, code: str, field: str, message: str) -> None:
        await self._store.fail_request(rec.request_id, code, field, message, audit=AuditEntry(
            RELAY_ACTOR, rec.station_id, kind, rec.request_id, _target(rec), f"failed:{code}", message))
        log.info("request %s (%s) failed at the CA: %s %s", rec.request_id, kind, code, message)

    async def _retry_later(self, rec: RequestRecord, reason: str) -> None:
        at = self._clock() + self._retry.delay(rec.attempts)
        await self._store.schedule_retry(rec.request_id, at, reason)
        log.info("request %s attempt %d failed (%s); next attempt in %.1f s", rec.request_id, rec.attempts,
                 reason, at - self._clock())

    async def sign_first(self, rec: RequestRecord, payload: bytes, budget: float) -> dict | None:
        """The immediate path when the CA's records are written by the request's own transaction (issue 16,
        ``Broker.sign_first``): sign a request whose slot ``reserve`` gave BEFORE anything is committed, and
        return what ``store.enqueue_issued`` needs to commit the request and its certificate at once. None
        when the CA did not sign within ``budget`` seconds (the call is cancelled), or failed: the caller
        commits the request and delivers it as usual (that delivery calls the CA again and judges its
        answer: retry, failure, breaker), so a slow CA never holds a request uncommitted longer than
        ``budget``. Signed in the calling task (no hand-off)."""
        p = IssuancePayload.decode(payload)
        t0 = time.perf_counter()
        try:
            async with asyncio.timeout(budget):
                issued = await self._sign(rec.request_id, p)
        except Exception as exc:   # judged by the ordinary delivery that follows (TimeoutError included)
            log.debug("signing %s before its commit: %r; delivering it as usual", rec.request_id, exc)
            return None
        self.metrics.record(rec.kind, (time.perf_counter() - t0) * 1000, True)
        self.breaker.success(self._clock())
        return dict(issued=issued, done_audit=self._done_audit(rec, p), card_id=p.card_id, holder_cf=p.codice_fiscale)

    @staticmethod
    def _done_audit(rec: RequestRecord, p: IssuancePayload) -> AuditEntry:
        return AuditEntry(RELAY_ACTOR, rec.station_id, rec.kind, rec.request_id, p.card_id, "done")

    async def _sign(self, request_id: str, p: IssuancePayload):
        csr = x509.load_der_x509_csr(p.csr_der)
        holder = validation.Holder(p.codice_fiscale, p.given_name, p.surname, _dt.date.fromisoformat(p.birth_date))
        subject = CertificateSubject(holder, p.card_id, p.dati_personali_hash)
        return await self._ca.issue(p.profile, csr, subject, request_id)

    async def _deliver_issuance(self, rec: RequestRecord, p: IssuancePayload) -> RequestRecord | None:
        """The request as ``complete_issue`` committed it (None: the store does not read it back)."""
        audit = self._done_audit(rec, p)
        if rec.attempts > 1:   # an earlier attempt may have reached the CA: look before issuing again
            found = await self._find_issued(rec.request_id)
            if found is not None:
                log.info("request %s was already issued by the CA (serial %s); recording it", rec.request_id,
                         found.ref.serial_hex)
                return await self._store.complete_issue(rec.request_id, found, p.profile, card_id=p.card_id,
                                                        holder_cf=p.codice_fiscale, audit=audit)
        issued = await self._sign(rec.request_id, p)   # a first attempt: no look-up
        return await self._store.complete_issue(rec.request_id, issued, p.profile, card_id=p.card_id,
                                                holder_cf=p.codice_fiscale, audit=audit)

    async def _find_issued(self, request_id: str):
        finder = getattr(self._ca, "find_issued", None)
        if finder is not None:
            return await finder(request_id)
        found = await self._store.find_issued(request_id)
        return found[0] if found else None

    async def _deliver_change(self, rec: RequestRecord, kind: str, p: ChangePayload) -> None:
        ref = CertRef(p.issuer_dn, p.serial_hex)
        if rec.attempts > 1:   # idempotent on retry: already in the target state → done
            info = await self._ca.status(ref)
            if info is not None and info.state is TARGET_STATE[kind] and (
                    kind != KIND_SUSPEND or info.revocation_reason in ("", "certificateHold")):
                await self._complete_change(rec, kind, info)
                return
        if kind == KIND_SUSPEND:
            info = await self._ca.suspend(ref)
        elif kind == KIND_REACTIVATE:
            info = await self._ca.reactivate(ref)
        else:
            info = await self._ca.revoke(ref, p.reason)
        await self._complete_change(rec, kind, info)

    async def _complete_change(self, rec: RequestRecord, kind: str, info) -> None:
        await self._store.complete_change(rec.request_id, info, audit=AuditEntry(
            RELAY_ACTOR, rec.station_id, kind, rec.request_id, _target(rec), "done", info.state.value))
        if self._on_status_change is not None:
            task = asyncio.create_task(self._run_hook(), name=f"publish-after-{kind}")
            self._hooks.add(task)
            task.add_done_callback(self._hooks.discard)

    async def _run_hook(self) -> None:
        try:
            await self._on_status_change()
        except Exception:
            log.exception("publication after a status change failed; the periodic refresh will retry")


def _deterministic_failure(exc: Exception) -> tuple[str, str]:
    """(code, message) of a request that fails inside the CA for its own data (e.g. cryptography's
    ValueError for a subject attribute over 64 characters): the same data fails the same way again."""
    if isinstance(exc, ValueError):
        return "INVALID_ARGUMENT", f"the CA cannot certify this request's data: {str(exc)[:300]}"
    return "INTERNAL", f"the CA failed on this request ({type(exc).__name__}); see the daemon's log"


def _target(rec: RequestRecord) -> str:
    return f"{rec.issuer_dn}#{rec.serial_hex}" if rec.issuer_dn else ""
