"""The agent's fleet stream: one long-lived ``Fleet.Connect`` it opens; commands come down it.

``FleetAgent(cfg, inventory, executor, version=...)``; ``await agent.run()`` runs until cancelled (the
composition root starts it as a supervised task). The channel is ``station_config.channel``'s (mTLS,
HTTP CONNECT proxy from ``[proxy]``, keepalive from ``personalizer.keepalive_seconds``): the station's
identity is its certificate, never a field here.

One attempt: open the stream, send the hello (``inventory.snapshot()``), read the welcome, then send
heartbeats (the welcome's interval), queued inventory deltas (``report_delta``) and the acks, progress
and results of commands while reading commands. A command runs once per id (``executor.accept`` may
refuse it: a rejected ack; ``executor.run(command, progress)`` gives an ``Outcome``); a command seen
again (its ack was lost with a broken stream) is acknowledged again, not run again.

When a stream gets no welcome, or breaks (UNAVAILABLE, DEADLINE_EXCEEDED, ... : ``BROKEN_CODES``) sooner
than ``Options.min_stream_seconds`` after its welcome, the agent tries one ``Fleet.Poll`` (unless
``Options.poll_fallback`` is off: then it backs off and tries a stream again): if that works the network (a
proxy) breaks streams, so it polls the same messages for ``Options.poll_mode_seconds`` before trying a
stream again. A refusal (PERMISSION_DENIED, RESOURCE_EXHAUSTED, ...) is no network problem: no poll.
When neither works, or on a refusal, the personalizer is unreachable for now: the next attempt waits
with exponential backoff and full jitter (``backoff``, tenacity). A stream that lasted, or that the server ended cleanly
(it stops: ``Hub.close_all``), is reopened after a random pause within the window the daemon named in the
stream's trailing metadata (``cns-reconnect-spread-ms``: its streams over the hellos a second it admits;
at least ``jitter``, at most ``MAX_RECONNECT_SPREAD``), so a restarted daemon, or the instance that takes
over, is not reconnected by every agent at once; until the next welcome, a failed attempt waits one whole
window again (the agent keeps its point of it: the daemon may take longer to come back than the window, and
the fleet still arrives at the rate the window names).

Outbound only. Imports grpc, tenacity, ``proto`` and ``station_config``; never ``personalizer``.
"""
from __future__ import annotations

import asyncio
import collections
import logging
import random
import time
from dataclasses import dataclass, field
from typing import Awaitable, Callable, Protocol

import grpc
from tenacity import AsyncRetrying, retry_if_exception_type, wait_fixed, wait_random_exponential

from proto.cns.v1 import fleet_pb2 as pb, fleet_pb2_grpc
from station_config import StationConfig, channel as station_channel

log = logging.getLogger(__name__)

MAX_POLL_MESSAGES = 256
SPREAD_KEY = "cns-reconnect-spread-ms"   # a stopping daemon's hint, in the trailing metadata of the stream it ends
MAX_RECONNECT_SPREAD = 600.0             # seconds: the most a hint may make an agent wait
# how a stream fails when the network (a proxy) breaks it, rather than the personalizer refusing it
BROKEN_CODES = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.UNKNOWN,
                          grpc.StatusCode.INTERNAL, grpc.StatusCode.CANCELLED})


@dataclass(frozen=True)
class DeviceInfo:
    serial: str
    kind: str = "card"
    model: str = ""
    firmware_version: str = ""
    partition_version: str = ""
    token_release: str = ""
    reader: str = ""
    certificates: tuple[tuple[str, int], ...] = ()   # (keyset, not_after as Unix seconds)

    def to_pb(self) -> pb.FleetDevice:
        return pb.FleetDevice(kind=self.kind, model=self.model, serial=self.serial,
                              firmware_version=self.firmware_version, partition_version=self.partition_version,
                              token_release=self.token_release, reader=self.reader,
                              certificates=[pb.FleetKeysetExpiry(keyset=k, not_after=int(t))
                                            for k, t in self.certificates])


@dataclass(frozen=True)
class Outcome:
    success: bool
    message: str = ""
    attestation: bytes = b""


class Inventory(Protocol):
    async def snapshot(self) -> tuple[list[str], list[DeviceInfo]]: ...


class Executor(Protocol):
    def accept(self, command: pb.FleetCommand) -> str | None:
        """None to run the command, else the reason it is refused."""
    async def run(self, command: pb.FleetCommand, progress: Callable[[int, str], Awaitable[None]]) -> Outcome: ...


@dataclass(frozen=True)
class Options:
    initial_backoff: float = 1.0
    max_backoff: float = 120.0
    jitter: float = 2.0
    min_stream_seconds: float = 60.0      # a welcomed stream ending sooner counts as broken (try polling)
    poll_fallback: bool = True            # False: a broken stream backs off and tries a stream again, no poll
    poll_mode_seconds: float = 900.0      # once polling, for this long before trying a stream again
    welcome_timeout: float = 20.0
    call_timeout: float = 30.0


def backoff(o: Options):
    """The wait before the next attempt when the personalizer is unreachable or refuses: full jitter over a window
    doubling from ``initial_backoff``, i.e. ``initial_backoff`` + uniform [0, min(max_backoff - initial_backoff,
    initial_backoff × 2^(attempt-1))] (tenacity's ``wait_random_exponential``, the floor added rather than its
    ``min``, which bounds the draw only since tenacity 9, jd/tenacity#425). "Exponential plus 0-2 s" sent a fleet
    cut off together back in one 2-second wave every ``max_backoff`` (tests/fleet/test_backoff.py)."""
    return wait_fixed(o.initial_backoff) + wait_random_exponential(multiplier=o.initial_backoff,
                                                                   max=max(0.0, o.max_backoff - o.initial_backoff))


class _Unreachable(Exception):
    """Neither a stream nor a poll reached the personalizer."""


@dataclass
class _Stats:
    streams: int = 0
    polls: int = 0
    welcomes: int = 0
    mode: str = "idle"
    last_error: str = ""
    station: str = ""
    heartbeat_seconds: float = 30.0
    poll_seconds: float = 60.0
    events: list = field(default_factory=list)
    failures: collections.Counter = field(default_factory=collections.Counter)   # "CODE: details" -> attempts
    welcome_seconds: float = 0.0   # the last stream's time from opening it to its welcome
    welcomed_at: float = 0.0       # time.time() of the last welcome
    reconnect_spread: float = 0.0  # the window the last stream's end told this agent to reconnect within


class FleetAgent:
    def __init__(self, cfg: StationConfig, inventory: Inventory, executor: Executor, *, version: str,
                 options: Options = Options(), channel_factory: Callable[[], grpc.aio.Channel] | None = None):
        self.cfg = cfg
        self.inventory = inventory
        self.executor = executor
        self.version = version
        self.options = options
        self._channel_factory = channel_factory or (lambda: station_channel.secure_channel(cfg))
        self._out: list[pb.FleetAgentMessage] = []
        self._outgoing = asyncio.Event()
        self._seen: set[str] = set()
        self._tasks: set[asyncio.Task] = set()
        self._seq = 0
        self._next_spread = 0.0   # the window the stream that just ended named, for the next reconnect only
        self._retry_spread = 0.0  # that window while its reconnect lasts (cleared by the next welcome)
        self._backoff = backoff(options)
        self.stats = _Stats()

    # -- what the rest of the agent calls -------------------------------------------------------
    def report_delta(self, present: list[DeviceInfo] = (), removed: list[str] = (), readers: list[str] | None = None):
        """Hotplug: devices present now (added or changed) and serials gone; sent on the stream or next poll."""
        self._queue(pb.FleetAgentMessage(inventory=pb.FleetInventoryDelta(
            present=[d.to_pb() for d in present], removed_serials=list(removed), readers=list(readers or []),
            readers_changed=readers is not None)))

    async def run(self) -> None:
        """Until cancelled."""
        o = self.options
        try:
            while True:
                retrying = AsyncRetrying(wait=self._wait, retry=retry_if_exception_type(_Unreachable), reraise=True)
                await retrying(self._attempt)
                # a stopping daemon's streams all end at once: reconnect at a random point of the window it
                # named (its fleet's size over its admission rate), not all within ``jitter``
                spread, self._next_spread = self._next_spread, 0.0   # a window applies to one reconnect only
                self._retry_spread = spread   # and to its failed attempts, until the next welcome
                await asyncio.sleep(random.uniform(0, max(o.jitter, spread)))
        finally:
            for t in list(self._tasks):
                t.cancel()

    def _wait(self, retry_state) -> float:
        """The wait after a failed attempt: the backoff; while reconnecting after a daemon named a window W, at
        least one whole W (+ up to ``jitter``): the agent keeps its point of the window, one window later. A
        fleet whose first tries met a daemon not yet back (46 s to stop at 12,000 agents) then arrives at the
        rate the window names, before and after the restart; "a random point of W again" put the agents that
        failed on top of those not yet tried (1.9 × that rate, tests/fleet/test_backoff.py), the restarted
        daemon fell behind and grpc core cancelled the calls it left unrequested for 30 s."""
        wait = self._backoff(retry_state)
        if self._retry_spread > 0:
            wait = max(wait, self.options.initial_backoff, self._retry_spread) + random.uniform(0, self.options.jitter)
        return wait

    # -- outgoing messages ---------------------------------------------------------------------
    def _queue(self, msg: pb.FleetAgentMessage, *, front: bool = False) -> None:
        if front:
            self._out.insert(0, msg)
        else:
            self._out.append(msg)
        self._outgoing.set()

    def _take(self, limit: int) -> list[pb.FleetAgentMessage]:
        taken, self._out = self._out[:limit], self._out[limit:]
        if not self._out:
            self._outgoing.clear()
        return taken

    async def _wait_outgoing(self, timeout: float) -> None:
        try:   # asyncio.timeout, not wait_for: 3.11's wait_for loses a cancel that meets a finished wait
            async with asyncio.timeout(timeout):
                await self._outgoing.wait()
        except TimeoutError:
            pass

    async def _hello(self) -> pb.FleetAgentMessage:
        readers, devices = await self.inventory.snapshot()
        return pb.FleetAgentMessage(hello=pb.FleetHello(agent_version=self.version, readers=list(readers),
                                                        devices=[d.to_pb() for d in devices]))

    # -- commands ------------------------------------------------------------------------------
    def _dispatch(self, cmd: pb.FleetCommand) -> None:
        if cmd.command_id in self._seen:
            self._queue(pb.FleetAgentMessage(ack=pb.FleetCommandAck(command_id=cmd.command_id, accepted=True)))
            return
        self._seen.add(cmd.command_id)
        reason = self.executor.accept(cmd)
        if reason is not None:
            self._queue(pb.FleetAgentMessage(ack=pb.FleetCommandAck(command_id=cmd.command_id, accepted=False,
                                                                    reason=reason)))
            return
        self._queue(pb.FleetAgentMessage(ack=pb.FleetCommandAck(command_id=cmd.command_id, accepted=True)))
        task = asyncio.create_task(self._execute(cmd))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _execute(self, cmd: pb.FleetCommand) -> None:
        async def progress(percent: int, message: str = "") -> None:
            self._queue(pb.FleetAgentMessage(progress=pb.FleetCommandProgress(
                command_id=cmd.command_id, percent=max(0, min(100, int(percent))), message=message[:500])))
        try:
            outcome = await self.executor.run(cmd, progress)
        except asyncio.CancelledError:
            raise
        except Exception as exc:   # the executor's failure is this command's result, not the stream's
            log.exception("fleet command %s failed", cmd.command_id)
            outcome = Outcome(False, f"{type(exc).__name__}: {exc}"[:500])
        self._queue(pb.FleetAgentMessage(result=pb.FleetCommandResult(
            command_id=cmd.command_id, success=outcome.success, message=outcome.message[:500],
            attestation=outcome.attestation)))

    # -- one attempt: a stream, else polling -------------------------------------------------
    async def _attempt(self) -> None:
        channel = self._channel_factory()
        try:
            started, welcomes = time.monotonic(), self.stats.welcomes
            try:
                await self._stream(fleet_pb2_grpc.FleetStub(channel))
                self.stats.last_error = ""
                return   # the server ended the stream (OK): it is stopping or handing agents over; reopen
            except _Unreachable as exc:   # connected, but no welcome: something in between eats the stream
                self.stats.last_error = str(exc)
                self.stats.failures[self.stats.last_error] += 1
            except grpc.aio.AioRpcError as exc:
                self.stats.last_error = f"{exc.code().name}: {exc.details()}"
                self.stats.failures[self.stats.last_error] += 1
                log.warning("fleet stream to the personalizer ended: %s", self.stats.last_error)
                if exc.code() not in BROKEN_CODES:   # refused: not the network's fault; back off, do not poll
                    raise _Unreachable(self.stats.last_error) from None
                # it lasted: reopen a stream. One never welcomed did not last (a refused or failed connect):
                # with min_stream_seconds 0 it was retried within ``jitter``, without backoff, in a loop
                if self.stats.welcomes > welcomes and time.monotonic() - started >= self.options.min_stream_seconds:
                    return
            if not self.options.poll_fallback:
                raise _Unreachable(self.stats.last_error)
            await self._poll_mode(fleet_pb2_grpc.FleetStub(channel))
        finally:
            self.stats.mode = "idle"
            await channel.close()

    async def _stream(self, stub: fleet_pb2_grpc.FleetStub) -> None:
        self.stats.streams += 1
        call = stub.Connect()
        writer: asyncio.Task | None = None
        opened = time.monotonic()
        try:
            await call.write(await self._hello())
            async with asyncio.timeout(self.options.welcome_timeout):   # not wait_for: it can swallow a cancel
                first = await call.read()
            if first is grpc.aio.EOF or not first.HasField("welcome"):
                raise _Unreachable("the personalizer did not answer the hello with a welcome")
            self.stats.welcome_seconds = time.monotonic() - opened
            self._welcomed(first.welcome, "streaming")
            writer = asyncio.create_task(self._write(call))
            while True:
                msg = await call.read()
                if msg is grpc.aio.EOF:
                    self._next_spread = self.stats.reconnect_spread = _spread_hint(await call.trailing_metadata())
                    return
                if msg.HasField("command"):
                    self._dispatch(msg.command)
        except asyncio.TimeoutError:
            raise _Unreachable("no welcome from the personalizer in time") from None
        finally:
            if writer is not None:
                writer.cancel()
            call.cancel()

    def _welcomed(self, w: pb.FleetWelcome, mode: str) -> None:
        self._retry_spread = 0.0
        self.stats.welcomes += 1
        self.stats.welcomed_at = time.time()
        self.stats.mode = mode
        self.stats.station = w.station
        self.stats.heartbeat_seconds = max(1, w.heartbeat_seconds or 30)
        self.stats.poll_seconds = max(1, w.poll_seconds or 60)

    async def _write(self, call) -> None:
        while True:
            await self._wait_outgoing(self.stats.heartbeat_seconds)
            batch = self._take(MAX_POLL_MESSAGES)
            if not batch:
                self._seq += 1
                batch = [pb.FleetAgentMessage(heartbeat=pb.FleetHeartbeat(sequence=self._seq))]
            for i, msg in enumerate(batch):
                try:
                    await call.write(msg)
                except BaseException:
                    for m in reversed(batch[i:]):   # not sent: keep for the next stream or poll
                        if not m.HasField("heartbeat"):
                            self._queue(m, front=True)
                    raise

    async def _poll_mode(self, stub: fleet_pb2_grpc.FleetStub) -> None:
        """Poll for ``poll_mode_seconds``; ``_Unreachable`` when a poll fails."""
        deadline = time.monotonic() + self.options.poll_mode_seconds
        hello = True
        while time.monotonic() < deadline:
            batch = ([await self._hello()] if hello else []) + self._take(MAX_POLL_MESSAGES - 1)
            self.stats.polls += 1
            try:
                resp = await stub.Poll(pb.FleetPollRequest(messages=batch), timeout=self.options.call_timeout)
            except grpc.aio.AioRpcError as exc:
                for m in reversed(batch):
                    if not m.HasField("hello"):
                        self._queue(m, front=True)
                self.stats.last_error = f"{exc.code().name}: {exc.details()}"
                self.stats.failures["poll " + self.stats.last_error] += 1
                log.warning("fleet poll failed: %s", self.stats.last_error)
                raise _Unreachable(self.stats.last_error) from None
            if hello:
                log.info("fleet: streams do not get through; polling every %s s", resp.welcome.poll_seconds)
            hello = False
            self._welcomed(resp.welcome, "polling")
            for cmd in resp.commands:
                self._dispatch(cmd)
            await self._wait_outgoing(min(self.stats.poll_seconds, max(0.0, deadline - time.monotonic())))


def _spread_hint(metadata) -> float:
    """Seconds from a stopping daemon's ``cns-reconnect-spread-ms``, within [0, ``MAX_RECONNECT_SPREAD``]; 0 when
    absent or not a number (the server's word bounds a wait, it never stops the agent)."""
    for key, value in metadata or ():
        if key == SPREAD_KEY:
            try:
                return min(MAX_RECONNECT_SPREAD, max(0.0, int(value) / 1000))
            except (TypeError, ValueError):
                return 0.0
    return 0.0


async def run(cfg: StationConfig, inventory: Inventory, executor: Executor, *, version: str,
              options: Options = Options()) -> None:
    """The coroutine the agent's composition root supervises."""
    await FleetAgent(cfg, inventory, executor, version=version, options=options).run()
