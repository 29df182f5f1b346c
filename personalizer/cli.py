"""``cns-personalizer``: ``serve --config FILE``, ``init DIR``, ``audit [--json] --config FILE``.

``audit`` reads the append-only audit table straight from the store (no
daemon needed; the database is opened read-only alongside a running one).

One top-level error handler turns our errors (and an unwritable path) into one
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

from personalizer import config, deploy
from personalizer.errors import PersonalizerError

EXIT_ERROR = 1
EXIT_USAGE = 2


def _serve(opts) -> int:
    from personalizer import server   # grpc is imported only for serving

    cfg = config.load(opts.config)

    def ready(port: int) -> None:
        if opts.json:
            print(json.dumps({"listening": cfg.server.listen, "port": port}), flush=True)
        else:
            print(f"cns-personalizer: listening on port {port}", flush=True)

    server.run(cfg, ready=ready)
    return 0


def _audit(opts) -> int:
    import asyncio
    import datetime as _dt
    import json

    from personalizer.store import RequestStore

    cfg = config.load(opts.config)
    if not cfg.store.database.exists():
        raise config.ConfigError(cfg.source, "store.data_dir", f"no request store at {cfg.store.database}")

    async def read():
        store = await RequestStore.open(cfg.store.database, synchronous=cfg.store.synchronous)
        try:
            return await store.list_audit(opts.after, opts.limit)
        finally:
            await store.close()

    for e in asyncio.run(read()):
        when = _dt.datetime.fromtimestamp(e.at, _dt.timezone.utc).isoformat(timespec="seconds")
        if opts.json:
            print(json.dumps({"seq": e.seq, "at": when, "actor": e.actor, "station_id": e.station_id,
                              "operation": e.operation, "request_id": e.request_id, "target": e.target,
                              "result": e.result, "detail": e.detail}, sort_keys=True))
        else:
            print(f"{e.seq:6} {when} {e.actor:40} {e.station_id or '-':16} {e.operation:11} "
                  f"{e.request_id or '-':36} {e.result} {e.detail}")
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
                                 listen=opts.listen, ca_key_bits=opts.ca_key_bits, station_owner=opts.station_owner)
    if opts.json:
        print(json.dumps({"root": str(dep.root), "server_config": str(dep.server_config),
                          "station_config": str(dep.station_config), "admin_config": str(dep.admin_config),
                          "root_cert": str(dep.root_cert), "issuing_cert": str(dep.issuing_cert),
                          "tls_ca": str(dep.tls_ca), "listen": dep.listen, "endpoint": dep.endpoint}))
        return 0
    owner = f"   (owned by {opts.station_owner})" if opts.station_owner else ""
    print(f"""cns-personalizer: test deployment created in {dep.root}
  server config      {dep.server_config}
  station config     {dep.station_config}{owner}   (cns-agent run --config)
  admin config       {dep.admin_config}   (for cnsctl --config)
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


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="cns-personalizer", description="Central CNS personalizer daemon")
    ap.add_argument("--log-level", default="INFO", type=str.upper,
                    choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    ap.add_argument("--json", action="store_true", dest="json_first", help="JSON output (also after the command)")
    sub = ap.add_subparsers(dest="command", required=True)
    s = sub.add_parser("serve", help="run the daemon in the foreground")
    s.add_argument("--config", required=True, help="personalizer TOML file")
    s.set_defaults(func=_serve)
    a = sub.add_parser("audit", help="print the audit trail (who, from which station, when, what, result)")
    a.add_argument("--config", required=True, help="personalizer TOML file")
    a.add_argument("--json", action="store_true", help="one JSON object per line")
    a.add_argument("--after", type=_count(0), default=0, help="only entries after this sequence number")
    a.add_argument("--limit", type=_count(1), default=100_000)
    a.set_defaults(func=_audit)
    i = sub.add_parser("init", help="create a test deployment (CA, certificates, configs)")
    i.add_argument("dir")
    i.add_argument("--chamber", default="RM", help="chamber code of the station (default RM)")
    i.add_argument("--station-id", default="RM-STATION-01")
    i.add_argument("--listen", default=deploy.DEFAULT_LISTEN)
    i.add_argument("--ca-key-bits", type=int, default=deploy.DEFAULT_CA_KEY_BITS,
                   help=f"RSA size of the CNS CA keys, {deploy.CA_KEY_BITS_RANGE[0]}-{deploy.CA_KEY_BITS_RANGE[1]}")
    i.add_argument("--station-owner", metavar="USER", default=None,
                   help="hand the station folder to this operator user, who runs `cns-agent run` (needs root)")
    i.add_argument("--json", action="store_true", help="print the created paths as one JSON object")
    i.set_defaults(func=_init)
    s.add_argument("--json", action="store_true", default=argparse.SUPPRESS,
                   help='print {"listening": ..., "port": N} once serving')
    return ap


def main(argv: list[str] | None = None) -> int:
    opts = build_parser().parse_args(argv)
    opts.json = getattr(opts, "json", False) or opts.json_first
    logging.basicConfig(level=opts.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
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


if __name__ == "__main__":
    sys.exit(main())
