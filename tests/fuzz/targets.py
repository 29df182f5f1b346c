"""What the fuzz aims at: every service the generated code declares, which port serves it, the identity
each method is called with, a well-formed request per method to mutate (with secret markers the logs and
the store must never show), and the agent's local API service as the in-process tests run it (no station
configuration, one reader with an unsupported card). Used by tests/fuzz and ``scripts/bench fuzz``.

The method lists come from the descriptors (``proto.cns.v1.*_pb2``, grpc health and reflection), so a new
RPC is fuzzed without editing this file; a new *service* must be placed on a port in ``PORTS``, or
``test_every_declared_service_is_a_fuzz_target`` fails (and ``test_each_port_serves_exactly_its_targets``
when a port serves a service it does not list).
"""
from __future__ import annotations

import importlib
import pkgutil

from grpc_health.v1 import health_pb2
from grpc_reflection.v1alpha import reflection_pb2

import proto.cns.v1 as _cns_v1
from agent.api.operations import Operations
from agent.api.server import AgentFacts, AgentLocalService
from agent.devices import Catalog
from agent.devices.registry import DeviceRegistry
from personalizer.edge import identity
from proto.cns.v1 import (admin_pb2, agent_pb2, card_admin_pb2, common_pb2, enrollment_pb2, fleet_pb2,
                          personalizer_pb2, registrations_pb2, self_renewal_pb2)
from tests.fuzz import protofuzz
from tests.personalizer import helpers

# Which port serves which service: "main" the mTLS port, "enroll" the server-auth-only enrollment port
# ([enrollment]), "agent" the agent's local Unix socket.
PORTS: dict[str, tuple[str, ...]] = {
    "main": ("cns.v1.Personalizer", "cns.v1.QueueAdmin", "cns.v1.Registrations", "cns.v1.StationAdmin",
             "cns.v1.CardAdmin", "cns.v1.Fleet", "cns.v1.FleetAdmin", "grpc.health.v1.Health",
             "grpc.reflection.v1alpha.ServerReflection"),
    "enroll": ("cns.v1.StationEnrollment", "cns.v1.HolderRenewal"),
    "agent": ("cns.v1.AgentLocal",),
}

# Recognisable secrets in the seeds: the one-time enrollment code and a card batch's transport key.
SECRET_CODE = "FUZZSECRETCODE7Q"
SECRET_KEY = bytes.fromhex("5ec7e75ec7e75ec7e75ec7e75ec7e75e")
SECRET_MARKERS = (SECRET_CODE, SECRET_KEY.hex(), SECRET_KEY.hex().upper())


def declared_services() -> dict[str, object]:
    """Full name → ServiceDescriptor of every service in proto/cns/v1's generated code, grpc health and
    reflection (the daemon serves both)."""
    modules = [importlib.import_module(f"{_cns_v1.__name__}.{m.name}")
               for m in pkgutil.iter_modules(_cns_v1.__path__) if m.name.endswith("_pb2")]
    out = {}
    for mod in modules + [health_pb2, reflection_pb2]:
        for svc in mod.DESCRIPTOR.services_by_name.values():
            out[svc.full_name] = svc
    return out


def methods_on(port: str) -> list[protofuzz.Method]:
    services = declared_services()
    out = []
    for name in PORTS[port]:
        svc = services[name]
        out += protofuzz.methods_of(svc.file, svc.name)
    return out


PERSONALIZER = protofuzz.methods_of(personalizer_pb2.DESCRIPTOR, "Personalizer")
ADMIN = protofuzz.methods_of(admin_pb2.DESCRIPTOR, "QueueAdmin")
# Health.List included: personalizer.edge.health implements it (grpcio-health-checking's aio servicer does not)
HEALTH = protofuzz.methods_of(health_pb2.DESCRIPTOR, "Health")
AGENT = protofuzz.methods_of(agent_pb2.DESCRIPTOR, "AgentLocal")
MAIN = methods_on("main")
ENROLL = methods_on("enroll")

_PREFERENCE = (identity.ROLE_STATION, identity.ROLE_ADMIN, identity.ROLE_IR)   # the identities we hold


def role_for(path: str) -> str:
    """The identity a main-port method is fuzzed as: one it is authorised for, so the handler is reached."""
    if path.startswith(identity.OPEN_PREFIXES):
        return identity.ROLE_STATION
    allowed = identity.METHOD_ROLES[path]
    return next(r for r in _PREFERENCE if r in allowed)


def wrong_role_for(path: str) -> str | None:
    """An identity we hold that may not call ``path`` (None: every one may)."""
    if path.startswith(identity.OPEN_PREFIXES):
        return None
    return next((r for r in _PREFERENCE if r not in identity.METHOD_ROLES[path]), None)


def _requester(role: str) -> common_pb2.Requester:
    station = {identity.ROLE_STATION: "RM-STATION-01", identity.ROLE_IR: "ir-001"}.get(role, "RM-STATION-01")
    return common_pb2.Requester(station_id=station, chamber_code="RM", operator_id="op-001")


def seeds_for(methods, *, role_of=None) -> dict:
    """A well-formed request per method to mutate: the requester of the identity that calls it (``role_of``:
    path → role; by default the station), and real requests where a default message would stop at the
    first check (SubmitIssue, a fleet hello, a card batch, an enrollment)."""
    from firmware_profiles import load_models

    model = sorted(load_models())[0]
    out = {}
    for m in methods:
        msg = m.input_type()
        if "requester" in msg.DESCRIPTOR.fields_by_name:
            msg.requester.CopyFrom(_requester(role_of(m.path) if role_of else identity.ROLE_STATION))
        out[m.path] = [msg]
    csr = helpers.csr_der()
    hello = fleet_pb2.FleetAgentMessage(hello=fleet_pb2.FleetHello(
        agent_version="1.0", readers=["R0"], devices=[fleet_pb2.FleetDevice(kind="card", model=model,
                                                                            serial=helpers.CARD_ID)]))
    card = dict(card_serial=helpers.CARD_ID, card_model=model, operation_id="op-fuzz-1")
    out.update({
        "/cns.v1.Personalizer/SubmitIssue": [helpers.issue_request()],
        "/cns.v1.Fleet/Connect": [hello],
        "/cns.v1.Fleet/Poll": [fleet_pb2.FleetPollRequest(messages=[hello])],
        "/cns.v1.CardAdmin/Authenticate": [card_admin_pb2.CardAuthRequest(
            requester=_requester(identity.ROLE_STATION), challenge=b"\x11" * 16,
            operation=card_admin_pb2.CARD_OPERATION_PERSONALIZE, **card)],
        "/cns.v1.CardAdmin/LoadBatch": [card_admin_pb2.LoadBatchRequest(
            batch_id="FUZZ-B1", chamber_code="RM", card_model=model, first_serial="7420000000000001",
            last_serial="7420000000000099", transport_key=SECRET_KEY)],
        "/cns.v1.StationAdmin/AddStation": [enrollment_pb2.AddStationRequest(
            station_id="RM-FUZZ-01", chamber_code="RM", valid_hours=1)],
        "/cns.v1.StationEnrollment/Enroll": [enrollment_pb2.EnrollRequest(
            code=SECRET_CODE, csr_der=csr, expect_station_id="RM-STATION-01", expect_chamber_code="RM")],
        "/cns.v1.Registrations/RegisterHolder": [registrations_pb2.RegisterHolderRequest(
            holder=common_pb2.Holder(codice_fiscale=helpers.CF, given_name="Mario", surname="Rossi",
                                     birth_date="1980-01-01"), form=b"%PDF-1.4\n%fuzz\n", sex="M")],
        "/cns.v1.HolderRenewal/SelfRenew": [self_renewal_pb2.SelfRenewRequest(
            request_id="self-fuzz-1", profile=personalizer_pb2.CA_PROFILE_CNS_AUTH, csr_der=csr,
            current_certificate_der=b"0\x82\x01\x00", proof_of_possession=b"\x00" * 256)],
        "/cns.v1.HolderRenewal/AuthenticateCard": [self_renewal_pb2.SelfCardAuthRequest(
            current_certificate_der=b"0\x82\x01\x00", challenge=b"\x22" * 16, **card)],
    })
    return {path: seeds for path, seeds in out.items() if any(m.path == path for m in methods)}


def agent_service(sock):
    registry = DeviceRegistry()
    registry.reader_added("R0")
    registry.card_inserted("R0", b"\x3b\x02\x14\x50", supported=False)
    facts = AgentFacts(version="t", socket_path=str(sock), profiles_dir="", model_ids=["m"],
                       pcsc_status=lambda: "ok")

    def connect(reader):
        raise AssertionError("the fuzz must not reach a card")
    return AgentLocalService(registry, facts, operations=Operations(None, Catalog.load(), registry, connect))
