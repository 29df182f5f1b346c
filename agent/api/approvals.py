"""Token releases waiting for the holder on the local API (issue 14 item 4): ``ListApprovals``,
``AnswerApproval`` and the ``APPROVAL_*`` events of ``WatchDevices`` (mixed into ``AgentLocalService``).

The state is ``agent.updates.approvals.Approvals`` (the ``token-updates`` task fills it); an approved
release is installed by that task once the token is plugged in and idle. Imports ``agent.updates.approvals``
and ``proto``.
"""
from __future__ import annotations

import grpc

from agent.updates.approvals import ApprovalError, Pending
from proto.cns.v1 import agent_pb2 as pb


def approval_pb(p: Pending) -> pb.PendingApproval:
    return pb.PendingApproval(token_serial=p.serial, model_id=p.model, release=p.release, current_release=p.current,
                              size_bytes=p.size_bytes, offered_unix_ms=int(p.offered_at * 1000), state=p.state,
                              postponed_until_unix_ms=int(p.postponed_until * 1000))


EVENT_KIND = {"pending": pb.DEVICE_EVENT_KIND_APPROVAL_PENDING, "answered": pb.DEVICE_EVENT_KIND_APPROVAL_ANSWERED}


class ApprovalHandlers:
    """gRPC handlers; ``self.approvals`` is the agent's ``Approvals`` (None: no USB backend)."""

    async def ListApprovals(self, request, context):  # noqa: N802 (gRPC names)
        if self.approvals is None:
            return pb.ListApprovalsResponse()
        return pb.ListApprovalsResponse(approvals=[approval_pb(p) for p in self.approvals.list()])

    async def AnswerApproval(self, request, context):  # noqa: N802
        if self.approvals is None:
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION,
                                "this agent does not watch USB tokens: start it without --no-tokens")
        try:
            return approval_pb(self.approvals.answer(request.token_serial, request.approve, request.release))
        except ApprovalError as exc:
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, str(exc))
