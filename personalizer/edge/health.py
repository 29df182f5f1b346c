"""The daemon's gRPC health service: grpcio-health-checking's aio servicer plus ``List``.

The library's ``grpc_health.v1`` proto has the ``List`` method (every service's
status in one answer), but its asyncio servicer does not implement it, so a
``List`` call was answered UNKNOWN with a traceback in the log. Its ``Check``
of a service it has no status for answers NOT_FOUND with no message at all;
ours names the service asked for and the ones it knows. Imports grpc and
grpc_health only.
"""
from __future__ import annotations

import grpc
from grpc_health.v1 import health
from grpc_health.v1 import health_pb2

__all__ = ["HealthServicer"]


class HealthServicer(health.aio.HealthServicer):
    async def Check(self, request: health_pb2.HealthCheckRequest, context):  # noqa: N802
        if request.service not in self._server_status:
            name = repr(request.service)   # escaped: one line; then bounded, whatever it escaped to
            if len(name) > 80:
                name = name[:79] + "…"
            known = ", ".join(sorted(n for n in self._server_status if n))
            await context.abort(grpc.StatusCode.NOT_FOUND,
                                f"no health status for service {name}; ask for '' (the whole daemon) or one of: "
                                f"{known}")
        return await super().Check(request, context)

    async def List(self, request: health_pb2.HealthListRequest, context):  # noqa: N802
        # the base class keeps every status in _server_status (its Check and Watch read it too); a test
        # (tests/personalizer/test_health_list.py) fails should a library update rename it
        return health_pb2.HealthListResponse(statuses={
            name: health_pb2.HealthCheckResponse(status=status) for name, status in self._server_status.items()})
