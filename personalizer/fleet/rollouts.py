"""Rollouts of a token release that halt themselves: targets, sending, results, durable in the database.

A rollout's targets are the inventory's devices matching its filter when it is created, split into
groups of ``group_size``. ``step`` (every ``tick_seconds`` and after every report of one of its
commands) times out devices sent too long ago, stops the rollout when an abort criterion trips
(``rollout_rules.tripped``; undelivered commands are withdrawn, so nothing more is sent), completes it
when every target finished, and otherwise — inside a maintenance window, not paused — sends the next
devices of the current group at the current rate. A device's success counts only with a valid
attestation (``attestation.verify``); without one it counts as failed, with the reason.

Every state lives in the fleet store's database, SQLite or PostgreSQL (tables ``fleet_rollouts`` and
``fleet_rollout_targets``, created on open beside the fleet store's, through its ``fleet.db``): a
restarted daemon resumes each rollout where it was.
No grpc, no proto beyond what ``attestation`` reads.
"""
from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid

from personalizer.errors import FailedPrecondition, NotFound, PersonalizerError
from personalizer.fleet import attestation, rollout_rules as rr, store as fs
from personalizer.fleet.hub import Hub
from personalizer.fleet.metrics import Snapshot

log = logging.getLogger(__name__)

SCHEMA = """
CREATE TABLE IF NOT EXISTS fleet_rollouts (
    rollout_id TEXT PRIMARY KEY, spec TEXT NOT NULL, state TEXT NOT NULL, reason TEXT NOT NULL DEFAULT '',
    actor TEXT NOT NULL, created REAL NOT NULL, updated REAL NOT NULL);
CREATE TABLE IF NOT EXISTS fleet_rollout_targets (
    rollout_id TEXT NOT NULL, station TEXT NOT NULL, device_serial TEXT NOT NULL, model TEXT NOT NULL,
    grp INTEGER NOT NULL, state TEXT NOT NULL, command_id TEXT, sent_at REAL, done_at REAL,
    message TEXT NOT NULL DEFAULT '', PRIMARY KEY (rollout_id, station, device_serial));
CREATE INDEX IF NOT EXISTS fleet_rollout_targets_command ON fleet_rollout_targets(command_id);
CREATE INDEX IF NOT EXISTS fleet_rollout_targets_state ON fleet_rollout_targets(rollout_id, state, grp);
"""
SCHEMA_PG = """
SELECT pg_advisory_xact_lock(1315010002);
CREATE TABLE IF NOT EXISTS fleet_rollouts (
    rollout_id TEXT PRIMARY KEY, spec TEXT NOT NULL, state TEXT NOT NULL, reason TEXT NOT NULL DEFAULT '',
    actor TEXT NOT NULL, created DOUBLE PRECISION NOT NULL, updated DOUBLE PRECISION NOT NULL);
CREATE TABLE IF NOT EXISTS fleet_rollout_targets (
    rollout_id TEXT NOT NULL, station TEXT NOT NULL, device_serial TEXT NOT NULL, model TEXT NOT NULL,
    grp INTEGER NOT NULL, state TEXT NOT NULL, command_id TEXT, sent_at DOUBLE PRECISION, done_at DOUBLE PRECISION,
    message TEXT NOT NULL DEFAULT '', PRIMARY KEY (rollout_id, station, device_serial));
CREATE INDEX IF NOT EXISTS fleet_rollout_targets_command ON fleet_rollout_targets(command_id);
CREATE INDEX IF NOT EXISTS fleet_rollout_targets_state ON fleet_rollout_targets(rollout_id, state, grp);
"""
_OUTCOME = {fs.SUCCEEDED: rr.SUCCEEDED, fs.FAILED: rr.FAILED, fs.REJECTED: rr.REJECTED, fs.TIMED_OUT: rr.TIMED_OUT}


class Rollouts:
    def __init__(self, store: fs.SqlFleetStore, hub: Hub, roots: attestation.ModelRoots, *,
                 tick_seconds: float = 1.0, clock=time.time, leader=lambda: True):
        """``leader``: whether this process steps rollouts now (several processes over PostgreSQL: the one
        holding ``fleet.notify``'s advisory lock; the others record reports and leave the sending to it)."""
        self.store = store
        self.leader = leader
        self._db = store.db   # the fleet store's connection and this process's write lock
        self._wlock = store.db.lock
        self.hub = hub
        self.roots = roots
        self.tick_seconds = tick_seconds
        self._clock = clock
        self._step_lock = asyncio.Lock()
        self._task: asyncio.Task | None = None
        self.snapshot = Snapshot()   # for the metrics thread: refreshed every tick

    async def open(self) -> "Rollouts":
        await self._db.script(SCHEMA if self._db.dialect == "sqlite" else SCHEMA_PG)
        return self

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name="fleet-rollouts")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    async def _loop(self) -> None:
        while True:
            try:
                await self.tick()
                await self.refresh_snapshot()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("rollout tick failed; trying again")
            await asyncio.sleep(self.tick_seconds)

    # -- reads ---------------------------------------------------------------------------------
    async def _one(self, sql, args):
        return await self.store._first(sql, args)   # one job each read: see SqliteFleetStore._rows

    async def _all(self, sql, args=()):
        return await self.store._rows(sql, args)

    async def _row(self, rid: str):
        r = await self._one("SELECT rollout_id, spec, state, reason, created, updated FROM fleet_rollouts"
                            " WHERE rollout_id = ?", (rid,))
        if r is None:
            raise NotFound(f"no rollout {rid!r}; cnsctl fleet rollouts lists them")
        return r

    async def counts(self, rid: str) -> dict[str, int]:
        return {s: n for s, n in await self._all("SELECT state, COUNT(*) FROM fleet_rollout_targets"
                                                  " WHERE rollout_id = ? GROUP BY state", (rid,))}

    async def status(self, rid: str, *, targets: bool = False, limit: int = 1000) -> dict:
        r = await self._row(rid)
        spec = rr.RolloutSpec.from_json(json.loads(r[1]))
        counts = await self.counts(rid)
        group = await self._one("SELECT MIN(grp) FROM fleet_rollout_targets WHERE rollout_id = ? AND state IN"
                                " (?, ?)", (rid, rr.WAITING, rr.SENT))
        out = {"rollout_id": r[0], "spec": spec, "state": r[2], "reason": r[3], "created": r[4], "updated": r[5],
               "counts": counts, "total": sum(counts.values()), "group": group[0] or 0,
               "rate": rr.current_rate(spec, counts.get(rr.SUCCEEDED, 0)), "targets": []}
        if targets:
            out["targets"] = [dict(zip(("station", "device_serial", "group", "state", "command_id", "message"), t))
                              for t in await self._all(
                                  "SELECT station, device_serial, grp, state, COALESCE(command_id, ''), message"
                                  " FROM fleet_rollout_targets WHERE rollout_id = ? ORDER BY grp, station,"
                                  " device_serial LIMIT ?", (rid, limit))]
        return out

    async def list(self, *, active_only: bool = False) -> list[dict]:
        rows = await self._all("SELECT rollout_id FROM fleet_rollouts" +
                               (" WHERE state IN ('running', 'paused')" if active_only else "") +
                               " ORDER BY created DESC LIMIT 200")
        return [await self.status(r[0]) for r in rows]

    # -- changes by central IT -----------------------------------------------------------------
    async def create(self, spec: rr.RolloutSpec, *, actor: str) -> str:
        rr.validate(spec)
        conds, args = ["TRUE"], []
        for col, val in (("s.chamber", spec.chamber), ("d.model", spec.model),
                         ("d.firmware_version", spec.firmware_version), ("d.token_release", spec.token_release)):
            if val:
                conds.append(f"{col} = ?")
                args.append(val)
        if spec.stations:
            conds.append(f"d.station IN ({','.join('?' * len(spec.stations))})")
            args += list(spec.stations)
        devices = await self._all("SELECT d.station, d.serial, d.model FROM fleet_devices d JOIN fleet_stations s"
                                  f" ON s.station = d.station WHERE {' AND '.join(conds)}"
                                  " AND d.token_release != ? ORDER BY s.chamber, d.station, d.serial",
                                  (*args, spec.release))
        if not devices:
            raise FailedPrecondition("no device in the inventory matches this rollout's filter (or all have the "
                                     "release already); check with cnsctl fleet devices")
        if len(devices) > rr.MAX_TARGETS:
            raise FailedPrecondition(f"{len(devices)} devices match; at most {rr.MAX_TARGETS} per rollout")
        rid, now = str(uuid.uuid4()), self._clock()
        size = spec.group_size or len(devices)
        await self._db.tx(
            [("INSERT INTO fleet_rollouts VALUES (?,?,?,?,?,?,?)",
              (rid, json.dumps(spec.to_json()), rr.RUNNING, "", actor, now, now))],
            many=[("INSERT INTO fleet_rollout_targets (rollout_id, station, device_serial, model, grp, state)"
                   " VALUES (?,?,?,?,?,?)",
                   [(rid, st, serial, model, i // size, rr.WAITING) for i, (st, serial, model) in enumerate(devices)])])
        await self.step(rid)
        return rid

    async def _set_state(self, rid: str, state: str, reason: str = "") -> None:
        async with self._wlock:
            await self._db.execute("UPDATE fleet_rollouts SET state = ?, reason = ?, updated = ? WHERE rollout_id = ?",
                                   (state, reason, self._clock(), rid))

    async def _withdraw(self, rid: str, target_state: str) -> None:
        """Undelivered commands of the rollout are cancelled; their targets become ``target_state``."""
        for station, serial, cid in await self._all(
                "SELECT t.station, t.device_serial, t.command_id FROM fleet_rollout_targets t JOIN fleet_commands c"
                " ON c.command_id = t.command_id WHERE t.rollout_id = ? AND t.state = ? AND c.state = ?",
                (rid, rr.SENT, fs.PENDING)):
            try:
                await self.store.update_command(station, cid, fs.CANCELLED, message="its rollout stopped")
            except PersonalizerError:
                continue   # delivered meanwhile: it stays sent
            await self._target(rid, station, serial, target_state, command_id=None if target_state == rr.WAITING
                               else cid, message="withdrawn before delivery")

    async def pause(self, rid: str) -> None:
        async with self._step_lock:
            if (await self._row(rid))[2] != rr.RUNNING:
                raise FailedPrecondition(f"rollout {rid} is {(await self._row(rid))[2]}; only a running one pauses")
            await self._set_state(rid, rr.PAUSED, "paused by central IT")
            await self._withdraw(rid, rr.WAITING)

    async def resume(self, rid: str) -> None:
        async with self._step_lock:
            if (await self._row(rid))[2] != rr.PAUSED:
                raise FailedPrecondition(f"rollout {rid} is {(await self._row(rid))[2]}; only a paused one resumes")
            await self._set_state(rid, rr.RUNNING)
        await self.step(rid)

    async def cancel(self, rid: str) -> None:
        async with self._step_lock:
            state = (await self._row(rid))[2]
            if state not in rr.ACTIVE:
                raise FailedPrecondition(f"rollout {rid} is {state} already")
            await self._set_state(rid, rr.R_CANCELLED, "cancelled by central IT")
            await self._withdraw(rid, rr.CANCELLED)
            async with self._wlock:
                await self._db.execute("UPDATE fleet_rollout_targets SET state = ? WHERE rollout_id = ? AND state = ?",
                                       (rr.CANCELLED, rid, rr.WAITING))

    # -- progress ------------------------------------------------------------------------------
    async def _target(self, rid, station, serial, state, *, command_id=..., message="", sent_at=None) -> None:
        now = self._clock()
        sets, args = ["state = ?", "message = ?"], [state, message[:500]]
        if command_id is not ...:
            sets.append("command_id = ?")
            args.append(command_id)
        if state == rr.SENT:
            sets.append("sent_at = ?")
            args.append(sent_at or now)
        elif state in rr.EXECUTED:
            sets.append("done_at = ?")
            args.append(now)
        async with self._wlock:
            await self._db.execute(f"UPDATE fleet_rollout_targets SET {', '.join(sets)} WHERE rollout_id = ? AND"
                                   " station = ? AND device_serial = ?", (*args, rid, station, serial))

    async def on_report(self, cmd: fs.Command) -> None:
        """A command moved (from the fleet service): a finished rollout command decides its target."""
        if not cmd.rollout_id or cmd.state not in _OUTCOME:
            return
        t = await self._one("SELECT station, device_serial, model, state FROM fleet_rollout_targets WHERE"
                            " rollout_id = ? AND command_id = ?", (cmd.rollout_id, cmd.command_id))
        if t is None or t[3] != rr.SENT:
            return
        state, message = _OUTCOME[cmd.state], cmd.message
        if state == rr.SUCCEEDED:
            why = attestation.verify(self.roots, cmd.attestation or b"", command_id=cmd.command_id, serial=t[1],
                                     model=t[2], release=cmd.release)
            if why is not None:
                state, message = rr.FAILED, f"reported success without a valid attestation: {why}"
                log.warning("rollout %s: %s %s %s", cmd.rollout_id, t[0], t[1], message,
                            extra={"rollout_id": cmd.rollout_id, "station": t[0], "device_serial": t[1]})
        await self._target(cmd.rollout_id, t[0], t[1], state, message=message)
        await self.step(cmd.rollout_id)

    async def refresh_snapshot(self) -> None:
        stations = (await self._one("SELECT COUNT(*) FROM fleet_stations", ()))[0]
        by_state = {s: n for s, n in await self._all("SELECT state, COUNT(*) FROM fleet_rollouts GROUP BY state")}
        targets = tuple((rid, json.loads(spec)["name"], state, n) for rid, spec, state, n in await self._all(
            "SELECT r.rollout_id, r.spec, t.state, COUNT(*) FROM fleet_rollouts r JOIN"
            " fleet_rollout_targets t ON t.rollout_id = r.rollout_id WHERE r.state IN ('running', 'paused')"
            " GROUP BY r.rollout_id, r.spec, t.state"))
        self.snapshot = Snapshot(stations, by_state, targets)

    async def tick(self) -> None:
        for (rid,) in await self._all("SELECT rollout_id FROM fleet_rollouts WHERE state = 'running'"):
            await self.step(rid)
        if self.leader():
            await self._sweep()

    async def _sweep(self) -> None:
        """Undelivered commands of stopped rollouts are withdrawn. Another process (over PostgreSQL) may
        pause or cancel a rollout while this one, having read it running, sends a device's command: the
        stopping process withdrew what was pending then, this catches what landed just after."""
        for rid, state in await self._all(
                "SELECT DISTINCT r.rollout_id, r.state FROM fleet_rollouts r JOIN fleet_rollout_targets t ON"
                " t.rollout_id = r.rollout_id JOIN fleet_commands c ON c.command_id = t.command_id WHERE"
                " r.state IN (?, ?, ?) AND t.state = ? AND c.state = ?",
                (rr.PAUSED, rr.R_CANCELLED, rr.ABORTED, rr.SENT, fs.PENDING)):
            async with self._step_lock:
                await self._withdraw(rid, rr.WAITING if state == rr.PAUSED else rr.CANCELLED)

    async def step(self, rid: str) -> None:
        if not self.leader():
            return   # the leading process's next tick (tick_seconds) steps it
        async with self._step_lock:
            await self._step(rid)

    async def _step(self, rid: str) -> None:
        r = await self._row(rid)
        if r[2] != rr.RUNNING:
            return
        spec = rr.RolloutSpec.from_json(json.loads(r[1]))
        now = self._clock()
        for station, serial, cid in await self._all(
                "SELECT station, device_serial, command_id FROM fleet_rollout_targets WHERE rollout_id = ? AND"
                " state = ? AND sent_at < ?", (rid, rr.SENT, now - spec.timeout_seconds)):
            try:
                await self.store.update_command(station, cid, fs.TIMED_OUT,
                                                message=f"not finished within {spec.timeout_seconds} s")
            except PersonalizerError:
                pass   # finished meanwhile: its report decides
            else:
                await self._target(rid, station, serial, rr.TIMED_OUT,
                                   message=f"not finished within {spec.timeout_seconds} s")
        counts = await self.counts(rid)
        reason = rr.tripped(spec, counts)
        if reason is not None:
            await self._set_state(rid, rr.ABORTED, reason)
            await self._withdraw(rid, rr.CANCELLED)
            async with self._wlock:
                await self._db.execute("UPDATE fleet_rollout_targets SET state = ? WHERE rollout_id = ? AND state = ?",
                                       (rr.CANCELLED, rid, rr.WAITING))
            log.warning("rollout %s (%s) stopped: %s", rid, spec.name, reason,
                        extra={"rollout_id": rid, "rollout_state": rr.ABORTED})
            return
        if counts.get(rr.WAITING, 0) + counts.get(rr.SENT, 0) == 0:
            await self._set_state(rid, rr.COMPLETED, "every target finished")
            return
        if not rr.in_window(spec.windows, int((now % 86400) // 60)):
            return
        group = (await self._one("SELECT MIN(grp) FROM fleet_rollout_targets WHERE rollout_id = ? AND state IN"
                                 " (?, ?)", (rid, rr.WAITING, rr.SENT)))[0]
        recent = (await self._one("SELECT COUNT(*) FROM fleet_rollout_targets WHERE rollout_id = ? AND"
                                  " sent_at >= ?", (rid, now - 60)))[0]
        budget = rr.send_budget(rr.current_rate(spec, counts.get(rr.SUCCEEDED, 0)), recent)
        if budget == 0:
            return
        for station, serial in await self._all(
                "SELECT station, device_serial FROM fleet_rollout_targets WHERE rollout_id = ? AND state = ? AND"
                " grp = ? ORDER BY station, device_serial LIMIT ?", (rid, rr.WAITING, group, budget)):
            cmd = await self.store.add_command(fs.Command(command_id="", station=station, kind="install_release",
                                                          device_serial=serial, release=spec.release,
                                                          rollout_id=rid, actor=f"rollout:{rid}"))
            await self._target(rid, station, serial, rr.SENT, command_id=cmd.command_id, sent_at=now)
            self.hub.wake(station)
