"""Several daemon processes over one PostgreSQL store: wake a station's stream wherever it is connected.

A command is written to the store by whichever process central IT (or the rollout engine) called; the
station's stream may be open on another process. ``PgWakeBus`` is PostgreSQL's LISTEN/NOTIFY on one
channel: ``publish(station)`` (the hub's ``on_miss``: the station has no stream here) batches the
stations of one loop turn into NOTIFYs, and every process's listener wakes those of its own sessions,
which then read their open commands from the store. Notifications are hints: the store holds what is
pending, so a lost one delays nothing beyond the next (re)connect: after its listening connection
comes back, a process wakes all of its sessions. The same dedicated connection holds the rollout
engine's session-level advisory lock: one process at a time steps rollouts (``is_leader``), another
takes over when that connection ends (the process died).

Imports psycopg and the fleet's hub.
"""
from __future__ import annotations

import asyncio
import logging

import psycopg

from personalizer.fleet.hub import Hub

log = logging.getLogger(__name__)

CHANNEL = "cns_fleet_wake"
ROLLOUT_LEADER_LOCK = 1315010003
MAX_PAYLOAD = 7900          # PostgreSQL's NOTIFY payload limit is 8000 bytes
RECONNECT_SECONDS = 1.0


class PgWakeBus:
    def __init__(self, dsn: str, database, hub: Hub):
        """``dsn``: for the listening connection; ``database``: a ``personalizer.pg.Database`` to NOTIFY on."""
        self._dsn, self._database, self._hub = dsn, database, hub
        self._pending: set[str] = set()
        self._flushing: asyncio.Task | None = None
        self._task: asyncio.Task | None = None
        self._conn: psycopg.AsyncConnection | None = None
        self.leader = False
        self.received = 0

    def is_leader(self) -> bool:
        return self.leader

    # -- publishing ------------------------------------------------------------------------------
    def publish(self, station: str) -> None:
        self._pending.add(station)
        if self._flushing is None or self._flushing.done():
            self._flushing = asyncio.get_running_loop().create_task(self._flush())

    async def _flush(self) -> None:
        await asyncio.sleep(0)   # every station of this loop turn in one go
        stations, self._pending = sorted(self._pending), set()
        chunks, chunk = [], []
        for st in stations:
            if chunk and len(",".join(chunk + [st]).encode()) > MAX_PAYLOAD:
                chunks.append(",".join(chunk))
                chunk = []
            chunk.append(st)
        if chunk:
            chunks.append(",".join(chunk))

        async def fn(conn):
            for payload in chunks:
                await conn.execute("SELECT pg_notify(%s, %s)", (CHANNEL, payload))
        try:
            await self._database.run(fn, what="the fleet's wake-up notice")
        except Exception as exc:   # a hint only: the station gets its commands when it next connects
            log.warning("could not notify other instances of new commands for %d station(s): %s", len(stations), exc)

    # -- listening -------------------------------------------------------------------------------
    async def start(self) -> None:
        await self._connect()
        self._task = asyncio.get_running_loop().create_task(self._listen(), name="fleet-wake-bus")

    async def _connect(self) -> None:
        # the primary only (a standby refuses LISTEN), as the store's pool connects (personalizer.pg)
        params = psycopg.conninfo.conninfo_to_dict(self._dsn)
        params.setdefault("target_session_attrs", "read-write")
        params.setdefault("connect_timeout", "3")
        conn = await psycopg.AsyncConnection.connect(psycopg.conninfo.make_conninfo(**params), autocommit=True)
        try:
            await conn.execute(f"LISTEN {CHANNEL}")
            self._conn = conn
            await self._take_lead()
        except BaseException:
            self._conn = None
            await conn.close()
            raise

    async def _take_lead(self) -> None:
        cur = await self._conn.execute("SELECT pg_try_advisory_lock(%s)", (ROLLOUT_LEADER_LOCK,))
        self.leader = bool((await cur.fetchone())[0])

    async def _listen(self) -> None:
        while True:
            try:
                # a bounded wait, so the connection is free in between to try for the rollout lock
                async for note in self._conn.notifies(timeout=1.0):
                    self.received += 1
                    for station in note.payload.split(","):
                        self._hub.wake(station, local_only=True)
                if not self.leader:
                    await self._take_lead()
                continue
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("fleet wake-up listener lost its PostgreSQL connection (%s); reconnecting", exc)
            self.leader = False
            conn, self._conn = self._conn, None
            if conn is not None:
                await conn.close()
            while True:
                await asyncio.sleep(RECONNECT_SECONDS)
                try:
                    await self._connect()
                    break
                except Exception:   # no primary yet
                    continue
            self._hub.wake_all()   # notices sent meanwhile were lost: every session looks in the store

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        if self._flushing is not None:
            await asyncio.gather(self._flushing, return_exceptions=True)
        if self._conn is not None:
            await self._conn.close()   # ends the session: its advisory lock goes to another instance
            self._conn = None
        self.leader = False
