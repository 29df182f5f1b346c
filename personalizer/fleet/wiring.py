"""Put the fleet on a daemon's gRPC server: open its store on the daemon's database, register both services.

``await attach(server, database)`` before the server starts; ``await fleet.close()`` after it stopped.
The one function ``personalizer.server`` calls, so the daemon's module stays unaware of the fleet's parts.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from personalizer.fleet.hub import Hub
from personalizer.fleet.service import FleetAdminService, FleetService
from personalizer.fleet.store import SqliteFleetStore
from proto.cns.v1 import fleet_pb2, fleet_pb2_grpc

SERVICE_NAMES = tuple(fleet_pb2.DESCRIPTOR.services_by_name[n].full_name for n in ("Fleet", "FleetAdmin"))


@dataclass
class Fleet:
    store: SqliteFleetStore
    hub: Hub
    service: FleetService
    admin: FleetAdminService

    async def close(self) -> None:
        await self.store.close()


async def attach(server, database: Path, **service_options) -> Fleet:
    store = await SqliteFleetStore.open(database)
    hub = Hub()
    service = FleetService(store, hub, **service_options)
    admin = FleetAdminService(store, hub)
    fleet_pb2_grpc.add_FleetServicer_to_server(service, server)
    fleet_pb2_grpc.add_FleetAdminServicer_to_server(admin, server)
    return Fleet(store, hub, service, admin)
