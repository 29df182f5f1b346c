"""``cns-agent token update --partition cdrom|disk IMAGE`` and ``cns-agent token firmware IMAGE``
(both ``[--serial S] [--json]``): a signed image onto a USB token.

The running agent does the work (``UpdateToken`` on the local API, ``agent.api.tokens``): the token
plans are journaled there, so a token pulled or an agent killed mid-way is finished when the token
is seen again. ``update`` writes a CD-ROM or disk image into the partition the operator names (an
image of the other partition is refused, the token untouched), ``firmware`` flashes a firmware image. Progress: a bar on a terminal (rich, on stderr), ``--json`` lines
(``{"event": "progress", "step", "done", "total"}`` then one ``{"event": "result", ...}``), nothing
in a pipe without ``--json``. Exit 0 when done, 1 when undone or left open (the line says why and what
to do); a refusal is one line and the token is unchanged.
"""
from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

from agent.api.client import AgentCallError, AgentClient, AgentUnavailableError
from agent.commands import CommandError, add_socket_option, socket_path
from proto.cns.v1 import agent_pb2 as pb

_CODE = re.compile(r"^agent error [A-Z_?]+: ")
PARTITIONS = ("cdrom", "disk")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("token", help="update a USB token's partitions or firmware")
    tsub = p.add_subparsers(dest="token_command", required=True, metavar="ACTION")
    for name, text in (("update", "write a signed CD-ROM or disk image into that partition"),
                       ("firmware", "flash a signed firmware image")):
        x = tsub.add_parser(name, help=text)
        if name == "update":
            x.add_argument("--partition", required=True, choices=PARTITIONS,
                           help="the partition the image is for: cdrom (read-only software) or disk")
        x.add_argument("image", type=Path, metavar="IMAGE", help="the signed image file")
        x.add_argument("--serial", default="", help="the token's serial (needed when several are plugged in)")
        x.add_argument("--json", action="store_true", help="JSON lines")
        add_socket_option(x)
        x.set_defaults(func=run, token_target=name)


class _Bar:
    """A rich progress bar on stderr when it is a terminal; one task per step."""

    def __init__(self) -> None:
        self.bar = None
        self.tasks: dict[str, int] = {}

    def update(self, step: str, done: int, total: int) -> None:
        if not sys.stderr.isatty():
            return
        if self.bar is None:
            from rich.console import Console
            from rich.progress import BarColumn, Progress, TaskProgressColumn, TimeRemainingColumn
            self.bar = Progress("{task.description:10}", BarColumn(), TaskProgressColumn(), TimeRemainingColumn(),
                                console=Console(stderr=True))
            self.bar.start()
        if step not in self.tasks:
            self.tasks[step] = self.bar.add_task(step, total=total or 1)
        self.bar.update(self.tasks[step], completed=done, total=total or 1)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()


def follow_update(args: argparse.Namespace, request, what: str):
    """Send ``request`` (UpdateToken) to the agent and follow it: a progress bar on a terminal or
    ``--json`` progress lines; the result, or a one-line ``CommandError``. ``what``: for the message."""
    bar, result = _Bar(), None
    try:
        with AgentClient(socket_path(args)) as client:
            for msg in client.update_token(request):
                if msg.HasField("result"):
                    result = msg.result
                elif args.json:
                    print(json.dumps({"event": "progress", "step": msg.step, "done": msg.done,
                                      "total": msg.total}), flush=True)
                else:
                    bar.update(msg.step, msg.done, msg.total)
    except AgentUnavailableError as exc:
        raise CommandError(str(exc)) from None
    except AgentCallError as exc:
        raise CommandError(_CODE.sub("", str(exc))) from None
    finally:
        bar.close()
    if result is None:
        raise CommandError(f"the agent ended {what} without a result; run the command again")
    return result


def run(args: argparse.Namespace) -> int:
    image = args.image.expanduser().resolve()
    if not image.is_file():
        raise CommandError(f"{args.image}: no such file; give the signed image's path")
    target = args.partition if args.token_target == "update" else "firmware"
    request = pb.UpdateTokenRequest(serial=args.serial, target=target, image_path=str(image))
    result = follow_update(args, request, "the token update")
    d = {"serial": result.serial, "state": result.state, "target": result.target, "version": result.version,
         "message": result.message, "sent_bytes": result.sent_bytes}
    if args.json:
        print(json.dumps({"event": "result", **d}, sort_keys=True), flush=True)
    elif result.state == "done":
        print(f"token {d['serial']}: {d['target']} {d['version']} installed")
    else:
        print(f"token {d['serial']}: {d['target']} {d['version']} not installed ({d['state']}): {d['message']}")
    return 0 if result.state == "done" else 1
