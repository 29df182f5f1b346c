"""A daemon fixture stops what it started, even when a start times out (issue 17 item 6, point 3).

Last session a ``test_daemon_postgresql`` fixture whose second daemon did not print its port in time (load ~90,
pytest-timeout interrupted the start) left that daemon running for ~25 minutes. These tests interrupt a start on
purpose, the way pytest-timeout does (an exception raised by a signal inside the wait), and look in /proc for
any ``cns-personalizer serve`` still running on the test's configuration.
"""
from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

from personalizer import deploy
from tests.personalizer import helpers


class _Interrupted(Exception):
    pass


def _serving(config: Path) -> list[int]:
    """pids of live (not zombie) processes whose command line names ``config``."""
    needle = str(config).encode()
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmdline = f.read()
            with open(f"/proc/{entry}/stat") as f:
                state = f.read().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if needle in cmdline and b"serve" in cmdline and state != "Z":
            pids.append(int(entry))
    return pids


def _gone(config: Path, within: float = 10.0) -> list[int]:
    deadline = time.monotonic() + within
    while (left := _serving(config)) and time.monotonic() < deadline:
        time.sleep(0.1)
    return left


@pytest.fixture
def configs(tmp_path):
    dep = deploy.init_deployment(tmp_path / "cns", chamber="RM", station_id="RM-STATION-01", listen="127.0.0.1:0")
    second = dep.server_config.with_name("server-second.toml")
    # no enrollment port on the second daemon (one per host), a store of its own
    text = dep.server_config.read_text().replace("[enrollment]\nenabled = true", "[enrollment]\nenabled = false")
    second.write_text(text.replace('data_dir = "data"', 'data_dir = "data-second"', 1))
    return dep.server_config, second


def test_a_daemon_start_interrupted_by_a_timeout_leaves_no_daemon(configs):
    first, _ = configs

    def interrupt(signum, frame):
        raise _Interrupted("start timed out (as pytest-timeout interrupts it)")
    old = signal.signal(signal.SIGALRM, interrupt)
    try:
        signal.setitimer(signal.ITIMER_REAL, 0.05)   # the daemon needs far longer than 50 ms to print its port
        with pytest.raises(_Interrupted):
            helpers.DaemonProcess(first)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
    assert _gone(first) == [], "the interrupted start left its daemon running"


def test_a_daemon_that_does_not_print_its_port_in_time_is_stopped(configs):
    first, _ = configs
    with pytest.raises(RuntimeError, match=r"did not print its port within 0\.05 s"):
        helpers.DaemonProcess(first, start_timeout=0.05)
    assert _gone(first) == [], "the timed-out start left its daemon running"


def test_when_the_second_daemon_fails_to_start_the_first_is_stopped(configs):
    """The two-site fixtures' shape: site A started, site B's start fails: A must not be left serving."""
    first, second = configs
    second.write_text(second.read_text().replace("[store]\n", "[store]\nno_such_key = 1\n", 1))   # B refuses to start
    with pytest.raises(RuntimeError, match="daemon did not start"):
        with helpers.daemons(first, second):
            pytest.fail("the block must not run when a start failed")
    assert _gone(first) == [] and _gone(second) == []


def test_daemons_stops_every_daemon_at_the_end_of_the_block(configs):
    first, second = configs
    with helpers.daemons(first, second) as (a, b):
        assert a.port != b.port and _serving(first) and _serving(second)
    assert a.proc.returncode == 0 and b.proc.returncode == 0
    assert _gone(first) == [] and _gone(second) == []
