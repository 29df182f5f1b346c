"""What the fuzz aims at: the services' method lists, a well-formed request per method to mutate, and the
agent's local API service as the in-process tests run it (no station configuration, one reader with an
unsupported card). Used by tests/fuzz and ``scripts/bench fuzz``."""
from __future__ import annotations

from grpc_health.v1 import health_pb2

from agent.api.operations import Operations
from agent.api.server import AgentFacts, AgentLocalService
from agent.devices import Catalog
from agent.devices.registry import DeviceRegistry
from proto.cns.v1 import admin_pb2, agent_pb2, common_pb2, personalizer_pb2
from tests.fuzz import protofuzz
from tests.personalizer import helpers

PERSONALIZER = protofuzz.methods_of(personalizer_pb2.DESCRIPTOR, "Personalizer")
ADMIN = protofuzz.methods_of(admin_pb2.DESCRIPTOR, "QueueAdmin")
# Health.List included: personalizer.edge.health implements it (grpcio-health-checking's aio servicer does not)
HEALTH = protofuzz.methods_of(health_pb2.DESCRIPTOR, "Health")
AGENT = protofuzz.methods_of(agent_pb2.DESCRIPTOR, "AgentLocal")


def seeds_for(methods, *, chamber="RM", station="RM-STATION-01") -> dict:
    """A well-formed request per method to mutate: the right requester, and a real SubmitIssue."""
    out = {}
    for m in methods:
        msg = m.input_type()
        if "requester" in msg.DESCRIPTOR.fields_by_name:
            msg.requester.CopyFrom(common_pb2.Requester(station_id=station, chamber_code=chamber,
                                                        operator_id="op-001"))
        out[m.path] = [msg]
    out["/cns.v1.Personalizer/SubmitIssue"] = [helpers.issue_request()]
    return out


def agent_service(sock):
    registry = DeviceRegistry()
    registry.reader_added("R0")
    registry.card_inserted("R0", b"\x3b\x02\x14\x50", supported=False)
    facts = AgentFacts(version="t", socket_path=str(sock), profiles_dir="", model_ids=["m"],
                       pcsc_status=lambda: "ok")

    def connect(reader):
        raise AssertionError("the fuzz must not reach a card")
    return AgentLocalService(registry, facts, operations=Operations(None, Catalog.load(), registry, connect))
