"""Install and remove one service file under the user's home, atomically, never clobbering.

``install_file`` writes to a temporary file beside the target and renames it over: a crash or a
full/read-only disk leaves the previous file (or none) in place, never half a file. A target
that exists with other contents is refused unless ``replace`` (it may be central IT's or another
install's); with identical contents the install is a no-op. ``remove_file`` removes only a file
that holds our marker. Standard library only.
"""
from __future__ import annotations

import errno
import os
import tempfile
from pathlib import Path

from agent.service import ServiceError

MARKER = "cns-agent service install"    # every file we write carries it (a comment or a plist key)


def _why(exc: OSError) -> str:
    if exc.errno in (errno.EROFS,):
        return "the file system is read-only"
    if exc.errno in (errno.EACCES, errno.EPERM):
        return "permission denied"
    if exc.errno == errno.ENOSPC:
        return "the disk is full"
    return exc.strerror or str(exc)


def install_file(path: Path, content: bytes, *, replace: bool = False, mode: int = 0o644) -> str:
    """Write ``content`` at ``path``; returns "installed", "unchanged" or "replaced"."""
    try:
        old = path.read_bytes()
    except FileNotFoundError:
        old = None
    except OSError as exc:
        raise ServiceError(f"cannot read {path}: {_why(exc)}") from exc
    if old == content:
        return "unchanged"
    if old is not None and not replace:
        theirs = MARKER.encode() not in old
        raise ServiceError(f"{path} already exists with other contents"
                           + (" (not written by cns-agent)" if theirs else "")
                           + "; kept as it is. Check it, then run again with --replace to overwrite it")
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
        with os.fdopen(fd, "wb") as f:
            f.write(content)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
        tmp = None
    except OSError as exc:
        where = exc.filename or path.parent
        raise ServiceError(f"cannot write {path} ({where}: {_why(exc)}); nothing was changed") from exc
    finally:
        if tmp is not None:
            try:
                os.unlink(tmp)
            except OSError:
                pass
    return "installed" if old is None else "replaced"


def remove_file(path: Path) -> bool:
    """Remove our file at ``path``; False if there was none. A file we did not write is kept."""
    try:
        old = path.read_bytes()
    except FileNotFoundError:
        return False
    except OSError as exc:
        raise ServiceError(f"cannot read {path}: {_why(exc)}") from exc
    if MARKER.encode() not in old:
        raise ServiceError(f"{path} was not written by cns-agent; kept as it is (remove it yourself if unwanted)")
    try:
        path.unlink()
    except OSError as exc:
        raise ServiceError(f"cannot remove {path}: {_why(exc)}; it is still installed") from exc
    return True
