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


def test_a_really_full_disk_during_self_update_is_one_line_and_a_retry_after_freeing_space_finishes(served,
                                                                                                    tmp_path):
    """The agent's data folder on a 1 MB tmpfs (a real ENOSPC from the kernel, not a patched write), a 1.5 MB
    build on offer: the download stops with one line, the running build stays; with room made (the tmpfs
    grown, as a user deleting files), the same command resumes and installs it."""
    import os
    from tests.conftest import require
    from agent.updates.selfupdate import SelfUpdater
    require([] if os.geteuid() == 0 else ["root (to mount a 1 MB tmpfs as the full disk)"])
    disk = tmp_path / "disk"
    disk.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(disk)], check=True)
    try:
        big = stand_in(tmp_path, "0.2.0")
        with open(big, "a") as f:                       # a shell script exits before it reads the padding
            f.write(("#" + "x" * 1023 + "\n") * 1536)
        served.repo.add_agent(big, "0.2.0", PLATFORM)
        served.repo.sign(served.offline)
        served.repo.publish(served.online)
        root = tmp_path / "root.json"
        root.write_bytes(served.first_root())
        home = disk
        up = SelfUpdater(home / "data" / "cns-agent" / "install")
        up.install_first(stand_in(tmp_path, "0.1.0"), "0.1.0")
        assert agent("update", "trust", str(root), env_home=home)[0] == 0
        common = ["--url", served.url, "--platform", PLATFORM]
        rc, out, err = agent("update", "apply", *common, env_home=home)
        assert rc == 1 and "No space left on device" in err and "free some space" in err, err
        assert err.count("\n") == 1 and "Traceback" not in err
        current = home / "data" / "cns-agent" / "install" / "current" / "cns-agent"
        assert subprocess.run([str(current), "--version"], capture_output=True, text=True).stdout.strip() == \
            "cns-agent 0.1.0"
        assert up.current_version() == "0.1.0"
        subprocess.run(["mount", "-o", "remount,size=8m", str(disk)], check=True)    # the user made room
        rc, out, err = agent("update", "apply", *common, "--json", env_home=home)
        assert rc == 0, err
        assert json.loads(out.splitlines()[-1]) == {"event": "result", "action": "updated", "version": "0.2.0",
                                                   "detail": "from 0.1.0"}
        assert up.current_version() == "0.2.0"
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)
