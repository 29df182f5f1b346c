"""The daemon serves the fleet: ``cns-personalizer serve`` registers Fleet and FleetAdmin on its mTLS port,
keeps the inventory in its database across a restart, and stops cleanly."""
from __future__ import annotations


from proto.cns.v1 import fleet_pb2 as pb, fleet_pb2_grpc
from tests.fleet import support
from tests.personalizer import helpers


def test_the_daemon_serves_the_fleet_and_keeps_its_inventory_across_a_restart(deployment, tmp_path):
    tls = deployment.root / "tls"
    for attempt in range(2):
        d = helpers.DaemonProcess(deployment.server_config)
        try:
            cfg = support.station(deployment, tmp_path / f"st{attempt}", d.port)
            with helpers.channel(d.port, tls, support.cert_of(cfg)) as ch:
                if attempt == 0:
                    r = fleet_pb2_grpc.FleetStub(ch).Poll(pb.FleetPollRequest(messages=[pb.FleetAgentMessage(
                        hello=pb.FleetHello(agent_version="9.9", devices=[pb.FleetDevice(serial="S1")]))]))
                    assert r.welcome.station == "urn:cns:station:RM:RM-ST-1"
            with helpers.channel(d.port, tls, support.admin_cert(deployment)) as ch:
                got = fleet_pb2_grpc.FleetAdminStub(ch).ListStations(pb.FleetInventoryQuery(search="RM-ST-1"))
                assert [(s.agent_version, s.device_count, s.connected) for s in got.stations] == [("9.9", 1, False)]
        finally:
            assert d.stop() == 0, d.proc.stderr.read()
