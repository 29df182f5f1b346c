"""``cns-agent renew``: renew both certificates of the card in a reader through the running agent.

    cns-agent renew --reader "Virtual PCD 00 00" [--codes-file codes.toml | --codes-stdin] [--json]

The holder's current PIN (unchanged by the renewal) comes from ``--codes-file``
(TOML ``pin = "…"``, mode 0600), from standard input with ``--codes-stdin`` (the
first line), or from a prompt on a terminal — as for ``cns-agent personalize``.
It goes to the agent over its private socket only. Progress: lines on a
terminal, JSON lines with ``--json``; the last line is the result. Exit status
0 when the card carries the new certificates, 1 when the renewal was undone or
is still open (the agent finishes it on its next start or card insert).
"""
from __future__ import annotations

import argparse
import getpass
import json
import sys
from pathlib import Path

import grpc

from agent.api.client import AgentCallError, AgentUnavailableError
from agent.commands import CommandError, add_socket_option, socket_path
from agent.commands.personalize import _codes as _codes_from
from proto.cns.v1 import agent_pb2 as pb
from proto.cns.v1 import agent_pb2_grpc as pb_grpc

RENEW_TIMEOUT_S = 1800.0   # a queued request may wait for the CA's service window


def register(sub) -> None:
    """Add the ``renew`` command to the ``cns-agent`` parser."""
    p = sub.add_parser("renew", help="renew both certificates of the card in a reader (PIN unchanged)")
    p.add_argument("--reader", required=True, help="reader name, as `cns-agent devices` lists it")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--codes-file", type=Path,
                   help="TOML file with pin = \"…\", mode 0600")
    g.add_argument("--codes-stdin", action="store_true", help="read the PIN from standard input")
    p.add_argument("--json", action="store_true", help="JSON lines: progress, then the result")
    add_socket_option(p)
    p.set_defaults(func=renew)


def _pin(args) -> str:
    if not args.codes_file and not args.codes_stdin and sys.stdin.isatty():
        return getpass.getpass("Holder PIN (8 digits): ")
    return _codes_from(args)[0]


def _stream(sock: Path, request: pb.RenewCardRequest):
    """The agent's Renew stream (the renewal may wait for the CA's service window: a long deadline)."""
    if not sock.exists():
        raise AgentUnavailableError(f"no agent is running (no socket at {sock}); start one with "
                                    "`cns-agent run --config FILE`")
    with grpc.insecure_channel(f"unix:{sock}") as channel:
        try:
            yield from pb_grpc.AgentLocalStub(channel).Renew(request, timeout=RENEW_TIMEOUT_S)
        except grpc.RpcError as exc:
            code = exc.code()
            if code == grpc.StatusCode.UNAVAILABLE and "socket" in (exc.details() or "").lower():
                raise AgentUnavailableError(f"no agent answers on {sock} ({exc.details()}); start one with "
                                            "`cns-agent run --config FILE`") from exc
            raise AgentCallError(f"agent error {code.name}: {exc.details()}") from exc


def renew(args: argparse.Namespace) -> int:
    request = pb.RenewCardRequest(reader=args.reader, pin=_pin(args))
    result = None
    try:
        for msg in _stream(socket_path(args), request):
            if msg.HasField("result"):
                result = msg.result
            elif args.json:
                print(json.dumps({"step": msg.step, "message": msg.message}), flush=True)
            else:
                print(f"  {msg.step:24} {msg.message}", flush=True)
    except (AgentUnavailableError, AgentCallError) as exc:
        raise CommandError(str(exc)) from exc
    if result is None:
        raise CommandError("the agent ended the renewal without a result")
    d = {"op_id": result.op_id, "card_serial": result.card_serial, "state": result.state,
         "holder_label": result.holder_label, "certificate_subjects": dict(result.certificate_subjects),
         "test_signatures": result.test_signatures, "message": result.message,
         "stage_seconds": dict(result.stage_seconds)}
    if args.json:
        print(json.dumps({"result": d}), flush=True)
    else:
        print(f"card {d['card_serial']}: renewal {d['state']} {d['message']}".rstrip())
        for ks, subject in sorted(d["certificate_subjects"].items()):
            print(f"  {ks}: {subject}")
    return 0 if result.state == "done" else 1
