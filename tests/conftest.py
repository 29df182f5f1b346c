"""Shared fixtures.

Tiers: unit tests use the in-process emulator; tests marked ``pcscd`` run a
private pcscd + vpcd (tests/support/pcscd.py); ``opensc`` tests run OpenSC's
tools and PKCS#11 module. Missing system parts skip a test on a developer's
machine and FAIL it when ``CI`` is set, so CI never counts a skip as a pass.
"""
from __future__ import annotations

import os
import shutil
import signal
from pathlib import Path

import pytest

from tests.support.pcscd import missing_tools, start_pcscd

pytest_plugins = ["tests.support.pg_cluster"]   # the session's Patroni cluster (issue 17)

ROOT = Path(__file__).resolve().parent.parent

# The Ctrl-C tests send SIGINT to the CLI processes they start, which inherit this process's disposition.
# A suite started in the background by a non-interactive shell (`bash .ci/run &`, nohup) inherits
# SIGINT *ignored* (POSIX: asynchronous lists without job control), and so would every CLI it starts:
# the operator's Ctrl-C then reaches nothing and those tests fail for the harness, not the product.
# The suite runs with SIGINT as an operator's terminal gives it.
if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)
OPENSC_PKCS11 = Path("/usr/lib/x86_64-linux-gnu/opensc-pkcs11.so")
SOFTHSM2 = Path("/usr/lib/softhsm/libsofthsm2.so")


def require(missing: list[str]) -> None:
    """Fail under CI, skip elsewhere, when system parts are missing."""
    if not missing:
        return
    msg = "missing: " + "; ".join(missing) + " (scripts/setup installs them)"
    if os.environ.get("CI"):
        pytest.fail(msg)
    pytest.skip(msg)


@pytest.fixture(scope="session")
def pcscd(tmp_path_factory):
    """A private pcscd for the whole session; the pytest process talks to it through pyscard."""
    require(missing_tools())
    inst = start_pcscd(tmp_path_factory.mktemp("pcscd"))
    os.environ["PCSCLITE_CSOCK_NAME"] = str(inst.socket_path)
    yield inst
    inst.stop()


@pytest.fixture(scope="session")
def opensc_tools():
    missing = [t for t in ("opensc-tool", "pkcs15-tool", "pkcs11-tool") if not shutil.which(t)]
    if not OPENSC_PKCS11.exists():
        missing.append(str(OPENSC_PKCS11))
    require([f"{m} (apt-get install opensc)" for m in missing])
    return OPENSC_PKCS11


@pytest.fixture(scope="session")
def softhsm2_module():
    require([] if SOFTHSM2.exists() and shutil.which("softhsm2-util") else ["softhsm2 (apt-get install softhsm2)"])
    return SOFTHSM2


def pytest_configure(config):
    """Remember which test opened each aiosqlite connection, so a leak names its test (see below)."""
    import aiosqlite

    init = aiosqlite.Connection.__init__
    if getattr(init, "_cns_tracked", False):
        return

    def tracked(self, *a, **kw):
        init(self, *a, **kw)
        self._cns_opened_by = os.environ.get("PYTEST_CURRENT_TEST", "outside a test")
    tracked._cns_tracked = True
    aiosqlite.Connection.__init__ = tracked


def pytest_sessionfinish(session, exitstatus):
    """An aiosqlite connection a test left open keeps a non-daemon worker thread alive, and the run then
    never exits after its summary (seen: CI would sit until its time limit). Stop any such connection and
    say how many there were, so the leak is visible instead of a hang."""
    import gc
    import warnings

    import aiosqlite

    leaked = [o for o in gc.get_objects() if isinstance(o, aiosqlite.Connection) and getattr(o, "_running", False)]
    for conn in leaked:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            conn.stop()
    if leaked:
        where = sorted({getattr(c, "_cns_opened_by", "?") for c in leaked})
        print(f"\nconftest: stopped {len(leaked)} aiosqlite connection(s) a test left open, opened by: "
              + "; ".join(where))
    session.config._cns_exitstatus = exitstatus


def pytest_unconfigure(config):
    """Last resort after the summary: a non-daemon thread still alive 10 s on would keep the run from ever
    exiting. Name it and exit with the run's own status rather than hang until CI's time limit."""
    import os
    import threading

    import concurrent.futures.thread as _cft

    # idle executor workers (e.g. the OCSP signing pool) end at interpreter exit on their own: not stuck
    stuck = [t for t in threading.enumerate() if t is not threading.main_thread() and not t.daemon
             and getattr(t, "_target", None) is not _cft._worker]
    for t in stuck:
        t.join(timeout=10)
    stuck = [t for t in stuck if t.is_alive()]
    if stuck:
        print(f"conftest: thread(s) still running after the run: {', '.join(t.name for t in stuck)}; exiting",
              flush=True)
        os._exit(int(getattr(config, "_cns_exitstatus", 1)))
