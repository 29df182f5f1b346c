"""The fleet's durable state: stations, their devices and certificates, commands, and the fleet audit.

``FleetStore`` is the protocol the fleet service uses; ``SqlFleetStore`` keeps its tables where the
request store keeps its own (issue 15 item 8): in the daemon's SQLite file (``open(path)``, a
connection of its own) or in its PostgreSQL database (``over(PostgresDb(...))``), through
``fleet.db`` (one SQL text for both, schema created on open). Over PostgreSQL several daemon
processes share the tables: a process that starts does not mark other processes' stations as
disconnected. Nothing here knows gRPC: rows are plain dataclasses, the service maps them to proto.

Commands move PENDING → SENT → ACKED → RUNNING → SUCCEEDED | FAILED, or to REJECTED (the agent
refused), TIMED_OUT, or CANCELLED (still pending when its rollout stopped). A repeated ack changes nothing. ``update_command`` accepts a transition only for the station the command was
sent to and only from a state the agent can be in (a result for a command never sent is refused).
The audit table is append-only (triggers refuse UPDATE and DELETE). ``fleet_presence``: how many streams
each helper process of a daemon holds (``[server] processes`` > 1) and its fleet figures (JSON), for the
primary's status page and Prometheus endpoint.

Imports ``fleet.db`` and ``personalizer.errors`` only; no grpc, no proto, no edge.
"""
from __future__ import annotations

import asyncio
import json
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from personalizer.errors import FailedPrecondition, InvalidRequest, NotFound
from personalizer.fleet.db import PostgresDb, SqliteDb

MAX_PAGE = 1000
DEFAULT_PAGE = 100

PENDING, SENT, ACKED, RUNNING = "pending", "sent", "acked", "running"
SUCCEEDED, FAILED, REJECTED, TIMED_OUT = "succeeded", "failed", "rejected", "timed_out"
CANCELLED = "cancelled"   # withdrawn before delivery (its rollout stopped)
OPEN_STATES = (PENDING, SENT, ACKED, RUNNING)
TERMINAL_STATES = (SUCCEEDED, FAILED, REJECTED, TIMED_OUT, CANCELLED)
# the states an agent's report may move a command from, per target state
# (an ack may overtake the batched PENDING → SENT write of the command it answers)
_FROM = {ACKED: (PENDING, SENT), REJECTED: (PENDING, SENT), RUNNING: (ACKED, RUNNING),
         SUCCEEDED: (ACKED, RUNNING), FAILED: (ACKED, RUNNING), TIMED_OUT: OPEN_STATES, CANCELLED: (PENDING,)}

SCHEMA = """
CREATE TABLE IF NOT EXISTS fleet_stations (
    station TEXT PRIMARY KEY, chamber TEXT NOT NULL, station_id TEXT NOT NULL,
    agent_version TEXT NOT NULL DEFAULT '', readers TEXT NOT NULL DEFAULT '[]',
    first_seen REAL NOT NULL, last_seen REAL NOT NULL, connected INTEGER NOT NULL DEFAULT 0);
CREATE INDEX IF NOT EXISTS fleet_stations_chamber ON fleet_stations(chamber);
CREATE TABLE IF NOT EXISTS fleet_devices (
    station TEXT NOT NULL, serial TEXT NOT NULL, kind TEXT NOT NULL, model TEXT NOT NULL,
    firmware_version TEXT NOT NULL, partition_version TEXT NOT NULL, token_release TEXT NOT NULL,
    reader TEXT NOT NULL, last_seen REAL NOT NULL, PRIMARY KEY (station, serial));
CREATE INDEX IF NOT EXISTS fleet_devices_model ON fleet_devices(model);
CREATE TABLE IF NOT EXISTS fleet_certificates (
    station TEXT NOT NULL, serial TEXT NOT NULL, keyset TEXT NOT NULL, not_after INTEGER NOT NULL,
    PRIMARY KEY (station, serial, keyset));
CREATE INDEX IF NOT EXISTS fleet_certificates_not_after ON fleet_certificates(not_after);
CREATE TABLE IF NOT EXISTS fleet_commands (
    command_id TEXT PRIMARY KEY, station TEXT NOT NULL, kind TEXT NOT NULL, device_serial TEXT NOT NULL,
    release TEXT NOT NULL, state TEXT NOT NULL, percent INTEGER NOT NULL DEFAULT 0,
    message TEXT NOT NULL DEFAULT '', attestation BLOB, rollout_id TEXT, actor TEXT NOT NULL,
    created REAL NOT NULL, updated REAL NOT NULL);
CREATE INDEX IF NOT EXISTS fleet_commands_open ON fleet_commands(station, state);
CREATE TABLE IF NOT EXISTS fleet_audit (
    id INTEGER PRIMARY KEY AUTOINCREMENT, at REAL NOT NULL, actor TEXT NOT NULL, action TEXT NOT NULL,
    outcome TEXT NOT NULL, detail TEXT NOT NULL);
CREATE TRIGGER IF NOT EXISTS fleet_audit_no_update BEFORE UPDATE ON fleet_audit
    BEGIN SELECT RAISE(ABORT, 'fleet_audit is append-only'); END;
CREATE TRIGGER IF NOT EXISTS fleet_audit_no_delete BEFORE DELETE ON fleet_audit
    BEGIN SELECT RAISE(ABORT, 'fleet_audit is append-only'); END;
CREATE TABLE IF NOT EXISTS fleet_presence (
    daemon TEXT NOT NULL, process INTEGER NOT NULL, streams INTEGER NOT NULL, at REAL NOT NULL,
    figures TEXT NOT NULL DEFAULT '{}', PRIMARY KEY (daemon, process));
"""
# the same tables in PostgreSQL (several daemon processes: created once, under an advisory lock)
SCHEMA_PG = """
SELECT pg_advisory_xact_lock(1315010001);
CREATE TABLE IF NOT EXISTS fleet_stations (
    station TEXT PRIMARY KEY, chamber TEXT NOT NULL, station_id TEXT NOT NULL,
    agent_version TEXT NOT NULL DEFAULT '', readers TEXT NOT NULL DEFAULT '[]',
    first_seen DOUBLE PRECISION NOT NULL, last_seen DOUBLE PRECISION NOT NULL, connected INTEGER NOT NULL DEFAULT 0);
CREATE INDEX IF NOT EXISTS fleet_stations_chamber ON fleet_stations(chamber);
CREATE TABLE IF NOT EXISTS fleet_devices (
    station TEXT NOT NULL, serial TEXT NOT NULL, kind TEXT NOT NULL, model TEXT NOT NULL,
    firmware_version TEXT NOT NULL, partition_version TEXT NOT NULL, token_release TEXT NOT NULL,
    reader TEXT NOT NULL, last_seen DOUBLE PRECISION NOT NULL, PRIMARY KEY (station, serial));
CREATE INDEX IF NOT EXISTS fleet_devices_model ON fleet_devices(model);
CREATE TABLE IF NOT EXISTS fleet_certificates (
    station TEXT NOT NULL, serial TEXT NOT NULL, keyset TEXT NOT NULL, not_after BIGINT NOT NULL,
    PRIMARY KEY (station, serial, keyset));
CREATE INDEX IF NOT EXISTS fleet_certificates_not_after ON fleet_certificates(not_after);
CREATE TABLE IF NOT EXISTS fleet_commands (
    command_id TEXT PRIMARY KEY, station TEXT NOT NULL, kind TEXT NOT NULL, device_serial TEXT NOT NULL,
    release TEXT NOT NULL, state TEXT NOT NULL, percent INTEGER NOT NULL DEFAULT 0,
    message TEXT NOT NULL DEFAULT '', attestation BYTEA, rollout_id TEXT, actor TEXT NOT NULL,
    created DOUBLE PRECISION NOT NULL, updated DOUBLE PRECISION NOT NULL);
CREATE INDEX IF NOT EXISTS fleet_commands_open ON fleet_commands(station, state);
CREATE TABLE IF NOT EXISTS fleet_audit (
    id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY, at DOUBLE PRECISION NOT NULL, actor TEXT NOT NULL,
    action TEXT NOT NULL, outcome TEXT NOT NULL, detail TEXT NOT NULL);
CREATE OR REPLACE FUNCTION fleet_audit_append_only() RETURNS trigger LANGUAGE plpgsql AS
    $$ BEGIN RAISE EXCEPTION 'fleet_audit is append-only'; END $$;
CREATE OR REPLACE TRIGGER fleet_audit_no_change BEFORE UPDATE OR DELETE ON fleet_audit
    FOR EACH ROW EXECUTE FUNCTION fleet_audit_append_only();
CREATE TABLE IF NOT EXISTS fleet_presence (
    daemon TEXT NOT NULL, process INTEGER NOT NULL, streams INTEGER NOT NULL, at DOUBLE PRECISION NOT NULL,
    figures TEXT NOT NULL DEFAULT '{}', PRIMARY KEY (daemon, process));
"""


@dataclass(frozen=True)
class Keyset:
    keyset: str
    not_after: int


@dataclass(frozen=True)
class Device:
    serial: str
    kind: str = "card"
    model: str = ""
    firmware_version: str = ""
    partition_version: str = ""
    token_release: str = ""
    reader: str = ""
    certificates: tuple[Keyset, ...] = ()


@dataclass(frozen=True)
class Station:
    station: str
    chamber: str
    station_id: str
    agent_version: str
    readers: tuple[str, ...]
    first_seen: float
    last_seen: float
    connected: bool
    device_count: int = 0


@dataclass(frozen=True)
class DeviceRow:
    station: str
    chamber: str
    device: Device
    last_seen: float


@dataclass(frozen=True)
class ExpiringRow:
    station: str
    chamber: str
    serial: str
    model: str
    keyset: str
    not_after: int


@dataclass(frozen=True)
class Command:
    command_id: str
    station: str
    kind: str
    device_serial: str = ""
    release: str = ""
    state: str = PENDING
    percent: int = 0
    message: str = ""
    attestation: bytes | None = None
    rollout_id: str | None = None
    actor: str = ""
    created: float = 0.0
    updated: float = 0.0


@dataclass(frozen=True)
class Query:
    """Inventory filters (empty / 0: no filter) and paging (an opaque token from the previous page)."""
    chamber: str = ""
    model: str = ""
    firmware_version: str = ""
    token_release: str = ""
    agent_version: str = ""
    last_seen_before: float = 0
    last_seen_after: float = 0
    search: str = ""
    page_size: int = 0
    page_token: str = ""


@dataclass(frozen=True)
class Counts:
    """The fleet at a glance (the status page): totals, then the largest groups first."""
    stations: int
    connected: int                     # stations whose stream is open (the ``connected`` column)
    devices: int
    expiring: int                      # certificates expiring within ``within_days``
    within_days: int
    by_chamber: tuple = ()             # (chamber, stations, connected)
    by_model: tuple = ()               # (model, devices)
    by_agent_version: tuple = ()       # (agent version, stations)
    recent: tuple[Station, ...] = ()   # the stations seen last, most recent first


@dataclass(frozen=True)
class Page:
    rows: list = field(default_factory=list)
    next_page_token: str = ""
    total: int = 0


class FleetStore(Protocol):
    async def record_hello(self, station: str, chamber: str, station_id: str, agent_version: str,
                           readers: list[str], devices: list[Device]) -> None: ...
    async def apply_delta(self, station: str, present: list[Device], removed: list[str],
                          readers: list[str] | None) -> None: ...
    async def get_station(self, station: str) -> Station | None: ...
    async def seen(self, station: str) -> None: ...
    async def seen_many(self, last_seen: dict[str, float]) -> None: ...
    async def set_connected(self, station: str, connected: bool) -> None: ...
    async def add_command(self, cmd: Command) -> Command: ...
    async def broadcast(self, q: Query, cmd: Command) -> list[Command]: ...
    async def get_command(self, command_id: str) -> Command: ...
    async def open_commands(self, station: str) -> list[Command]: ...
    async def mark_sent(self, command_ids: list[str]) -> None: ...
    async def ack_many(self, acks: list[tuple[str, str, str]]) -> list[Command]: ...
    async def update_command(self, station: str, command_id: str, state: str, *, percent: int | None = None,
                             message: str = "", attestation: bytes | None = None) -> Command: ...
    async def list_stations(self, q: Query) -> Page: ...
    async def list_devices(self, q: Query) -> Page: ...
    async def expiring(self, q: Query, before: int) -> Page: ...
    async def audit(self, actor: str, action: str, outcome: str, detail: dict) -> None: ...
    async def audit_rows(self, limit: int = 100) -> list[dict]: ...
    async def close(self) -> None: ...


CAS_ATTEMPTS = 8
HELLO_BATCH = 256   # hellos per transaction: a storm's batches keep the write lock briefly each
LIVE_SECONDS = 100.0   # 3 heartbeats of 30 s and a batch of last-seen writes

_LIVE = "(s.connected = 1 AND s.last_seen >= ?)"

_LIKE = {"sqlite": "LIKE ? ESCAPE '\\'", "postgresql": "ILIKE ? ESCAPE '\\'"}   # both: ASCII case ignored


def _page_bounds(q: Query) -> tuple[int, int]:
    size = q.page_size or DEFAULT_PAGE
    if size > MAX_PAGE:
        raise InvalidRequest("page_size", f"at most {MAX_PAGE}; got {size}")
    if not q.page_token:
        return size, 0
    if not q.page_token.isdigit() or len(q.page_token) > 9:
        raise InvalidRequest("page_token", "not a token from a previous page; start again without one")
    return size, int(q.page_token)


def _next(offset: int, size: int, got: int, total: int) -> str:
    return str(offset + size) if got == size and offset + size < total else ""


class SqlFleetStore:
    """``FleetStore`` over a ``fleet.db`` connection (SQLite or PostgreSQL); this process's writes serialized."""

    def __init__(self, db: SqliteDb | PostgresDb, clock=time.time):
        self.db = db
        self._lock = db.lock
        self._clock = clock
        # a station reads as connected while flagged and heard from within this (set by wiring from the
        # heartbeat): over a shared store a killed instance never clears its stations' flags
        self.live_seconds = LIVE_SECONDS
        self._hellos: list[tuple[tuple, asyncio.Future]] = []   # waiting for the next batch (record_hello)
        self._hello_writer: asyncio.Task | None = None

    @classmethod
    async def open(cls, path: Path, *, clock=time.time, reset_connected: bool = True) -> "SqlFleetStore":
        """On the daemon's SQLite file (a connection of its own, closed by ``close``). ``reset_connected=False``:
        a helper process of the daemon (``[server] processes`` > 1), whose primary's streams are open."""
        db = await SqliteDb.open(path)
        try:
            return await cls.over(db, clock=clock, reset_connected=reset_connected)
        except BaseException:
            await db.close()
            raise

    @classmethod
    async def over(cls, db: SqliteDb | PostgresDb, *, clock=time.time, reset_connected: bool = True) -> "SqlFleetStore":
        await db.script(SCHEMA if db.dialect == "sqlite" else SCHEMA_PG)
        if db.dialect == "sqlite" and reset_connected:
            # a daemon that died left stations marked connected: nothing is connected to a new daemon (over
            # PostgreSQL, or in a helper process, other processes may hold those streams: their flags stay)
            await db.execute("UPDATE fleet_stations SET connected = 0 WHERE connected = 1")
        return cls(db, clock)

    async def close(self) -> None:
        await self.db.close()

    def _live_after(self) -> float:
        return self._clock() - self.live_seconds

    async def _rows(self, sql: str, args=()) -> list:
        return await self.db.rows(sql, args)

    async def _first(self, sql: str, args=()):
        return await self.db.first(sql, args)

    async def _tx(self, statements: list[tuple[str, tuple]]) -> None:
        await self.db.tx(statements)

    @classmethod
    def _device_rows(cls, station: str, devices: list[Device], now: float) -> list[tuple[str, tuple]]:
        out = []
        for d in devices:
            out.append((cls._DEVICE_SQL, (station, d.serial, d.kind, d.model, d.firmware_version,
                                          d.partition_version, d.token_release, d.reader, now)))
            out.append(("DELETE FROM fleet_certificates WHERE station = ? AND serial = ?", (station, d.serial)))
            out += [(cls._CERT_SQL, (station, d.serial, k.keyset, int(k.not_after))) for k in d.certificates]
        return out

    _HELLO_SQL = ("INSERT INTO fleet_stations (station, chamber, station_id, agent_version, readers, first_seen,"
                  " last_seen, connected) VALUES (?,?,?,?,?,?,?,1) ON CONFLICT(station) DO UPDATE SET"
                  " agent_version = excluded.agent_version, readers = excluded.readers,"
                  " last_seen = excluded.last_seen, connected = 1")
    _DEVICE_SQL = ("INSERT INTO fleet_devices VALUES (?,?,?,?,?,?,?,?,?) ON CONFLICT (station, serial) DO"
                   " UPDATE SET kind = excluded.kind, model = excluded.model, firmware_version ="
                   " excluded.firmware_version, partition_version = excluded.partition_version, token_release ="
                   " excluded.token_release, reader = excluded.reader, last_seen = excluded.last_seen")
    _CERT_SQL = ("INSERT INTO fleet_certificates VALUES (?,?,?,?) ON CONFLICT (station, serial, keyset)"
                 " DO UPDATE SET not_after = excluded.not_after")

    async def record_hello(self, station, chamber, station_id, agent_version, readers, devices) -> None:
        """The station's whole inventory as its hello states it (devices not named are gone).

        Hellos asked for together (a reconnect storm) are written together: one ``executemany`` per table
        in one transaction, a few database jobs for hundreds of hellos instead of ~11 each (measured at
        5,000 agents: a mean 8-10 s queued here per hello). Returns once its rows are committed; when the
        database refuses a batch, each of its hellos is written alone, so only the bad one raises."""
        fut = asyncio.get_running_loop().create_future()
        self._hellos.append(((station, chamber, station_id, agent_version, list(readers), list(devices)), fut))
        if self._hello_writer is None or self._hello_writer.done():
            self._hello_writer = asyncio.create_task(self._write_hellos())
        await asyncio.shield(fut)   # a caller cancelled meanwhile still has its hello written (or refused)

    async def _write_hellos(self) -> None:
        await asyncio.sleep(0)   # the hellos of callers woken with this one join its batch
        while self._hellos:
            batch, self._hellos = self._hellos[:HELLO_BATCH], self._hellos[HELLO_BATCH:]
            await self._write_hello_batch(batch, self._clock())

    async def _write_hello_batch(self, batch: list, now: float) -> None:
        """One transaction; refused, its halves apart (a bad hello costs log2(batch) transactions, not one
        per hello), down to the one hello that raises to its caller."""
        last = {h[0]: h for h, _fut in batch}   # a station twice in one batch: its last hello wins
        try:
            await self.db.tx(many=self._hello_rows(list(last.values()), now))
        except Exception as exc:
            if len(batch) == 1:
                batch[0][1].set_exception(exc)
                return
            half = len(batch) // 2
            await self._write_hello_batch(batch[:half], now)
            await self._write_hello_batch(batch[half:], now)
            return
        for _h, fut in batch:
            if not fut.done():
                fut.set_result(None)

    @classmethod
    def _hello_rows(cls, hellos: list[tuple], now: float) -> list[tuple[str, list]]:
        stations, gone, devices, certs = [], [], [], []
        for station, chamber, station_id, agent_version, readers, devs in hellos:
            stations.append((station, chamber, station_id, agent_version, json.dumps(readers), now, now))
            gone.append((station,))
            for d in devs:
                devices.append((station, d.serial, d.kind, d.model, d.firmware_version, d.partition_version,
                                d.token_release, d.reader, now))
                certs += [(station, d.serial, k.keyset, int(k.not_after)) for k in d.certificates]
        return [(cls._HELLO_SQL, stations), ("DELETE FROM fleet_devices WHERE station = ?", gone),
                ("DELETE FROM fleet_certificates WHERE station = ?", gone),
                (cls._DEVICE_SQL, devices), (cls._CERT_SQL, certs)]

    async def apply_delta(self, station, present, removed, readers) -> None:
        now = self._clock()
        stmts = [("UPDATE fleet_stations SET last_seen = ? WHERE station = ?", (now, station))]
        if readers is not None:
            stmts.append(("UPDATE fleet_stations SET readers = ? WHERE station = ?",
                          (json.dumps(list(readers)), station)))
        for serial in removed:
            stmts += [("DELETE FROM fleet_devices WHERE station = ? AND serial = ?", (station, serial)),
                      ("DELETE FROM fleet_certificates WHERE station = ? AND serial = ?", (station, serial))]
        stmts += self._device_rows(station, present, now)
        await self._tx(stmts)

    async def get_station(self, station) -> Station | None:
        r = await self._first(
            "SELECT s.station, s.chamber, s.station_id, s.agent_version, s.readers, s.first_seen, s.last_seen,"
            f" {_LIVE}, (SELECT COUNT(*) FROM fleet_devices d WHERE d.station = s.station)"
            " FROM fleet_stations s WHERE s.station = ?", (self._live_after(), station))
        return None if r is None else Station(r[0], r[1], r[2], r[3], tuple(json.loads(r[4])), r[5], r[6],
                                              bool(r[7]), r[8])

    async def seen(self, station) -> None:
        async with self._lock:
            await self.db.execute("UPDATE fleet_stations SET last_seen = ? WHERE station = ?",
                                   (self._clock(), station))

    async def seen_many(self, last_seen) -> None:
        """Heartbeats in one transaction (station → time): thousands of stations, one commit."""
        await self.db.tx(many=[("UPDATE fleet_stations SET last_seen = ? WHERE station = ? AND last_seen < ?",
                                [(t, st, t) for st, t in last_seen.items()])])

    async def set_connected(self, station, connected) -> None:
        """In the group commit: a storm's thousands of ended streams share commits with its hellos."""
        await self.db.tx([("UPDATE fleet_stations SET connected = ? WHERE station = ?", (int(connected), station))])

    async def add_command(self, cmd: Command) -> Command:
        now = self._clock()
        cmd = Command(**{**cmd.__dict__, "command_id": cmd.command_id or str(uuid.uuid4()), "state": PENDING,
                         "created": now, "updated": now})
        await self._tx([("INSERT INTO fleet_commands (command_id, station, kind, device_serial, release, state,"
                         " rollout_id, actor, created, updated) VALUES (?,?,?,?,?,?,?,?,?,?)",
                         (cmd.command_id, cmd.station, cmd.kind, cmd.device_serial, cmd.release, cmd.state,
                          cmd.rollout_id, cmd.actor, now, now))])
        return cmd

    async def broadcast(self, q: Query, cmd: Command) -> list[Command]:
        """``cmd`` for every station matching ``q`` (paging ignored), in one transaction; the commands."""
        where, args = self._where(q, devices=False)
        stations = [r[0] for r in await self._rows(f"SELECT s.station FROM fleet_stations s{where}", args)]
        now = self._clock()
        cmds = [Command(**{**cmd.__dict__, "command_id": str(uuid.uuid4()), "station": st, "state": PENDING,
                           "created": now, "updated": now}) for st in stations]
        # one executemany: one database job for the whole broadcast, not one per station (20,000 thread hops
        # before the first command could go out)
        await self.db.tx(many=[("INSERT INTO fleet_commands (command_id, station, kind, device_serial, release,"
                                " state, rollout_id, actor, created, updated) VALUES (?,?,?,?,?,?,?,?,?,?)",
                                [(c.command_id, c.station, c.kind, c.device_serial, c.release, PENDING, None, c.actor,
                                  now, now) for c in cmds])])
        return cmds

    _CMD_COLS = ("command_id, station, kind, device_serial, release, state, percent, message, attestation,"
                 " rollout_id, actor, created, updated")

    async def get_command(self, command_id) -> Command:
        row = await self._first(f"SELECT {self._CMD_COLS} FROM fleet_commands WHERE command_id = ?", (command_id,))
        if row is None:
            raise NotFound(f"no fleet command {command_id!r}")
        return Command(*row)

    async def open_commands(self, station) -> list[Command]:
        """Commands not yet acknowledged by the station (pending, or sent on a stream that may have broken)."""
        return [Command(*r) for r in await self._rows(f"SELECT {self._CMD_COLS} FROM fleet_commands WHERE"
                                                      " station = ? AND state IN (?, ?) ORDER BY created",
                                                      (station, PENDING, SENT))]

    async def mark_sent(self, command_ids) -> None:
        if not command_ids:   # every stream's first delivery, usually with nothing to send
            return
        now = self._clock()
        await self.db.tx(many=[("UPDATE fleet_commands SET state = ?, updated = ? WHERE command_id = ? AND state = ?",
                                [(SENT, now, i, PENDING) for i in command_ids])])

    async def ack_many(self, acks) -> list[Command]:
        """Accepted acks [(station, command id, reason)] in one transaction; the commands they moved. An ack
        of a command that is not the station's, or no longer pending or sent (acknowledged already,
        cancelled, timed out), changes nothing, as ``update_command`` leaves an ack again."""
        now = self._clock()
        await self.db.tx(many=[("UPDATE fleet_commands SET state = ?, message = ?, updated = ? WHERE command_id = ?"
                                " AND station = ? AND state IN (?, ?)",
                                [(ACKED, reason[:500], now, cid, st, PENDING, SENT) for st, cid, reason in acks])])
        ids, moved = [cid for _st, cid, _r in acks], []
        for k in range(0, len(ids), 500):
            part = ids[k:k + 500]
            moved += [Command(*r) for r in await self._rows(
                f"SELECT {self._CMD_COLS} FROM fleet_commands WHERE state = ? AND updated = ? AND command_id IN"
                f" ({','.join('?' * len(part))})", (ACKED, now, *part))]
        return moved

    async def update_command(self, station, command_id, state, *, percent=None, message="", attestation=None):
        """Move a command the agent reports on. NotFound unless it was sent to ``station``;
        FailedPrecondition when it is not in a state this report can follow (e.g. already finished).
        The write is compare-and-set on the state read: another process (over a shared PostgreSQL store)
        that moved the command in between wins, and this report is decided again on what it wrote."""
        async with self._lock:
            for _attempt in range(CAS_ATTEMPTS):
                row = await self._first(f"SELECT {self._CMD_COLS} FROM fleet_commands WHERE command_id = ?",
                                        (command_id,))
                if row is None or row[1] != station:
                    raise NotFound(f"command {command_id!r} was not sent to this station")
                cmd = Command(*row)
                if state == ACKED and cmd.state in (ACKED, RUNNING, SUCCEEDED, FAILED):
                    return cmd   # the ack again (the first was lost with a broken stream): nothing changes
                if cmd.state not in _FROM[state]:
                    raise FailedPrecondition(f"command {command_id!r} is {cmd.state}; a {state} report cannot "
                                             "follow")
                now = self._clock()
                pct = cmd.percent if percent is None else max(0, min(100, percent))
                changed = await self.db.execute(
                    "UPDATE fleet_commands SET state = ?, percent = ?, message = ?, attestation = COALESCE(?,"
                    " attestation), updated = ? WHERE command_id = ? AND state = ? AND updated = ?",
                    (state, pct, message[:500], attestation, now, command_id, cmd.state, cmd.updated))
                if changed:
                    break
            else:
                raise FailedPrecondition(f"command {command_id!r} keeps changing under this report; send it again")
        return Command(**{**cmd.__dict__, "state": state, "percent": pct, "message": message[:500],
                          "attestation": attestation if attestation is not None else cmd.attestation,
                          "updated": now})

    def _where(self, q: Query, *, devices: bool) -> tuple[str, list]:
        """WHERE over fleet_stations s (and fleet_devices d when ``devices``)."""
        conds, args, op = [], [], _LIKE[self.db.dialect]
        for col, val in (("s.chamber", q.chamber), ("s.agent_version", q.agent_version)):
            if val:
                conds.append(f"{col} = ?")
                args.append(val)
        dev = [(c, v) for c, v in (("d.model", q.model), ("d.firmware_version", q.firmware_version),
                                   ("d.token_release", q.token_release)) if v]
        if q.last_seen_before:
            conds.append("s.last_seen < ?")
            args.append(q.last_seen_before)
        if q.last_seen_after:
            conds.append("s.last_seen >= ?")
            args.append(q.last_seen_after)
        # the search is text, not a pattern: LIKE's wildcards (and the escape character) are escaped
        text = q.search.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        like = f"%{text}%" if q.search else ""
        if devices:
            for c, v in dev:
                conds.append(f"{c} = ?")
                args.append(v)
            if like:
                conds.append(f"(s.station_id {op} OR d.serial {op} OR d.model {op})")
                args += [like] * 3
        else:
            if dev:
                sub = " AND ".join(f"{c} = ?" for c, _ in dev)
                conds.append(f"EXISTS (SELECT 1 FROM fleet_devices d WHERE d.station = s.station AND {sub})")
                args += [v for _, v in dev]
            if like:
                conds.append(f"(s.station_id {op} OR EXISTS (SELECT 1 FROM fleet_devices d WHERE"
                             f" d.station = s.station AND (d.serial {op} OR d.model {op})))")
                args += [like] * 3
        return (" WHERE " + " AND ".join(conds)) if conds else "", args

    async def _count(self, sql: str, args) -> int:
        return (await self._first(f"SELECT COUNT(*) FROM ({sql}) AS counted", args))[0]

    async def list_stations(self, q: Query) -> Page:
        size, offset = _page_bounds(q)
        where, args = self._where(q, devices=False)
        base = ("SELECT s.station, s.chamber, s.station_id, s.agent_version, s.readers, s.first_seen, s.last_seen,"
                f" {_LIVE}, (SELECT COUNT(*) FROM fleet_devices d WHERE d.station = s.station)"
                f" FROM fleet_stations s{where}")
        args = [self._live_after(), *args]
        total = await self._count(base, args)
        rows = [Station(r[0], r[1], r[2], r[3], tuple(json.loads(r[4])), r[5], r[6], bool(r[7]), r[8])
                for r in await self._rows(base + " ORDER BY s.chamber, s.station_id LIMIT ? OFFSET ?",
                                          (*args, size, offset))]
        return Page(rows, _next(offset, size, len(rows), total), total)

    async def _certs(self, keys: list[tuple[str, str]]) -> dict[tuple[str, str], tuple[Keyset, ...]]:
        out: dict[tuple[str, str], list[Keyset]] = {}
        for station, serial in keys:
            out[(station, serial)] = [Keyset(*r) for r in await self._rows(
                "SELECT keyset, not_after FROM fleet_certificates WHERE station = ? AND serial = ? ORDER BY keyset",
                (station, serial))]
        return {k: tuple(v) for k, v in out.items()}

    async def list_devices(self, q: Query) -> Page:
        size, offset = _page_bounds(q)
        where, args = self._where(q, devices=True)
        base = ("SELECT d.station, s.chamber, d.serial, d.kind, d.model, d.firmware_version, d.partition_version,"
                " d.token_release, d.reader, d.last_seen FROM fleet_devices d JOIN fleet_stations s"
                f" ON s.station = d.station{where}")
        total = await self._count(base, args)
        raw = await self._rows(base + " ORDER BY s.chamber, d.station, d.serial LIMIT ? OFFSET ?",
                               (*args, size, offset))
        certs = await self._certs([(r[0], r[2]) for r in raw])
        rows = [DeviceRow(r[0], r[1], Device(serial=r[2], kind=r[3], model=r[4], firmware_version=r[5],
                                             partition_version=r[6], token_release=r[7], reader=r[8],
                                             certificates=certs[(r[0], r[2])]), r[9]) for r in raw]
        return Page(rows, _next(offset, size, len(rows), total), total)

    async def expiring(self, q: Query, before: int) -> Page:
        size, offset = _page_bounds(q)
        where, args = self._where(q, devices=True)
        where = (where + " AND" if where else " WHERE") + " c.not_after < ?"
        base = ("SELECT c.station, s.chamber, c.serial, d.model, c.keyset, c.not_after FROM fleet_certificates c"
                " JOIN fleet_devices d ON d.station = c.station AND d.serial = c.serial"
                f" JOIN fleet_stations s ON s.station = c.station{where}")
        args = [*args, before]
        total = await self._count(base, args)
        rows = [ExpiringRow(*r) for r in await self._rows(
            base + " ORDER BY c.not_after, c.station, c.serial LIMIT ? OFFSET ?", (*args, size, offset))]
        return Page(rows, _next(offset, size, len(rows), total), total)

    async def counts(self, *, within_days: int = 30, groups: int = 20, recent: int = 10) -> Counts:
        """Totals and the ``groups`` largest groups per chamber, model and agent version (bounded reads)."""
        live = f"SUM(CASE WHEN {_LIVE} THEN 1 ELSE 0 END)"
        st, conn = await self._first(f"SELECT COUNT(*), COALESCE({live}, 0) FROM fleet_stations s",
                                     (self._live_after(),))
        devices = (await self._first("SELECT COUNT(*) FROM fleet_devices"))[0]
        expiring = (await self._first("SELECT COUNT(*) FROM fleet_certificates WHERE not_after < ?",
                                      (int(self._clock()) + within_days * 86400,)))[0]
        by_chamber = await self._rows(f"SELECT s.chamber, COUNT(*), {live} FROM fleet_stations s GROUP BY s.chamber"
                                      " ORDER BY COUNT(*) DESC, s.chamber LIMIT ?", (self._live_after(), groups))
        by_model = await self._rows("SELECT model, COUNT(*) FROM fleet_devices GROUP BY model"
                                    " ORDER BY COUNT(*) DESC, model LIMIT ?", (groups,))
        by_version = await self._rows("SELECT agent_version, COUNT(*) FROM fleet_stations GROUP BY agent_version"
                                      " ORDER BY COUNT(*) DESC, agent_version LIMIT ?", (groups,))
        last = [Station(r[0], r[1], r[2], r[3], tuple(json.loads(r[4])), r[5], r[6], bool(r[7]), r[8])
                for r in await self._rows(
                    "SELECT s.station, s.chamber, s.station_id, s.agent_version, s.readers, s.first_seen,"
                    f" s.last_seen, {_LIVE}, (SELECT COUNT(*) FROM fleet_devices d WHERE d.station = s.station)"
                    " FROM fleet_stations s ORDER BY s.last_seen DESC, s.station LIMIT ?",
                    (self._live_after(), recent))]
        return Counts(st, conn, devices, expiring, within_days, tuple(map(tuple, by_chamber)),
                      tuple(map(tuple, by_model)), tuple(map(tuple, by_version)), tuple(last))

    async def set_presence(self, daemon: str, process: int, streams: int, figures: dict | None = None) -> None:
        """Helper process ``process`` of ``daemon`` holds ``streams`` fleet streams now (and has counted
        ``figures``, ``FleetFigures.to_dict``)."""
        await self.db.tx([("INSERT INTO fleet_presence (daemon, process, streams, at, figures) VALUES (?,?,?,?,?)"
                           " ON CONFLICT (daemon, process) DO UPDATE SET streams = excluded.streams,"
                           " at = excluded.at, figures = excluded.figures",
                           (daemon, process, streams, self._clock(), json.dumps(figures or {}, sort_keys=True)))])

    async def clear_presence(self, daemon: str) -> None:
        """The daemon's primary starts: rows its helpers of an earlier run left count no more."""
        await self.db.tx([("DELETE FROM fleet_presence WHERE daemon = ?", (daemon,))])

    async def presence(self, daemon: str, *, since: float) -> tuple[int, list[dict]]:
        """(streams, [figures]) the helpers of ``daemon`` reported at or after ``since`` (a helper gone
        stops counting)."""
        rows = await self._rows("SELECT streams, figures FROM fleet_presence WHERE daemon = ? AND at >= ?",
                                (daemon, since))
        return sum(r[0] for r in rows), [json.loads(r[1]) for r in rows]

    async def audit(self, actor, action, outcome, detail) -> None:
        """One row, committed when this returns; in the group commit (a storm's refusals are audited each)."""
        await self.db.tx([("INSERT INTO fleet_audit (at, actor, action, outcome, detail) VALUES (?,?,?,?,?)",
                           (self._clock(), actor, action, outcome, json.dumps(detail, sort_keys=True)))])

    async def audit_rows(self, limit=100) -> list[dict]:
        return [{"at": r[0], "actor": r[1], "action": r[2], "outcome": r[3], "detail": json.loads(r[4])}
                for r in await self._rows("SELECT at, actor, action, outcome, detail FROM fleet_audit"
                                          " ORDER BY id DESC LIMIT ?", (limit,))]


SqliteFleetStore = SqlFleetStore   # the name tests and benchmarks know: SqlFleetStore.open(path) is SQLite
