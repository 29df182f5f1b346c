"""``cns-personalizer``: ``serve --config FILE``, ``init DIR``, ``audit [--json] --config FILE``.

``audit`` reads the append-only audit table straight from the store (no
daemon needed; the database is opened read-only alongside a running one).

One top-level error handler turns our errors into one line on stderr and a
non-zero exit code. Must not import agent or firmware_profiles.
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from personalizer import config, deploy
from personalizer.errors import PersonalizerError

EXIT_ERROR = 1
EXIT_USAGE = 2


def _serve(opts) -> int:
    from personalizer import guard, server   # grpc is imported only for serving

    cfg = config.load(opts.config)
    for handler in logging.getLogger().handlers:   # a flood of identical errors must not flood the log
        handler.addFilter(guard.RepeatFilter())

    def ready(port: int) -> None:
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


def _init(opts) -> int:
    dep = deploy.init_deployment(Path(opts.dir), chamber=opts.chamber, station_id=opts.station_id,
                                 listen=opts.listen, ca_key_bits=opts.ca_key_bits)
    print(f"""cns-personalizer: test deployment created in {dep.root}
  server config      {dep.server_config}
  station config     {dep.station_config}   (for the agent: station_config.load)
  admin config       {dep.admin_config}   (for cnsctl --config)
  CNS root CA        {dep.root_cert}
  CNS issuing CA     {dep.issuing_cert}
  service TLS CA     {dep.tls_ca}
  listen             {dep.listen}
Run:  cns-personalizer serve --config {dep.server_config}
      cnsctl --config {dep.admin_config} ca-status""")
    return 0


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="cns-personalizer", description="Central CNS personalizer daemon")
    ap.add_argument("--log-level", default="INFO")
    sub = ap.add_subparsers(dest="command", required=True)
    s = sub.add_parser("serve", help="run the daemon in the foreground")
    s.add_argument("--config", required=True, help="personalizer TOML file")
    s.set_defaults(func=_serve)
    a = sub.add_parser("audit", help="print the audit trail (who, from which station, when, what, result)")
    a.add_argument("--config", required=True, help="personalizer TOML file")
    a.add_argument("--json", action="store_true", help="one JSON object per line")
    a.add_argument("--after", type=int, default=0, help="only entries after this sequence number")
    a.add_argument("--limit", type=int, default=100_000)
    a.set_defaults(func=_audit)
    i = sub.add_parser("init", help="create a test deployment (CA, certificates, configs)")
    i.add_argument("dir")
    i.add_argument("--chamber", default="RM", help="chamber code of the station (default RM)")
    i.add_argument("--station-id", default="RM-STATION-01")
    i.add_argument("--listen", default=deploy.DEFAULT_LISTEN)
    i.add_argument("--ca-key-bits", type=int, default=deploy.DEFAULT_CA_KEY_BITS)
    i.set_defaults(func=_init)
    return ap


def main(argv: list[str] | None = None) -> int:
    opts = build_parser().parse_args(argv)
    logging.basicConfig(level=opts.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return opts.func(opts)
    except (PersonalizerError, FileExistsError) as exc:
        print(f"cns-personalizer: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        return EXIT_ERROR
    except Exception as exc:   # e.g. the daemon could not start serving: say so in one line, exit non-zero
        logging.getLogger(__name__).debug("failed", exc_info=True)
        print(f"cns-personalizer: {opts.command} failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        return EXIT_ERROR


if __name__ == "__main__":
    sys.exit(main())
