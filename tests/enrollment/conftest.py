"""Fixtures: a deployment without a demo station key and its daemon (real mTLS + the enrollment port)."""
from __future__ import annotations

import re

import pytest

from personalizer import deploy
from tests.personalizer import helpers

ENROLL_RE = re.compile(r"enrollment on port (\d+)")


@pytest.fixture(scope="module")
def deployment(tmp_path_factory):
    root = tmp_path_factory.mktemp("enroll") / "cns"
    dep = deploy.init_deployment(root, chamber="RM", listen="127.0.0.1:0", demo_station=False)
    cfg = dep.server_config                      # room for this module's enrollments from one address
    cfg.write_text(cfg.read_text().replace("code_hours = 72", "code_hours = 72\nattempts_per_minute = 20"))
    return dep


@pytest.fixture(scope="module")
def daemon(deployment):
    d = helpers.DaemonProcess(deployment.server_config)
    line = d.proc.stdout.readline()
    m = ENROLL_RE.search(line)
    if not m:
        d.proc.kill()
        raise RuntimeError(f"no enrollment port: {line!r}")
    d.enroll_port = int(m.group(1))
    yield d
    rc = d.stop()
    assert rc == 0, f"daemon exited with {rc} on SIGTERM: {d.proc.stderr.read()}"
