"""``cnsctl``: central IT's client of the personalizer (admin mTLS identity).

Commands (more come with the fleet issues)::

    cnsctl --config admin.toml ca-status
    cnsctl --config admin.toml request show REQUEST_ID
    cnsctl --config admin.toml queue list|show ID|retry ID|cancel ID
    cnsctl --config admin.toml maintenance add --start ISO --end ISO [--reason TEXT] | list | end ID | remove ID
    cnsctl --config admin.toml cert find (--card SERIAL | --cf CODICE_FISCALE)
    cnsctl --config admin.toml station add --station-id ID --chamber RM [--valid-hours H] | station revoke
           --station-id ID --chamber RM [--reason R] | station list [--chamber RM]
    cnsctl --config admin.toml stock add --chamber RM --quantity N [--model M] [--note TEXT] | stock list [--chamber RM]
    cnsctl --config admin.toml cards load-batch --batch ID --chamber RM --model M --first S --last S --key-file F
           | cards list                  (personalizer.cnsctl_cards: blank cards' transport keys, issue 12)
    cnsctl --config ir.toml registration add --holder H.toml --form F.pdf [--expires-days N] | show ID | list [--all]
    cnsctl release init|add|sign|publish|rotate|list --repo DIR ...   (no --config: personalizer.cnsctl_release)

The config is a station configuration (station_config schema) with
``role = "admin"`` (``role = "ir"`` for a recognition officer's ``registration``, in
``personalizer.cnsctl_registration``). Output is human-readable, or one JSON object with --json
(accepted before or after the command). With a ``personalizer.dr`` endpoint in the config, a
primary that cannot be reached (no connection within ``READY_WAIT_S``) is left for the DR site, with
one line on stderr saying so; the command is sent to one site only, once (``maintenance add``,
``stock add`` and ``station add`` carry no request id, so a command is never repeated at the other
site after it may have reached the first); ``--dr`` goes to the DR site straight away. One top-level error handler: a bad
argument, a config error or a failed call prints one line (``cnsctl: ...``) and
exits 1 (2 for usage); a closed output pipe exits quietly.
Must not import agent or firmware_profiles.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import sys
import threading

os.environ.setdefault("GRPC_VERBOSITY", "ERROR")   # gRPC's own log lines are not for the operator
import grpc  # noqa: E402

import station_config
from station_config import channel
from proto.cns.v1 import admin_pb2 as apb, admin_pb2_grpc as apb_grpc
from proto.cns.v1 import enrollment_pb2 as epb, enrollment_pb2_grpc as epb_grpc
from proto.cns.v1 import personalizer_pb2 as pb, personalizer_pb2_grpc as pb_grpc
from personalizer import cnsctl_cards, cnsctl_fleet, cnsctl_registration, cnsctl_release
from cns_spec import reasons as spec_reasons

EXIT_ERROR = 1
EXIT_USAGE = 2
READY_WAIT_S = 5.0   # how long the primary may take to accept a connection before the DR site is used


class UsageError(Exception):
    """A command-line value that cannot be right (a date, a limit): one line, exit 2."""


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a number of at least 1, got {value}")
    return value


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
        raise UsageError(f"{text!r} is not a date and time; write ISO 8601 with a UTC offset, "
                         "e.g. 2026-12-05T20:00:00+01:00") from None
    if t.tzinfo is None:
        raise UsageError(f"{text!r} needs a UTC offset, e.g. 2026-12-05T20:00:00+01:00")
    try:
        return int(t.timestamp())
    except (OverflowError, ValueError, OSError):
        raise UsageError(f"{text!r} is out of range") from None


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


def _stock(ch, opts, timeout) -> dict:
    """The device stock ledger (monthly report): devices sent to a chamber, and each chamber's balance."""
    stub = apb_grpc.QueueAdminStub(ch)

    def entry(e):
        return {"seq": e.seq, "at": _ts(e.at), "chamber": e.chamber_code, "model": e.device_model or "any",
                "quantity": e.quantity, "by": e.actor, "note": e.note}

    if opts.stock_command == "add":
        if opts.quantity == 0:
            raise UsageError("--quantity must not be 0: give the devices sent (or, negative, taken back)")
        return entry(stub.AddStock(apb.AddStockRequest(chamber_code=opts.chamber, quantity=opts.quantity,
                                                       note=opts.note, device_model=opts.model), timeout=timeout))
    r = stub.ListStock(apb.ListStockRequest(chamber_code=opts.chamber or ""), timeout=timeout)
    return {"balances": [{"chamber": b.chamber_code, "model": b.device_model or "any", "sent": b.sent,
                          "used": b.used, "left": b.left} for b in r.balances],
            "entries": [entry(e) for e in r.entries]}


def _station_row(r) -> dict:
    return {"station": r.station_id, "chamber": r.chamber_code, "state": r.state, "updated_at": _ts(r.updated_at),
            "serial": r.serial_hex or "-", "not_after": _ts(r.not_after), "revoked_certificates": r.revoked_certificates}


def _station(ch, opts, timeout) -> dict:
    stub = epb_grpc.StationAdminStub(ch)
    if opts.station_command == "add":
        r = stub.AddStation(epb.AddStationRequest(station_id=opts.station_id, chamber_code=opts.chamber,
                                                  valid_hours=opts.valid_hours or 0), timeout=timeout)
        return {"station": opts.station_id, "chamber": opts.chamber, "code": r.code_bundle,
                "expires_at": _ts(r.expires_at),
                "next": f"on the workstation: cns-agent enroll --code {r.code_bundle} --personalizer HOST:PORT"}
    if opts.station_command == "revoke":
        return _station_row(stub.RevokeStation(epb.RevokeStationRequest(
            station_id=opts.station_id, chamber_code=opts.chamber, reason=opts.reason), timeout=timeout))
    r = stub.ListStations(epb.ListStationsRequest(chamber_code=opts.chamber or ""), timeout=timeout)
    return {"stations": [_station_row(x) for x in r.stations]}


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


def _found(f) -> dict:
    st = f.status
    return {"serial": st.certificate.serial_hex, "issuer": st.certificate.issuer_dn,
            "status": pb.CertificateStatus.Name(st.status).removeprefix("CERTIFICATE_STATUS_").lower(),
            "revocation_reason": st.revocation_reason, "revoked_at": _ts(st.revoked_at),
            "profile": pb.CAProfile.Name(f.profile), "card": f.card_id, "codice_fiscale": f.codice_fiscale,
            "chamber": f.chamber_code, "subject": f.subject, "not_before": _ts(st.not_before),
            "not_after": _ts(st.not_after), "request_id": st.request_id}


def _cert_find(ch, opts, timeout) -> dict:
    r = pb_grpc.PersonalizerStub(ch).FindCertificates(
        pb.FindCertificatesRequest(card_id=opts.card or "", codice_fiscale=opts.cf or ""), timeout=timeout)
    certs = [_found(f) for f in r.certificates]
    return {"certificates": certs, "count": len(certs),
            "active": sum(1 for c in certs if c["status"] == "active")}


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="cnsctl", description="Central IT client of the CNS personalizer")
    ap.add_argument("--config", help="station configuration TOML with an admin identity (all but 'release')")
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
    ql.add_argument("--limit", type=positive_int, default=100)
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
    st = sub.add_parser("stock", help="devices sent to each chamber (the monthly report's stock, admin)")
    stsub = st.add_subparsers(dest="stock_command", required=True)
    sa = stsub.add_parser("add", help="record devices sent to a chamber (negative: taken back)")
    sa.add_argument("--chamber", required=True, help="chamber code, e.g. RM")
    sa.add_argument("--quantity", required=True, type=int, help="devices sent (negative: taken back)")
    sa.add_argument("--model", default="", help="the device type (card model as stations report it); default any")
    sa.add_argument("--note", default="", help="delivery note or shipment id")
    sa.set_defaults(func=_stock)
    sl = stsub.add_parser("list", help="the ledger and each chamber's balance (sent, used, left)")
    sl.add_argument("--chamber", default="", help="only this chamber")
    sl.set_defaults(func=_stock)
    sn = sub.add_parser("station", help="enroll and revoke workstations (admin)")
    snsub = sn.add_subparsers(dest="station_command", required=True)
    for name, text in (("add", "issue a one-time enrollment code for a station"),
                       ("revoke", "revoke every certificate of a station: it is refused from now on")):
        x = snsub.add_parser(name, help=text)
        x.add_argument("--station-id", required=True)
        x.add_argument("--chamber", required=True, help="chamber code, e.g. RM")
        if name == "add":
            x.add_argument("--valid-hours", type=positive_int, default=None, help="how long the code may be used")
        else:
            x.add_argument("--reason", default=spec_reasons.CESSATION_OF_OPERATION,
                           help=", ".join(spec_reasons.REVOCATION_REASONS))
        x.set_defaults(func=_station)
    snl = snsub.add_parser("list", help="stations, their state and newest certificate")
    snl.add_argument("--chamber", default="", help="only this chamber")
    snl.set_defaults(func=_station)
    c = sub.add_parser("cert", help="certificates issued through the personalizer")
    csub = c.add_subparsers(dest="cert_command", required=True)
    cf = csub.add_parser("find", help="every certificate of a card or a holder (e.g. a lost card), oldest first")
    who = cf.add_mutually_exclusive_group(required=True)
    who.add_argument("--card", metavar="SERIAL", help="the card's serial (EF_IDCarta)")
    who.add_argument("--cf", metavar="CODICE_FISCALE", help="the holder's codice fiscale")
    cf.set_defaults(func=_cert_find)
    cnsctl_registration.add_parser(sub, positive_int)
    cnsctl_release.add_parser(sub)
    cnsctl_fleet.add_parser(sub, positive_int)
    cnsctl_cards.add_parser(sub)
    return ap


def _accept_json_after_the_command(parser: argparse.ArgumentParser) -> None:
    """Every command also takes ``--json`` after its name (``cnsctl queue list --json``)."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in action.choices.values():
                _accept_json_after_the_command(child)
            return
    if not any("--json" in a.option_strings for a in parser._actions):
        parser.add_argument("--json", action="store_true", default=argparse.SUPPRESS,
                            help="print one JSON object")


def _call_failed(exc: grpc.RpcError, cfg, dr: bool) -> str:
    code = exc.code()
    if code == grpc.StatusCode.UNIMPLEMENTED:
        return ("the personalizer does not offer this command (station enrollment needs [enrollment] enabled = true "
                "in its personalizer.toml)")
    return channel.connection_problem(code, exc.details(), cfg, dr=dr) or \
        f"the personalizer refused: {code.name}: {exc.details() or 'no detail'}"


def _print(result: dict, as_json: bool) -> None:
    if as_json:
        print(json.dumps(result, sort_keys=True))
        return
    for k, v in result.items():
        if k == "certificates":
            for c in v:
                status = c["status"] + (f" ({c['revocation_reason']})" if c["revocation_reason"] else "")
                print(f"{c['serial']:<40} {status:<32} {c['profile']:<32} card {c['card'] or '-':<16} "
                      f"until {c['not_after'][:10]}  {c['subject']}")
            continue
        if k == "stations":
            for x in v:
                print(f"{x['chamber']:5} {x['station']:32} {x['state']:9} {x['serial']:40} until {x['not_after'][:10]}"
                      f"  revoked={x['revoked_certificates']}")
            continue
        if k == "items":
            for i in v:
                print(f"{i['request_id']:38} {i['kind']:10} {i['lane']:9} {i['state']:24} "
                      f"attempts={i['attempts']} next={i['next_attempt_at']} {i['last_error']}")
            continue
        if isinstance(v, list) and all(isinstance(x, dict) for x in v):
            print(f"{k:28} {len(v)}")
            for x in v:
                print("  " + "  ".join(f"{a}={b}" for a, b in x.items()))
            continue
        if isinstance(v, dict) and all(isinstance(x, dict) for x in v.values()):
            print(f"{k:28}")
            for name, x in v.items():
                print(f"  {name:26} " + "  ".join(f"{a}={b}" for a, b in x.items()))
            continue
        if isinstance(v, dict):
            v = "  ".join(f"{a}={b}" for a, b in v.items()) or "-"
        elif isinstance(v, list):
            v = ", ".join(map(str, v)) or "-"
        print(f"{k:28} {v}")


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    _accept_json_after_the_command(parser)
    opts = parser.parse_args(argv)
    cfg = None
    if getattr(opts, "offline", False):                # cnsctl release: a local repository, no personalizer call
        try:
            _print(cnsctl_release.run(opts), opts.json)
        except cnsctl_release.ERRORS as exc:
            print(f"cnsctl: {exc}", file=sys.stderr)
            return EXIT_ERROR
        except OSError as exc:
            print(f"cnsctl: {exc.filename or ''}: {exc.strerror or exc}", file=sys.stderr)
            return EXIT_ERROR
        return 0
    if not opts.config:
        parser.error("--config is required for this command")
    try:
        cfg = station_config.load(opts.config)
        if opts.dr and not cfg.personalizer.dr:
            raise UsageError(f"--dr: {cfg.source} has no personalizer.dr endpoint; add one or leave out --dr")
        ch, opts.dr = _open_channel(cfg, opts.dr)
        with ch:
            result = opts.func(ch, opts, cfg.personalizer.timeout_seconds)
        _print(result, opts.json)
        sys.stdout.flush()
    except UsageError as exc:
        print(f"cnsctl: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except (station_config.StationConfigError, cnsctl_registration.InputError) as exc:
        print(f"cnsctl: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except grpc.RpcError as exc:
        print(f"cnsctl: {_call_failed(exc, cfg, opts.dr)}", file=sys.stderr)
        return EXIT_ERROR
    except OSError as exc:   # a key or trust anchor unreadable after load
        if isinstance(exc, BrokenPipeError):
            return _quiet_after_closed_pipe()
        print(f"cnsctl: {exc.filename or ''}: {exc.strerror or exc}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        return 130
    return 0


def _connects(ch, timeout: float) -> bool:
    """True when the channel reaches READY (TCP + TLS with mTLS done) within ``timeout``; False on a
    connection failure or when nothing answers in time."""
    done, ready = threading.Event(), []

    def seen(state):
        if state in (grpc.ChannelConnectivity.READY, grpc.ChannelConnectivity.TRANSIENT_FAILURE,
                     grpc.ChannelConnectivity.SHUTDOWN):
            ready.append(state == grpc.ChannelConnectivity.READY)
            done.set()
    ch.subscribe(seen, try_to_connect=True)
    done.wait(timeout)
    ch.unsubscribe(seen)
    return bool(ready and ready[0])


def _open_channel(cfg, dr: bool):
    """(channel, at_dr): the primary, or the DR site when the primary cannot be reached and the DR
    site can; when neither can, the primary (its error is the one reported)."""
    ch = channel.secure_channel_sync(cfg, dr=dr)
    if dr or not cfg.personalizer.dr or _connects(ch, min(READY_WAIT_S, cfg.personalizer.timeout_seconds)):
        return ch, dr
    other = channel.secure_channel_sync(cfg, dr=True)
    if not _connects(other, min(READY_WAIT_S, cfg.personalizer.timeout_seconds)):
        other.close()
        return ch, False
    ch.close()
    print(f"cnsctl: the primary personalizer at {cfg.personalizer.primary} cannot be reached; "
          f"using the DR site at {cfg.personalizer.dr} (personalizer.dr)", file=sys.stderr)
    return other, True


def _quiet_after_closed_pipe() -> int:
    """The reader of our output went away (``cnsctl ... | head``): exit without a traceback."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    return 0


if __name__ == "__main__":
    sys.exit(main())
