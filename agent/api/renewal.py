"""Renewal on the local API: the ``Renew`` stream (mixed into ``AgentLocalService``).

The work is ``Operations.renew`` (agent/api/operations.py) → ``StationOps.renew``
→ ``agent.ops.renew.Renewer``. The PIN in the request is used for the call only.
Imports ``agent.ops``, ``agent.card.errors``, ``proto``.
"""
from __future__ import annotations

import grpc


class RenewalHandlers:
    """gRPC handlers for renewal; ``self.operations`` is the agent's operations facade."""

    async def Renew(self, request, context):  # noqa: N802 (gRPC names)
        if self.operations is None:
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION,
                                "this agent runs without a station configuration: start it with "
                                "`cns-agent run --config FILE`")
        async for message in self.operations.renew(request, context):
            yield message
