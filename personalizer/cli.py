"""``cns-personalizer``: ``serve --config FILE``, ``init DIR``, ``audit [--json] --config FILE``,
``revoke-client --config FILE CERT.pem|--serial HEX`` (a station, tool or admin certificate into the
client CRL that the running daemon rereads), ``report archive --date D`` (the daily archive) and
``report monthly --month YYYY-MM`` (the monthly report, JSON and PDF): both read the store read-only
and write one bundle atomically (``personalizer.reports``). ``backup --out DIR`` / ``restore BACKUP``: the
SQLite store and ``ca.db``, online, checked against a manifest (``personalizer.continuity.backup``).
``card-keys status|init|import --config FILE``: the card administration master keys in the
``[card_admin]`` token, generated or unwrapped inside it (``personalizer.cardadmin.ceremony``).

``audit`` reads the append-only audit table straight from the store (no
daemon needed; a read-only connection, so an auditor needs only read access to
the database), filtered by operator, station, card, codice fiscale and time.

``--log-format json`` (or ``CNS_LOG_FORMAT=json``) writes one JSON object per log line
(``cns_spec.logs``). One top-level error handler turns our errors (and an unwritable path) into one
line on stderr and exit 1; bad arguments exit 2; a closed output pipe
(``audit | head``) exits quietly. ``--json`` is accepted before or after the
command. Must not import agent or firmware_profiles.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

from cns_spec import logs
from personalizer import config, deploy

from personalizer.edge import tls_clients
from personalizer.errors import PersonalizerError

EXIT_ERROR = 1
EXIT_USAGE = 2


def _serve(opts) -> int:
    from personalizer import guard, server   # grpc is imported only for serving

    cfg = config.load(opts.config)
    for handler in logging.getLogger().handlers:   # a flood of identical errors must not flood the log
        handler.addFilter(guard.RepeatFilter())

    if opts.helper:   # helper process I of a daemon with [server] processes > 1 (personalizer.helpers)
        import dataclasses
        import stat
        if not stat.S_ISFIFO(os.fstat(0).st_mode) or not 0 < opts.port < 65536:
            raise config.ConfigError(cfg.source, "server.processes",
                                     "serve --helper is started by the daemon itself (set [server] processes)")
        host = cfg.server.listen.rpartition(":")[0]
        cfg = dataclasses.replace(cfg, server=dataclasses.replace(cfg.server, listen=f"{host}:{opts.port}"))

    def ready(port: int) -> None:
        if opts.helper:
            print(f"cns-personalizer: helper {opts.helper} listening on port {port}", flush=True)
        elif opts.json:
            print(json.dumps({"listening": cfg.server.listen, "port": port}), flush=True)
        else:
            print(f"cns-personalizer: listening on port {port}", flush=True)

    server.run(cfg, ready=ready, helper=opts.helper)
    return 0


def _when(value: str | None, option: str) -> float | None:
    """An ISO 8601 date or date-time (UTC unless it says otherwise) as a timestamp."""
    import datetime as _dt

    if value is None:
        return None
    try:
        when = _dt.datetime.fromisoformat(value)
    except ValueError:
        raise config.ConfigError("audit", option, f"{value!r} is not a date; write e.g. 2026-12-31 or "
                                 "2026-12-31T08:30:00+01:00") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=_dt.timezone.utc)
    return when.timestamp()


def _audit(opts) -> int:
    import datetime as _dt
    import json

    from personalizer.store import AuditFilter, read_audit

    if (opts.config is None) == (opts.database is None):
        raise config.ConfigError("audit", "arguments", "give either --config FILE or --database FILE")
    if opts.limit <= 0:
        raise config.ConfigError("audit", "--limit", f"must be at least 1, got {opts.limit}")
    if opts.after < 0:
        raise config.ConfigError("audit", "--after", f"is a sequence number (0 or more), got {opts.after}")
    if opts.config is not None:
        cfg = config.load(opts.config)
        database, source, key = cfg.store.database, cfg.source, "store.data_dir"
    else:
        database, source, key = Path(opts.database), opts.database, "--database"
    if not database.exists():
        raise config.ConfigError(source, key, f"no request store at {database}")
    f = AuditFilter(after_seq=opts.after, operator_id=opts.operator, station_id=opts.station, card_id=opts.card,
                    holder_cf=opts.cf.upper() if opts.cf else None, since=_when(opts.since, "--since"),
                    until=_when(opts.until, "--until"), limit=opts.limit)
    for e in read_audit(database, f):
        when = _dt.datetime.fromtimestamp(e.at, _dt.timezone.utc).isoformat(timespec="seconds")
        if opts.json:
            print(json.dumps({"seq": e.seq, "at": when, "actor": e.actor, "station_id": e.station_id,
                              "operator_id": e.operator_id, "operation": e.operation, "request_id": e.request_id,
                              "target": e.target, "card_id": e.card_id, "holder_cf": e.holder_cf,
                              "result": e.result, "detail": e.detail}, sort_keys=True))
        else:
            print(f"{e.seq:6} {when} {e.actor:40} {e.station_id or '-':16} {e.operator_id or '-':12} "
                  f"{e.operation:11} {e.request_id or '-':36} {e.result} {e.detail}")
    return 0


def _report_sources(opts):
    """(database, output folder, time zone) from --config and/or --database, --out, --timezone."""
    if (opts.config is None) == (opts.database is None):
        raise config.ConfigError("report", "arguments", "give either --config FILE or --database FILE")
    out, tz = None, opts.timezone
    if opts.config is not None:
        cfg = config.load(opts.config)
        database, out, tz = cfg.store.database, cfg.reports.dir, tz or cfg.reports.timezone
    else:
        database = Path(opts.database)
    if opts.out:
        out = Path(opts.out)
    if out is None:
        raise config.ConfigError("report", "--out", "give the folder to write into (or --config FILE with [reports] dir)")
    return database, out, tz or "Europe/Rome"


def _report_archive(opts) -> int:
    import datetime as _dt

    from personalizer.reports import archive, bundle

    database, out, tz = _report_sources(opts)
    if opts.date is None:   # the previous day, in the chambers' time zone
        day = (_dt.datetime.now(bundle.zone(tz)) - _dt.timedelta(days=1)).date()
    else:
        day = bundle.parse_day(opts.date)
    path, data = archive.write_archive(database, out, day, tz_name=tz, allow_empty=opts.allow_empty,
                                       replace=opts.replace)
    if opts.json:
        print(json.dumps({"archive": str(path), "date": data["date"], **data["counts"]}))
    else:
        c = data["counts"]
        print(f"cns-personalizer: archive of {data['date']} written to {path} ({c['operations']} operations, "
              f"{c['suspended']} suspended and {c['revoked']} revoked certificates)")
    return 0


def _report_monthly(opts) -> int:
    from personalizer.reports import bundle, monthly

    database, out, tz = _report_sources(opts)
    year, month = bundle.parse_month(opts.month)
    path, data = monthly.write_monthly(database, out, year, month, tz_name=tz, pdf=not opts.no_pdf,
                                       allow_empty=opts.allow_empty, replace=opts.replace)
    if opts.json:
        print(json.dumps({"report": str(path), "month": data["month"], "partial": data["partial"]}))
    else:
        note = " (month not over: figures so far)" if data["partial"] else ""
        print(f"cns-personalizer: monthly report of {data['month']} written to {path}{note}")
    return 0


def _revoke_client(opts) -> int:
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    from personalizer.edge import identity

    cfg = config.load(opts.config)
    crl = cfg.server.client_crl
    if crl is None:
        raise config.ConfigError(cfg.source, "server.client_crl",
                                 'not set; add client_crl = "tls/client-crl.pem" to [server] and restart the daemon')
    if (opts.cert is None) == (opts.serial is None):
        raise config.ConfigError("revoke-client", "arguments", "give either a certificate file or --serial HEX")
    who = ""
    if opts.cert is not None:
        try:
            leaf = x509.load_pem_x509_certificate(Path(opts.cert).read_bytes())
        except OSError as exc:
            raise config.ConfigError(opts.cert, "-", f"cannot read: {exc.strerror}") from None
        except ValueError:
            raise config.ConfigError(opts.cert, "-", "not a PEM certificate") from None
        serial = leaf.serial_number
        try:
            who = identity.identity_from_certificate(leaf).uri
        except PersonalizerError:
            who = "no identity URI"
    else:
        try:
            serial = int(opts.serial.replace(":", ""), 16)
        except ValueError:
            raise config.ConfigError("revoke-client", "--serial", f"{opts.serial!r} is not a hexadecimal serial") from None
    key_path = Path(opts.tls_ca_key) if opts.tls_ca_key else cfg.server.client_trust_anchors.parent / deploy.TLS_CA_KEY
    try:
        ca_cert = x509.load_pem_x509_certificate(cfg.server.client_trust_anchors.read_bytes())
        ca_key = serialization.load_pem_private_key(key_path.read_bytes(), None)
    except OSError as exc:
        raise config.ConfigError(key_path, "-", f"cannot read the TLS CA key: {exc.strerror}; give --tls-ca-key") from None
    except (ValueError, TypeError):
        raise config.ConfigError(key_path, "-", "not an unencrypted PEM private key of the TLS CA") from None
    try:
        added = tls_clients.revoke(crl, ca_cert, ca_key, serial, opts.reason)
    except ValueError as exc:
        raise config.ConfigError(crl, "server.client_crl", str(exc)) from None
    label = f"{serial:X}" + (f" ({who})" if who else "")
    if added:
        print(f"cns-personalizer: revoked client certificate {label} in {crl}; the running daemon refuses it "
              f"within {tls_clients.RELOAD_CHECK_SECONDS:.0f} s")
    else:
        print(f"cns-personalizer: client certificate {label} is already revoked in {crl}")
    return 0


def _backup_targets(opts):
    from personalizer.continuity import backup

    if (opts.config is None) == (opts.database is None):
        raise config.ConfigError(opts.command, "arguments", "give either --config FILE or --database FILE")
    if opts.config is not None:
        return backup.targets_from_config(config.load(opts.config))
    return backup.targets_of(Path(opts.database), Path(opts.ca_dir) if opts.ca_dir else None)


def _backup(opts) -> int:
    from personalizer.continuity import backup

    folder = backup.backup(_backup_targets(opts), Path(opts.out))
    files = backup.read_manifest(folder)["files"]
    if opts.json:
        print(json.dumps({"backup": str(folder), "files": files}))
    else:
        print(f"cns-personalizer: backup written to {folder} ({', '.join(sorted(files))})")
    return 0


def _restore(opts) -> int:
    from personalizer.continuity import backup

    manifest = backup.restore(Path(opts.backup), _backup_targets(opts))
    if opts.json:
        print(json.dumps({"restored": str(opts.backup), "created_at": manifest["created_at"],
                          "files": manifest["files"]}))
    else:
        print(f"cns-personalizer: restored the backup of {manifest['created_at']} "
              f"({', '.join(sorted(manifest['files']))}); start the daemon")
    return 0


def _count(minimum: int):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"expected a number of at least {minimum}, got {value}")
        return value
    return parse


def _init(opts) -> int:
    dep = deploy.init_deployment(Path(opts.dir), chamber=opts.chamber, station_id=opts.station_id,
                                 listen=opts.listen, ca_key_bits=opts.ca_key_bits, station_owner=opts.station_owner,
                                 demo_station=not opts.no_demo_station)
    if opts.json:
        print(json.dumps({"root": str(dep.root), "server_config": str(dep.server_config),
                          "station_config": str(dep.station_config or ""), "admin_config": str(dep.admin_config),
                          "ir_config": str(dep.ir_config),
                          "root_cert": str(dep.root_cert), "issuing_cert": str(dep.issuing_cert),
                          "tls_ca": str(dep.tls_ca), "listen": dep.listen, "endpoint": dep.endpoint}))
        return 0
    owner = f"   (owned by {opts.station_owner})" if opts.station_owner else ""
    print(f"""cns-personalizer: test deployment created in {dep.root}
  server config      {dep.server_config}
  station config     {dep.station_config or '(none: enroll stations with cnsctl station add)'}{owner}   (cns-agent run --config)
  admin config       {dep.admin_config}   (for cnsctl --config)
  IR config          {dep.ir_config}   (recognition officer: cnsctl --config ... registration add)
  CNS root CA        {dep.root_cert}
  CNS issuing CA     {dep.issuing_cert}
  service TLS CA     {dep.tls_ca}
  listen             {dep.listen}   (stations connect to {dep.endpoint})
Run:  cns-personalizer serve --config {dep.server_config}
      cnsctl --config {dep.admin_config} ca-status""")
    if dep.endpoint.endswith(":0"):
        print("Port 0: serve picks a free port and prints it; write that port into personalizer.primary of "
              f"{dep.station_config} and {dep.admin_config}")
    return 0


def _card_keys(opts) -> int:
    from personalizer.cardadmin import ceremony

    cfg = Path(opts.config)
    if opts.card_keys == "status":
        rows = ceremony.status(cfg)
    elif opts.card_keys == "init":
        if bool(opts.all) == bool(opts.model):
            raise config.ConfigError("card-keys init", "arguments", "give --model MODEL (repeatable) or --all")
        rows = ceremony.init(cfg, ceremony._models() if opts.all else opts.model)
    else:
        rows = [ceremony.import_wrapped(cfg, opts.model, Path(opts.wrapped), opts.unwrapping_key)]
    if opts.json:
        print(json.dumps({"master_keys": rows}))
    else:
        for row in rows:
            print(ceremony.describe(row))
    return 0


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="cns-personalizer", description="Central CNS personalizer daemon")
    ap.add_argument("--log-level", default="INFO", type=str.upper,
                    choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    ap.add_argument("--log-format", choices=logs.FORMATS, default=os.environ.get("CNS_LOG_FORMAT", "text"),
                    help="log lines as text or one JSON object per line (default: $CNS_LOG_FORMAT, else text)")
    ap.add_argument("--json", action="store_true", dest="json_first", help="JSON output (also after the command)")
    sub = ap.add_subparsers(dest="command", required=True)
    s = sub.add_parser("serve", help="run the daemon in the foreground")
    s.add_argument("--config", required=True, help="personalizer TOML file")
    s.add_argument("--helper", type=int, default=0, help=argparse.SUPPRESS)   # started by the daemon itself
    s.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    s.set_defaults(func=_serve)
    a = sub.add_parser("audit", help="print the audit trail (who, from which station, when, what, result)")
    a.add_argument("--config", help="personalizer TOML file")
    a.add_argument("--database", help="or the request store itself (data/requests.sqlite), read-only")
    a.add_argument("--json", action="store_true", help="one JSON object per line")
    a.add_argument("--after", type=_count(0), default=0, help="only entries after this sequence number")
    a.add_argument("--limit", type=_count(1), default=100_000)
    a.add_argument("--operator", help="only this operator id")
    a.add_argument("--station", help="only this station id")
    a.add_argument("--card", help="only what concerns this card (its requests and certificates)")
    a.add_argument("--cf", help="only what concerns this holder (codice fiscale)")
    a.add_argument("--since", help="from this date or date-time (ISO 8601, UTC unless given)")
    a.add_argument("--until", help="before this date or date-time")
    a.set_defaults(func=_audit)
    rc = sub.add_parser("revoke-client", help="revoke a station, tool or admin TLS certificate (client CRL)")
    rc.add_argument("--config", required=True, help="personalizer TOML file")
    rc.add_argument("cert", nargs="?", help="the client certificate (PEM) to revoke")
    rc.add_argument("--serial", help="or its serial number in hexadecimal, when the file is lost")
    rc.add_argument("--reason", default="unspecified", choices=sorted(tls_clients.REASONS))
    rc.add_argument("--tls-ca-key", help="the TLS CA's private key (default: tls-ca.key.pem beside the anchors)")
    rc.set_defaults(func=_revoke_client)
    rp = sub.add_parser("report", help="write the daily archive or the monthly report (tender §5.1.8, §6.2)")
    rsub = rp.add_subparsers(dest="report", required=True)
    ra = rsub.add_parser("archive", help="the archive of one day: CSV, JSON, schema, SHA256SUMS")
    ra.add_argument("--date", help="the day, YYYY-MM-DD (default: yesterday)")
    rm = rsub.add_parser("monthly", help="the monthly report: JSON and PDF with charts")
    rm.add_argument("--month", required=True, help="the month, YYYY-MM")
    rm.add_argument("--no-pdf", action="store_true", help="JSON only")
    for r in (ra, rm):
        r.add_argument("--config", help="personalizer TOML file (store, [reports] dir and timezone)")
        r.add_argument("--database", help="or the request store itself (data/requests.sqlite), read-only")
        r.add_argument("--out", help="folder to write into (default: [reports] dir)")
        r.add_argument("--timezone", help="the chambers' time zone (default: [reports] timezone, Europe/Rome)")
        r.add_argument("--allow-empty", action="store_true", help="write it even when nothing happened")
        r.add_argument("--replace", action="store_true", help="write it again over an existing one")
        r.add_argument("--json", action="store_true", default=argparse.SUPPRESS, help="print the result as JSON")
    ra.set_defaults(func=_report_archive)
    rm.set_defaults(func=_report_monthly)
    b = sub.add_parser("backup", help="online backup of the SQLite request store and ca.db (SQLite backup API)")
    b.add_argument("--out", required=True, help="folder to write the cns-backup-<time> folder into")
    rs = sub.add_parser("restore", help="restore a backup into a store that does not exist yet")
    rs.add_argument("backup", help="the cns-backup-<time> folder")
    for x in (b, rs):
        x.add_argument("--config", help="personalizer TOML file (store.data_dir, the embedded CA's folder)")
        x.add_argument("--database", help="or the request store itself (data/requests.sqlite)")
        x.add_argument("--ca-dir", help="with --database: the embedded CA's folder holding ca.db")
        x.add_argument("--json", action="store_true", default=argparse.SUPPRESS, help="print the result as JSON")
    b.set_defaults(func=_backup)
    rs.set_defaults(func=_restore)
    ck = sub.add_parser("card-keys", help="the card administration master keys in the [card_admin] token")
    cks = ck.add_subparsers(dest="card_keys", required=True)
    ck_status = cks.add_parser("status", help="per card model: is its master key there, and how is it protected")
    ck_init = cks.add_parser("init", help="generate a model's master key inside the token (never extractable)")
    ck_init.add_argument("--model", action="append", help="card model id (repeatable)")
    ck_init.add_argument("--all", action="store_true", help="every known card model")
    ck_import = cks.add_parser("import", help="unwrap a delivered master key inside the token")
    ck_import.add_argument("--model", required=True, help="card model id")
    ck_import.add_argument("--wrapped", required=True,
                           help="file with the master key wrapped under the token's key-encryption key (RFC 3394, hex)")
    ck_import.add_argument("--unwrapping-key", required=True, help="label of that key-encryption key in the token")
    for x in (ck_status, ck_init, ck_import):
        x.add_argument("--config", required=True, help="personalizer TOML file (its [card_admin] section)")
        x.add_argument("--json", action="store_true", default=argparse.SUPPRESS, help="print the result as JSON")
        x.set_defaults(func=_card_keys)
    i = sub.add_parser("init", help="create a test deployment (CA, certificates, configs)")
    i.add_argument("dir")
    i.add_argument("--chamber", default="RM", help="chamber code of the station (default RM)")
    i.add_argument("--station-id", default="RM-STATION-01")
    i.add_argument("--listen", default=deploy.DEFAULT_LISTEN)
    i.add_argument("--ca-key-bits", type=int, default=deploy.DEFAULT_CA_KEY_BITS,
                   help=f"RSA size of the CNS CA keys, {deploy.CA_KEY_BITS_RANGE[0]}-{deploy.CA_KEY_BITS_RANGE[1]}")
    i.add_argument("--station-owner", metavar="USER", default=None,
                   help="hand the station folder to this operator user, who runs `cns-agent run` (needs root)")
    i.add_argument("--no-demo-station", action="store_true",
                   help="write no station key: stations enroll (cnsctl station add, cns-agent enroll)")
    i.add_argument("--json", action="store_true", help="print the created paths as one JSON object")
    i.set_defaults(func=_init)
    s.add_argument("--json", action="store_true", default=argparse.SUPPRESS,
                   help='print {"listening": ..., "port": N} once serving')
    return ap


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    opts = parser.parse_args(argv)
    if opts.log_format not in logs.FORMATS:   # from $CNS_LOG_FORMAT: argparse checks only what was typed
        parser.error(f"CNS_LOG_FORMAT must be one of {', '.join(logs.FORMATS)}; got {opts.log_format!r}")
    opts.json = getattr(opts, "json", False) or opts.json_first
    logging.basicConfig(level=opts.log_level, format=logs.TEXT_FORMAT)
    # aiosqlite logs two DEBUG lines per statement: with several server processes each polls its store every
    # 50 ms (fleet wake-ups, maintenance windows), which drowned the daemon's own DEBUG lines
    logging.getLogger("aiosqlite").setLevel(max(logging.INFO, logging.getLogger().level))
    logs.use(opts.log_format)
    try:
        rc = opts.func(opts)
        sys.stdout.flush()
        return rc
    except BrokenPipeError:            # the reader of our output went away (`audit | head`)
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except (PersonalizerError, FileExistsError) as exc:
        print(f"cns-personalizer: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except OSError as exc:
        where = f"{exc.filename}: " if exc.filename else ""
        print(f"cns-personalizer {opts.command}: {where}{exc.strerror or exc}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        return 130
    except Exception as exc:   # e.g. the daemon could not start serving: say so in one line, exit non-zero
        logging.getLogger(__name__).debug("failed", exc_info=True)
        print(f"cns-personalizer: {opts.command} failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        return EXIT_ERROR


if __name__ == "__main__":
    sys.exit(main())
