"""The daemon's helper processes (``[server] processes = N`` > 1, issue 16): start, supervise, stop.

One Python interpreter holds issuance to about one core: gRPC, the broker, the store and the CA's
bookkeeping all run under its GIL (measured in the commit that added this module). With N > 1 the
daemon (the *primary*: it holds the store lock and runs everything) starts N - 1 helpers, each
``cns-personalizer serve --config F --helper I --port P`` in an interpreter of its own. A helper binds
the primary's port with SO_REUSEPORT (the kernel spreads new connections over the processes of the
group; only processes of the same user can join it, and a foreign daemon's trial bind without it is
still refused) and serves Personalizer, QueueAdmin, Registrations, CardAdmin, health and reflection
over the same store and CA index, with a relay of its own claiming rows as ``<claimer>#I`` (the claim
is atomic across processes, so one delivery per request id holds), and Fleet and FleetAdmin: a
command written by one process wakes the station's stream in another through the database
(``fleet.wake_sqlite``; over PostgreSQL ``fleet.notify``). What exists once per daemon stays in the
primary: the store lock, the PKI publisher (it follows the revocations of every process, see
``pki.publisher``), metrics, the daily archive, the enrollment port and the stepping of rollouts.

A helper's stdin is a pipe from the primary: end of file means the primary is gone (SIGKILL
included) and the helper exits at once (everything it answered is committed; a row it held is
taken back by the next start, ``reset_sending`` of its claimer). The primary restarts a helper that
exits while the daemon runs, and at ``stop`` sends SIGTERM and waits. Imports nothing of ours but
``errors``.
"""
from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
from pathlib import Path

from personalizer.errors import PersonalizerError

log = logging.getLogger(__name__)

READY_TIMEOUT_SECONDS = 60.0
RESTART_DELAY_SECONDS = 1.0
EXIT_PRIMARY_GONE = 75


class HelperFailed(PersonalizerError):
    code = "UNAVAILABLE"


def claimer_of(base: str, index: int) -> str:
    """The relay claimer name of helper ``index`` (the primary's is ``base``)."""
    return f"{base}#{index}"


def exit_when_primary_gone(loop: asyncio.AbstractEventLoop, fd: int = 0) -> None:
    """In a helper: exit at once when the primary's pipe on ``fd`` reaches end of file."""
    def readable() -> None:
        try:
            data = os.read(fd, 512)
        except OSError:
            data = b""
        if not data:
            log.error("the primary daemon process is gone; this helper exits")
            logging.shutdown()
            os._exit(EXIT_PRIMARY_GONE)
    loop.add_reader(fd, readable)


class Helpers:
    """``count - 1`` helper processes of the daemon on ``config``, serving ``port``."""

    def __init__(self, config: Path, port: int, count: int, *, log_level: str | None = None):
        self._config, self._port, self._count = Path(config), port, count
        self._log_level = log_level or logging.getLevelName(logging.getLogger().getEffectiveLevel())
        self._procs: dict[int, asyncio.subprocess.Process] = {}
        self._watch: list[asyncio.Task] = []
        self._stopping = False

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self._procs.values() if p.returncode is None]

    def _argv(self, index: int) -> list[str]:
        return [sys.executable, "-m", "personalizer.cli", "--log-level", self._log_level, "serve",
                "--config", str(self._config), "--helper", str(index), "--port", str(self._port)]

    async def _spawn(self, index: int) -> None:
        proc = await asyncio.create_subprocess_exec(*self._argv(index), stdin=asyncio.subprocess.PIPE,
                                                    stdout=asyncio.subprocess.PIPE)
        try:
            line = await asyncio.wait_for(proc.stdout.readline(), READY_TIMEOUT_SECONDS)
        except asyncio.TimeoutError:
            line = b""
        if b"listening" not in line:
            if proc.returncode is None:
                proc.kill()
            await proc.wait()
            raise HelperFailed(f"helper process {index} of the daemon did not start (exit status "
                               f"{proc.returncode}); its log above says why")
        self._procs[index] = proc

    async def start(self) -> None:
        """Start every helper and wait until each listens; on a failure stop those started and raise."""
        try:
            for index in range(1, self._count):
                await self._spawn(index)
        except BaseException:
            await self.stop(0)
            raise
        self._watch = [asyncio.create_task(self._supervise(i), name=f"helper-{i}") for i in range(1, self._count)]

    async def _supervise(self, index: int) -> None:
        delay = RESTART_DELAY_SECONDS
        while not self._stopping:
            status = await self._procs[index].wait()
            if self._stopping:
                return
            log.error("helper process %d exited with status %s; starting it again in %.0f s", index, status, delay)
            await asyncio.sleep(delay)
            try:
                await self._spawn(index)
                delay = RESTART_DELAY_SECONDS
            except HelperFailed as exc:
                log.error("%s", exc)
                delay = min(delay * 2, 60.0)

    async def stop(self, grace: float) -> None:
        """SIGTERM to every helper (each drains its server with ``grace``), wait, SIGKILL what is left."""
        self._stopping = True
        for t in self._watch:
            t.cancel()
        await asyncio.gather(*self._watch, return_exceptions=True)
        for proc in self._procs.values():
            if proc.returncode is None:
                proc.send_signal(signal.SIGTERM)
        for index, proc in self._procs.items():
            try:
                await asyncio.wait_for(proc.wait(), grace + 10)
            except asyncio.TimeoutError:
                log.error("helper process %d did not stop in time; killed", index)
                proc.kill()
                await proc.wait()
            if proc.stdin is not None:
                proc.stdin.close()
