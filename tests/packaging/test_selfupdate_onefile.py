"""The built one-file cns-agent as a TUF target (issue 18 item 5): published with ``cnsctl release add --agent``,
served by nginx, installed by the self-updater over an older build and health-checked by running it; and
the binary's own ``update`` commands (tuf bundled) talking to the same repository."""
from __future__ import annotations

import json
import os
import subprocess

from agent.updates.client import UpdateClient
from agent.updates.selfupdate import SelfUpdater
from personalizer.releases.repository import ReleaseRepo
from tests.conftest import require
from tests.releases import nginx

PLATFORM = "linux-x86_64"


def test_the_built_agent_is_published_installed_and_passes_its_health_check(agent_binary, tmp_path):
    require(nginx.missing())
    version = subprocess.run([str(agent_binary), "--version"], capture_output=True, text=True,
                             timeout=120).stdout.split()[-1]
    repo = ReleaseRepo.init(tmp_path / "repo", tmp_path / "off", tmp_path / "on")
    repo.add_agent(agent_binary, version, PLATFORM)
    repo.sign(tmp_path / "off")
    repo.publish(tmp_path / "on")
    srv = nginx.start(repo.served, tmp_path / "nginx")
    try:
        old = tmp_path / "old-agent"
        old.write_text('#!/bin/sh\necho "cns-agent 0.0.1"\n')
        old.chmod(0o755)
        root = (repo.meta_dir / "1.root.json").read_bytes()
        up = SelfUpdater(tmp_path / "install", UpdateClient(tmp_path / "state", srv.url, bootstrap_root=root),
                         PLATFORM)
        up.install_first(old, "0.0.1")
        out = up.apply()
        assert (out.action, out.version) == ("updated", version)
        installed = tmp_path / "install" / "current" / "cns-agent"
        assert installed.read_bytes() == agent_binary.read_bytes()
        # the installed binary checks for updates itself: tuf and the fetcher are inside it
        env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "XDG_DATA_HOME": str(tmp_path / "data")}
        (tmp_path / "root.json").write_bytes(root)
        r = subprocess.run([str(installed), "update", "trust", str(tmp_path / "root.json")], capture_output=True,
                           text=True, timeout=120, env=env)
        assert r.returncode == 0, r.stderr
        r = subprocess.run([str(installed), "--json", "update", "check", "--url", srv.url, "--platform", PLATFORM],
                           capture_output=True, text=True, timeout=120, env=env)
        assert r.returncode == 0, r.stderr
        assert json.loads(r.stdout.splitlines()[-1])["newer_agent"] == version   # nothing installed in that home yet
        assert os.readlink(tmp_path / "install" / "previous") == "versions/0.0.1"
    finally:
        srv.stop()
