"""A ``cns-personalizer serve`` process for benchmarks: start on a config, read its port (and pid), stop."""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def personalizer_daemon(config: Path, *, log_level: str = "WARNING"):
    """Yield the gRPC port of a daemon started on ``config`` (listen port 0 is fine); SIGTERM at the end."""
    with personalizer_process(config, log_level=log_level) as (port, _pid):
        yield port


@contextmanager
def personalizer_process(config: Path, *, log_level: str = "WARNING", env: dict | None = None):
    """As ``personalizer_daemon``, yielding (port, pid) so a benchmark can read the daemon's CPU time.
    ``env``: variables added to the daemon's environment (e.g. ``store.phases.ENV``)."""
    proc = subprocess.Popen([sys.executable, "-m", "personalizer.cli", "--log-level", log_level, "serve",
                             "--config", str(config)], stdout=subprocess.PIPE, text=True,
                            env={**os.environ, **env} if env else None)
    try:
        m = re.search(r"port (\d+)", proc.stdout.readline())
        if not m:
            raise RuntimeError("the personalizer daemon did not start (see its log above)")
        yield int(m.group(1)), proc.pid
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
