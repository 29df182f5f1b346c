"""Put the fleet on a daemon's gRPC server: open its store on the daemon's database, register both services.

``await attach(server, database)`` before the server starts; ``await fleet.close()`` after it stopped.
The one function ``personalizer.server`` calls, so the daemon's module stays unaware of the fleet's parts.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from personalizer.fleet.attestation import ModelRoots
from personalizer.fleet.hub import Hub
from personalizer.fleet.metrics import FleetCollector, FleetFigures
from personalizer.fleet.rollouts import Rollouts
from personalizer.fleet.service import FleetAdminService, FleetService
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

    def collector(self) -> FleetCollector:
        """For the daemon's Prometheus registry (``registry.register(fleet.collector())``)."""
        return FleetCollector(self.figures, self.hub, lambda: self.rollouts.snapshot)

    async def close(self) -> None:
        await self.service.drain()
        await self.rollouts.stop()
        await self.store.close()


async def attach(server, database: Path, *, model_roots: ModelRoots | None = None, tick_seconds: float = 1.0,
                 **service_options) -> Fleet:
    """``model_roots``: the attestation CA of each device model; by default the PEM files in
    ``<database folder>/fleet-model-roots/<model id>.pem`` (none: no success is attested)."""
    store = await SqlFleetStore.open(database)
    hub = Hub()
    roots = model_roots if model_roots is not None else ModelRoots.load(database.parent / "fleet-model-roots")
    rollouts = await Rollouts(store, hub, roots, tick_seconds=tick_seconds).open()
    figures = FleetFigures()
    service = FleetService(store, hub, on_report=rollouts.on_report, figures=figures, **service_options)
    admin = FleetAdminService(store, hub, rollouts=rollouts, figures=figures)
    fleet_pb2_grpc.add_FleetServicer_to_server(service, server)
    fleet_pb2_grpc.add_FleetAdminServicer_to_server(admin, server)
    rollouts.start()
    return Fleet(store, hub, service, admin, rollouts, figures)
