"""``cns-agent``: the agent daemon and its local client commands.

One file per command group in ``agent.commands`` (each has ``register(subparsers)``
setting ``func``); this module builds the parser, configures logging and is the
one top-level error handler: our errors print one line and exit 1, Ctrl-C exits
130, anything else is a bug and shows its traceback. To add a group (e.g.
``personalize``, ``renew``, ``pin``) write ``agent/commands/<group>.py`` and list
it in ``COMMAND_MODULES``.
"""
from __future__ import annotations

import argparse
import importlib
import logging
import sys

from agent.commands import CommandError

COMMAND_MODULES = ("run", "devices", "personalize", "renew", "lifecycle", "pin")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cns-agent", description="CNS workstation agent and its local client")
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(f"agent.commands.{name}").register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return int(args.func(args) or 0)
    except CommandError as exc:
        print(f"cns-agent {args.command}: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
