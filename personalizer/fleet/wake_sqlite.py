"""Several daemon processes over one SQLite file (``[server] processes`` > 1): wake a station's stream
wherever it is connected, through the database itself.

The twin of ``fleet.notify.PgWakeBus`` for SQLite, with the same interface (``start``, ``stop``,
``publish``, ``is_leader``, ``received``). A command is written by whichever process central IT (or the
rollout engine) called; the station's stream may be open in another process of the same daemon.
``publish(station)`` (the hub's ``on_miss``: no stream here) appends the stations of one loop turn to
the table ``fleet_wakes`` in one group-committed transaction. Every process polls
``PRAGMA data_version`` on its fleet connection every ``poll_seconds`` (SQLite documents that the value
changes when another connection commits and stays the same for the connection's own commits; reading it
touches no disk): only after a change does it read the rows appended since its last one and wake those
of its own sessions, which then read their open commands from the store. A wake is a hint, as with
NOTIFY: the store holds what is pending. The rows are kept ``KEEP_SECONDS`` and then removed by the leader.

One process steps rollouts (``is_leader``): the daemon's primary, constructed with ``leader=True``. Its
helpers exit when it goes (``personalizer.helpers``), so there is never a helper without its leader and
never two leaders on one file (the primary holds ``guard.StoreLock``).

Imports the fleet's hub and ``fleet.db``.
"""
from __future__ import annotations

import asyncio
import logging
import time

from personalizer.fleet.db import SqliteDb
from personalizer.fleet.hub import Hub

log = logging.getLogger(__name__)

POLL_SECONDS = 0.05     # a command reaches a stream in another process within this (plus one store read)
KEEP_SECONDS = 300.0    # wake rows older than this are removed (a process behind by that long wakes all)
PRUNE_SECONDS = 30.0

SCHEMA = """
CREATE TABLE IF NOT EXISTS fleet_wakes (
    id INTEGER PRIMARY KEY AUTOINCREMENT, station TEXT NOT NULL, at REAL NOT NULL);
"""


class SqliteWakeBus:
    def __init__(self, db: SqliteDb, hub: Hub, *, leader: bool, poll_seconds: float = POLL_SECONDS,
                 clock=time.time):
        self._db, self._hub, self.leader = db, hub, leader
        self.poll_seconds = poll_seconds
        self._clock = clock
        self._pending: set[str] = set()
        self._flushing: asyncio.Task | None = None
        self._task: asyncio.Task | None = None
        self._after = 0          # the last wake row read
        self._version = None     # PRAGMA data_version at the last read
        self._pruned = 0.0
        self.received = 0        # stations woken here on another process's behalf

    def is_leader(self) -> bool:
        return self.leader

    # -- publishing ------------------------------------------------------------------------------
    def publish(self, station: str) -> None:
        self._pending.add(station)
        if self._flushing is None or self._flushing.done():
            self._flushing = asyncio.get_running_loop().create_task(self._flush())

    async def _flush(self) -> None:
        await asyncio.sleep(0)   # every station of this loop turn in one transaction
        stations, self._pending = sorted(self._pending), set()
        now = self._clock()
        try:
            await self._db.tx(many=[("INSERT INTO fleet_wakes (station, at) VALUES (?, ?)",
                                     [(st, now) for st in stations])])
        except Exception as exc:   # a hint only: the station gets its commands when it next connects
            log.warning("could not tell the daemon's other processes about new commands for %d station(s): %s",
                        len(stations), exc)

    # -- listening -------------------------------------------------------------------------------
    async def start(self) -> None:
        await self._db.script(SCHEMA)
        self._version = await self._data_version()
        row = await self._db.first("SELECT COALESCE(MAX(id), 0) FROM fleet_wakes")
        self._after = row[0]
        self._task = asyncio.get_running_loop().create_task(self._poll(), name="fleet-wake-poll")

    async def _data_version(self) -> int:
        return (await self._db.first("PRAGMA data_version"))[0]

    async def _poll(self) -> None:
        while True:
            await asyncio.sleep(self.poll_seconds)
            try:
                await self.check()
            except asyncio.CancelledError:
                raise
            except Exception as exc:   # the database is busy or failing: look again, and wake everyone once back
                log.warning("fleet wake-up poll failed (%s); every stream here looks in the store", exc)
                self._version = None

    async def check(self) -> int:
        """One poll: the stations woken here (0 when no other connection committed since the last one)."""
        if self.leader and self._clock() - self._pruned > PRUNE_SECONDS:
            await self._prune()
        version = await self._data_version()
        lost = self._version is None
        if version == self._version:
            return 0
        rows = await self._db.rows("SELECT id, station FROM fleet_wakes WHERE id > ? ORDER BY id", (self._after,))
        self._version = version
        if rows:
            # ids are consecutive (AUTOINCREMENT; a rolled-back insert gives its id back): a gap means rows
            # were pruned before this process read them
            lost = lost or rows[0][0] != self._after + 1
            self._after = rows[-1][0]
        if lost:
            self._hub.wake_all()
        woken = 0
        for station in {st for _id, st in rows}:
            woken += self._hub.wake(station, local_only=True)
        self.received += woken
        return woken

    async def _prune(self) -> None:
        self._pruned = self._clock()
        await self._db.tx([("DELETE FROM fleet_wakes WHERE at < ?", (self._pruned - KEEP_SECONDS,))])

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        if self._flushing is not None:
            await asyncio.gather(self._flushing, return_exceptions=True)
