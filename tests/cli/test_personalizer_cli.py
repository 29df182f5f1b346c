"""``cns-personalizer`` as central IT types it: init writes what it serves on, bad arguments are one line and
create nothing, a closed pipe is quiet, and the station folder can be handed to the operator user."""
from __future__ import annotations

import json
import os
import pwd
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from tests.conftest import require

import station_config
from tests.conftest import ROOT
from tests.cli.conftest import one_line_error, run, run_into_closed_pipe


@pytest.mark.parametrize("listen,endpoint", [("127.0.0.1:47123", "127.0.0.1:47123"),
                                             ("0.0.0.0:47124", "127.0.0.1:47124")])
def test_init_writes_the_endpoint_it_listens_on(tmp_path, listen, endpoint):
    r = run("cns-personalizer", "init", str(tmp_path / "d"), "--listen", listen, "--ca-key-bits", "2048", "--json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["endpoint"] == endpoint
    for cfg in (out["station_config"], out["admin_config"]):
        loaded = station_config.load(cfg)
        assert loaded.personalizer.primary == endpoint, cfg
    assert 'listen = "%s"' % listen in (tmp_path / "d" / "personalizer.toml").read_text()


@pytest.mark.parametrize("args,words", [
    (["--ca-key-bits", "512"], ["--ca-key-bits 512", "2048"]),
    (["--ca-key-bits", "2048", "--listen", "nohostport"], ["--listen", "HOST:PORT"]),
    (["--ca-key-bits", "2048", "--chamber", "roma"], ["--chamber", "upper-case"]),
    (["--ca-key-bits", "2048", "--station-owner", "no-such-user-here"], ["--station-owner", "no such user"]),
], ids=["tiny-key", "listen", "chamber", "owner"])
def test_bad_init_arguments_are_one_line_and_create_nothing(tmp_path, args, words):
    r = run("cns-personalizer", "init", str(tmp_path / "d"), *args)
    assert r.returncode == 1
    err = one_line_error(r)
    assert all(w in err for w in words), err
    assert not (tmp_path / "d").exists()


def test_init_into_an_unwritable_path(tmp_path):
    (tmp_path / "file").write_text("x")
    r = run("cns-personalizer", "init", str(tmp_path / "file" / "d"), "--ca-key-bits", "2048")
    assert r.returncode == 1
    assert "is not a folder" in one_line_error(r)


def test_audit_limits_and_closed_pipe(deployment, daemon):
    cfg = str(deployment.server_config)
    for flag, value in (("--limit", "-1"), ("--limit", "0"), ("--after", "-3")):
        r = run("cns-personalizer", "audit", "--config", cfg, flag, value)
        assert r.returncode == 2 and "Traceback" not in r.stderr and f"got {value}" in r.stderr
    assert run("cns-personalizer", "--json", "audit", "--config", cfg).returncode == 0
    r = run_into_closed_pipe("cns-personalizer", "audit", "--config", cfg)
    assert r.returncode == 0 and r.stderr == "", r.stderr


SYSTEM_PYTHON = "/usr/bin/python3"     # the operator cannot run root's .venv; station_config needs stdlib only


def _operator() -> pwd.struct_passwd:
    if os.geteuid() != 0 or not os.path.exists(SYSTEM_PYTHON):
        require(["root and a system python3 (handing a folder to another user)"])
    return pwd.getpwnam("nobody")


@pytest.fixture
def shared_tmp():
    """A folder other users can traverse (pytest's own tmp root is private to root)."""
    path = Path(tempfile.mkdtemp(prefix="cns-owner-"))
    os.chmod(path, 0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def test_station_folder_belongs_to_the_operator_and_is_self_contained(shared_tmp):
    """The operator user (not root) reads the whole station config, including its key and trust anchor."""
    user = _operator()
    tmp_path = shared_tmp
    r = run("cns-personalizer", "init", str(tmp_path / "d"), "--ca-key-bits", "2048", "--station-owner", user.pw_name,
            "--json")
    assert r.returncode == 0, r.stderr
    station = json.loads(r.stdout)["station_config"]
    folder = os.path.dirname(station)
    for name in os.listdir(folder):
        assert os.stat(os.path.join(folder, name)).st_uid == user.pw_uid, name
    # copied elsewhere (to the workstation), it still loads: every path is inside the folder
    copy = tmp_path / "workstation"
    shutil.copytree(folder, copy)
    shutil.rmtree(tmp_path / "d" / "tls")
    for path in (station, str(copy / "station.toml")):
        os.chown(copy, user.pw_uid, user.pw_gid)
        for p in copy.iterdir():
            os.chown(p, user.pw_uid, user.pw_gid)
        probe = subprocess.run([SYSTEM_PYTHON, "-c", "import sys, station_config; "
                                "c = station_config.load(sys.argv[1]); open(c.personalizer.client_key).read(); "
                                "print(c.station.data_dir)", path],
                               user=user.pw_uid, group=user.pw_gid, capture_output=True, text=True, timeout=60,
                               cwd="/", env={"PYTHONPATH": str(ROOT)})
        assert probe.returncode == 0, probe.stderr
        assert probe.stdout.strip().startswith(os.path.dirname(path))


def test_serve_json_after_or_before_the_command(tmp_path):
    import signal

    from tests.cli.conftest import BIN
    r = run("cns-personalizer", "init", str(tmp_path / "d"), "--listen", "127.0.0.1:0", "--ca-key-bits", "2048")
    assert r.returncode == 0, r.stderr
    cfg = str(tmp_path / "d" / "personalizer.toml")
    for argv in (["serve", "--config", cfg, "--json"], ["--json", "serve", "--config", cfg]):
        proc = subprocess.Popen([str(BIN / "cns-personalizer"), *argv], stdout=subprocess.PIPE,
                                stderr=subprocess.DEVNULL, text=True)
        try:
            first = json.loads(proc.stdout.readline())
            assert first["port"] > 0 and first["listening"] == "127.0.0.1:0"
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(30)


def test_the_operator_runs_the_agent_from_the_station_folder(shared_tmp):
    """init --station-owner, then `cns-agent run --config` and `cns-agent devices` as that user (setpriv)."""
    import time

    from tests.cli.conftest import BIN
    user = _operator()
    if not shutil.which("setpriv"):
        require(["setpriv (util-linux), to run as the operator"])
    r = run("cns-personalizer", "init", str(shared_tmp / "d"), "--ca-key-bits", "2048", "--listen",
            "127.0.0.1:47999", "--station-owner", user.pw_name, "--json")
    assert r.returncode == 0, r.stderr
    station = json.loads(r.stdout)["station_config"]
    runtime = shared_tmp / "xdg"
    runtime.mkdir(mode=0o700)
    os.chown(runtime, user.pw_uid, user.pw_gid)
    env = {"PATH": os.environ.get("PATH", ""), "XDG_RUNTIME_DIR": str(runtime), "HOME": str(runtime),
           "PCSCLITE_CSOCK_NAME": str(shared_tmp / "no-pcscd.comm")}
    as_operator = ["setpriv", f"--reuid={user.pw_uid}", f"--regid={user.pw_gid}", "--init-groups"]
    agent = subprocess.Popen([*as_operator, str(BIN / "cns-agent"), "run", "--config", station], env=env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 30
        while True:
            d = subprocess.run([*as_operator, str(BIN / "cns-agent"), "devices"], env=env, capture_output=True,
                               text=True, timeout=30)
            if d.returncode == 0 or agent.poll() is not None or time.monotonic() > deadline:
                break
            time.sleep(0.3)
        assert d.returncode == 0, (d.stderr, agent.poll())
        assert "cannot reach pcscd" in d.stdout
        assert (Path(station).parent / "agent-data").stat().st_uid == user.pw_uid    # its journal, its folder
    finally:
        agent.terminate()
        agent.wait(20)
