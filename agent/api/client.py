"""A synchronous client of the local API, for the CLI. gRPC errors become ``AgentUnavailableError``
or ``AgentCallError`` here. Imports ``proto`` only."""
from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import grpc

from proto.cns.v1 import agent_pb2 as pb
from proto.cns.v1 import agent_pb2_grpc as pb_grpc

DEADLINE_S = 5.0


class AgentUnavailableError(Exception):
    """No agent answers on the socket."""


class AgentCallError(Exception):
    """The agent answered with an error."""


class AgentClient:
    def __init__(self, socket_path: Path) -> None:
        self.socket_path = socket_path
        self._channel = grpc.insecure_channel(f"unix:{socket_path}")
        self._stub = pb_grpc.AgentLocalStub(self._channel)

    def __enter__(self) -> "AgentClient":
        return self

    def __exit__(self, *exc: object) -> None:
        self._channel.close()

    def _call(self, method, request):
        if not self.socket_path.exists():
            raise AgentUnavailableError(f"no agent is running (no socket at {self.socket_path}); "
                                        "start one with `cns-agent run`")
        try:
            return method(request, timeout=DEADLINE_S)
        except grpc.RpcError as exc:
            raise self._translate(exc) from exc

    def _translate(self, exc: grpc.RpcError) -> Exception:
        code = exc.code() if hasattr(exc, "code") else None
        if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
            return AgentUnavailableError(f"no agent answers on {self.socket_path} ({exc.details()}); "
                                         "start one with `cns-agent run`")
        return AgentCallError(f"agent error {code.name if code else '?'}: {exc.details()}")

    def info(self) -> pb.AgentInfo:
        return self._call(self._stub.GetAgentInfo, pb.GetAgentInfoRequest())

    def devices(self) -> pb.ListDevicesResponse:
        return self._call(self._stub.ListDevices, pb.ListDevicesRequest())

    def watch(self) -> Iterator[pb.DeviceEvent]:
        if not self.socket_path.exists():
            raise AgentUnavailableError(f"no agent is running (no socket at {self.socket_path})")
        try:
            yield from self._stub.WatchDevices(pb.WatchDevicesRequest())
        except grpc.RpcError as exc:
            if exc.code() == grpc.StatusCode.CANCELLED:
                return
            raise self._translate(exc) from exc

    def personalize(self, request: pb.PersonalizeRequest, timeout_s: float = 900.0) -> Iterator[pb.OperationProgress]:
        """Progress messages of a personalization; the last one carries the result."""
        if not self.socket_path.exists():
            raise AgentUnavailableError(f"no agent is running (no socket at {self.socket_path}); "
                                        "start one with `cns-agent run --config FILE`")
        try:
            yield from self._stub.Personalize(request, timeout=timeout_s)
        except grpc.RpcError as exc:
            raise self._translate(exc) from exc

    def update_token(self, request: pb.UpdateTokenRequest, timeout_s: float = 3600.0) -> Iterator[pb.TokenProgress]:
        """Progress messages of a token partition or firmware update; the last one carries the result."""
        if not self.socket_path.exists():
            raise AgentUnavailableError(f"no agent is running (no socket at {self.socket_path}); "
                                        "start one with `cns-agent run`")
        try:
            yield from self._stub.UpdateToken(request, timeout=timeout_s)
        except grpc.RpcError as exc:
            raise self._translate(exc) from exc

    def approvals(self) -> pb.ListApprovalsResponse:
        """Token releases downloaded that wait for the holder's answer."""
        return self._call(self._stub.ListApprovals, pb.ListApprovalsRequest())

    def answer_approval(self, serial: str, approve: bool, release: str = "") -> pb.PendingApproval:
        try:
            return self._call(self._stub.AnswerApproval, pb.AnswerApprovalRequest(token_serial=serial, release=release,
                                                                                 approve=approve))
        except AgentCallError as exc:
            cause = exc.__cause__
            if getattr(cause, "code", lambda: None)() == grpc.StatusCode.FAILED_PRECONDITION:
                raise AgentCallError(cause.details()) from cause     # the agent's own one-line message
            raise

    def renew(self, request: pb.RenewCardRequest, timeout_s: float = 1800.0) -> Iterator[pb.OperationProgress]:
        """Progress messages of a renewal (it may wait for the CA's service window); the last carries the result."""
        if not self.socket_path.exists():
            raise AgentUnavailableError(f"no agent is running (no socket at {self.socket_path}); "
                                        "start one with `cns-agent run --config FILE`")
        try:
            yield from self._stub.Renew(request, timeout=timeout_s)
        except grpc.RpcError as exc:
            raise self._translate(exc) from exc

    def operations(self) -> pb.ListOperationsResponse:
        return self._call(self._stub.ListOperations, pb.ListOperationsRequest())

    def stop(self, reader: str = "", op_id: str = "") -> pb.StopOperationResponse:
        """Ask the running operation in ``reader`` to stop at its next safe point."""
        return self._call(self._stub.StopOperation, pb.StopOperationRequest(reader=reader, op_id=op_id))

    def resolve(self, op_id: str, action: str, pin: str = "", timeout_s: float = 900.0, *, new_pin: str = "",
                puk: str = "") -> Iterator[pb.OperationProgress]:
        """``finish`` or ``discard`` an open operation: progress messages, the last one carries the result."""
        if not self.socket_path.exists():
            raise AgentUnavailableError(f"no agent is running (no socket at {self.socket_path}); "
                                        "start one with `cns-agent run --config FILE`")
        try:
            yield from self._stub.ResolveOperation(pb.ResolveOperationRequest(op_id=op_id, action=action, pin=pin,
                                                                             new_pin=new_pin, puk=puk),
                                                   timeout=timeout_s)
        except grpc.RpcError as exc:
            raise self._translate(exc) from exc

    def conformance(self, request: pb.ConformanceRequest, timeout_s: float = 1800.0
                    ) -> Iterator[pb.ConformanceProgress]:
        """Progress messages of a tender conformance run; the last one carries the report."""
        if not self.socket_path.exists():
            raise AgentUnavailableError(f"no agent is running (no socket at {self.socket_path}); "
                                        "start one with `cns-agent run --config FILE`")
        try:
            yield from self._stub.RunConformance(request, timeout=timeout_s)
        except grpc.RpcError as exc:
            if exc.code() in (grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.ABORTED):
                raise AgentCallError(exc.details()) from exc      # the agent's own one-line message
            raise self._translate(exc) from exc
