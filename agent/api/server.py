"""The ``AgentLocal`` gRPC service on the user's private Unix socket (grpc.aio).

Access control is the file system: the socket is 0600 in a 0700 directory
owned by the user (``agent.api.rundir``). gRPC Python does not expose the
connection's fd, so SO_PEERCRED cannot be read per call; ``context.peer()`` is
only ``unix:``. Undecodable requests get INVALID_ARGUMENT (``proto.wire``). Imports ``agent.devices``
(registry views), ``proto``.
"""
from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import grpc

from agent.api.approvals import EVENT_KIND, ApprovalHandlers, approval_pb
from agent.api.conformance import ConformanceHandlers
from agent.api.convert import event_pb, reader_pb, token_event_pb, token_pb
from agent.api.lifecycle import LifecycleHandlers
from agent.api.renewal import RenewalHandlers
from agent.api.rundir import prepare_socket_path
from agent.devices.registry import DeviceEvent, DeviceRegistry
from proto.cns.v1 import agent_pb2 as pb
from proto.cns.v1 import agent_pb2_grpc as pb_grpc
from proto.wire import DecodeInterceptor

log = logging.getLogger(__name__)

WATCH_QUEUE_MAX = 1024  # events buffered per watcher before it is cut off
SHUTDOWN_GRACE_S = 2.0


@dataclass
class AgentFacts:
    version: str
    socket_path: str
    profiles_dir: str
    model_ids: list[str]
    pcsc_status: Callable[[], str]
    started_unix_ms: int = field(default_factory=lambda: int(time.time() * 1000))


class AgentLocalService(ConformanceHandlers, RenewalHandlers, LifecycleHandlers, ApprovalHandlers,
                        pb_grpc.AgentLocalServicer):
    def __init__(self, registry: DeviceRegistry, facts: AgentFacts, operations=None,
                 tokens: Callable[[], list[dict]] | None = None, token_ops=None,
                 token_events: Callable | None = None, approvals=None) -> None:
        self.registry = registry
        self.facts = facts
        self.operations = operations   # agent.api.operations.Operations, when run with a station config
        self.tokens = tokens or list   # the USB tokens seen (rows of UsbBackend.snapshot()), when a USB backend runs
        self.token_ops = token_ops     # agent.api.tokens.TokenOperations, when a USB backend runs
        self.token_events = token_events   # subscribe(listener(kind, row)) -> unsubscribe: token events for watch
        self.approvals = approvals         # agent.updates.approvals.Approvals: token releases waiting for the holder

    async def Personalize(self, request, context):  # noqa: N802
        if self.operations is None:
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION,
                                "this agent runs without a station configuration: start it with "
                                "`cns-agent run --config FILE`")
        async for message in self.operations.personalize(request, context):
            yield message

    async def ListOperations(self, request, context):  # noqa: N802
        if self.operations is None:
            return pb.ListOperationsResponse()
        return await self.operations.list_operations(request, context)

    async def StopOperation(self, request, context):  # noqa: N802
        if self.operations is None:
            return pb.StopOperationResponse(stopping=False, message="no device operations on this agent")
        return await self.operations.stop(request, context)

    async def ResolveOperation(self, request, context):  # noqa: N802
        if self.operations is None:
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION,
                                "this agent runs without a station configuration: start it with "
                                "`cns-agent run --config FILE`")
        async for message in self.operations.resolve(request, context):
            yield message

    async def UpdateToken(self, request, context):  # noqa: N802
        if self.token_ops is None:
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION,
                                "this agent does not watch USB tokens: start it without --no-tokens")
        async for message in self.token_ops.update(request, context):
            yield message

    async def GetAgentInfo(self, request, context):  # noqa: N802 (gRPC names)
        f = self.facts
        return pb.AgentInfo(version=f.version, pid=os.getpid(), uid=os.getuid(), socket_path=f.socket_path,
                            pcsc_status=f.pcsc_status(), model_ids=f.model_ids, profiles_dir=f.profiles_dir,
                            started_unix_ms=f.started_unix_ms)

    async def ListDevices(self, request, context):  # noqa: N802
        sequence, readers = self.registry.snapshot()
        return pb.ListDevicesResponse(readers=[reader_pb(r) for r in readers], sequence=sequence,
                                      tokens=[token_pb(t) for t in self.tokens()])

    async def WatchDevices(self, request, context):  # noqa: N802
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[DeviceEvent | None] = asyncio.Queue(WATCH_QUEUE_MAX)

        def push(event: DeviceEvent | None) -> None:  # runs in the loop
            try:
                queue.put_nowait(event)
            except asyncio.QueueFull:
                queue.get_nowait()  # make room for the sentinel: this watcher is too slow
                queue.put_nowait(None)

        def listener(event: DeviceEvent) -> None:  # runs in the monitor thread
            loop.call_soon_threadsafe(push, event)

        def token_listener(kind: str, row: dict) -> None:  # the USB monitor runs in this loop; any thread is fine
            msg = token_event_pb(kind, row, sequence=self.registry.snapshot()[0], time_unix_ms=int(time.time() * 1000))
            loop.call_soon_threadsafe(push, msg)

        def approval_listener(kind: str, p) -> None:   # the token-updates task's worker thread, or the loop
            msg = pb.DeviceEvent(sequence=self.registry.snapshot()[0], kind=EVENT_KIND[kind], approval=approval_pb(p),
                                 time_unix_ms=int(time.time() * 1000))
            loop.call_soon_threadsafe(push, msg)

        # both subscriptions and both snapshots with no await between them: no event falls in a gap
        unsubscribe_tokens = self.token_events(token_listener) if self.token_events is not None else (lambda: None)
        unsubscribe_approvals = (self.approvals.subscribe(approval_listener) if self.approvals is not None
                                 else (lambda: None))
        sequence, readers, unsubscribe = self.registry.subscribe_with_snapshot(listener)
        try:
            yield pb.DeviceEvent(sequence=sequence, kind=pb.DEVICE_EVENT_KIND_SNAPSHOT,
                                 snapshot=[reader_pb(r) for r in readers], time_unix_ms=int(time.time() * 1000),
                                 tokens=[token_pb(t) for t in self.tokens()])
            for p in (self.approvals.list() if self.approvals is not None else ()):   # already waiting: said once
                if p.state == "waiting":
                    yield pb.DeviceEvent(sequence=sequence, kind=pb.DEVICE_EVENT_KIND_APPROVAL_PENDING,
                                         approval=approval_pb(p), time_unix_ms=int(time.time() * 1000))
            while True:
                event = await queue.get()
                if event is None:
                    await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, "watcher too slow; events dropped")
                    return
                yield event if isinstance(event, pb.DeviceEvent) else event_pb(event)
        finally:
            unsubscribe()
            unsubscribe_tokens()
            unsubscribe_approvals()


async def start_server(socket_path: Path, service: AgentLocalService) -> grpc.aio.Server:
    """Bind ``socket_path`` (0600, in a private directory) and start serving."""
    prepare_socket_path(socket_path)
    server = grpc.aio.server(interceptors=[DecodeInterceptor()], options=[("grpc.so_reuseport", 0)])
    pb_grpc.add_AgentLocalServicer_to_server(service, server)
    old_umask = os.umask(0o177)
    try:
        server.add_insecure_port(f"unix:{socket_path}")
        await server.start()
    finally:
        os.umask(old_umask)
    os.chmod(socket_path, 0o600)
    log.info("local API listening on %s", socket_path)
    return server
