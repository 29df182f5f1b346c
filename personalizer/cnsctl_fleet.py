"""``cnsctl fleet``: central IT's inventory, commands and rollouts (issue 15, FleetAdmin; admin role).

    cnsctl --config admin.toml fleet stations|devices [--chamber RM] [--model M] [--firmware V] [--release R]
                                  [--agent-version V] [--seen-before ISO] [--seen-after ISO] [--search TEXT]
                                  [--page-size N] [--page-token T] [--all]
    cnsctl --config admin.toml fleet expiring --days N [filters]
    cnsctl --config admin.toml fleet send --station urn:cns:station:RM:ID --kind KIND [--device S] [--release R]
    cnsctl --config admin.toml fleet command ID
    cnsctl --config admin.toml fleet rollout create --name N --release R [filters] [--station URI ...]
                                  [--group-size N] [--rate N] [--factor F --grow-after N]
                                  [--abort KIND:PERCENT:MIN ...] [--timeout-seconds S] [--window HH:MM-HH:MM ...]
    cnsctl --config admin.toml fleet rollout list [--active] | show ID | pause ID | resume ID | cancel ID
    cnsctl --config admin.toml fleet rollout watch ID [--interval S]

Values are judged when parsed (a mistyped date, abort criterion or window is one line naming the
option, exit 2, and nothing is sent). ``watch`` shows a live progress bar on a terminal (rich), one
JSON line per change with ``--json`` (then the final object), and ends when the rollout does.
``--all`` follows the page tokens to the end. Imports grpc (status codes), proto and rich; never the agent.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import json
import re
import sys
import time

from proto.cns.v1 import fleet_pb2 as pb, fleet_pb2_grpc as pb_grpc

KINDS = {"refresh_inventory": pb.FLEET_COMMAND_REFRESH_INVENTORY, "renew_due": pb.FLEET_COMMAND_RENEW_DUE,
         "install_release": pb.FLEET_COMMAND_INSTALL_RELEASE, "collect_logs": pb.FLEET_COMMAND_COLLECT_LOGS}
FAILURES = {"failed": pb.FLEET_FAILURE_FAILED, "rejected": pb.FLEET_FAILURE_REJECTED,
            "timed_out": pb.FLEET_FAILURE_TIMED_OUT, "any": pb.FLEET_FAILURE_ANY}
FINAL = (pb.FLEET_ROLLOUT_CANCELLED, pb.FLEET_ROLLOUT_ABORTED, pb.FLEET_ROLLOUT_COMPLETED)
_STATION_RE = re.compile(r"urn:cns:station:[A-Z]{2,4}:[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_WINDOW_RE = re.compile(r"([01]\d|2[0-3]):([0-5]\d)-([01]\d|2[0-3]):([0-5]\d)")


def _ts(value: int | float) -> str:
    return _dt.datetime.fromtimestamp(value, _dt.timezone.utc).isoformat() if value else "-"


# -- argument types: a wrong value is refused before anything is sent ----------------------------
def iso_time(text: str) -> int:
    try:
        t = _dt.datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a date or time like 2026-12-01 or 2026-12-01T08:00+01:00, "
                                         f"got {text!r}") from None
    if t.tzinfo is None:
        t = t.replace(tzinfo=_dt.timezone.utc)
    return int(t.timestamp())


def station_uri(text: str) -> str:
    if not _STATION_RE.fullmatch(text):
        raise argparse.ArgumentTypeError(f"expected a station identity urn:cns:station:<CHAMBER>:<ID>, got {text!r}")
    return text


def abort_criterion(text: str) -> pb.FleetAbortCriterion:
    parts = text.split(":")
    try:
        kind, pct, least = parts[0], float(parts[1]), int(parts[2])
        if len(parts) != 3 or kind not in FAILURES or not 0 < pct <= 100 or least < 1:
            raise ValueError
    except (ValueError, IndexError):
        raise argparse.ArgumentTypeError(
            f"expected KIND:PERCENT:MIN_EXECUTED with KIND one of {', '.join(FAILURES)}, 0 < PERCENT ≤ 100 and "
            f"MIN_EXECUTED ≥ 1 (e.g. failed:5:20), got {text!r}") from None
    return pb.FleetAbortCriterion(kind=FAILURES[kind], threshold_percent=pct, min_executed=least)


def daily_window(text: str) -> pb.FleetDailyWindow:
    m = _WINDOW_RE.fullmatch(text)
    if not m or m.group(1, 2) == m.group(3, 4):
        raise argparse.ArgumentTypeError(f"expected HH:MM-HH:MM in UTC (e.g. 20:00-06:00), got {text!r}")
    a, b, c, d = map(int, m.groups())
    return pb.FleetDailyWindow(start_minute=a * 60 + b, end_minute=c * 60 + d)


def positive_float(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not v > 0 or v != v or v == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a number above 0, got {text!r}")
    return v


# -- output ------------------------------------------------------------------------------------
def _station(s: pb.FleetStationRecord) -> dict:
    return {"station": s.station, "chamber": s.chamber, "agent_version": s.agent_version,
            "connected": s.connected, "devices": s.device_count, "last_seen": _ts(s.last_seen),
            "readers": list(s.readers)}


def _device(d: pb.FleetDeviceRecord) -> dict:
    x = d.device
    return {"station": d.station, "chamber": d.chamber, "serial": x.serial, "kind": x.kind, "model": x.model,
            "firmware": x.firmware_version, "release": x.token_release, "last_seen": _ts(d.last_seen),
            "certificates": {k.keyset: _ts(k.not_after) for k in x.certificates}}


def _command(c: pb.FleetCommandStatus) -> dict:
    return {"command_id": c.command_id, "station": c.station, "kind": pb.FleetCommandKind.Name(c.command.kind),
            "state": pb.FleetCommandState.Name(c.state).removeprefix("FLEET_COMMAND_").lower(),
            "percent": c.percent, "message": c.message, "created": _ts(c.created), "updated": _ts(c.updated)}


def _rollout(r: pb.FleetRolloutStatus, *, targets: bool = False) -> dict:
    s = r.spec
    out = {"rollout_id": r.rollout_id, "name": s.name, "release": s.release,
           "state": pb.FleetRolloutState.Name(r.state).removeprefix("FLEET_ROLLOUT_").lower(), "reason": r.reason,
           "total": r.total, "counts": dict(sorted(r.counts.items())), "rate_per_minute": r.current_rate_per_minute,
           "group": r.current_group, "created": _ts(r.created), "updated": _ts(r.updated)}
    if targets:
        out["targets"] = [{"station": t.station, "device": t.device_serial, "group": t.group, "state": t.state,
                           "message": t.message} for t in r.targets]
    return out


def _query(opts) -> pb.FleetInventoryQuery:
    return pb.FleetInventoryQuery(chamber=opts.chamber, model=opts.model, firmware_version=opts.firmware,
                                  token_release=opts.release_filter, agent_version=opts.agent_version,
                                  last_seen_before=opts.seen_before or 0, last_seen_after=opts.seen_after or 0,
                                  search=opts.search, page_size=opts.page_size or 0, page_token=opts.page_token)


def _pages(call, query, field: str, opts, timeout):
    rows, r = [], None
    while True:
        r = call(query, timeout=timeout)
        rows += list(getattr(r, field))
        if not (opts.all and r.next_page_token):
            return rows, r
        query.page_token = r.next_page_token


# -- commands ------------------------------------------------------------------------------------
def run(ch, opts, timeout) -> dict:
    stub = pb_grpc.FleetAdminStub(ch)
    c = opts.fleet_command
    if c in ("stations", "devices"):
        call = stub.ListStations if c == "stations" else stub.ListDevices
        rows, last = _pages(call, _query(opts), c, opts, timeout)
        fmt = _station if c == "stations" else _device
        return {f"fleet_{c}": [fmt(x) for x in rows], "total": last.total, "next_page_token": last.next_page_token}
    if c == "expiring":
        q = pb.FleetExpiringQuery(query=_query(opts), within_days=opts.days)
        r = stub.ExpiringCertificates(q, timeout=timeout)
        return {"certificates_expiring": [{"station": x.station, "serial": x.serial, "model": x.model,
                                           "keyset": x.keyset, "not_after": _ts(x.not_after)} for x in r.certificates],
                "total": r.total, "within_days": opts.days, "next_page_token": r.next_page_token}
    if c == "send":
        return _command(stub.SendCommand(pb.FleetSendCommandRequest(
            station=opts.station, kind=KINDS[opts.kind], device_serial=opts.device, release=opts.release),
            timeout=timeout))
    if c == "command":
        return _command(stub.GetCommand(pb.FleetCommandRef(command_id=opts.command_id), timeout=timeout))
    return _rollout_command(stub, opts, timeout)


def _rollout_command(stub, opts, timeout) -> dict:
    c = opts.rollout_command
    if c == "create":
        spec = pb.FleetRolloutSpec(
            name=opts.name, release=opts.release, chamber=opts.chamber, model=opts.model,
            firmware_version=opts.firmware, token_release=opts.from_release, stations=opts.station or [],
            group_size=opts.group_size or 0, rate_per_minute=opts.rate, rate_factor=opts.factor or 1.0,
            grow_after_successes=opts.grow_after or 0, abort=opts.abort or [], timeout_seconds=opts.timeout_seconds,
            windows=opts.window or [])
        return _rollout(stub.CreateRollout(spec, timeout=timeout))
    if c == "list":
        r = stub.ListRollouts(pb.FleetListRolloutsRequest(active_only=opts.active), timeout=timeout)
        return {"rollouts": [_rollout(x) for x in r.rollouts]}
    ref = pb.FleetRolloutRef(rollout_id=opts.rollout_id)
    if c == "show":
        return _rollout(stub.GetRollout(ref, timeout=timeout), targets=True)
    if c == "watch":
        return watch(stub, ref, opts, timeout)
    method = {"pause": stub.PauseRollout, "resume": stub.ResumeRollout, "cancel": stub.CancelRollout}[c]
    return _rollout(method(ref, timeout=timeout))


def watch(stub, ref, opts, timeout) -> dict:
    """Follow a rollout until it ends: a progress bar on a terminal, JSON lines with --json, else text lines."""
    bar = None
    if not opts.json and sys.stdout.isatty():
        from rich.progress import BarColumn, Progress, TextColumn
        bar = Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                       TextColumn("{task.fields[detail]}"))
        bar.start()
    last, task = None, None
    try:
        while True:
            r = stub.GetRollout(ref, timeout=timeout)
            view = _rollout(r)
            done = sum(n for k, n in r.counts.items() if k not in ("waiting", "sent"))
            key = (view["state"], tuple(view["counts"].items()))
            if key != last:
                last = key
                detail = " ".join(f"{k}={n}" for k, n in view["counts"].items())
                if bar is not None:
                    if task is None:
                        task = bar.add_task(view["name"] or view["rollout_id"], total=r.total, detail=detail)
                    bar.update(task, completed=done, detail=f"{view['state']} {detail}")
                elif opts.json:
                    print(json.dumps({"progress": view}, sort_keys=True), flush=True)
                else:
                    print(f"{_ts(time.time())} {view['state']:9} {done}/{r.total} {detail}", flush=True)
            if r.state in FINAL:
                return view
            time.sleep(opts.interval)
    finally:
        if bar is not None:
            bar.stop()


def _filters(p, *, release_dest: str = "release_filter") -> None:
    p.add_argument("--chamber", default="", help="chamber code, e.g. RM")
    p.add_argument("--model", default="", help="device model id")
    p.add_argument("--firmware", default="", help="firmware version")
    if release_dest:
        p.add_argument("--release", dest=release_dest, default="", help="token release the devices have")


def add_parser(sub, positive_int) -> None:
    f = sub.add_parser("fleet", help="stations, devices, commands and rollouts (admin)")
    fsub = f.add_subparsers(dest="fleet_command", required=True)
    for name, text in (("stations", "stations and their agents"), ("devices", "devices and their certificates"),
                       ("expiring", "certificates expiring within --days")):
        p = fsub.add_parser(name, help=text)
        _filters(p)
        p.add_argument("--agent-version", default="")
        p.add_argument("--seen-before", type=iso_time, help="last seen before this time (ISO 8601)")
        p.add_argument("--seen-after", type=iso_time, help="last seen at or after this time (ISO 8601)")
        p.add_argument("--search", default="", help="part of a station id, serial or model")
        p.add_argument("--page-size", type=positive_int, help="rows per page (default 100, at most 1000)")
        p.add_argument("--page-token", default="", help="next_page_token of the previous page")
        p.add_argument("--all", action="store_true", help="every page")
        if name == "expiring":
            p.add_argument("--days", type=positive_int, required=True, help="within this many days")
        p.set_defaults(func=run)
    s = fsub.add_parser("send", help="send one command to a station")
    s.add_argument("--station", type=station_uri, required=True, help="urn:cns:station:<CHAMBER>:<ID>")
    s.add_argument("--kind", choices=sorted(KINDS), required=True)
    s.add_argument("--device", default="", help="the device's serial (default: the whole station)")
    s.add_argument("--release", default="", help="install_release: the release")
    s.set_defaults(func=run)
    c = fsub.add_parser("command", help="one command's state")
    c.add_argument("command_id")
    c.set_defaults(func=run)
    r = fsub.add_parser("rollout", help="staged rollouts of a token release that halt themselves")
    r.set_defaults(func=run)
    rsub = r.add_subparsers(dest="rollout_command", required=True)
    cr = rsub.add_parser("create", help="start a rollout (the targets are the matching devices now)")
    cr.add_argument("--name", required=True)
    cr.add_argument("--release", required=True, help="the release to install")
    _filters(cr, release_dest="")
    cr.add_argument("--from-release", default="", help="only devices that have this release now")
    cr.add_argument("--station", type=station_uri, action="append", help="only this station (repeatable)")
    cr.add_argument("--group-size", type=positive_int, help="devices per group (default: one group)")
    cr.add_argument("--rate", type=positive_float, default=60.0, help="commands a minute (start rate), ≤ 1000")
    cr.add_argument("--factor", type=positive_float, help="exponential: multiply the rate by this ...")
    cr.add_argument("--grow-after", type=positive_int, help="... after every N attested successes")
    cr.add_argument("--abort", type=abort_criterion, action="append", metavar="KIND:PERCENT:MIN",
                    help="stop when KIND (failed, rejected, timed_out, any) reaches PERCENT of at least MIN executed")
    cr.add_argument("--timeout-seconds", type=positive_int, default=3600, help="per device (default 3600)")
    cr.add_argument("--window", type=daily_window, action="append", metavar="HH:MM-HH:MM",
                    help="send only inside this daily UTC window (repeatable)")
    li = rsub.add_parser("list", help="rollouts, newest first")
    li.add_argument("--active", action="store_true", help="running or paused only")
    for name, text in (("show", "one rollout with its devices"), ("pause", "stop sending; resume later"),
                       ("resume", "send again"), ("cancel", "stop for good"), ("watch", "follow it live")):
        x = rsub.add_parser(name, help=text)
        x.add_argument("rollout_id")
        if name == "watch":
            x.add_argument("--interval", type=positive_float, default=1.0, help="seconds between looks")


__all__ = ["add_parser", "run"]
