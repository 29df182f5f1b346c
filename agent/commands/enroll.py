"""``cns-agent enroll`` and ``cns-agent renew-station``: this workstation's mTLS identity (issue 18 item 4).

    cns-agent enroll --code BUNDLE --personalizer HOST:PORT [--enroll-port N] [--dir DIR] [--server-name NAME]
    cns-agent renew-station --config station.toml [--force]

``enroll`` makes the station key here, pins the personalizer by the CA
fingerprint in the code bundle (``cnsctl station add`` prints it), and writes
``station.toml``, the key (0600), the certificate and the CA into DIR (default
``$XDG_CONFIG_HOME/cns-agent``). With ``--pkcs11-module LIB --token-label L --token-pin-file F``
the key is made in that PKCS#11 token instead and never leaves it (``[enrollment]`` in station.toml). A wrong, expired or used code, or a server
presenting another certificate, prints one line and changes nothing.
``renew-station`` renews now when due (``--force``: even when not); ``cns-agent
run`` does the same check at start and daily. Imports ``agent.uplink.enroll``.
"""
from __future__ import annotations

import argparse
import os
from pathlib import Path

from agent.commands import CommandError


def default_dir() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "cns-agent"


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("enroll", help="get this station's certificate with a one-time code from central IT")
    p.add_argument("--code", required=True, help="the code bundle `cnsctl station add` printed")
    p.add_argument("--personalizer", required=True, metavar="HOST:PORT", help="the personalizer's mTLS endpoint")
    p.add_argument("--enroll-port", type=int, default=None, help="its enrollment port (default 50052)")
    p.add_argument("--dir", type=Path, default=None, help="where to write station.toml and the credentials")
    p.add_argument("--server-name", default=None, help="the name the personalizer's certificate carries, if not HOST")
    p.add_argument("--pkcs11-module", type=Path, default=None, metavar="LIB",
                   help="make the station key in a PKCS#11 token with this library (it never leaves the token)")
    p.add_argument("--token-label", default=None, help="the token's label (with --pkcs11-module)")
    p.add_argument("--token-pin-file", type=Path, default=None, metavar="FILE",
                   help="a file (mode 0600) with the token's user PIN, kept for the agent (with --pkcs11-module)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=enroll_cmd)
    r = sub.add_parser("renew-station", help="renew this station's certificate now if due")
    r.add_argument("--config", type=Path, required=True, help="station configuration (station_config schema)")
    r.add_argument("--force", action="store_true", help="renew even if not due")
    r.add_argument("--json", action="store_true")
    r.set_defaults(func=renew_cmd)


def _out(args, data: dict, text: str) -> None:
    if args.json:
        import json
        print(json.dumps(data, sort_keys=True))
    else:
        print(text)


def _token(args, e):
    """The PKCS#11 token the options name (all three or none), checked before the code is used."""
    given = {"--pkcs11-module": args.pkcs11_module, "--token-label": args.token_label,
             "--token-pin-file": args.token_pin_file}
    if not any(given.values()):
        return None
    missing = [k for k, v in given.items() if not v]
    if missing:
        raise CommandError(f"a station key in a PKCS#11 token needs {', '.join(given)}: {', '.join(missing)} "
                           "missing; nothing was sent")
    if not args.pkcs11_module.is_file():
        raise CommandError(f"--pkcs11-module {args.pkcs11_module}: no such library; nothing was sent")
    from station_config import TOKEN_LABEL_RE
    if not TOKEN_LABEL_RE.match(args.token_label):
        raise CommandError(f"--token-label {args.token_label!r}: expected 1..32 printable characters (the label "
                           "`pkcs11-tool --list-slots` shows); nothing was sent")
    return e.TokenSettings(args.pkcs11_module.resolve(), args.token_label, args.token_pin_file.resolve())


def enroll_cmd(args: argparse.Namespace) -> int:
    from agent.uplink import enroll as e
    port = args.enroll_port if args.enroll_port is not None else e.DEFAULT_ENROLL_PORT
    if not 0 < port < 65536:
        raise CommandError(f"--enroll-port {port}: expected a port number 1-65535")
    token = _token(args, e)
    try:
        done = e.enroll(args.code, args.personalizer, (args.dir or default_dir()).resolve(), enroll_port=port,
                        server_name=args.server_name, token=token)
    except e.EnrollError as exc:
        raise CommandError(str(exc)) from None
    _out(args, {"station_id": done.station_id, "chamber_code": done.chamber_code, "config": str(done.config),
                "serial": done.serial_hex, "not_after": done.not_after.isoformat()},
         f"enrolled station {done.station_id} ({done.chamber_code}): certificate {done.serial_hex} valid until "
         f"{done.not_after:%Y-%m-%d}; start the agent with `cns-agent run --config {done.config}`")
    return 0


def renew_cmd(args: argparse.Namespace) -> int:
    import station_config
    from agent.uplink import enroll as e
    try:
        cfg = station_config.load(args.config)
        cert = e.renew_if_due(cfg, force=args.force)
    except station_config.StationConfigError as exc:
        raise CommandError(str(exc)) from None
    except e.EnrollError as exc:
        raise CommandError(str(exc)) from None
    if cert is None:
        _out(args, {"renewed": False}, "the station certificate is not due for renewal (use --force to renew now)")
    else:
        _out(args, {"renewed": True, "serial": f"{cert.serial_number:X}",
                    "not_after": cert.not_valid_after_utc.isoformat()},
             f"station certificate renewed: {cert.serial_number:X}, valid until {cert.not_valid_after_utc:%Y-%m-%d}")
    return 0
