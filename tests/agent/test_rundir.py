"""The socket directory: private, ours, and one agent at a time."""
from __future__ import annotations

import os
import socket
import stat

import pytest

from tests.conftest import require

from agent.api.rundir import RunDirError, default_socket_path, ensure_private_dir, prepare_socket_path


def test_default_path_follows_xdg_runtime_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))
    assert default_socket_path() == tmp_path / "cns-agent" / "agent.sock"
    monkeypatch.delenv("XDG_RUNTIME_DIR")
    assert default_socket_path() == type(tmp_path)(f"/tmp/cns-agent-{os.getuid()}/agent.sock")


def test_dir_is_created_0700_and_tightened(tmp_path):
    d = tmp_path / "cns-agent"
    ensure_private_dir(d)
    assert stat.S_IMODE(os.stat(d).st_mode) == 0o700
    os.chmod(d, 0o755)
    ensure_private_dir(d)
    assert stat.S_IMODE(os.stat(d).st_mode) == 0o700


def test_dir_owned_by_someone_else_is_refused(tmp_path):
    if os.getuid() != 0:
        require(["root, to chown (CI runs as root)"])
    d = tmp_path / "cns-agent"
    d.mkdir(mode=0o700)
    os.chown(d, 12345, 12345)
    with pytest.raises(RunDirError, match="owned by uid 12345"):
        ensure_private_dir(d)


def test_symlink_and_non_socket_are_refused(tmp_path):
    (tmp_path / "real").mkdir()
    os.symlink(tmp_path / "real", tmp_path / "link")
    with pytest.raises(RunDirError, match="not a directory"):
        ensure_private_dir(tmp_path / "link")
    d = tmp_path / "d"
    d.mkdir(mode=0o700)
    (d / "agent.sock").write_text("x")
    with pytest.raises(RunDirError, match="not a socket"):
        prepare_socket_path(d / "agent.sock")


def test_live_socket_refused_stale_socket_removed(tmp_path):
    d = tmp_path / "d"
    d.mkdir(mode=0o700)
    path = d / "agent.sock"
    live = socket.socket(socket.AF_UNIX)
    live.bind(str(path))
    live.listen(1)
    with pytest.raises(RunDirError, match="already runs"):
        prepare_socket_path(path)
    live.close()  # the file stays: a stale socket
    prepare_socket_path(path)
    assert not path.exists()
