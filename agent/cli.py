"""``cns-agent``: the agent daemon and its local client commands.

One file per command group in ``agent.commands`` (each has ``register(subparsers)``
setting ``func``); this module builds the parser, configures logging and is the
one top-level error handler: our errors print one line and exit 1, Ctrl-C exits
130, an unusable path (``OSError`` naming a file) prints one line and exits 1,
a closed output pipe (``cns-agent devices | head -1``) exits quietly,
anything else is a bug and shows its traceback. ``--json`` is accepted before
the command too (``cns-agent --json devices``) for every command that has it. To add a group (e.g.
``personalize``, ``renew``, ``pin``) write ``agent/commands/<group>.py`` and list
it in ``COMMAND_MODULES``. ``--log-format json`` (or ``CNS_LOG_FORMAT=json``) writes one JSON object
per log line (``cns_spec.logs``, the daemon's format).
"""
from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys

from agent.commands import CommandError
from cns_spec import logs

COMMAND_MODULES = ("run", "devices", "personalize", "renew", "lifecycle", "pin", "conformance", "enroll", "service",
                   "update", "token")


def build_parser() -> argparse.ArgumentParser:
    from agent.commands.run import _version

    parser = argparse.ArgumentParser(prog="cns-agent", description="CNS workstation agent and its local client")
    parser.add_argument("--version", action="version", version=f"cns-agent {_version()}")
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    parser.add_argument("--log-format", choices=logs.FORMATS, default=os.environ.get("CNS_LOG_FORMAT", "text"),
                        help="log lines as text or one JSON object per line (default: $CNS_LOG_FORMAT, else text)")
    parser.add_argument("--json", action="store_true", dest="json_first",
                        help="JSON output (the same as --json after the command)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(f"agent.commands.{name}").register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("GRPC_VERBOSITY", "ERROR")   # gRPC's own log lines are not for the operator
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.json_first:
        if not hasattr(args, "json"):
            parser.error(f"{args.command} has no JSON output")
        args.json = True
    if args.log_format not in logs.FORMATS:   # from $CNS_LOG_FORMAT: argparse checks only what was typed
        parser.error(f"CNS_LOG_FORMAT must be one of {', '.join(logs.FORMATS)}; got {args.log_format!r}")
    logging.basicConfig(level=args.log_level, stream=sys.stderr, format=logs.TEXT_FORMAT)
    logs.use(args.log_format)
    try:
        rc = int(args.func(args) or 0)
        sys.stdout.flush()
        return rc
    except BrokenPipeError:          # whoever read our output stopped reading
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except CommandError as exc:
        print(f"cns-agent {args.command}: {exc}", file=sys.stderr)
        return exc.exit_code
    except OSError as exc:           # a path we were told to use is missing or not ours to write
        if exc.filename is None:
            raise
        print(f"cns-agent {args.command}: cannot use {exc.filename}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
