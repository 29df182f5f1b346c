"""The local Patroni cluster, brought up once per test module (personalizer.continuity.cluster).

The run folder is a fresh directory under /tmp that the unprivileged ``postgres`` user can reach
(pytest's own tmp folders are root-only); every process is stopped and the folder removed at module end.
"""
from __future__ import annotations

import os
import tempfile

import pytest

from personalizer.continuity.cluster import Cluster, free_port_base, missing_tools
from tests.conftest import require


@pytest.fixture(scope="module")
def cluster():
    require(missing_tools())
    run_dir = tempfile.mkdtemp(prefix="cns-cluster-")
    os.chmod(run_dir, 0o755)
    c = Cluster(run_dir, port_base=free_port_base())
    try:
        c.up(timeout=90)
        yield c
    finally:
        c.down(purge=True)
