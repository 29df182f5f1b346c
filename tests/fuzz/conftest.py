"""Fixtures of the fuzz suite: one personalizer daemon subprocess (``tests.fuzz.daemon``) for the session,
and the agent-operation fixtures of tests/ops for the card-key tests."""
from __future__ import annotations

import pytest

from tests.fuzz.daemon import start_daemon, stop_daemon
from tests.ops.conftest import ops_daemon, ops_deployment, station  # noqa: F401


@pytest.fixture(scope="session")
def fuzz_daemon(tmp_path_factory):
    d = start_daemon(tmp_path_factory.mktemp("fuzz-daemon"))
    yield d
    rc = stop_daemon(d)
    assert rc == 0, f"daemon exited with {rc} on SIGTERM: {d.log()[-2000:]}"
