"""``cns-emulator``: serve an emulated card to pcscd (vpcd), list the models,
run the conformance self-check.

Owns argument parsing and the one top-level error handler; the work is done by
``card``, ``vpcd`` and ``check``. Exit codes: 0 ok, 1 check failed, 2 usage or
profile/state error.

Imports: ``firmware_profiles`` and ``firmware_profiles.emulator.*``.
"""
from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import threading
from pathlib import Path

from firmware_profiles.emulator.card import EmulatedCard
from firmware_profiles.emulator.faults import FaultPlan, FaultSpecError
from firmware_profiles.emulator.state import StateFileError
from firmware_profiles.emulator.vpcd import DEFAULT_HOST, DEFAULT_PORT, VpcdClient, parse_address
from firmware_profiles.model import CardModel, ProfileError, load_models


class UsageError(Exception):
    pass


def _models(args: argparse.Namespace) -> dict[str, CardModel]:
    return load_models(Path(args.profiles) if args.profiles else None)


def _model(args: argparse.Namespace) -> CardModel:
    models = _models(args)
    if args.profile not in models:
        raise UsageError(f"unknown profile {args.profile!r}; known: {', '.join(sorted(models))} "
                         "(see `cns-emulator list`)")
    return models[args.profile]


def cmd_list(args: argparse.Namespace) -> int:
    models = _models(args)
    if args.json:
        for m in models.values():
            print(json.dumps({"id": m.id, "name": m.name, "atr": m.atr.hex(" ").upper(), "rsa_bits": m.rsa_bits,
                              "pin_mode": m.pin_mode, "eeprom_bytes": m.eeprom_bytes, "dialect": m.dialect.name,
                              "keysets": [k.name for k in m.keysets], "source": m.source}))
        return 0
    for m in models.values():
        print(f"{m.id:24} RSA-{m.rsa_bits}  {m.pin_mode:23} {m.name}")
        print(f"{'':24} ATR {m.atr.hex(' ').upper()}")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    model = _model(args)
    try:
        host, port = parse_address(args.vpcd)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    card = EmulatedCard(model, state_path=args.state, faults=FaultPlan(args.fault or []),
                        timing=args.timing, serial=args.serial, apdu_log=args.apdu_log)
    client = VpcdClient(card, host, port, reinsert_after=args.reinsert_after)
    done = threading.Event()

    def _stop(signum, frame):  # noqa: ARG001
        done.set()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    client.start()
    print(f"serving {model.id} card {card.serial} to vpcd {host}:{port}"
          + (f", state {args.state}" if args.state else ", state in memory only"), flush=True)
    done.wait()
    client.stop()
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    from firmware_profiles.emulator.check import run_checks

    model = _model(args)
    results = run_checks(model)
    failed = [r for r in results if not r.ok]
    for r in results:
        if args.json:
            print(json.dumps({"check": r.name, "ok": r.ok, "detail": r.detail}))
        else:
            print(f"{'PASS' if r.ok else 'FAIL'}  {r.name}" + (f"  ({r.detail})" if r.detail else ""))
    if not args.json:
        print(f"{model.id}: {len(results) - len(failed)}/{len(results)} checks passed")
    return 1 if failed else 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="cns-emulator", description="Emulated Italian CNS cards for pcscd/vpcd and tests")
    p.add_argument("--profiles", metavar="DIR", help="folder of card model TOML files (default: the built-in set)")
    p.add_argument("-v", "--verbose", action="store_true")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("serve", help="insert an emulated card into pcscd's vpcd reader until SIGTERM/SIGINT")
    s.add_argument("--profile", required=True, help="model id (see `list`)")
    s.add_argument("--vpcd", default=f"{DEFAULT_HOST}:{DEFAULT_PORT}", metavar="HOST:PORT")
    s.add_argument("--state", type=Path, metavar="FILE", help="card state file (created blank if missing)")
    s.add_argument("--timing", choices=("zero", "realistic"), default="zero")
    s.add_argument("--fault", action="append", metavar="SPEC",
                   help="e.g. tear:ins=D6,bytes=10  drop:ins=2A,nth=2  sw:ins=20,sw=6581  delay:ins=46,seconds=3")
    s.add_argument("--serial", help="16-character card serial for a new card")
    s.add_argument("--apdu-log", type=Path, metavar="FILE", help="append APDUs as JSON lines (secrets masked)")
    s.add_argument("--reinsert-after", type=float, default=1.0, metavar="SECONDS",
                   help="after a fault pulls the card, reinsert it after this delay (at least ~1 s, so pcscd sees the removal)")
    s.set_defaults(func=cmd_serve)

    ls = sub.add_parser("list", help="show the card models")
    ls.add_argument("--json", action="store_true", help="one JSON object per line")
    ls.set_defaults(func=cmd_list)

    c = sub.add_parser("check", help="conformance self-check of a model, in-process")
    c.add_argument("--profile", required=True)
    c.add_argument("--json", action="store_true")
    c.set_defaults(func=cmd_check)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        return args.func(args)
    except (ProfileError, StateFileError, FaultSpecError, UsageError, ValueError) as exc:
        print(f"cns-emulator: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
