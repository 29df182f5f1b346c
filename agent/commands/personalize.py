"""``cns-agent personalize``: personalize the blank card in a reader through the running agent.

    cns-agent personalize --reader "Virtual PCD 00 00" --holder holder.toml --codes-file codes.toml [--json]
    cns-agent personalize --reader "Virtual PCD 00 00" --registration REG-… --codes-file codes.toml

With ``--registration`` (deferred issuance, "decentrata differita") the holder is
the one the chamber's recognition officer registered (``cnsctl registration add``):
the agent reads it from the personalizer and the operation stays bound to it.

The holder file is TOML with a ``[holder]`` table (codice_fiscale, given_name,
surname, birth_date YYYY-MM-DD, sex, birth_town, issuer). The codes — the
holder's sealed PIN (preset models) or the new PIN and PUK (models that set
them at personalization) — come from ``--codes-file`` (TOML ``pin = "…"``,
``puk = "…"``, mode 0600), from standard input with ``--codes-stdin`` (PIN then
PUK, one a line), or from a prompt on a terminal. They go to the agent over its
private socket only. Progress: lines on a terminal, JSON lines with ``--json``.

Ctrl-C (``stop_on_interrupt``, also used by ``renew``) asks the agent to stop the
operation at its next safe point; the command then prints what became of the
card. A second Ctrl-C leaves at once (the agent still settles the card).

    cns-agent operations [--json]                        every open operation (device and PIN)
    cns-agent operations finish ID [--codes-file F]      finish it (the PIN when not yet signed)
    cns-agent operations discard ID                      undo it safely (certificates revoked)

``operations finish`` exits 0 when the operation is done, ``discard`` when it is
undone; 1 while it is still settling (the agent goes on by itself).
"""
from __future__ import annotations

import argparse
import contextlib
import datetime as _dt
import json
import signal
import sys
from pathlib import Path

from agent.api.client import AgentCallError, AgentClient, AgentUnavailableError
from agent.commands import (CommandError, add_socket_option, ask_code, ask_personalization_codes,
                            follow_operation, read_codes_file, socket_path)
from agent.ops.holder import HolderFileError, HolderRecord
from proto.cns.v1 import agent_pb2 as pb


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("personalize", help="personalize the blank card in a reader")
    p.add_argument("--reader", required=True, help="reader name, as `cns-agent devices` lists it")
    who = p.add_mutually_exclusive_group(required=True)
    who.add_argument("--holder", type=Path, help="holder TOML file ([holder] table)")
    who.add_argument("--registration", metavar="ID",
                     help="a registration id (REG-…) from the recognition officer: deferred issuance")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--codes-file", type=Path, help="TOML file with pin (and puk), mode 0600")
    g.add_argument("--codes-stdin", action="store_true", help="read the PIN (and PUK) from standard input")
    p.add_argument("--json", action="store_true", help="JSON lines: progress, then the result")
    add_socket_option(p)
    p.set_defaults(func=personalize)
    o = sub.add_parser("operations", help="list open operations; finish or discard one")
    o.add_argument("action", nargs="?", choices=["list", "finish", "discard"], default="list",
                   help="list (default), finish ID or discard ID")
    o.add_argument("op_id", nargs="?", help="the operation id, as `cns-agent operations` lists it")
    og = o.add_mutually_exclusive_group()
    og.add_argument("--codes-file", type=Path, help="TOML file, mode 0600: finish: the holder's pin; a PIN "
                    "change: pin (before) and new_pin; an unblock: puk and new_pin")
    og.add_argument("--codes-stdin", action="store_true", help="read them from standard input, one per line, "
                    "in that order")
    o.add_argument("--json", action="store_true")
    add_socket_option(o)
    o.set_defaults(func=operations)


def _codes(args) -> tuple[str, str]:
    if args.codes_file:
        codes = read_codes_file(args.codes_file, ("pin", "puk"))
        return codes["pin"], codes["puk"]
    if args.codes_stdin:
        lines = sys.stdin.read().split()
        return (lines[0] if lines else ""), (lines[1] if len(lines) > 1 else "")
    if not sys.stdin.isatty():
        raise CommandError("no codes given: use --codes-file, --codes-stdin, or run on a terminal to be asked")
    return ask_personalization_codes()   # new codes asked twice, PIN != PUK


def personalize(args: argparse.Namespace) -> int:
    if args.registration:
        pin, puk = _codes(args)
        request = pb.PersonalizeRequest(reader=args.reader, pin=pin, puk=puk, registration_id=args.registration)
    else:
        try:
            holder = HolderRecord.load(args.holder)
        except HolderFileError as exc:
            raise CommandError(str(exc)) from exc
        pin, puk = _codes(args)
        request = pb.PersonalizeRequest(reader=args.reader, pin=pin, puk=puk, holder=pb.HolderData(
            codice_fiscale=holder.codice_fiscale, given_name=holder.given_name, surname=holder.surname,
            birth_date=holder.birth_date, sex=holder.sex, birth_town=holder.birth_town, issuer=holder.issuer))
    with AgentClient(socket_path(args)) as client, stop_on_interrupt(socket_path(args), args.reader, args):
        return follow_operation(client.personalize(request), args, "personalization",
                                lambda d: f"card {d['card_serial']}: {d['state']} {d['holder_label']} {d['message']}")


@contextlib.contextmanager
def stop_on_interrupt(sock: Path, reader: str, args):
    """While the body runs, the first Ctrl-C asks the agent to stop the operation in ``reader`` at its next
    safe point (the stream then ends with what became of the card); a second one leaves at once."""
    asked = []

    def on_sigint(signum, frame):
        if asked:
            raise KeyboardInterrupt
        asked.append(True)
        try:
            with AgentClient(sock) as c:
                answer = c.stop(reader=reader)
            text = answer.message if answer.stopping else f"nothing to stop: {answer.message}"
        except (AgentUnavailableError, AgentCallError) as exc:
            text = f"could not ask the agent to stop: {exc}"
        line = f"Ctrl-C: {text}; waiting for the agent to say what became of the card (Ctrl-C again to leave now)"
        print(json.dumps({"step": "interrupt", "message": line}) if args.json else f"  {'interrupt':24} {line}",
              flush=True)

    previous = signal.signal(signal.SIGINT, on_sigint)
    try:
        yield
    except KeyboardInterrupt:
        print("left before the agent answered; it still finishes or undoes the operation: see "
              "`cns-agent operations`", file=sys.stderr)
        raise
    finally:
        signal.signal(signal.SIGINT, previous)


def operations(args: argparse.Namespace) -> int:
    if args.action != "list":
        return _resolve(args)
    if args.op_id:
        raise CommandError("give an action before the operation id: `operations finish ID` or `operations discard ID`")
    try:
        with AgentClient(socket_path(args)) as client:
            resp = client.operations()
    except (AgentUnavailableError, AgentCallError) as exc:
        raise CommandError(str(exc)) from exc
    rows = [{"op_id": o.op_id, "kind": o.kind, "card_serial": o.card_serial, "reader": o.reader,
             "step": o.step, "step_phase": o.step_phase, "holder": o.holder_label, "journal": o.journal,
             "started": _dt.datetime.fromtimestamp(o.created_unix).isoformat(timespec="seconds") if o.created_unix
             else "", "note": o.note} for o in resp.operations]
    if args.json:
        print(json.dumps(rows))
    elif not rows:
        print("no open operations")
    else:
        for r in rows:
            print(f"{r['op_id']}  {r['kind']}  card {r['card_serial']}  {r['reader']}  started {r['started']}")
            print(f"    at {r['step'] or '(start)'} {r['step_phase']}".rstrip()
                  + (f"; holder {r['holder']}" if r["holder"] else "") + (f"; {r['note']}" if r["note"] else ""))
        print("finish or undo one with `cns-agent operations finish ID` or `cns-agent operations discard ID`")
    return 0


# the codes a PIN operation's finish or discard needs, in --codes-stdin order (a device operation's
# finish takes the holder's PIN only)
PIN_OP_CODES = {("pin-change", "finish"): ("pin", "new_pin"), ("pin-change", "discard"): ("pin", "new_pin"),
                ("pin-unblock", "finish"): ("puk", "new_pin")}
PIN_OP_PROMPTS = {"pin": "PIN before the change: ", "new_pin": "New PIN (the one the operation sets): ",
                  "puk": "PUK: "}


def _resolve_codes(args: argparse.Namespace) -> dict[str, str]:
    """The codes ``operations finish|discard ID`` needs: asked for by the operation's kind."""
    with AgentClient(socket_path(args)) as client:
        try:
            listed = {o.op_id: o for o in client.operations().operations}
        except (AgentUnavailableError, AgentCallError) as exc:
            raise CommandError(str(exc)) from exc
    op = listed.get(args.op_id)
    wanted = PIN_OP_CODES.get((op.kind, args.action), ()) if op is not None and op.journal == "pin" else ()
    if op is not None and op.journal == "pin" and op.kind == "pin-change" and args.action == "discard" \
            and not op.step:
        wanted = ()   # nothing was changed on the card: nothing to set back
    if not wanted:
        if args.action == "finish" and (args.codes_file or args.codes_stdin):
            return {"pin": _codes(args)[0]}
        return {}
    if args.codes_file:
        return read_codes_file(args.codes_file, wanted)
    if args.codes_stdin:
        lines = sys.stdin.read().split()
        return {k: (lines[i] if len(lines) > i else "") for i, k in enumerate(wanted)}
    if not sys.stdin.isatty():
        raise CommandError(f"{args.action} of {op.kind} {op.op_id} needs codes ({', '.join(wanted)}): use "
                           "--codes-file or --codes-stdin, or run on a terminal to be asked")
    return {k: ask_code(PIN_OP_PROMPTS[k], new=k == "new_pin" and args.action == "finish") for k in wanted}


def _resolve(args: argparse.Namespace) -> int:
    if not args.op_id:
        raise CommandError(f"give the operation id: `cns-agent operations {args.action} ID` "
                           "(ids from `cns-agent operations`)")
    codes = _resolve_codes(args)
    states: list[str] = []

    def recording(messages):
        for msg in messages:
            if msg.HasField("result"):
                states.append(msg.result.state)
            yield msg

    with AgentClient(socket_path(args)) as client:
        code = follow_operation(recording(client.resolve(args.op_id, args.action, codes.get("pin", ""),
                                                         new_pin=codes.get("new_pin", ""), puk=codes.get("puk", ""))),
                                args, args.action,
                                lambda d: f"operation {d['op_id']} card {d['card_serial']}: {d['state']} "
                                          f"{d['message']}")
    # success is "done" for finish and "undone" for discard; "open" (still settling) is not
    return 0 if states and states[-1] == ("done" if args.action == "finish" else "undone") else code
