"""Fixtures: one test deployment and one daemon subprocess (real mTLS on loopback) per session."""
from __future__ import annotations

import pytest

from personalizer import deploy
from tests.personalizer import helpers


@pytest.fixture(scope="session")
def deployment(tmp_path_factory):
    root = tmp_path_factory.mktemp("deploy") / "cns"
    return deploy.init_deployment(root, chamber="RM", station_id="RM-STATION-01", listen="127.0.0.1:0")


@pytest.fixture(scope="session")
def daemon(deployment):
    d = helpers.DaemonProcess(deployment.server_config)
    yield d
    rc = d.stop()
    assert rc == 0, f"daemon exited with {rc} on SIGTERM: {d.proc.stderr.read()}"


@pytest.fixture(scope="session")
def tls_dir(deployment):
    return deployment.root / "tls"


@pytest.fixture(scope="session")
def station_cert(deployment):
    d = deployment.station_config.parent
    return helpers.ClientCert((d / "client.pem").read_bytes(), (d / "client.key.pem").read_bytes())


@pytest.fixture(scope="session")
def admin_cert(deployment):
    d = deployment.admin_config.parent
    return helpers.ClientCert((d / "client.pem").read_bytes(), (d / "client.key.pem").read_bytes())


@pytest.fixture(scope="session")
def station_stub(daemon, tls_dir, station_cert):
    from proto.cns.v1 import personalizer_pb2_grpc
    ch = helpers.channel(daemon.port, tls_dir, station_cert)
    yield personalizer_pb2_grpc.PersonalizerStub(ch)
    ch.close()


@pytest.fixture(scope="session")
def admin_stub(daemon, tls_dir, admin_cert):
    from proto.cns.v1 import personalizer_pb2_grpc
    ch = helpers.channel(daemon.port, tls_dir, admin_cert)
    yield personalizer_pb2_grpc.PersonalizerStub(ch)
    ch.close()
