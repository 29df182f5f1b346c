"""CLI command groups of ``cns-agent``; each module has ``register(subparsers)``.

Commands translate our library errors into ``CommandError`` (one clear line for
the user); ``agent.cli`` prints it. Socket options are shared via ``add_socket_option``.
"""
from __future__ import annotations

import argparse
from pathlib import Path


class CommandError(Exception):
    def __init__(self, message: str, exit_code: int = 1) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def add_socket_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--socket", type=Path, default=None,
                        help="the agent's Unix socket (default: $XDG_RUNTIME_DIR/cns-agent/agent.sock)")


def socket_path(args: argparse.Namespace) -> Path:
    from agent.api.rundir import default_socket_path
    return args.socket or default_socket_path()
