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
