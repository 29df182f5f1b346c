"""Fixtures for the console-script tests: the personalizer tests' deployment and daemon, and a runner
that starts a console script as a subprocess the way an operator or central IT types it."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.personalizer.conftest import daemon, deployment  # noqa: F401  (session fixtures, reused)

BIN = Path(sys.executable).parent


def run(*args: str, env: dict | None = None, stdin: str = "", timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / args[0]), *args[1:]], capture_output=True, text=True, input=stdin,
                          env={**os.environ, **(env or {})}, timeout=timeout)


def run_into_closed_pipe(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run with stdout a pipe whose reader has gone (``cmd | head -0``); stderr is captured."""
    r, w = os.pipe()
    os.close(r)
    try:
        return subprocess.run([str(BIN / args[0]), *args[1:]], stdout=w, stderr=subprocess.PIPE, text=True,
                              stdin=subprocess.DEVNULL, env={**os.environ, **(env or {})}, timeout=120)
    finally:
        os.close(w)


def one_line_error(r: subprocess.CompletedProcess) -> str:
    """The error a person reads: exactly one line on stderr, no traceback, no raw gRPC text."""
    err = r.stderr.strip()
    assert err, (r.returncode, r.stdout)
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    assert "failed to connect to all addresses" not in err and "StatusCode." not in err, err
    return err


def with_endpoint(config: Path, port: int, out: Path, **replace: str) -> Path:
    """A copy of a station/admin config that points at ``port`` (and other line replacements)."""
    text = re.sub(r'primary = "([^":]+):\d+"', lambda m: f'primary = "{m.group(1)}:{port}"', config.read_text())
    for old, new in replace.items():
        text = re.sub(old, new, text)
    out.write_text(text)
    return out
