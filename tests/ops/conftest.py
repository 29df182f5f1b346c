"""A personalizer deployment and daemon for the agent's operation tests, and a station config for it.

The station config that ``cns-personalizer init`` writes is completed here with
the daemon's real port. It names no card key: the daemon's CardAdmin answers the
emulated cards from its SoftHSM2 token (the models' TEST master keys, issue 12).
"""
from __future__ import annotations

import re

import pytest

from personalizer import deploy
from tests.personalizer import helpers


def station_config_for(deployment, port: int):
    import station_config

    path = deployment.station_config
    text = path.read_text()
    text = re.sub(r'primary = "([^"]*):\d+"', rf'primary = "\g<1>:{port}"', text)
    path.write_text(text)
    return station_config.load(path)


@pytest.fixture(scope="session")
def ops_deployment(tmp_path_factory):
    root = tmp_path_factory.mktemp("ops-deploy") / "cns"
    dep = deploy.init_deployment(root, chamber="RM", station_id="RM-STATION-01", listen="127.0.0.1:0")
    cfg = dep.server_config.read_text()
    # The legacy RSA-1024 card model: this deployment accepts its keys (config opt-in).
    cfg = cfg.replace("min_rsa_bits = 2048", "min_rsa_bits = 1024")
    dep.server_config.write_text(cfg)
    return dep


@pytest.fixture(scope="session")
def ops_daemon(ops_deployment):
    d = helpers.DaemonProcess(ops_deployment.server_config)
    yield d
    d.stop()


@pytest.fixture(scope="session")
def station(ops_deployment, ops_daemon):
    return station_config_for(ops_deployment, ops_daemon.port)


@pytest.fixture(scope="session")
def inmemory_deployment(tmp_path_factory):
    """A deployment for tests on the in-memory uplink (tests/support/uplink): its server config builds the
    broker, relay, store and CA in the test's loop (``Env``); no daemon runs on it."""
    root = tmp_path_factory.mktemp("inmemory-deploy") / "cns"
    return deploy.init_deployment(root, chamber="RM", station_id="RM-STATION-01", listen="127.0.0.1:0")

