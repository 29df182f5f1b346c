"""``cnsctl``: central IT's client of the personalizer (admin mTLS identity).

Commands (more come with the fleet issues)::

    cnsctl --config admin.toml ca-status
    cnsctl --config admin.toml request show REQUEST_ID
    cnsctl --config admin.toml queue list|show ID|retry ID|cancel ID
    cnsctl --config admin.toml maintenance add --start ISO --end ISO [--reason TEXT] | list | end ID | remove ID

The config is a station configuration (station_config schema) with
``role = "admin"``. Output is human-readable, or one JSON object with --json.
Must not import agent or firmware_profiles.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import json
import sys

import grpc

import station_config
from station_config import channel
from proto.cns.v1 import admin_pb2 as apb, admin_pb2_grpc as apb_grpc
from proto.cns.v1 import personalizer_pb2 as pb, personalizer_pb2_grpc as pb_grpc

EXIT_ERROR = 1


def _ts(value: int) -> str:
    return _dt.datetime.fromtimestamp(value, _dt.timezone.utc).isoformat() if value else "-"


def _ca_status(ch, opts, timeout) -> dict:
    r = pb_grpc.PersonalizerStub(ch).GetCAStatus(pb.GetCAStatusRequest(), timeout=timeout)
    return {"connector": r.connector, "operational": r.operational, "detail": r.detail,
            "profiles": [pb.CAProfile.Name(p) for p in r.profiles], "chain_certificates": len(r.chain_der),
            "issued_last_10_min": r.issued_last_10_min, "mean_issue_ms_last_10_min": round(r.mean_issue_ms_last_10_min, 1),
            "in_maintenance": r.in_maintenance, "reactivation_at": _ts(r.reactivation_at),
            "planned_maintenance": [_window(w) for w in r.planned_maintenance],
            "response_times": {t.kind: {"p50_ms": round(t.p50_ms, 1), "p95_ms": round(t.p95_ms, 1),
                                        "samples": t.samples} for t in r.response_times},
            "requests_last_10_min": r.requests_last_10_min,
            "queue_depth": {d.lane: d.depth for d in r.queue_depth}, "breaker": r.breaker_state,
            "service_window_open": r.service_window_open,
            "service_window_changes_at": _ts(r.service_window_changes_at)}


def _window(w) -> dict:
    return {"id": w.id, "starts_at": _ts(w.starts_at), "ends_at": _ts(w.ends_at), "reason": w.reason}


def _item(i) -> dict:
    return {"request_id": i.request_id, "kind": i.kind, "lane": i.lane, "state": pb.RequestState.Name(i.state),
            "attempts": i.attempts, "next_attempt_at": _ts(i.next_attempt_at), "last_error": i.last_error,
            "created_at": _ts(i.created_at), "chamber": i.chamber_code, "station": i.station_id}


def _queue(ch, opts, timeout) -> dict:
    stub = apb_grpc.QueueAdminStub(ch)
    if opts.queue_command == "list":
        r = stub.ListQueue(apb.ListQueueRequest(limit=opts.limit), timeout=timeout)
        return {"items": [_item(i) for i in r.items], "count": len(r.items)}
    call = {"show": stub.ShowQueued, "retry": stub.RetryNow, "cancel": stub.Cancel}[opts.queue_command]
    return _item(call(apb.QueueItemRequest(request_id=opts.request_id), timeout=timeout))


def _parse_when(text: str) -> int:
    try:
        t = _dt.datetime.fromisoformat(text)
    except ValueError:
        raise SystemExit(f"cnsctl: {text!r} is not an ISO 8601 date-time, e.g. 2026-12-05T20:00:00+01:00") from None
    if t.tzinfo is None:
        raise SystemExit(f"cnsctl: {text!r} needs a UTC offset, e.g. 2026-12-05T20:00:00+01:00")
    try:
        return int(t.timestamp())
    except (OverflowError, ValueError, OSError):
        raise SystemExit(f"cnsctl: {text!r} is out of range") from None


def _maintenance(ch, opts, timeout) -> dict:
    stub = apb_grpc.QueueAdminStub(ch)
    if opts.maintenance_command == "add":
        w = stub.AddMaintenance(pb.MaintenanceWindow(id=opts.id or "", starts_at=_parse_when(opts.start),
                                                     ends_at=_parse_when(opts.end), reason=opts.reason),
                                timeout=timeout)
        return _window(w)
    if opts.maintenance_command in ("end", "remove"):
        call = stub.EndMaintenance if opts.maintenance_command == "end" else stub.RemoveMaintenance
        return _window(call(apb.MaintenanceWindowRequest(id=opts.window_id), timeout=timeout))
    return {"windows": [_window(w) for w in stub.ListMaintenance(apb.ListMaintenanceRequest(), timeout=timeout).windows]}


def _request_show(ch, opts, timeout) -> dict:
    r = pb_grpc.PersonalizerStub(ch).GetRequest(pb.GetRequestRequest(request_id=opts.request_id), timeout=timeout)
    out = {"request_id": r.request_id, "state": pb.RequestState.Name(r.state),
           "profile": pb.CAProfile.Name(r.profile), "created_at": _ts(r.created_at), "updated_at": _ts(r.updated_at)}
    if r.HasField("certificate"):
        out["issuer"] = r.certificate.issuer_dn
        out["serial"] = r.certificate.serial_hex
    if r.HasField("error"):
        out["error"] = f"{r.error.code} {r.error.field}: {r.error.message}"
    return out


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="cnsctl", description="Central IT client of the CNS personalizer")
    ap.add_argument("--config", required=True, help="station configuration TOML with an admin identity")
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    ap.add_argument("--dr", action="store_true", help="talk to the disaster-recovery endpoint")
    sub = ap.add_subparsers(dest="command", required=True)
    sub.add_parser("ca-status", help="state of the CA").set_defaults(func=_ca_status)
    req = sub.add_parser("request", help="issuance requests")
    rsub = req.add_subparsers(dest="request_command", required=True)
    show = rsub.add_parser("show", help="show one request")
    show.add_argument("request_id")
    show.set_defaults(func=_request_show)
    q = sub.add_parser("queue", help="the personalizer's outbox (admin)")
    qsub = q.add_subparsers(dest="queue_command", required=True)
    ql = qsub.add_parser("list", help="waiting and in-flight requests, priority lane first")
    ql.add_argument("--limit", type=int, default=100)
    ql.set_defaults(func=_queue)
    for name, text in (("show", "one request's outbox state"), ("retry", "make a waiting request due now"),
                       ("cancel", "cancel a request that never reached the CA")):
        c = qsub.add_parser(name, help=text)
        c.add_argument("request_id")
        c.set_defaults(func=_queue)
    m = sub.add_parser("maintenance", help="planned CA maintenance (admin)")
    msub = m.add_subparsers(dest="maintenance_command", required=True)
    ma = msub.add_parser("add", help="declare a window: nothing is sent to the CA during it")
    ma.add_argument("--start", required=True, help="ISO 8601 with offset")
    ma.add_argument("--end", required=True, help="ISO 8601 with offset")
    ma.add_argument("--reason", default="")
    ma.add_argument("--id", default="")
    ma.set_defaults(func=_maintenance)
    msub.add_parser("list", help="current and future windows").set_defaults(func=_maintenance)
    for name, text in (("end", "end an active window now (the CA is back early)"),
                       ("remove", "withdraw a window added with 'maintenance add'")):
        c = msub.add_parser(name, help=text)
        c.add_argument("window_id", help="the window's id (maintenance list)")
        c.set_defaults(func=_maintenance)
    return ap


def main(argv: list[str] | None = None) -> int:
    opts = build_parser().parse_args(argv)
    try:
        cfg = station_config.load(opts.config)
        with channel.secure_channel_sync(cfg, dr=opts.dr) as ch:
            result = opts.func(ch, opts, cfg.personalizer.timeout_seconds)
    except station_config.StationConfigError as exc:
        print(f"cnsctl: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except grpc.RpcError as exc:
        print(f"cnsctl: {exc.code().name}: {exc.details()}", file=sys.stderr)
        return EXIT_ERROR
    if opts.json:
        print(json.dumps(result, sort_keys=True))
    else:
        for k, v in result.items():
            if k == "items":
                for i in v:
                    print(f"{i['request_id']:38} {i['kind']:10} {i['lane']:9} {i['state']:24} "
                          f"attempts={i['attempts']} next={i['next_attempt_at']} {i['last_error']}")
                continue
            print(f"{k:28} {v}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
