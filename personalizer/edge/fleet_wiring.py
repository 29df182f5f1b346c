"""Put the fleet on a daemon's gRPC server: open its store on the daemon's database, register both services.

``await attach(server, database)`` before the server starts; ``await fleet.close()`` after it stopped.
With ``pg=(Database, dsn)`` (``[store] backend = "postgresql"``) the fleet's tables live in that
PostgreSQL database beside the requests, and several daemon processes may serve one fleet: wake-ups
cross processes by LISTEN/NOTIFY and one process at a time steps rollouts (``fleet.notify``). With
``processes`` > 1 over SQLite (``[server] processes``: the daemon's primary and its helpers on one file)
wake-ups cross processes through the file (``fleet.wake_sqlite``) and the primary (``leader``) steps rollouts.
Each process also runs a ``fleet.gc_freeze.GcFreezer`` on its stream count (``gc.freeze()`` after a ramp-up of
``gc_min_growth`` streams: no full collection blocks a broadcast at 20,000 streams).
The one function ``personalizer.server`` calls, so the daemon's module stays unaware of the fleet's parts.
"""
from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

from personalizer.fleet.attestation import ModelRoots
from personalizer.fleet.db import PostgresDb
from personalizer.fleet.gc_freeze import MIN_GROWTH, GcFreezer
from personalizer.fleet.hub import Hub
from personalizer.fleet.metrics import FleetCollector, FleetFigures
from personalizer.fleet.rollouts import Rollouts
from personalizer.edge.fleet_service import FleetAdminService, FleetService
from personalizer.fleet.store import SqlFleetStore
from proto.cns.v1 import fleet_pb2, fleet_pb2_grpc

log = logging.getLogger(__name__)

PRESENCE_SECONDS = 0.02         # a helper looks at its stream count this often, writes it when it changed
PRESENCE_REFRESH_SECONDS = 10.0  # ...and at least this often; older than 3 × this, a helper counts no more
PRESENCE_READ_SECONDS = 1.0      # the primary reads its helpers' figures this often, for Prometheus

SERVICE_NAMES = tuple(fleet_pb2.DESCRIPTOR.services_by_name[n].full_name for n in ("Fleet", "FleetAdmin"))


@dataclass
class Fleet:
    store: SqlFleetStore
    hub: Hub
    service: FleetService
    admin: FleetAdminService
    rollouts: Rollouts
    figures: FleetFigures
    bus: object | None = None   # fleet.notify.PgWakeBus over PostgreSQL, fleet.wake_sqlite.SqliteWakeBus
    daemon: str = ""            # with [server] processes > 1: the daemon's name (its relay claimer) ...
    process: int = 0            # ... and this process's index (0: the primary)
    processes: int = 1
    _presence: asyncio.Task | None = field(default=None, repr=False)
    gc: GcFreezer | None = None
    _gc_task: asyncio.Task | None = field(default=None, repr=False)
    helpers_seen: tuple = (0, [])   # in the primary: (streams, [figures]) its helpers reported, last read

    async def _helpers(self) -> tuple[int, list[dict]]:
        if self.processes > 1 and self.process == 0:
            self.helpers_seen = await self.store.presence(
                self.daemon, since=time.time() - 3 * PRESENCE_REFRESH_SECONDS)
        return self.helpers_seen

    async def streams(self) -> int:
        """Fleet streams this daemon holds: this process's, plus, in the primary, those its helpers report."""
        return len(self.hub) + (await self._helpers())[0]

    def start_presence(self) -> None:
        """A helper reports its streams and figures; the primary reads its helpers' for the metrics thread."""
        if self.processes > 1:
            work = self._report_presence() if self.process > 0 else self._read_presence()
            self._presence = asyncio.get_running_loop().create_task(work, name="fleet-presence")

    async def _read_presence(self) -> None:
        while True:
            try:
                await self._helpers()
            except Exception as exc:   # the endpoint shows the last figures read
                log.warning("could not read the helper processes' fleet figures: %s", exc)
            await asyncio.sleep(PRESENCE_READ_SECONDS)

    async def _report_presence(self) -> None:
        last, written = None, 0.0
        while True:
            now = (len(self.hub), self.figures.to_dict())
            if now != last or time.monotonic() - written > PRESENCE_REFRESH_SECONDS:
                try:
                    await self.store.set_presence(self.daemon, self.process, *now)
                    last, written = now, time.monotonic()
                except Exception as exc:   # the status page undercounts until the next write
                    log.warning("could not record this helper's fleet stream count: %s", exc)
            await asyncio.sleep(PRESENCE_SECONDS)

    def collector(self) -> FleetCollector:
        """For the daemon's Prometheus registry (``registry.register(fleet.collector())``)."""
        return FleetCollector(self.figures, self.hub, lambda: self.rollouts.snapshot, lambda: self.helpers_seen)

    def close_streams(self) -> int:
        """The daemon stops: every stream ends normally, its agents told how long to spread reconnects over."""
        return self.service.close_streams()

    async def streams_ended(self, timeout: float) -> None:
        """Until the streams ``close_streams`` ended have left the hub, at most ``timeout`` seconds. The server's
        stop waits for this: a stop begun while handlers were still returning had grpc core end some of those
        streams INTERNAL ("Internal error from Core") instead of OK with the reconnect window (seen in
        tests/fleet/test_bench_fleet.py under load)."""
        deadline = time.monotonic() + timeout
        while len(self.hub) and time.monotonic() < deadline:
            await asyncio.sleep(0.02)

    def start_gc(self, min_growth: int = MIN_GROWTH) -> None:
        self.gc = GcFreezer(lambda: len(self.hub), min_growth=min_growth, ended=lambda: self.hub.ended)
        self._gc_task = asyncio.get_running_loop().create_task(self.gc.run(), name="fleet-gc-freeze")

    async def close(self) -> None:
        if self._gc_task is not None:
            self._gc_task.cancel()
            await asyncio.gather(self._gc_task, return_exceptions=True)
            self.gc.stop()
        if self._presence is not None:
            self._presence.cancel()
            await asyncio.gather(self._presence, return_exceptions=True)
            if self.process > 0:   # this helper's streams end with it (its counted figures stay)
                try:
                    await self.store.set_presence(self.daemon, self.process, 0, self.figures.to_dict())
                except Exception:
                    pass
        await self.service.drain()
        await self.rollouts.stop()
        if self.bus is not None:
            await self.bus.stop()
        if getattr(self.service.hello_rate, "close", None):
            self.service.hello_rate.close()
        await self.store.close()


async def attach(server, database: Path, *, model_roots: ModelRoots | None = None, tick_seconds: float = 1.0,
                 pg=None, processes: int = 1, leader: bool = True, daemon: str = "", process: int = 0,
                 gc_min_growth: int = MIN_GROWTH, **service_options) -> Fleet:
    """``model_roots``: the attestation CA of each device model; by default the PEM files in
    ``<database folder>/fleet-model-roots/<model id>.pem`` (none: no success is attested). ``database``:
    the SQLite file, or with ``pg`` only the folder of the model roots. ``processes``/``leader``: over
    SQLite, how many processes of the daemon serve the fleet on this file and whether this one is the
    primary (it steps rollouts; a helper leaves the stations' connected flags alone when it starts);
    ``daemon``/``process``: the daemon's name and this process's index, under which a helper reports
    its stream count for the primary's status page (``Fleet.streams``). ``gc_min_growth``: streams gained
    since the last ``gc.freeze()`` before the next (``fleet.gc_freeze``)."""
    hub, bus = Hub(), None
    if pg is None:
        store = await SqlFleetStore.open(database, reset_connected=leader)
        if processes > 1:
            from personalizer.fleet.wake_sqlite import SqliteWakeBus
            bus = SqliteWakeBus(store.db, hub, leader=leader)
            try:
                await bus.start()
            except BaseException:
                await store.close()
                raise
            hub.on_miss = bus.publish
    else:
        from personalizer.fleet.notify import PgWakeBus
        pg_database, dsn = pg
        store = await SqlFleetStore.over(PostgresDb(pg_database))
        bus = PgWakeBus(dsn, pg_database, hub)
        await bus.start()
        hub.on_miss = bus.publish
    if processes > 1 and pg is None and "hello_rate" not in service_options:   # one hello bucket per station
        from personalizer.rate import FILE_NAME, SharedRate
        service_options["hello_rate"] = SharedRate(database.parent / FILE_NAME, "fleet_hello",
                                                   service_options.get("hellos_per_minute", 10))
    try:
        fleet = await _assemble(server, database, store, hub, bus, model_roots, tick_seconds, service_options)
        fleet.daemon, fleet.process, fleet.processes = daemon, process, processes
        if processes > 1 and process == 0:
            await store.clear_presence(daemon)
        fleet.start_presence()
        fleet.start_gc(gc_min_growth)
        return fleet
    except BaseException:
        if bus is not None:
            await bus.stop()
        await store.close()
        raise


async def _assemble(server, database, store, hub, bus, model_roots, tick_seconds, service_options) -> Fleet:
    roots = model_roots if model_roots is not None else ModelRoots.load(database.parent / "fleet-model-roots")
    rollouts = await Rollouts(store, hub, roots, tick_seconds=tick_seconds,
                              leader=bus.is_leader if bus is not None else (lambda: True)).open()
    figures = FleetFigures()
    service = FleetService(store, hub, on_report=rollouts.on_report, figures=figures, **service_options)
    # connected = flagged and heard from within 3 heartbeats and 2 batches of last-seen writes
    store.live_seconds = 3 * service.heartbeat_seconds + 2 * service.seen_flush_seconds
    admin = FleetAdminService(store, hub, rollouts=rollouts, figures=figures)
    fleet_pb2_grpc.add_FleetServicer_to_server(service, server)
    fleet_pb2_grpc.add_FleetAdminServicer_to_server(admin, server)
    rollouts.start()
    return Fleet(store, hub, service, admin, rollouts, figures, bus)
