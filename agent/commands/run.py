"""``cns-agent run``: the agent (``agent.app.Agent``) until SIGTERM/SIGINT.

Loads the station configuration (when given), builds the agent through its
composition root with the PC/SC and USB token backends (``--no-tokens``: PC/SC
only) and the gRPC uplink, and runs it;
SIGTERM/SIGINT start the graceful shutdown. A supervised task that died makes
the command fail with one line; a self-update that installed a newer build
stops the agent with exit status 75 so the per-user service starts it again on it.
"""
from __future__ import annotations

import argparse
import asyncio
import signal
from importlib import metadata
from pathlib import Path

from agent.api.rundir import RunDirError
from agent.app import CARD_ONLY_BACKENDS, DEFAULT_BACKENDS, Agent, AgentConfig, AgentStopped, AgentUpdated
from agent.commands import CommandError, add_socket_option, socket_path
from agent.devices.catalog import CatalogError
from agent.ops.errors import OperationError
import station_config


UPDATED_EXIT = 75   # EX_TEMPFAIL: not a crash, but non-zero so that Restart=on-failure starts the new build


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("run", help="run the agent: watch readers and cards, serve the local API")
    p.add_argument("--profiles", type=Path, default=None, help="card profile directory (default: the built-in set)")
    p.add_argument("--config", type=Path, default=None,
                   help="station configuration (station_config schema); enables device operations")
    p.add_argument("--no-tokens", action="store_true",
                   help="do not watch USB tokens (readers and cards only)")
    add_socket_option(p)
    p.set_defaults(func=run)


def _version() -> str:
    try:
        return metadata.version("cns-devices")
    except metadata.PackageNotFoundError:  # pragma: no cover - running from a plain checkout
        return "0+unknown"


async def run_agent(sock: Path, profiles: Path | None, config: Path | None = None, *, tokens: bool = True) -> None:
    try:
        station = station_config.load(config) if config is not None else None
        agent = await Agent.build(AgentConfig(socket=sock, profiles=profiles, station=station, version=_version()),
                                  backends=DEFAULT_BACKENDS if tokens else CARD_ONLY_BACKENDS)
    except (station_config.StationConfigError, OperationError) as exc:
        raise CommandError(str(exc)) from exc
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await agent.run(stop)
    except AgentStopped as exc:
        if isinstance(exc.__cause__, AgentUpdated):   # the service (Restart=on-failure) starts the new build
            raise CommandError(f"{exc.__cause__}: stopping to start on it (the per-user service restarts the "
                               "agent by itself; otherwise run `cns-agent run` again)", UPDATED_EXIT) from exc
        raise CommandError(str(exc)) from exc
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)


def run(args: argparse.Namespace) -> int:
    try:
        asyncio.run(run_agent(socket_path(args), args.profiles, args.config, tokens=not args.no_tokens))
    except (CatalogError, RunDirError) as exc:
        raise CommandError(str(exc)) from exc
    return 0
