"""Where the agent's socket lives, and the checks that keep it private.

``$XDG_RUNTIME_DIR/cns-agent/agent.sock``, else ``/tmp/cns-agent-<uid>/agent.sock``.
The directory is created 0700; an existing one must be a real directory owned by
us (else ``RunDirError``: someone else could read or replace the socket), and
its mode is tightened to 0700 if it was looser. Standard library only.
"""
from __future__ import annotations

import os
import socket
import stat
from pathlib import Path

SOCKET_NAME = "agent.sock"


class RunDirError(Exception):
    """The runtime directory or the socket path is unsafe or in use."""


def default_socket_path() -> Path:
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime and Path(runtime).is_absolute():
        return Path(runtime) / "cns-agent" / SOCKET_NAME
    return Path(f"/tmp/cns-agent-{os.getuid()}") / SOCKET_NAME


def ensure_private_dir(directory: Path) -> None:
    try:
        os.mkdir(directory, 0o700)
    except FileExistsError:
        pass
    except OSError as exc:
        raise RunDirError(f"cannot create {directory}: {exc.strerror}") from exc
    st = os.lstat(directory)
    if not stat.S_ISDIR(st.st_mode):
        raise RunDirError(f"{directory} exists and is not a directory; refusing to start")
    if st.st_uid != os.getuid():
        raise RunDirError(f"{directory} is owned by uid {st.st_uid}, not by us (uid {os.getuid()}); refusing to start")
    if stat.S_IMODE(st.st_mode) != 0o700:
        os.chmod(directory, 0o700)


def agent_running(path: Path) -> bool:
    """True if something accepts connections on the socket ``path``."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(1.0)
        try:
            s.connect(str(path))
        except OSError:
            return False
        return True


def prepare_socket_path(path: Path) -> None:
    """Private directory, and no live agent already on ``path`` (a stale socket is removed)."""
    ensure_private_dir(path.parent)
    if path.exists() or path.is_symlink():
        st = os.lstat(path)
        if not stat.S_ISSOCK(st.st_mode):
            raise RunDirError(f"{path} exists and is not a socket; refusing to replace it")
        if agent_running(path):
            raise RunDirError(f"an agent already runs on {path}")
        path.unlink()
