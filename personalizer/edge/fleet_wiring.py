"""Put the fleet on a daemon's gRPC server: open its store on the daemon's database, register both services.

``await attach(server, database)`` before the server starts; ``await fleet.close()`` after it stopped.
With ``pg=(Database, dsn)`` (``[store] backend = "postgresql"``) the fleet's tables live in that
PostgreSQL database beside the requests, and several daemon processes may serve one fleet: wake-ups
cross processes by LISTEN/NOTIFY and one process at a time steps rollouts (``fleet.notify``).
The one function ``personalizer.server`` calls, so the daemon's module stays unaware of the fleet's parts.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from personalizer.fleet.attestation import ModelRoots
from personalizer.fleet.db import PostgresDb
from personalizer.fleet.hub import Hub
from personalizer.fleet.metrics import FleetCollector, FleetFigures
from personalizer.fleet.rollouts import Rollouts
from personalizer.edge.fleet_service import FleetAdminService, FleetService
from personalizer.fleet.store import SqlFleetStore
from proto.cns.v1 import fleet_pb2, fleet_pb2_grpc

SERVICE_NAMES = tuple(fleet_pb2.DESCRIPTOR.services_by_name[n].full_name for n in ("Fleet", "FleetAdmin"))


@dataclass
class Fleet:
    store: SqlFleetStore
    hub: Hub
    service: FleetService
    admin: FleetAdminService
    rollouts: Rollouts
    figures: FleetFigures
    bus: object | None = None   # fleet.notify.PgWakeBus over PostgreSQL

    def collector(self) -> FleetCollector:
        """For the daemon's Prometheus registry (``registry.register(fleet.collector())``)."""
        return FleetCollector(self.figures, self.hub, lambda: self.rollouts.snapshot)

    def close_streams(self) -> int:
        """The daemon stops: every stream ends normally, its agents told how long to spread reconnects over."""
        return self.service.close_streams()

    async def close(self) -> None:
        await self.service.drain()
        await self.rollouts.stop()
        if self.bus is not None:
            await self.bus.stop()
        await self.store.close()


async def attach(server, database: Path, *, model_roots: ModelRoots | None = None, tick_seconds: float = 1.0,
                 pg=None, **service_options) -> Fleet:
    """``model_roots``: the attestation CA of each device model; by default the PEM files in
    ``<database folder>/fleet-model-roots/<model id>.pem`` (none: no success is attested). ``database``:
    the SQLite file, or with ``pg`` only the folder of the model roots."""
    hub, bus = Hub(), None
    if pg is None:
        store = await SqlFleetStore.open(database)
    else:
        from personalizer.fleet.notify import PgWakeBus
        pg_database, dsn = pg
        store = await SqlFleetStore.over(PostgresDb(pg_database))
        bus = PgWakeBus(dsn, pg_database, hub)
        await bus.start()
        hub.on_miss = bus.publish
    try:
        return await _assemble(server, database, store, hub, bus, model_roots, tick_seconds, service_options)
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
