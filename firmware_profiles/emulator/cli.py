"""``cns-emulator``: serve an emulated card to pcscd (vpcd), start a private
pcscd with the vpcd reader (``pcscd``), list the models, run the conformance
self-check, serve an emulated USB token over USB/IP (``serve-token``, the work
of ``firmware_profiles.usbemu``).

Owns argument parsing and the one top-level error handler (``--json`` before or
after the command; a closed output pipe exits quietly); the work is done by
``card``, ``vpcd``, ``pcscd`` and ``check``. Exit codes: 0 ok, 1 check failed, 2 usage or
profile/state error.

Imports: ``firmware_profiles``, ``firmware_profiles.emulator.*`` and, for ``serve-token``,
``firmware_profiles.usbemu``.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import threading
from pathlib import Path

from firmware_profiles.emulator import overrides
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
    try:
        model, timing = overrides.apply(model, model.timing[args.timing], args.override or [])
    except overrides.OverrideError as exc:
        raise UsageError(str(exc)) from None
    card = EmulatedCard(model, state_path=args.state, faults=FaultPlan(args.fault or []),
                        timing=timing, serial=args.serial, apdu_log=args.apdu_log)
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


def _wait_for_signal() -> None:
    done = threading.Event()

    def _stop(signum, frame):  # noqa: ARG001
        done.set()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    done.wait()


def _codes_note(model: CardModel) -> str:
    p = model.pin_policy
    if model.pin_mode == "preset":
        return f"a new card of this model has test PIN {p.factory_test_pin}, PUK {p.factory_test_puk}"
    return "a new card of this model has no PIN or PUK until personalization sets them"


def cmd_pcscd(args: argparse.Namespace) -> int:
    """A private pcscd (its own socket, its own vpcd ports) until SIGTERM/SIGINT; optionally a card in reader 0."""
    import tempfile

    from firmware_profiles.emulator.pcscd import missing_tools, start_pcscd

    missing = missing_tools()
    if missing:
        raise UsageError("cannot start pcscd, missing: " + "; ".join(missing))
    model = _model(args) if args.profile else None
    workdir = args.dir or Path(tempfile.mkdtemp(prefix="cns-pcscd-"))
    try:
        inst = start_pcscd(workdir)
    except (OSError, RuntimeError) as exc:
        raise UsageError(f"pcscd did not start in {workdir}: {exc}") from None
    client = None
    try:
        card = None
        if model is not None:
            card = EmulatedCard(model, state_path=args.state, timing=args.timing)
            client = VpcdClient(card, "127.0.0.1", inst.port).start()
            if not client.inserted.wait(10):
                raise UsageError(f"the emulated card could not reach pcscd's vpcd port {inst.port}; see {inst.log_path}")
        readers = {name: inst.vpcd_address(i) for i, name in enumerate(inst.reader_names)}
        if args.json:
            print(json.dumps({"pid": inst.proc.pid, "dir": str(workdir), "socket": str(inst.socket_path),
                              "env": {"PCSCLITE_CSOCK_NAME": str(inst.socket_path)}, "readers": readers,
                              "card": None if card is None else {"reader": inst.reader_names[0],
                                                                 "profile": model.id, "serial": card.serial,
                                                                 "codes": _codes_note(model)}}),
                  flush=True)
        else:
            lines = [f"private pcscd running (pid {inst.proc.pid}), log {inst.log_path}",
                     "in every shell that should see its readers (agent, OpenSC tools):",
                     f"  export PCSCLITE_CSOCK_NAME={inst.socket_path}"]
            for name, address in readers.items():
                lines.append(f"reader {name!r}: cns-emulator serve --profile MODEL --vpcd {address}")
            if card is not None:
                lines.append(f"{model.id} card {card.serial} is in {inst.reader_names[0]!r} ({_codes_note(model)})"
                             + (f", state {args.state}" if args.state else ", state in memory only"))
            lines.append("Ctrl-C stops it.")
            print("\n".join(lines), flush=True)
        _wait_for_signal()
    finally:
        if client is not None:
            client.stop()
        inst.stop()
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


def cmd_serve_token(args: argparse.Namespace) -> int:
    """One emulated token over USB/IP until SIGTERM/SIGINT: ``firmware_profiles.usbemu``'s ``serve-token``."""
    from firmware_profiles.usbemu.__main__ import main as usbemu_main

    argv = ["serve-token", "--profile", args.profile, "--usbip", args.usbip]
    if args.flash:
        argv += ["--flash", str(args.flash)]
    return usbemu_main(argv)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="cns-emulator", description="Emulated Italian CNS cards for pcscd/vpcd and tests")
    p.add_argument("--profiles", metavar="DIR", help="folder of card model TOML files (default: the built-in set)")
    p.add_argument("-v", "--verbose", action="store_true")
    p.add_argument("--json", action="store_true", dest="json_first", help="JSON output (also after the command)")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("serve", help="insert an emulated card into pcscd's vpcd reader until SIGTERM/SIGINT")
    s.add_argument("--profile", required=True, help="model id (see `list`)")
    s.add_argument("--vpcd", default=f"{DEFAULT_HOST}:{DEFAULT_PORT}", metavar="HOST:PORT")
    s.add_argument("--state", type=Path, metavar="FILE", help="card state file (created blank if missing)")
    s.add_argument("--timing", choices=("zero", "realistic"), default="zero")
    s.add_argument("--fault", action="append", metavar="SPEC",
                   help="e.g. tear:ins=D6,bytes=10  drop:ins=2A,nth=2  sw:ins=20,sw=6581  delay:ins=46,seconds=3")
    s.add_argument("--override", action="append", metavar="KEY=VALUE",
                   help="TEST card that deviates from its model: " + ", ".join(overrides.KEYS) + " (SCHEMA.md §8)")
    s.add_argument("--serial", help="16-character card serial for a new card")
    s.add_argument("--apdu-log", type=Path, metavar="FILE", help="append APDUs as JSON lines (secrets masked)")
    s.add_argument("--reinsert-after", type=float, default=1.0, metavar="SECONDS",
                   help="after a fault pulls the card, reinsert it after this delay (at least ~1 s, so pcscd sees the removal)")
    s.set_defaults(func=cmd_serve)

    ls = sub.add_parser("list", help="show the card models")
    ls.add_argument("--json", action="store_true", help="one JSON object per line")
    ls.set_defaults(func=cmd_list)

    d = sub.add_parser("pcscd", help="run a private pcscd with the vpcd reader (and optionally a card) until Ctrl-C",
                       description="Start pcscd on its own socket with a vpcd reader pair on free ports, print the "
                                   "PCSCLITE_CSOCK_NAME to export and the vpcd address of each reader, and stop it "
                                   "on SIGTERM/SIGINT. Needs the Debian packages pcscd and vsmartcard-vpcd.")
    d.add_argument("--dir", type=Path, metavar="DIR", help="pcscd's socket, reader config and log (default: a new "
                   "temporary folder)")
    d.add_argument("--card", metavar="MODEL", dest="profile", help="also serve an emulated card of this model in "
                   "the first reader (see `list`)")
    d.add_argument("--state", type=Path, metavar="FILE", help="with --card: card state file (created blank if missing)")
    d.add_argument("--timing", choices=("zero", "realistic"), default="zero")
    d.add_argument("--json", action="store_true", help="print one JSON object (socket, readers, card)")
    d.set_defaults(func=cmd_pcscd)

    t = sub.add_parser("serve-token", help="serve an emulated CNS USB token over USB/IP until SIGTERM/SIGINT",
                       description="Run one emulated composite token (firmware_profiles/tokens/) and export it over "
                                   "USB/IP: `usbip list -r HOST` lists it, `usbip attach -r HOST -b 1-1` attaches it "
                                   "on a machine with the vhci-hcd driver.")
    t.add_argument("--profile", required=True, help="token model id (cns-token-ccid, cns-token-hid, ...)")
    t.add_argument("--flash", type=Path, metavar="FILE", help="flash file (sparse; created if missing; default: a "
                   "temporary one)")
    t.add_argument("--usbip", default="127.0.0.1:3240", metavar="HOST:PORT", help="where to listen (default "
                   "127.0.0.1:3240)")
    t.set_defaults(func=cmd_serve_token)

    c = sub.add_parser("check", help="conformance self-check of a model, in-process")
    c.add_argument("--profile", required=True)
    c.add_argument("--json", action="store_true")
    c.set_defaults(func=cmd_check)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.json_first:
        if not hasattr(args, "json"):
            parser.error(f"{args.command} has no JSON output")
        args.json = True
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        rc = args.func(args)
        sys.stdout.flush()
        return rc
    except BrokenPipeError:          # `cns-emulator list | head -1`: the reader stopped reading
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except (ProfileError, StateFileError, FaultSpecError, UsageError, ValueError) as exc:
        print(f"cns-emulator: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
