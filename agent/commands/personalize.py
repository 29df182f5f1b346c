"""``cns-agent personalize``: personalize the blank card in a reader through the running agent.

    cns-agent personalize --reader "Virtual PCD 00 00" --holder holder.toml --codes-file codes.toml [--json]

The holder file is TOML with a ``[holder]`` table (codice_fiscale, given_name,
surname, birth_date YYYY-MM-DD, sex, birth_town, issuer). The codes — the
holder's sealed PIN (preset models) or the new PIN and PUK (models that set
them at personalization) — come from ``--codes-file`` (TOML ``pin = "…"``,
``puk = "…"``, mode 0600), from standard input with ``--codes-stdin`` (PIN then
PUK, one a line), or from a prompt on a terminal. They go to the agent over its
private socket only. Progress: lines on a terminal, JSON lines with ``--json``.
"""
from __future__ import annotations

import argparse
import getpass
import json
import sys
import tomllib
from pathlib import Path

from agent.api.client import AgentCallError, AgentClient, AgentUnavailableError
from agent.commands import CommandError, add_socket_option, follow_operation, socket_path
from agent.ops.holder import HolderFileError, HolderRecord
from proto.cns.v1 import agent_pb2 as pb


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("personalize", help="personalize the blank card in a reader")
    p.add_argument("--reader", required=True, help="reader name, as `cns-agent devices` lists it")
    p.add_argument("--holder", required=True, type=Path, help="holder TOML file ([holder] table)")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--codes-file", type=Path, help="TOML file with pin (and puk), mode 0600")
    g.add_argument("--codes-stdin", action="store_true", help="read the PIN (and PUK) from standard input")
    p.add_argument("--json", action="store_true", help="JSON lines: progress, then the result")
    add_socket_option(p)
    p.set_defaults(func=personalize)
    o = sub.add_parser("operations", help="list interrupted operations the agent will finish or undo")
    o.add_argument("--json", action="store_true")
    add_socket_option(o)
    o.set_defaults(func=operations)


def _codes(args) -> tuple[str, str]:
    if args.codes_file:
        path: Path = args.codes_file
        try:
            if path.stat().st_mode & 0o077:
                raise CommandError(f"{path}: holds PINs, so it must be readable by its owner only (chmod 600)")
            table = tomllib.loads(path.read_text())
        except FileNotFoundError:
            raise CommandError(f"{path}: file not found") from None
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise CommandError(f"{path}: not a readable TOML file ({type(exc).__name__})") from None
        return str(table.get("pin", "")), str(table.get("puk", ""))
    if args.codes_stdin:
        lines = sys.stdin.read().split()
        return (lines[0] if lines else ""), (lines[1] if len(lines) > 1 else "")
    if not sys.stdin.isatty():
        raise CommandError("no codes given: use --codes-file, --codes-stdin, or run on a terminal to be asked")
    pin = getpass.getpass("Holder PIN (8 digits): ")
    puk = getpass.getpass("New PUK (8 digits; Enter if the card's codes are preset): ")
    return pin, puk


def personalize(args: argparse.Namespace) -> int:
    try:
        holder = HolderRecord.load(args.holder)
    except HolderFileError as exc:
        raise CommandError(str(exc)) from exc
    pin, puk = _codes(args)
    request = pb.PersonalizeRequest(reader=args.reader, pin=pin, puk=puk, holder=pb.HolderData(
        codice_fiscale=holder.codice_fiscale, given_name=holder.given_name, surname=holder.surname,
        birth_date=holder.birth_date, sex=holder.sex, birth_town=holder.birth_town, issuer=holder.issuer))
    with AgentClient(socket_path(args)) as client:
        return follow_operation(client.personalize(request), args, "personalization",
                                lambda d: f"card {d['card_serial']}: {d['state']} {d['holder_label']} {d['message']}")


def operations(args: argparse.Namespace) -> int:
    try:
        with AgentClient(socket_path(args)) as client:
            resp = client.operations()
    except (AgentUnavailableError, AgentCallError) as exc:
        raise CommandError(str(exc)) from exc
    rows = [{"op_id": o.op_id, "kind": o.kind, "card_serial": o.card_serial, "reader": o.reader,
             "step": o.step, "step_phase": o.step_phase} for o in resp.operations]
    if args.json:
        print(json.dumps(rows))
    else:
        for r in rows or [{"op_id": "(none)", "kind": "", "card_serial": "", "step": "", "step_phase": ""}]:
            print(f"{r['op_id']}  {r['kind']}  {r['card_serial']}  {r['step']} {r['step_phase']}".rstrip())
    return 0
