"""``cns-agent run``: the PC/SC monitor and the local API until SIGTERM/SIGINT.

Every asyncio task is named and watched by ``supervise``: the first one to end
(a signal, the gRPC server stopping, the monitor thread dying) starts a
graceful shutdown (server drained with a grace period, monitor stopped, socket
removed); a task that died with an error makes the command fail.
"""
from __future__ import annotations

import argparse
import asyncio
import logging
import signal
from importlib import metadata
from pathlib import Path

from agent.api.rundir import RunDirError
from agent.api.server import SHUTDOWN_GRACE_S, AgentFacts, AgentLocalService, start_server
from agent.commands import CommandError, add_socket_option, socket_path
from agent.devices.catalog import Catalog, CatalogError
from agent.devices.monitor import PcscMonitor
from agent.devices.registry import DeviceRegistry

log = logging.getLogger("agent.run")
MONITOR_CHECK_S = 1.0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("run", help="run the agent: watch readers and cards, serve the local API")
    p.add_argument("--profiles", type=Path, default=None, help="card profile directory (default: the built-in set)")
    add_socket_option(p)
    p.set_defaults(func=run)


def _version() -> str:
    try:
        return metadata.version("cns-devices")
    except metadata.PackageNotFoundError:  # pragma: no cover - running from a plain checkout
        return "0+unknown"


async def _watch_monitor(monitor: PcscMonitor) -> None:
    while monitor.is_alive():
        await asyncio.sleep(MONITOR_CHECK_S)
    raise RuntimeError(f"the PC/SC monitor thread stopped: {monitor.failure!r}")


async def run_agent(sock: Path, profiles: Path | None) -> None:
    catalog = Catalog.load(profiles)
    log.info("loaded %d card model(s): %s", len(catalog.models), ", ".join(catalog.model_ids) or "none")
    registry = DeviceRegistry()
    monitor = PcscMonitor(registry, catalog)
    facts = AgentFacts(version=_version(), socket_path=str(sock), profiles_dir=str(profiles or ""),
                       model_ids=catalog.model_ids, pcsc_status=lambda: monitor.status)
    server = await start_server(sock, AgentLocalService(registry, facts))
    monitor.start()
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    tasks = {
        asyncio.create_task(stop.wait(), name="signals"),
        asyncio.create_task(server.wait_for_termination(), name="grpc-server"),
        asyncio.create_task(_watch_monitor(monitor), name="pcsc-monitor-watch"),
    }
    log.info("agent running (pid %d)", __import__("os").getpid())
    failure: BaseException | None = None
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        for task in done:
            if task.get_name() != "signals":
                failure = task.exception() or RuntimeError(f"task {task.get_name()} ended unexpectedly")
                log.error("task %s ended: %s", task.get_name(), failure)
    finally:
        log.info("shutting down")
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
        await server.stop(SHUTDOWN_GRACE_S)
        await asyncio.to_thread(monitor.stop)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        try:
            sock.unlink()
        except FileNotFoundError:
            pass
        log.info("agent stopped")
    if failure is not None:
        raise CommandError(f"agent stopped on an error: {failure}")


def run(args: argparse.Namespace) -> int:
    try:
        asyncio.run(run_agent(socket_path(args), args.profiles))
    except (CatalogError, RunDirError) as exc:
        raise CommandError(str(exc)) from exc
    return 0
