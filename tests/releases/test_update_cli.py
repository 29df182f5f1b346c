"""``cns-agent update`` as a holder or help desk runs it (the real console script, the repository on nginx)."""
from __future__ import annotations

import json
import subprocess
import sys

from tests.releases.test_selfupdate import PLATFORM, stand_in


def agent(*args, env_home):
    r = subprocess.run([sys.executable, "-m", "agent.cli", *args], capture_output=True, text=True, timeout=60,
                       env={"PATH": "/usr/bin:/bin", "HOME": str(env_home), "XDG_DATA_HOME": str(env_home / "data")})
    return r.returncode, r.stdout, r.stderr


def test_trust_check_apply_with_json_lines(served, tmp_path):
    from agent.updates.selfupdate import SelfUpdater
    served.repo.add_agent(stand_in(tmp_path, "0.2.0"), "0.2.0", PLATFORM)
    served.repo.sign(served.offline)
    served.repo.publish(served.online)
    root = tmp_path / "root.json"
    root.write_bytes(served.first_root())
    SelfUpdater(tmp_path / "data" / "cns-agent" / "install").install_first(stand_in(tmp_path, "0.1.0"), "0.1.0")
    common = ["--url", served.url, "--platform", PLATFORM]
    rc, out, err = agent("update", "trust", str(root), env_home=tmp_path)
    assert rc == 0, err
    rc, out, err = agent("--json", "update", "check", *common, env_home=tmp_path)
    assert rc == 0, err
    assert json.loads(out.splitlines()[-1]) == {"event": "result", "agent": "0.1.0", "newer_agent": "0.2.0"}
    rc, out, err = agent("update", "apply", *common, "--json", env_home=tmp_path)
    assert rc == 0, err
    lines = [json.loads(x) for x in out.splitlines()]
    assert lines[-1] == {"event": "result", "action": "updated", "version": "0.2.0", "detail": "from 0.1.0"}
    assert any(x["event"] == "progress" for x in lines[:-1])


def test_without_a_trusted_root_or_a_repository_the_error_says_what_to_do(tmp_path):
    rc, _, err = agent("update", "check", env_home=tmp_path)
    assert rc == 1 and err.strip() == ("cns-agent update: no release repository: give --config station.toml "
                                       "(with [updates]) or --url URL")
    rc, _, err = agent("update", "check", "--url", "http://127.0.0.1:9", env_home=tmp_path)
    assert rc == 1 and "no trusted root.json yet" in err and err.count("\n") == 1
    bad = tmp_path / "bad.json"
    bad.write_text('{"signed": {}}')
    rc, _, err = agent("update", "trust", str(bad), env_home=tmp_path)
    assert rc == 1 and "not a self-signed TUF root" in err and err.count("\n") == 1


def test_an_unreachable_server_is_one_line(served, tmp_path):
    root = tmp_path / "root.json"
    root.write_bytes(served.first_root())
    assert agent("update", "trust", str(root), env_home=tmp_path)[0] == 0
    rc, _, err = agent("update", "check", "--url", "http://127.0.0.1:9", env_home=tmp_path)
    assert rc == 1 and "update check failed" in err and err.count("\n") == 1 and "Traceback" not in err


def _installed_on(home, tmp_path, served, big_kb: int = 0):
    """0.1.0 installed under ``home``'s data folder, 0.2.0 (padded to ``big_kb`` KB) on offer, its root trusted."""
    from agent.updates.selfupdate import SelfUpdater
    build = stand_in(tmp_path, "0.2.0")
    with open(build, "a") as f:                         # a shell script exits before it reads the padding
        f.write(("#" + "x" * 1023 + "\n") * big_kb)
    served.repo.add_agent(build, "0.2.0", PLATFORM)
    served.repo.sign(served.offline)
    served.repo.publish(served.online)
    root = tmp_path / "root.json"
    root.write_bytes(served.first_root())
    up = SelfUpdater(home / "data" / "cns-agent" / "install")
    up.install_first(stand_in(tmp_path, "0.1.0"), "0.1.0")
    assert agent("update", "trust", str(root), env_home=home)[0] == 0
    return up, ["--url", served.url, "--platform", PLATFORM]


def _runs(up) -> str:
    return subprocess.run([str(up.dir / "current" / "cns-agent"), "--version"], capture_output=True,
                          text=True).stdout.strip()


def test_a_really_full_disk_during_self_update_is_one_line_and_a_retry_after_freeing_space_finishes(served,
                                                                                                    tmp_path):
    """The agent's data folder on a 1 MB tmpfs (a real ENOSPC from the kernel, not a patched write), a 1.5 MB
    build on offer: the download stops with one line, the running build stays; with room made (the tmpfs
    grown, as a user deleting files), the same command resumes and installs it."""
    from tests.support.tmpfs import tmpfs
    with tmpfs(tmp_path / "disk", "1m") as disk:
        up, common = _installed_on(disk.path, tmp_path, served, big_kb=1536)
        rc, out, err = agent("update", "apply", *common, env_home=disk.path)
        assert rc == 1 and "No space left on device" in err and "free some space" in err, err
        assert err.count("\n") == 1 and "Traceback" not in err
        assert _runs(up) == "cns-agent 0.1.0" and up.current_version() == "0.1.0"
        disk.remount(size="8m")                                              # the user made room
        rc, out, err = agent("update", "apply", *common, "--json", env_home=disk.path)
        assert rc == 0, err
        assert json.loads(out.splitlines()[-1]) == {"event": "result", "action": "updated", "version": "0.2.0",
                                                   "detail": "from 0.1.0"}
        assert up.current_version() == "0.2.0" and _runs(up) == "cns-agent 0.2.0"


def test_a_read_only_home_during_self_update_is_one_line_and_keeps_the_running_build(served, tmp_path):
    from tests.support.tmpfs import tmpfs
    with tmpfs(tmp_path / "home", "8m") as home:
        up, common = _installed_on(home.path, tmp_path, served)
        home.remount(read_only=True)                                         # e.g. a roaming profile gone ro
        rc, out, err = agent("update", "apply", *common, env_home=home.path)
        assert rc == 1 and "Read-only file system" in err and err.count("\n") == 1 and "Traceback" not in err, err
        assert "free some space" not in err and "not writable" in err and "--state-dir" in err   # advice that fits
        assert _runs(up) == "cns-agent 0.1.0" and up.current_version() == "0.1.0"
        home.remount(read_only=False)
        rc, out, err = agent("update", "apply", *common, env_home=home.path)
        assert rc == 0, err
        assert up.current_version() == "0.2.0"
