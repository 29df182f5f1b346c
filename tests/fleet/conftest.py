"""One test deployment (TLS CA, admin certificate) for the fleet tests."""
from __future__ import annotations

import pytest

from personalizer import deploy


@pytest.fixture(scope="session")
def deployment(tmp_path_factory):
    root = tmp_path_factory.mktemp("fleet-deploy") / "cns"
    return deploy.init_deployment(root, chamber="RM", station_id="RM-STATION-01", listen="127.0.0.1:0",
                                  ca_key_bits=2048)
