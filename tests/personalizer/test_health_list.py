"""Health.List answers every service's status (the library's aio servicer left it unimplemented: UNKNOWN)."""
from __future__ import annotations

import asyncio

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from personalizer.edge.health import HealthServicer


def test_list_names_every_service_with_its_status():
    async def main():
        servicer = HealthServicer()
        server = grpc.aio.server()
        health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        try:
            await servicer.set("cns.v1.Personalizer", health_pb2.HealthCheckResponse.SERVING)
            await servicer.set("cns.v1.QueueAdmin", health_pb2.HealthCheckResponse.NOT_SERVING)
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
                answer = await health_pb2_grpc.HealthStub(ch).List(health_pb2.HealthListRequest(), timeout=5)
        finally:
            await server.stop(None)
        return {k: v.status for k, v in answer.statuses.items()}

    statuses = asyncio.run(main())
    assert statuses["cns.v1.Personalizer"] == health_pb2.HealthCheckResponse.SERVING
    assert statuses["cns.v1.QueueAdmin"] == health_pb2.HealthCheckResponse.NOT_SERVING
    assert statuses[""] == health_pb2.HealthCheckResponse.SERVING
