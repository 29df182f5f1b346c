"""The fleet's gRPC edge: ``Fleet`` (the agent-opened stream and its polling twin) and ``FleetAdmin``.

A station is who its mTLS certificate says (``identity.current_identity()``, resolved by the
``AuthInterceptor``); no message carries an identity. ``Connect`` expects a hello first (within
``hello_timeout``), answers a welcome naming the identity it read and the heartbeat interval, then
writes the station's open commands from the store whenever the hub wakes it; the agent's messages are
read by a task of the call. A stream silent for ``3 × heartbeat`` is closed (a dead agent behind a
proxy). ``Poll`` takes the same messages in one call and answers with the open commands: both paths go
through ``_handle``, so the server treats them alike. When the daemon stops (``close_streams``) every
stream ends with OK and the trailing metadata ``cns-reconnect-spread-ms``: the window, scaled by the
streams it held, over which its agents spread their reconnects.

Refusals (bad or oversize inventory, too many hellos, a report on a command never sent to this
station, a second hello on one stream) get their status code, a row in the fleet audit and change
nothing. ``FleetAdmin`` reads the inventory and creates commands (admin role only, in METHOD_ROLES).

Imports grpc, proto, ``personalizer.edge.identity``, ``personalizer.errors`` and the fleet's store/hub.
"""
from __future__ import annotations

import asyncio
import functools
import logging
import re
import time

import grpc

from personalizer.edge import identity
from personalizer.errors import FailedPrecondition, InvalidRequest, NotFound, PersonalizerError
from personalizer.fleet import rollout_rules as rr, store as fs
from personalizer.fleet.hub import Hub, Replaced, Session, Stopping
from personalizer.fleet.metrics import FleetFigures
from personalizer.fleet.rollouts import Rollouts
from proto.cns.v1 import fleet_pb2 as pb, fleet_pb2_grpc

log = logging.getLogger(__name__)

MAX_DEVICES = 64
MAX_READERS = 16
MAX_KEYSETS = 8
MAX_TEXT = 128
MAX_POLL_MESSAGES = 256
MAX_WITHIN_DAYS = 3650
SPREAD_KEY = "cns-reconnect-spread-ms"   # trailing metadata of a stream ended by a stopping daemon
_TEXT_RE = re.compile(r"[\x20-\x7e]*")

KINDS = {pb.FLEET_COMMAND_REFRESH_INVENTORY: "refresh_inventory", pb.FLEET_COMMAND_RENEW_DUE: "renew_due",
         pb.FLEET_COMMAND_INSTALL_RELEASE: "install_release", pb.FLEET_COMMAND_COLLECT_LOGS: "collect_logs"}
KIND_CODES = {v: k for k, v in KINDS.items()}
STATES = {fs.PENDING: pb.FLEET_COMMAND_PENDING, fs.SENT: pb.FLEET_COMMAND_SENT, fs.ACKED: pb.FLEET_COMMAND_ACKED,
          fs.RUNNING: pb.FLEET_COMMAND_RUNNING, fs.SUCCEEDED: pb.FLEET_COMMAND_SUCCEEDED,
          fs.FAILED: pb.FLEET_COMMAND_FAILED, fs.REJECTED: pb.FLEET_COMMAND_REJECTED,
          fs.TIMED_OUT: pb.FLEET_COMMAND_TIMED_OUT, fs.CANCELLED: pb.FLEET_COMMAND_CANCELLED}


class TooMany(PersonalizerError):
    code = "RESOURCE_EXHAUSTED"


def _status(exc: PersonalizerError) -> grpc.StatusCode:
    return getattr(grpc.StatusCode, exc.code, grpc.StatusCode.INTERNAL)


def _text(field: str, value: str) -> str:
    if len(value) > MAX_TEXT or not _TEXT_RE.fullmatch(value):
        raise InvalidRequest(field, f"at most {MAX_TEXT} printable ASCII characters")
    return value


def device_from_pb(d: pb.FleetDevice, where: str) -> fs.Device:
    if not d.serial:
        raise InvalidRequest(f"{where}.serial", "a device needs its serial")
    if len(d.certificates) > MAX_KEYSETS:
        raise InvalidRequest(f"{where}.certificates", f"at most {MAX_KEYSETS} keysets per device")
    for name in ("kind", "model", "serial", "firmware_version", "partition_version", "token_release", "reader"):
        _text(f"{where}.{name}", getattr(d, name))
    certs = tuple(fs.Keyset(_text(f"{where}.certificates.keyset", k.keyset), k.not_after) for k in d.certificates)
    return fs.Device(serial=d.serial, kind=d.kind or "card", model=d.model, firmware_version=d.firmware_version,
                     partition_version=d.partition_version, token_release=d.token_release, reader=d.reader,
                     certificates=certs)


def device_to_pb(d: fs.Device) -> pb.FleetDevice:
    return pb.FleetDevice(kind=d.kind, model=d.model, serial=d.serial, firmware_version=d.firmware_version,
                          partition_version=d.partition_version, token_release=d.token_release, reader=d.reader,
                          certificates=[pb.FleetKeysetExpiry(keyset=k.keyset, not_after=k.not_after)
                                        for k in d.certificates])


def _devices(devices, where: str) -> list[fs.Device]:
    if len(devices) > MAX_DEVICES:
        raise InvalidRequest(where, f"at most {MAX_DEVICES} devices per station; got {len(devices)}")
    out = [device_from_pb(d, f"{where}[{i}]") for i, d in enumerate(devices)]
    if len({d.serial for d in out}) != len(out):
        raise InvalidRequest(where, "a serial is listed twice")
    return out


def _readers(readers, where: str) -> list[str]:
    if len(readers) > MAX_READERS:
        raise InvalidRequest(where, f"at most {MAX_READERS} readers; got {len(readers)}")
    return [_text(where, r) for r in readers]


def _inventory(inv: pb.FleetInventoryDelta) -> tuple[list[fs.Device], list[str], list[str] | None]:
    """(present, removed serials, readers or None when unchanged) of a checked inventory delta."""
    present = _devices(inv.present, "inventory.present")
    if len(inv.removed_serials) > MAX_DEVICES:
        raise InvalidRequest("inventory.removed_serials", f"at most {MAX_DEVICES}")
    removed = [_text("inventory.removed_serials", s) for s in inv.removed_serials]
    return present, removed, (_readers(inv.readers, "inventory.readers") if inv.readers_changed else None)


def _attestation(r: pb.FleetCommandResult) -> None:
    if len(r.attestation) > 16384:
        raise InvalidRequest("result.attestation", "at most 16 KiB")


def command_to_pb(c: fs.Command) -> pb.FleetCommand:
    return pb.FleetCommand(command_id=c.command_id, kind=KIND_CODES.get(c.kind, 0), device_serial=c.device_serial,
                           release=c.release)


def status_to_pb(c: fs.Command) -> pb.FleetCommandStatus:
    return pb.FleetCommandStatus(command_id=c.command_id, station=c.station, command=command_to_pb(c),
                                 state=STATES[c.state], percent=c.percent, message=c.message,
                                 created=int(c.created), updated=int(c.updated))


class _Audited:
    store: fs.FleetStore
    figures: FleetFigures

    async def audit_refusal(self, *, actor: str, station_id: str, method: str, request, exc) -> None:
        """Called by ``identity.AuthInterceptor`` when it refuses a call to this service."""
        self.figures.refusals[getattr(exc, "code", "PERMISSION_DENIED")] += 1
        await self.store.audit(actor, method.rsplit("/", 1)[-1], "refused", {"reason": str(exc)})

    async def _refused(self, actor: str, action: str, exc: PersonalizerError, context):
        self.figures.refusals[exc.code] += 1
        try:
            await self.store.audit(actor, action, "refused", {"reason": str(exc), "code": exc.code})
        except Exception:   # the refusal stands even if its audit row cannot be written
            log.exception("could not audit a refused fleet call")
        await context.abort(_status(exc), str(exc))


def _unary(fn):
    """PersonalizerError → its status code, after one audit row; anything else → INTERNAL (logged)."""
    @functools.wraps(fn)
    async def call(self, request, context):
        try:
            return await fn(self, request, context)
        except PersonalizerError as exc:
            await self._refused(identity.current_identity().uri, fn.__name__, exc, context)
        except grpc.aio.AbortError:
            raise
        except Exception:
            log.exception("unexpected error in Fleet %s", fn.__name__)
            await context.abort(grpc.StatusCode.INTERNAL, "internal error; see the daemon's log")
    return call


class FleetService(_Audited, fleet_pb2_grpc.FleetServicer):
    def __init__(self, store: fs.FleetStore, hub: Hub, *, heartbeat_seconds: float = 30, poll_seconds: float = 60,
                 hello_timeout: float = 10, hellos_per_minute: int = 10, on_report=None, clock=time.monotonic,
                 figures: FleetFigures | None = None, seen_flush_seconds: float = 5.0,
                 reconnect_admit_per_second: float = 200.0, hello_rate=None):
        self.figures = figures or FleetFigures()
        # several processes of one daemon ([server] processes > 1): the hellos of a station are counted in
        # one bucket for the whole daemon (personalizer.rate.SharedRate, ``allow(key)``), since the kernel
        # hands its connections to any process; None: this process's sliding minute below
        self.hello_rate = hello_rate
        self.store = store
        self.hub = hub
        # hellos a second this daemon admits without queueing them: when it stops, its agents are told to spread
        # their reconnects over streams / this. bench fleet, 2 cores, 5,000 agents: 200 a second (connect)
        # welcomed in 0.014 s at the median; 250 a second (the old default, plus the retries of the agents that
        # met the daemon down) in 1.4-2.6 s, and at 12,000 agents grpc core cancelled calls left unrequested 30 s
        self.reconnect_admit_per_second = reconnect_admit_per_second
        self.heartbeat_seconds = heartbeat_seconds
        self.poll_seconds = poll_seconds
        self.hello_timeout = hello_timeout
        self.hellos_per_minute = hellos_per_minute
        self.on_report = on_report   # async (command) -> None after a command moved (rollouts listen here)
        self._clock = clock
        self._hellos: dict[str, list[float]] = {}   # a list, not a deque (~600 B) per station: 20,000 of them
        self.closing = False   # set before the store closes: streams ending then leave the store alone
        self._bookkeeping: set[asyncio.Task] = set()
        self._sent_batch: list[str] = []
        self._seen_batch: dict[str, float] = {}
        self._seen_flusher: asyncio.Task | None = None
        self.seen_flush_seconds = seen_flush_seconds
        self._flusher: asyncio.Task | None = None
        # accepted acks of commands written on the acking stream, written in batches (one transaction)
        self._ack_batch: dict[str, tuple[str, str]] = {}          # command id -> (station, reason)
        self._ack_done: asyncio.Future | None = None               # the pending batch's, set once it is written
        self._ack_waits: dict[str, asyncio.Future] = {}            # command id -> its batch's future
        self._ack_flusher: asyncio.Task | None = None
        self._watcher: asyncio.Task | None = None

    def close_streams(self) -> int:
        """End every stream now, normally (the daemon stops), its agents told to spread their reconnects over
        (streams / ``reconnect_admit_per_second``) seconds, so the restarted daemon or the surviving instance
        is not met by the whole fleet in the same second."""
        return self.hub.close_all(len(self.hub) / self.reconnect_admit_per_second)

    def welcome(self, station: str) -> pb.FleetWelcome:
        return pb.FleetWelcome(station=station, heartbeat_seconds=max(1, round(self.heartbeat_seconds)),
                               poll_seconds=max(1, round(self.poll_seconds)))

    def _count_hello(self, station: str) -> None:
        if self.hello_rate is not None:
            if not self.hello_rate.allow(station):
                raise TooMany(f"more than {self.hellos_per_minute} hellos a minute from {station}; "
                              "reconnect with backoff")
            return
        now = self._clock()
        q = self._hellos.setdefault(station, [])
        while q and q[0] < now - 60:
            del q[0]
        if len(q) >= self.hellos_per_minute:
            raise TooMany(f"more than {self.hellos_per_minute} hellos a minute from {station}; "
                          "reconnect with backoff")
        q.append(now)
        if len(self._hellos) > 100_000:   # bounded: forget the stations quiet for a minute
            for k in [k for k, v in self._hellos.items() if not v or v[-1] < now - 60]:
                del self._hellos[k]

    async def _hello(self, ident: identity.Identity, hello: pb.FleetHello, path: str) -> None:
        self._count_hello(ident.uri)
        devices = _devices(hello.devices, "hello.devices")
        readers = _readers(hello.readers, "hello.readers")
        await self.store.record_hello(ident.uri, ident.chamber_code or "", ident.subject_id,
                                      _text("hello.agent_version", hello.agent_version), readers, devices)
        self.figures.hellos[path] += 1

    async def _handle(self, ident: identity.Identity, msg: pb.FleetAgentMessage,
                      session: Session | None = None) -> None:
        """One agent message after the hello, from the stream (``session``) or a poll."""
        station = ident.uri
        body = msg.WhichOneof("body")
        if body == "ack" and msg.ack.accepted and session is not None and msg.ack.command_id in session.sent:
            self._note_ack(station, msg.ack.command_id, msg.ack.reason)   # this stream sent it: no refusal possible
            return
        if body in ("progress", "result"):   # an ack of the same command still in a batch is written first
            waiting = self._ack_waits.get(getattr(msg, body).command_id)
            if waiting is not None:
                await asyncio.shield(waiting)
        if body == "heartbeat":
            self._note_seen(station)
            return
        if body == "inventory":
            await self.store.apply_delta(station, *_inventory(msg.inventory))
            return
        if body == "ack":
            a = msg.ack
            cmd = await self.store.update_command(station, a.command_id, fs.ACKED if a.accepted else fs.REJECTED,
                                                  message=a.reason)
        elif body == "progress":
            p = msg.progress
            cmd = await self.store.update_command(station, p.command_id, fs.RUNNING, percent=p.percent,
                                                  message=p.message)
        elif body == "result":
            r = msg.result
            _attestation(r)
            state, attestation = fs.SUCCEEDED if r.success else fs.FAILED, bytes(r.attestation) or None
            try:
                cmd = await self.store.update_command(station, r.command_id, state,
                                                      percent=100 if r.success else None, message=r.message,
                                                      attestation=attestation)
            except FailedPrecondition:
                # the same result again, from the station it was sent to (its first write was cut by a stream
                # that ended, so the agent could not know it arrived): recorded already, nothing changes and
                # it is not counted twice. A different report after the final one is still refused.
                was = await self.store.get_command(r.command_id)
                if (was.station, was.state, was.message, was.attestation) == (station, state, r.message[:500],
                                                                               attestation or was.attestation):
                    self._note_seen(station)
                    return
                raise
        elif body == "hello":
            raise FailedPrecondition("a stream or poll session sends one hello, first")
        else:
            raise InvalidRequest("message", "empty agent message")
        self.figures.reports[cmd.state] += 1
        if self.on_report is not None:
            try:
                await self.on_report(cmd)
            except Exception:   # the report is recorded; the rollout engine's tick looks again
                log.exception("rollout bookkeeping failed for command %s", cmd.command_id)

    async def _deliver(self, session: Session) -> list[pb.FleetCommand]:
        """The station's open commands not yet written on this session, marked SENT in a batch (``_note_sent``):
        a restart's thousands of reconnecting streams each had a transaction of their own here."""
        cmds = [c for c in await self.store.open_commands(session.station) if c.command_id not in session.sent]
        session.sent.update(c.command_id for c in cmds)
        self._note_sent([c.command_id for c in cmds])
        return [command_to_pb(c) for c in cmds]

    async def _read(self, it, ident: identity.Identity, session: Session) -> None:
        """The agent's messages after the hello; a failure ends the call through the session's queue. A plain
        read, no timer per message: ``_watch`` ends the streams silent for 3 heartbeats (a ``wait_for`` here
        held a task and a timer per stream and made both again for every heartbeat)."""
        try:
            async for msg in it:
                session.heard = time.monotonic()
                await self._handle(ident, msg, session)
            session.fail(EOFError())
        except PersonalizerError as exc:
            session.fail(exc)
        except asyncio.CancelledError:
            raise
        except Exception as exc:   # the stream broke under us (client gone): end the call
            session.fail(exc)

    def _start_watch(self) -> None:
        if self._watcher is None or self._watcher.done():
            self._watcher = asyncio.create_task(self._watch(), name="fleet-heartbeat-watch")
            self._bookkeeping.add(self._watcher)
            self._watcher.add_done_callback(self._bookkeeping.discard)

    async def _watch(self) -> None:
        """One task for every stream: every half heartbeat, end those not heard from in 3 heartbeats (a dead
        agent behind a proxy); ends itself when no stream is left (the next Connect starts it again)."""
        limit = 3 * self.heartbeat_seconds
        while len(self.hub) and not self.closing:
            await asyncio.sleep(self.heartbeat_seconds / 2)
            now = time.monotonic()
            for s in self.hub.sessions():
                if s.heard and now - s.heard > limit:
                    s.heard = 0.0   # failed once
                    s.fail(TimeoutError(f"no heartbeat from {s.station} in {limit:g} s"))

    async def Connect(self, request_iterator, context):
        ident = identity.current_identity()
        it = request_iterator.__aiter__()
        started = time.monotonic()
        try:
            try:
                async with asyncio.timeout(self.hello_timeout):   # not wait_for: 3.11's can lose a cancel
                    first = await it.__anext__()
            except (TimeoutError, StopAsyncIteration):
                raise InvalidRequest("hello", f"no hello within {self.hello_timeout:g} s of connecting") from None
            if first.WhichOneof("body") != "hello":
                raise InvalidRequest("hello", "the first message of a stream must be a hello")
            read = time.monotonic()
            await self._hello(ident, first.hello, "stream")
            self.figures.hello_seconds["wait"].observe(read - started)
            self.figures.hello_seconds["record"].observe(time.monotonic() - read)
        except PersonalizerError as exc:
            await self._refused(ident.uri, "Connect", exc, context)
        session = self.hub.attach(ident.uri)
        session.heard = time.monotonic()
        reader = asyncio.create_task(self._read(it, ident, session))
        self._start_watch()
        try:
            yield pb.FleetServerMessage(welcome=self.welcome(ident.uri))
            while True:
                item = await session.queue.get()
                if isinstance(item, PersonalizerError):
                    await self._refused(ident.uri, "Connect", item, context)
                if isinstance(item, Replaced):
                    await context.abort(grpc.StatusCode.ABORTED, str(item))
                if isinstance(item, TimeoutError):
                    await context.abort(grpc.StatusCode.DEADLINE_EXCEEDED, str(item))
                if isinstance(item, Stopping):   # tell the agent how long to spread its reconnect over
                    context.set_trailing_metadata(((SPREAD_KEY, str(round(item.spread_seconds * 1000))),))
                if isinstance(item, BaseException):   # the agent closed its side, or the connection broke
                    return
                if isinstance(item, list):   # new commands handed over by the hub: no store read
                    fresh = [c for c in item if c.command_id not in session.sent]
                    session.sent.update(c.command_id for c in fresh)
                    for c in fresh:
                        yield pb.FleetServerMessage(command=command_to_pb(c))
                    self._note_sent([c.command_id for c in fresh])
                    continue
                for cmd in await self._deliver(session):
                    yield pb.FleetServerMessage(command=cmd)
        finally:
            reader.cancel()
            if self.hub.detach(session) and not self.closing:
                # a task of its own: this handler may be cancelled (server stopping, peer gone), and
                # ``drain`` lets the store finish these writes before it closes
                task = asyncio.create_task(self._mark_gone(ident.uri))
                self._bookkeeping.add(task)
                task.add_done_callback(self._bookkeeping.discard)

    def _note_seen(self, station: str) -> None:
        """Heartbeats are written in batches every ``seen_flush_seconds`` (one commit, not one per agent)."""
        self._seen_batch[station] = time.time()
        if self._seen_flusher is None or self._seen_flusher.done():
            self._seen_flusher = asyncio.create_task(self._flush_seen())
            self._bookkeeping.add(self._seen_flusher)
            self._seen_flusher.add_done_callback(self._bookkeeping.discard)

    async def _flush_seen(self) -> None:
        if not self.closing:
            await asyncio.sleep(self.seen_flush_seconds)
        if self._seen_batch:
            batch, self._seen_batch = self._seen_batch, {}
            try:
                await self.store.seen_many(batch)
            except Exception:   # the next heartbeat tries again
                log.exception("could not record %d heartbeats", len(batch))

    def _note_sent(self, ids: list[str]) -> None:
        """Mark written commands SENT in batches (one transaction for a broadcast's thousands of streams)."""
        if not ids:
            return
        self._sent_batch += ids
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._flush_sent())
            self._bookkeeping.add(self._flusher)
            self._flusher.add_done_callback(self._bookkeeping.discard)

    async def _flush_sent(self) -> None:
        await asyncio.sleep(0.05)
        while self._sent_batch and not self.closing:
            batch, self._sent_batch = self._sent_batch, []
            try:
                await self.store.mark_sent(batch)
            except Exception:   # they stay pending and are sent again on the next stream: harmless
                log.exception("could not mark %d fleet commands sent", len(batch))

    def _note_ack(self, station: str, command_id: str, reason: str) -> None:
        """Accepted acks in batches, like SENT: a broadcast's thousands of acks in one transaction instead of a
        read and a commit each. Until written the command stays SENT: a stream broken meanwhile gets it again
        and the agent acknowledges it again (it runs a command once per id)."""
        if self._ack_done is None:
            self._ack_done = asyncio.get_running_loop().create_future()
        self._ack_batch[command_id] = (station, reason)
        self._ack_waits[command_id] = self._ack_done
        if self._ack_flusher is None or self._ack_flusher.done():
            self._ack_flusher = asyncio.create_task(self._flush_acks())
            self._bookkeeping.add(self._ack_flusher)
            self._ack_flusher.add_done_callback(self._bookkeeping.discard)

    async def _flush_acks(self) -> None:
        await asyncio.sleep(0.02)
        while self._ack_batch:
            batch, done = self._ack_batch, self._ack_done
            self._ack_batch, self._ack_done = {}, None
            moved: list[fs.Command] = []
            try:
                moved = await self.store.ack_many([(st, cid, reason) for cid, (st, reason) in batch.items()])
            except Exception:   # they stay SENT: sent again on the next stream, acknowledged again
                log.exception("could not record %d fleet command acks", len(batch))
            finally:
                for cid in batch:
                    if self._ack_waits.get(cid) is done:
                        del self._ack_waits[cid]
                done.set_result(None)
            for cmd in moved:
                self.figures.reports[cmd.state] += 1
                if self.on_report is not None:
                    try:
                        await self.on_report(cmd)
                    except Exception:
                        log.exception("rollout bookkeeping failed for command %s", cmd.command_id)

    async def _mark_gone(self, station: str) -> None:
        try:
            await self.store.set_connected(station, False)
        except Exception:
            log.exception("could not mark %s disconnected", station)

    async def drain(self) -> None:
        """Before the store closes: no new bookkeeping, and the pending writes (heartbeats included) done."""
        self.closing = True
        for task in (self._seen_flusher, self._watcher):
            if task is not None and not task.done():
                task.cancel()
        await asyncio.gather(*list(self._bookkeeping), return_exceptions=True)
        await self._flush_seen()

    async def _precheck(self, ident: identity.Identity, msgs: list) -> None:
        """The refusals a poll's messages would meet, before any is applied, so that a refused poll records
        nothing (issue 10, found by the fuzz: a hello was recorded, then its poll refused). A report on a
        command in a state it cannot follow is still found only when it is applied."""
        for i, m in enumerate(msgs):
            body = m.WhichOneof("body")
            if body == "hello":
                if i:
                    raise FailedPrecondition("a stream or poll session sends one hello, first")
                _devices(m.hello.devices, "hello.devices")
                _readers(m.hello.readers, "hello.readers")
                _text("hello.agent_version", m.hello.agent_version)
            elif body == "inventory":
                _inventory(m.inventory)
            elif body in ("ack", "progress", "result"):
                report = getattr(m, body)
                if body == "result":
                    _attestation(report)
                try:
                    cmd = await self.store.get_command(report.command_id)
                except NotFound:
                    cmd = None
                if cmd is None or cmd.station != ident.uri:
                    raise NotFound(f"command {report.command_id!r} was not sent to this station")
            elif body != "heartbeat":
                raise InvalidRequest("message", "empty agent message")

    @_unary
    async def Poll(self, request: pb.FleetPollRequest, context) -> pb.FleetPollResponse:
        ident = identity.current_identity()
        if len(request.messages) > MAX_POLL_MESSAGES:
            raise InvalidRequest("messages", f"at most {MAX_POLL_MESSAGES} per poll")
        msgs = list(request.messages)
        await self._precheck(ident, msgs)
        if msgs and msgs[0].WhichOneof("body") == "hello":
            await self._hello(ident, msgs.pop(0).hello, "poll")
            await self.store.set_connected(ident.uri, False)   # polling: reachable, but not on a stream
        elif await self.store.get_station(ident.uri) is None:
            raise FailedPrecondition("this station has not said hello; start the poll session with a hello")
        else:
            await self.store.seen(ident.uri)
        for m in msgs:
            await self._handle(ident, m)
        self.figures.polls += 1
        session = Session(ident.uri)   # a poll delivers every open command each time until acknowledged
        return pb.FleetPollResponse(welcome=self.welcome(ident.uri), commands=await self._deliver(session))


def query_from_pb(q: pb.FleetInventoryQuery) -> fs.Query:
    for name in ("chamber", "model", "firmware_version", "token_release", "agent_version", "search", "page_token"):
        _text(name, getattr(q, name))
    return fs.Query(chamber=q.chamber, model=q.model, firmware_version=q.firmware_version,
                    token_release=q.token_release, agent_version=q.agent_version,
                    last_seen_before=q.last_seen_before, last_seen_after=q.last_seen_after, search=q.search,
                    page_size=q.page_size, page_token=q.page_token)


class _FleetAdminBase(_Audited, fleet_pb2_grpc.FleetAdminServicer):
    def __init__(self, store: fs.FleetStore, hub: Hub, *, rollouts: Rollouts | None = None, clock=time.time,
                 figures: FleetFigures | None = None):
        self.figures = figures or FleetFigures()
        self.store = store
        self.hub = hub
        self.rollouts = rollouts
        self._clock = clock

    @_unary
    async def ListStations(self, request, context) -> pb.FleetListStationsResponse:
        page = await self.store.list_stations(query_from_pb(request))
        return pb.FleetListStationsResponse(
            stations=[pb.FleetStationRecord(station=s.station, chamber=s.chamber, station_id=s.station_id,
                                            agent_version=s.agent_version, readers=list(s.readers),
                                            last_seen=int(s.last_seen),
                                            # the store's flag: the stream may be open on another instance
                                            connected=s.connected or self.hub.is_connected(s.station),
                                            device_count=s.device_count) for s in page.rows],
            next_page_token=page.next_page_token, total=page.total)

    @_unary
    async def ListDevices(self, request, context) -> pb.FleetListDevicesResponse:
        page = await self.store.list_devices(query_from_pb(request))
        return pb.FleetListDevicesResponse(
            devices=[pb.FleetDeviceRecord(station=d.station, chamber=d.chamber, device=device_to_pb(d.device),
                                          last_seen=int(d.last_seen)) for d in page.rows],
            next_page_token=page.next_page_token, total=page.total)

    @_unary
    async def ExpiringCertificates(self, request, context) -> pb.FleetExpiringResponse:
        if not 0 < request.within_days <= MAX_WITHIN_DAYS:
            raise InvalidRequest("within_days", f"between 1 and {MAX_WITHIN_DAYS}; got {request.within_days}")
        before = int(self._clock() + request.within_days * 86400)
        page = await self.store.expiring(query_from_pb(request.query), before)
        return pb.FleetExpiringResponse(
            certificates=[pb.FleetExpiringCertificate(station=r.station, chamber=r.chamber, serial=r.serial,
                                                      model=r.model, keyset=r.keyset, not_after=r.not_after)
                          for r in page.rows],
            next_page_token=page.next_page_token, total=page.total)

    @_unary
    async def SendCommand(self, request, context) -> pb.FleetCommandStatus:
        ident = identity.current_identity()
        kind = KINDS.get(request.kind)
        if kind is None:
            raise InvalidRequest("kind", "name a command kind (refresh_inventory, renew_due, install_release, "
                                         "collect_logs)")
        if kind == "install_release" and not request.release:
            raise InvalidRequest("release", "install_release needs the release to install")
        _text("release", request.release)
        _text("device_serial", request.device_serial)
        station = await self._station(request.station)
        cmd = await self.store.add_command(fs.Command(command_id="", station=station, kind=kind,
                                                     device_serial=request.device_serial, release=request.release,
                                                     actor=ident.uri))
        await self.store.audit(ident.uri, "SendCommand", "accepted", {"command_id": cmd.command_id,
                                                                      "station": station, "kind": kind})
        self.hub.wake(station, [cmd])
        return status_to_pb(cmd)

    @_unary
    async def BroadcastCommand(self, request, context) -> pb.FleetBroadcastResponse:
        ident = identity.current_identity()
        kind = KINDS.get(request.kind)
        if kind is None or kind == "install_release":
            raise InvalidRequest("kind", "refresh_inventory, renew_due or collect_logs (a release goes out by a "
                                         "rollout, which halts itself)")
        q = query_from_pb(request.query)
        cmds = await self.store.broadcast(fs.Query(**{**q.__dict__, "page_size": 0, "page_token": ""}),
                                          fs.Command(command_id="", station="", kind=kind, actor=ident.uri))
        await self.store.audit(ident.uri, "BroadcastCommand", "accepted", {"kind": kind, "stations": len(cmds)})
        for c in cmds:
            self.hub.wake(c.station, [c])
        return pb.FleetBroadcastResponse(commands=len(cmds))

    async def _station(self, uri: str) -> str:
        _text("station", uri)
        m = identity._URI_RE.fullmatch(uri)
        if not m or m.group(1) != identity.ROLE_STATION:
            raise InvalidRequest("station", f"not a station identity urn:cns:station:<chamber>:<id>: {uri!r}")
        if await self.store.get_station(uri) is None:
            raise NotFound(f"station {uri} has never connected; check the identity (cnsctl fleet stations)")
        return uri

    @_unary
    async def GetCommand(self, request, context) -> pb.FleetCommandStatus:
        _text("command_id", request.command_id)
        return status_to_pb(await self.store.get_command(request.command_id))


_FAILURE_KINDS = {pb.FLEET_FAILURE_FAILED: "failed", pb.FLEET_FAILURE_REJECTED: "rejected",
                  pb.FLEET_FAILURE_TIMED_OUT: "timed_out", pb.FLEET_FAILURE_ANY: "any"}
_FAILURE_CODES = {v: k for k, v in _FAILURE_KINDS.items()}
_ROLLOUT_STATES = {rr.RUNNING: pb.FLEET_ROLLOUT_RUNNING, rr.PAUSED: pb.FLEET_ROLLOUT_PAUSED,
                   rr.R_CANCELLED: pb.FLEET_ROLLOUT_CANCELLED, rr.ABORTED: pb.FLEET_ROLLOUT_ABORTED,
                   rr.COMPLETED: pb.FLEET_ROLLOUT_COMPLETED}


def spec_from_pb(s: pb.FleetRolloutSpec) -> rr.RolloutSpec:
    for name in ("name", "release", "chamber", "model", "firmware_version", "token_release"):
        _text(name, getattr(s, name))
    if len(s.stations) > rr.MAX_TARGETS or len(s.abort) > 8 or len(s.windows) > 24:
        raise InvalidRequest("spec", "too many stations, abort criteria (8) or windows (24)")
    for c in s.abort:
        if c.kind not in _FAILURE_KINDS:
            raise InvalidRequest("abort.kind", "one of failed, rejected, timed_out, any")
    return rr.RolloutSpec(
        name=s.name, release=s.release, chamber=s.chamber, model=s.model, firmware_version=s.firmware_version,
        token_release=s.token_release, stations=tuple(_text("stations", x) for x in s.stations),
        group_size=s.group_size, rate_per_minute=s.rate_per_minute or 60.0, rate_factor=s.rate_factor or 1.0,
        grow_after_successes=s.grow_after_successes,
        abort=tuple(rr.Criterion(_FAILURE_KINDS[c.kind], c.threshold_percent, c.min_executed) for c in s.abort),
        timeout_seconds=s.timeout_seconds or 3600,
        windows=tuple((w.start_minute, w.end_minute) for w in s.windows))


def spec_to_pb(s: rr.RolloutSpec) -> pb.FleetRolloutSpec:
    return pb.FleetRolloutSpec(
        name=s.name, release=s.release, chamber=s.chamber, model=s.model, firmware_version=s.firmware_version,
        token_release=s.token_release, stations=list(s.stations), group_size=s.group_size,
        rate_per_minute=s.rate_per_minute, rate_factor=s.rate_factor, grow_after_successes=s.grow_after_successes,
        abort=[pb.FleetAbortCriterion(kind=_FAILURE_CODES[c.kind], threshold_percent=c.threshold_percent,
                                      min_executed=c.min_executed) for c in s.abort],
        timeout_seconds=s.timeout_seconds,
        windows=[pb.FleetDailyWindow(start_minute=a, end_minute=b) for a, b in s.windows])


def rollout_to_pb(st: dict) -> pb.FleetRolloutStatus:
    return pb.FleetRolloutStatus(
        rollout_id=st["rollout_id"], spec=spec_to_pb(st["spec"]), state=_ROLLOUT_STATES[st["state"]],
        reason=st["reason"], counts=st["counts"], total=st["total"], current_rate_per_minute=st["rate"],
        current_group=st["group"], targets=[pb.FleetRolloutTarget(**t) for t in st["targets"]],
        created=int(st["created"]), updated=int(st["updated"]))


class RolloutAdmin:
    """FleetAdmin's rollout methods (mixed into ``FleetAdminService``)."""
    rollouts: Rollouts | None

    def _engine(self) -> Rollouts:
        if self.rollouts is None:
            raise FailedPrecondition("rollouts are not enabled on this daemon")
        return self.rollouts

    @_unary
    async def CreateRollout(self, request, context) -> pb.FleetRolloutStatus:
        ident = identity.current_identity()
        rid = await self._engine().create(spec_from_pb(request), actor=ident.uri)
        await self.store.audit(ident.uri, "CreateRollout", "accepted", {"rollout_id": rid, "release": request.release})
        return rollout_to_pb(await self._engine().status(rid))

    @_unary
    async def GetRollout(self, request, context) -> pb.FleetRolloutStatus:
        _text("rollout_id", request.rollout_id)
        return rollout_to_pb(await self._engine().status(request.rollout_id, targets=True))

    @_unary
    async def ListRollouts(self, request, context) -> pb.FleetListRolloutsResponse:
        return pb.FleetListRolloutsResponse(rollouts=[rollout_to_pb(s) for s in
                                                      await self._engine().list(active_only=request.active_only)])

    async def _change(self, request, what: str):
        ident = identity.current_identity()
        _text("rollout_id", request.rollout_id)
        await getattr(self._engine(), what)(request.rollout_id)
        await self.store.audit(ident.uri, what + " rollout", "accepted", {"rollout_id": request.rollout_id})
        return rollout_to_pb(await self._engine().status(request.rollout_id))

    @_unary
    async def PauseRollout(self, request, context):
        return await self._change(request, "pause")

    @_unary
    async def ResumeRollout(self, request, context):
        return await self._change(request, "resume")

    @_unary
    async def CancelRollout(self, request, context):
        return await self._change(request, "cancel")


class FleetAdminService(RolloutAdmin, _FleetAdminBase):
    """Central IT's inventory, commands and rollouts (admin role only)."""
