"""The agent's self-update (issue 18 item 5) from the TUF repository served by nginx.

The builds are stand-in executables (shell scripts answering ``--version`` like the one-file build
does), not the PyInstaller binary: building that takes minutes on this machine. The swap, rollback
and refusal paths are the same for any executable.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap

import pytest

from agent.updates.client import UpdateError
from agent.updates.selfupdate import SelfUpdater, version_check
from tests.conftest import ROOT

PLATFORM = "linux-x86_64"


def stand_in(tmp_path, version: str, *, crash: bool = False, marker=None):
    p = tmp_path / f"build-{version}{'-crash' if crash else ''}"
    body = ["#!/bin/sh"]
    if marker:
        body.append(f"touch {marker}")
    body.append("exit 70" if crash else f'echo "cns-agent {version}"')
    p.write_text("\n".join(body) + "\n")
    p.chmod(0o755)
    return p


@pytest.fixture
def publish_agent(served):
    def publish(binary, version):
        served.repo.add_agent(binary, version, PLATFORM)
        served.repo.sign(served.offline)
        served.repo.publish(served.online)
    return publish


@pytest.fixture
def installed(tmp_path, new_client):
    def make():
        up = SelfUpdater(tmp_path / "install", new_client(), PLATFORM)
        if up.current_version() is None:
            up.install_first(stand_in(tmp_path, "0.1.0"), "0.1.0")
        return up
    return make


def _runs(up) -> str:
    return subprocess.run([str(up.dir / "current" / "cns-agent"), "--version"], capture_output=True,
                          text=True).stdout.strip()


def test_a_good_release_is_installed_and_run(tmp_path, publish_agent, installed):
    publish_agent(stand_in(tmp_path, "0.2.0"), "0.2.0")
    up = installed()
    out = up.apply()
    assert (out.action, out.version) == ("updated", "0.2.0")
    assert _runs(up) == "cns-agent 0.2.0"
    assert os.readlink(up.dir / "previous") == "versions/0.1.0"
    assert up.apply().action == "up-to-date"


def test_a_build_that_crashes_at_start_is_rolled_back_and_never_retried(tmp_path, publish_agent, installed):
    publish_agent(stand_in(tmp_path, "0.2.0", crash=True), "0.2.0")
    up = installed()
    out = up.apply()
    assert (out.action, out.version) == ("rolled-back", "0.1.0")
    assert "agent 0.2.0 failed its health check (it exited with status 70 at start); back on 0.1.0" == out.detail
    assert _runs(up) == "cns-agent 0.1.0"
    assert not (up.dir / "update-state.json").exists()
    assert up.apply().action == "up-to-date"               # 0.2.0 is known bad: not tried again
    publish_agent(stand_in(tmp_path, "0.2.1"), "0.2.1")      # the fixed build is taken
    assert installed().apply().version == "0.2.1"


def test_a_tampered_build_is_refused_and_never_run(tmp_path, served, publish_agent, installed):
    marker = tmp_path / "it-ran"
    publish_agent(stand_in(tmp_path, "0.2.0"), "0.2.0")
    [blob] = (served.repo.targets_dir / "agent" / PLATFORM / "0.2.0").glob("*.cns-agent")
    blob.write_text(f"#!/bin/sh\ntouch {marker}\necho 'cns-agent 0.2.0'\n")     # the mirror swaps the binary
    up = installed()
    with pytest.raises(UpdateError, match="refused"):
        up.apply()
    assert not marker.exists()
    assert _runs(up) == "cns-agent 0.1.0"
    assert not (up.dir / "versions" / "0.2.0").exists()


def test_a_build_that_hangs_is_rolled_back_after_the_time_limit(tmp_path, publish_agent, installed):
    hang = tmp_path / "hang"
    hang.write_text("#!/bin/sh\nsleep 30\n")
    hang.chmod(0o755)
    publish_agent(hang, "0.2.0")
    up = installed()
    up.download(*up.available())
    out = up.switch("0.2.0", version_check("0.2.0", timeout_s=1))
    assert out.action == "rolled-back" and "did not answer within 1 s" in out.detail
    assert _runs(up) == "cns-agent 0.1.0"


def test_an_updater_killed_between_swap_and_verdict_is_rolled_back_at_the_next_start(tmp_path, publish_agent,
                                                                                    installed):
    publish_agent(stand_in(tmp_path, "0.2.0"), "0.2.0")
    up = installed()
    up.download(*up.available())
    child = textwrap.dedent(f"""
        import os, signal
        from pathlib import Path
        from agent.updates.selfupdate import SelfUpdater
        def dies(binary):
            os.kill(os.getpid(), signal.SIGKILL)
        SelfUpdater(Path({str(up.dir)!r}), None, {PLATFORM!r}).switch("0.2.0", dies)
    """)
    r = subprocess.run([sys.executable, "-c", child], cwd=ROOT, timeout=60)
    assert r.returncode == -signal.SIGKILL
    assert os.readlink(up.dir / "current") == "versions/0.2.0"          # swapped, no verdict
    out = SelfUpdater(up.dir, None, PLATFORM).recover()
    assert out.action == "rolled-back" and "interrupted before its health check; back on 0.1.0" in out.detail
    assert _runs(up) == "cns-agent 0.1.0"


def test_a_full_disk_during_the_download_keeps_the_running_build(tmp_path, publish_agent, installed, monkeypatch):
    publish_agent(stand_in(tmp_path, "0.2.0"), "0.2.0")
    up = installed()
    import agent.updates.fetcher as fetcher

    real_open = open

    def full_disk_open(path, mode="r", *a, **kw):
        f = real_open(path, mode, *a, **kw)
        if str(path).endswith(".part") and "b" in mode and ("w" in mode or "+" in mode):
            def write(_data):
                raise OSError(28, "No space left on device")
            f.write = write
        return f
    monkeypatch.setattr(fetcher, "open", full_disk_open, raising=False)
    with pytest.raises(OSError, match="No space left"):
        up.apply()
    assert _runs(up) == "cns-agent 0.1.0"
    assert not (up.dir / "update-state.json").exists()
