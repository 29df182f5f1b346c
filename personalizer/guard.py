"""Process guards of the daemon: one daemon per store, enough file descriptors, quiet repeated errors.

- ``StoreLock(data_dir)``: an exclusive ``flock`` on ``data_dir/daemon.lock``,
  holding the owner's pid. A second daemon on the same store is refused with
  that pid. The kernel drops the lock when the process dies (SIGKILL too), so
  a crash never leaves a stale lock behind.
- ``address_in_use(listen)``: a trial bind of ``HOST:PORT`` before grpc binds it, so a busy port is
  one clear line rather than grpc core's log.
- ``port_holder(port)``: which local process listens on a TCP port (Linux
  ``/proc``, own user's processes only), for the "address in use" message.
- ``raise_fd_limit()``: soft ``RLIMIT_NOFILE`` up to the hard limit.
- ``WriteLock(path)``: a cross-process mutex (``flock``) for the writers of one SQLite file when
  several daemon processes share it (``[server] processes`` > 1): a blocked writer wakes the moment
  the holder releases, where SQLite's busy handler sleeps 1, 2, 5, 10 … ms between tries (p99).
- ``RepeatFilter``: a logging filter that lets the same message (logger,
  level, text) through at most ``burst`` times per ``window`` seconds and then
  says how many it dropped.

Imports nothing of ours but ``errors``.
"""
from __future__ import annotations

import errno
import fcntl
import logging
import os
import resource
import socket
import time
from pathlib import Path

from personalizer.errors import PersonalizerError

LOCK_FILE = "daemon.lock"


class AlreadyRunning(PersonalizerError):
    code = "FAILED_PRECONDITION"


class StoreLock:
    def __init__(self, data_dir: Path):
        self.path = Path(data_dir) / LOCK_FILE
        self._fd: int | None = None

    def acquire(self) -> "StoreLock":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "unknown"
            os.close(fd)
            raise AlreadyRunning(f"the request store {self.path.parent} is in use by another cns-personalizer "
                                 f"(pid {holder}); stop it first or give this one another store.data_dir") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)   # closing drops the flock; the file stays (another daemon may hold it now)
            self._fd = None


def address_in_use(listen: str) -> bool:
    host, _, port = listen.rpartition(":")
    host = host.strip("[]")
    if not port.isdigit() or int(port) == 0:
        return False
    try:
        infos = socket.getaddrinfo(host or None, int(port), type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except OSError:
        return False   # grpc reports the unresolvable name
    for family, kind, proto, _, addr in infos:
        with socket.socket(family, kind, proto) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)   # as grpc: TIME_WAIT is not "in use"
            try:
                s.bind(addr)
            except OSError as exc:
                if exc.errno == errno.EADDRINUSE:
                    return True
    return False


def _listening_inodes(port: int) -> set[str]:
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            f = line.split()
            if len(f) > 9 and f[3] == "0A" and int(f[1].rsplit(":", 1)[1], 16) == port:   # 0A = LISTEN
                inodes.add(f[9])
    return inodes


def port_holder(port: int) -> str | None:
    """``"pid N (name)"`` of a local process listening on ``port``, when this user may see it."""
    wanted = {f"socket:[{i}]" for i in _listening_inodes(port)}
    if not wanted:
        return None
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
            for fd in fds:
                if os.readlink(f"/proc/{pid}/fd/{fd}") in wanted:
                    name = Path(f"/proc/{pid}/comm").read_text().strip()
                    return f"pid {pid} ({name})"
        except OSError:
            continue
    return None


def raise_fd_limit() -> tuple[int, int]:
    """Raise the soft open-files limit to the hard one; returns (before, after)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        return soft, hard
    return soft, soft


class RepeatFilter(logging.Filter):
    def __init__(self, *, burst: int = 5, window: float = 60.0, clock=time.monotonic):
        super().__init__()
        self.burst, self.window, self._clock = burst, window, clock
        self._seen: dict[tuple, list] = {}   # key -> [window start, count]

    def filter(self, record: logging.LogRecord) -> bool:
        key = (record.name, record.levelno, record.getMessage())
        now = self._clock()
        entry = self._seen.get(key)
        if entry is None or now - entry[0] >= self.window:
            dropped = entry[1] - self.burst if entry is not None and entry[1] > self.burst else 0
            if len(self._seen) > 10_000:   # bounded: forget old keys
                self._seen.clear()
            self._seen[key] = [now, 1]
            if dropped:
                record.msg = f"{record.getMessage()} (and {dropped} identical message(s) suppressed)"
                record.args = None
            return True
        entry[1] += 1
        return entry[1] <= self.burst


class WriteLock:
    """``with lock:`` holds an exclusive ``flock`` on ``path`` (created 0600); blocking, from a thread."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)

    def __enter__(self) -> "WriteLock":
        fcntl.flock(self._fd, fcntl.LOCK_EX)
        return self

    def __exit__(self, *exc) -> None:
        fcntl.flock(self._fd, fcntl.LOCK_UN)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
