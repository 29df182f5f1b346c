"""Central IT's StationAdmin calls reach any process of the daemon (issue 16, ``[server] processes`` = 2):
each is answered, whichever process the kernel gave the connection; the Enroll port stays one (the
primary's)."""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import grpc

from personalizer import deploy
from proto.cns.v1 import enrollment_pb2 as epb, enrollment_pb2_grpc as epb_grpc
from tests.enrollment.conftest import ENROLL_RE
from tests.personalizer import helpers
from tests.personalizer.test_processes import _helper_pids, _with_processes

CALLS = 12


def test_station_admin_is_served_by_every_process(tmp_path):
    dep = deploy.init_deployment(tmp_path / "cns", chamber="RM", listen="127.0.0.1:0", demo_station=False)
    _with_processes(dep, 2)
    d = helpers.DaemonProcess(dep.server_config)
    try:
        assert ENROLL_RE.search(d.proc.stdout.readline()), "no enrollment port"
        assert len(_helper_pids(d.proc.pid)) == 1
        admin = dep.admin_config.parent
        creds = grpc.ssl_channel_credentials((dep.root / "tls" / "tls-ca.pem").read_bytes(),
                                             (admin / "client.key.pem").read_bytes(),
                                             (admin / "client.pem").read_bytes())

        def add(i):   # a connection of its own each: the kernel picks the process
            with grpc.secure_channel(f"localhost:{d.port}", creds,
                                     options=[("grpc.use_local_subchannel_pool", 1)]) as ch:
                try:
                    epb_grpc.StationAdminStub(ch).AddStation(
                        epb.AddStationRequest(station_id=f"RM-P{i}", chamber_code="RM"), timeout=30,
                        wait_for_ready=True)
                    return "ok"
                except grpc.RpcError as exc:
                    return exc.code().name
        with ThreadPoolExecutor(4) as pool:
            got = list(pool.map(add, range(CALLS)))
        assert got == ["ok"] * CALLS, got
    finally:
        assert d.stop(30) == 0, d.proc.stderr.read()
