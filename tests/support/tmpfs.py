"""A small tmpfs mounted for one test: a real full disk (``size``) or a real read-only file system
(``remount(read_only=True)``), as the kernel reports them (ENOSPC, EROFS), instead of patched writes.
Needs root (``require`` fails under CI, skips elsewhere)."""
from __future__ import annotations

import contextlib
import os
import subprocess
from pathlib import Path

from tests.conftest import require


class Tmpfs:
    def __init__(self, path: Path) -> None:
        self.path = path

    def remount(self, *, size: str | None = None, read_only: bool | None = None) -> None:
        opts = ["remount"] + ([f"size={size}"] if size else []) + (["ro" if read_only else "rw"]
                                                                      if read_only is not None else [])
        subprocess.run(["mount", "-o", ",".join(opts), str(self.path)], check=True)


@contextlib.contextmanager
def tmpfs(path: Path, size: str = "1m"):
    require([] if os.geteuid() == 0 else ["root (to mount a small tmpfs)"])
    path.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], check=True)
    try:
        yield Tmpfs(path)
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)
