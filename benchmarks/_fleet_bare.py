"""The reference of ``scripts/bench fleet``: a bare grpc.aio server doing what Fleet.Connect does, no more.

Same TLS (server certificate, client certificates required from the same CA), same messages: it reads
the hello, answers a welcome, reads heartbeats; on SIGUSR1 it writes one command to every open stream;
on SIGTERM it ends every stream with the same reconnect spread the personalizer names when it stops, then
stops the server with the daemon's grace (``--grace``, ``server.grace_seconds``: new calls refused, the
ended streams' trailers written; what is still open after it is cancelled), as the daemon does. Its HTTP/2 keepalive and ping policy is the daemon's own
(``personalizer.server.keepalive_options`` with ``--min-ping-seconds``, the daemon's
``server.keepalive_min_ping_seconds``). No interceptors, no identity, no store.
``python -m benchmarks._fleet_bare --port P --tls DIR`` prints "listening on port N"; when it stops, one
line ``streams ended: E of S`` (E ended within the grace).
"""
from __future__ import annotations

import argparse
import asyncio
import gc
import signal
from pathlib import Path

import grpc

from personalizer.server import keepalive_options
from proto.cns.v1 import fleet_pb2 as pb, fleet_pb2_grpc

SPREAD_KEY = "cns-reconnect-spread-ms"   # personalizer.edge.fleet_service.SPREAD_KEY (the agent reads it)
RECONNECT_ADMIT_PER_SECOND = 200.0       # the personalizer's default (FleetService.reconnect_admit_per_second)


def server_options(min_ping_seconds: float) -> list[tuple[str, int]]:
    """The daemon's keepalive and ping policy (``personalizer.server.keepalive_options``), nothing else of its."""
    return [("grpc.so_reuseport", 0), *keepalive_options(min_ping_seconds)]


class Bare(fleet_pb2_grpc.FleetServicer):
    def __init__(self):
        self.queues: set[asyncio.Queue] = set()
        self.n = 0
        self.spread_s = 0.0

    async def Connect(self, request_iterator, context):
        it = request_iterator.__aiter__()
        await it.__anext__()   # the hello
        q: asyncio.Queue = asyncio.Queue()
        self.queues.add(q)

        async def read():
            async for _ in it:
                pass
            q.put_nowait(None)
        reader = asyncio.create_task(read())
        try:
            yield pb.FleetServerMessage(welcome=pb.FleetWelcome(station="bare", heartbeat_seconds=30,
                                                                poll_seconds=60))
            while True:
                cmd = await q.get()
                if cmd is None:   # stopping: the agents told to spread their reconnects, as the personalizer does
                    context.set_trailing_metadata(((SPREAD_KEY, str(round(1000 * self.spread_s))),))
                    return
                yield pb.FleetServerMessage(command=cmd)
        finally:
            reader.cancel()
            self.queues.discard(q)

    def broadcast(self):
        self.n += 1
        cmd = pb.FleetCommand(command_id=f"bare-{self.n}", kind=pb.FLEET_COMMAND_REFRESH_INVENTORY)
        for q in list(self.queues):
            q.put_nowait(cmd)


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--tls", type=Path, required=True)
    ap.add_argument("--min-ping-seconds", type=float, default=10.0, help="server.keepalive_min_ping_seconds")
    ap.add_argument("--grace", type=float, default=10.0, help="server.grace_seconds")
    o = ap.parse_args()
    t = o.tls
    server = grpc.aio.server(options=server_options(o.min_ping_seconds))
    bare = Bare()
    fleet_pb2_grpc.add_FleetServicer_to_server(bare, server)
    creds = grpc.ssl_server_credentials([((t / "server.key.pem").read_bytes(), (t / "server.pem").read_bytes())],
                                        root_certificates=(t / "tls-ca.pem").read_bytes(), require_client_auth=True)
    port = server.add_secure_port(f"127.0.0.1:{o.port}", creds)
    await server.start()
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGUSR1, bare.broadcast)
    loop.add_signal_handler(signal.SIGUSR2, gc.freeze)
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    print(f"listening on port {port}", flush=True)
    await stop.wait()
    # end the streams normally, as the personalizer does when it stops, with the same reconnect spread (its
    # FleetService.close_streams: streams / reconnect_admit_per_second)
    ending = set(bare.queues)
    bare.spread_s = len(ending) / RECONNECT_ADMIT_PER_SECOND
    for q in ending:
        q.put_nowait(None)
    t0 = loop.time()
    while ending & bare.queues and loop.time() - t0 < min(5.0, o.grace):   # as the daemon's stop: the streams
        await asyncio.sleep(0.02)   # end first (a stop begun beside them ended some INTERNAL, not OK)
    print(f"streams ended: {len(ending - bare.queues)} of {len(ending)}", flush=True)
    await server.stop(o.grace)


if __name__ == "__main__":
    asyncio.run(main())
