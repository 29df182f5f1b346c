"""``cns-agent pin``: the holder's PIN on the card in a reader, through the running agent.

    cns-agent pin status  --reader R [--json]
    cns-agent pin change  --reader R [--codes-file F | --codes-stdin | --codes-env] [--json]
    cns-agent pin unblock --reader R [--codes-file F | --codes-stdin | --codes-env] [--json]

Every answer shows the PIN and PUK tries left (OpenSC cannot show them). The
card's one PIN (and PUK) guards both keysets; change and unblock apply to both.

Codes never go on the command line. They come from a prompt on a terminal
(the new PIN asked twice; a new PIN equal to the PUK is refused), or:
  --codes-file F   TOML, mode 0600: pin = current PIN, new_pin = ..., puk = ...
  --codes-stdin    one per line: change: current PIN, new PIN; unblock: PUK, new PIN
  --codes-env      CNS_PIN, CNS_NEW_PIN, CNS_PUK
They travel to the agent over its private socket only.

Wrong PIN: the tries left are shown; a blocked PIN is unblocked with the PUK
(`cns-agent pin unblock`); a blocked PUK means the card must be replaced.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from agent.commands import CommandError, add_socket_option, ask_code, check_new_codes, read_codes_file
from agent.commands.lifecycle import LocalCallError, local_call
from proto.cns.v1 import agent_pb2 as pb

PIN_CALL_TIMEOUT_S = 60.0
ENV = {"pin": "CNS_PIN", "new_pin": "CNS_NEW_PIN", "puk": "CNS_PUK"}
ASKED = {"change": ("pin", "new_pin"), "unblock": ("puk", "new_pin")}
PROMPTS = {"pin": "Current PIN: ", "new_pin": "New PIN: ", "puk": "PUK: "}


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("pin", help="PIN status, change, unblock with the PUK (tries left always shown)",
                       description=__doc__.split("\n\n", 1)[1], formatter_class=argparse.RawDescriptionHelpFormatter)
    psub = p.add_subparsers(dest="pin_command", required=True, metavar="ACTION")
    for name, help_ in (("status", "PIN and PUK tries left"), ("change", "change the PIN (current and new)"),
                        ("unblock", "unblock the PIN with the PUK and set a new PIN")):
        c = psub.add_parser(name, help=help_)
        c.add_argument("--reader", required=True, help="reader name, as `cns-agent devices` lists it")
        if name != "status":
            g = c.add_mutually_exclusive_group()
            g.add_argument("--codes-file", type=Path, help="TOML file (pin, new_pin, puk), mode 0600")
            g.add_argument("--codes-stdin", action="store_true", help="read the codes from standard input")
            g.add_argument("--codes-env", action="store_true", help="read CNS_PIN / CNS_NEW_PIN / CNS_PUK")
        c.add_argument("--json", action="store_true", help="one JSON object")
        add_socket_option(c)
        c.set_defaults(func=pin, action=name)


def _codes(args) -> dict[str, str]:
    wanted = ASKED[args.action]
    if args.codes_file:
        codes = read_codes_file(args.codes_file, wanted)
    elif args.codes_stdin:
        lines = sys.stdin.read().split()
        codes = {k: (lines[i] if len(lines) > i else "") for i, k in enumerate(wanted)}
    elif args.codes_env:
        codes = {k: os.environ.get(ENV[k], "") for k in wanted}
    elif not sys.stdin.isatty():
        raise CommandError("no codes given: use --codes-file, --codes-stdin, --codes-env, or run on a terminal "
                           "to be asked")
    else:
        codes = {k: ask_code(PROMPTS[k], new=k == "new_pin") for k in wanted}
    check_new_codes(new_pin=codes["new_pin"], puk=codes.get("puk", ""))
    return codes


def status_dict(s: pb.PinStatus) -> dict:
    return {"card_serial": s.card_serial, "pin_tries_left": s.pin_tries_left, "pin_tries_max": s.pin_tries_max,
            "puk_tries_left": s.puk_tries_left, "puk_tries_max": s.puk_tries_max, "pin_blocked": s.pin_blocked,
            "puk_blocked": s.puk_blocked, "message": s.message}


def _tries(left: int, most: int, blocked: bool) -> str:
    if blocked:
        return "BLOCKED"
    return "not told by the card" if left < 0 else f"{left} of {most} tries left"


def show(s: pb.PinStatus) -> str:
    return (f"card {s.card_serial}: PIN {_tries(s.pin_tries_left, s.pin_tries_max, s.pin_blocked)}; "
            f"PUK {_tries(s.puk_tries_left, s.puk_tries_max, s.puk_blocked)}")


def pin(args: argparse.Namespace) -> int:
    if args.action == "status":
        method, request = "GetPinStatus", pb.PinStatusRequest(reader=args.reader)
    else:
        codes = _codes(args)
        if args.action == "change":
            method, request = "ChangePin", pb.ChangePinRequest(reader=args.reader, old_pin=codes["pin"],
                                                               new_pin=codes["new_pin"])
        else:
            method, request = "UnblockPin", pb.UnblockPinRequest(reader=args.reader, puk=codes["puk"],
                                                                 new_pin=codes["new_pin"])
        codes.clear()
    try:
        resp = local_call(args, method, request, timeout=PIN_CALL_TIMEOUT_S)
    except LocalCallError as exc:
        if args.json:
            out = {"error": {"code": exc.code, "message": str(exc)}}
            if exc.pin_status is not None:
                out["status"] = status_dict(exc.pin_status)
            print(json.dumps(out), flush=True)
        elif exc.pin_status is not None:
            print(show(exc.pin_status), flush=True)
        raise
    if args.json:
        print(json.dumps(status_dict(resp)), flush=True)
    else:
        print(show(resp))
        if resp.message:
            print(resp.message)
    return 0
