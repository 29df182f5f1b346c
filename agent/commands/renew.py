"""``cns-agent renew``: renew both certificates of the card in a reader through the running agent.

    cns-agent renew --reader "Virtual PCD 00 00" [--codes-file codes.toml | --codes-stdin] [--json]
    cns-agent renew --self --reader "…" --personalizer HOST[:PORT] --trust CA.pem   (holder, no station:
                                                                    ``agent.commands.self_renew``)

The holder's current PIN (unchanged by the renewal) comes from ``--codes-file``
(TOML ``pin = "…"``, mode 0600), from standard input with ``--codes-stdin`` (the
first line), or from a prompt on a terminal — as for ``cns-agent personalize``.
It goes to the agent over its private socket only. Progress: lines on a
terminal, JSON lines with ``--json``; the last line is the result. Exit status
0 when the card carries the new certificates, 1 when the renewal was undone or
is still open (the agent finishes it on its next start or card insert).
Ctrl-C asks the agent to stop at the next safe point (``stop_on_interrupt``).
"""
from __future__ import annotations

import argparse
import getpass
import sys
from pathlib import Path

from agent.api.client import AgentClient
from agent.commands import add_socket_option, follow_operation, socket_path
from agent.commands import self_renew
from agent.commands.personalize import _codes as _codes_from, stop_on_interrupt
from proto.cns.v1 import agent_pb2 as pb


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
    self_renew.add_options(p)
    p.set_defaults(func=renew)


def _pin(args) -> str:
    if not args.codes_file and not args.codes_stdin and sys.stdin.isatty():
        return getpass.getpass("Holder PIN (8 digits): ")
    return _codes_from(args)[0]


def renew(args: argparse.Namespace) -> int:
    if args.self_renewal:
        return self_renew.self_renew(args, lambda: _pin(args))
    request = pb.RenewCardRequest(reader=args.reader, pin=_pin(args))
    with AgentClient(socket_path(args)) as client, stop_on_interrupt(socket_path(args), args.reader, args):
        return follow_operation(client.renew(request), args, "renewal",
                                lambda d: f"card {d['card_serial']}: renewal {d['state']} {d['message']}")
