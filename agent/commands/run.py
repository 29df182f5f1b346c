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
import os
import signal
from importlib import metadata
from pathlib import Path

from agent.api.rundir import RunDirError
from agent.api.server import SHUTDOWN_GRACE_S, AgentFacts, AgentLocalService, start_server
from agent.commands import CommandError, add_socket_option, socket_path
from agent.devices.catalog import Catalog, CatalogError
from agent.devices.inspect import reread_card
from agent.devices.monitor import PcscMonitor
from agent.devices.pcsc import PcscLink
from agent.devices.registry import DeviceRegistry
from agent.api.operations import Operations
from agent.ops.errors import OperationError
from agent.ops.station import StationOps
import station_config

log = logging.getLogger("agent.run")
MONITOR_CHECK_S = 1.0
RECOVERY_RETRY_S = float(os.environ.get("CNS_AGENT_RECOVERY_RETRY_S", "30"))   # an open operation, card present


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("run", help="run the agent: watch readers and cards, serve the local API")
    p.add_argument("--profiles", type=Path, default=None, help="card profile directory (default: the built-in set)")
    p.add_argument("--config", type=Path, default=None,
                   help="station configuration (station_config schema); enables device operations")
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


async def _recover_on_insert(registry: DeviceRegistry, catalog: Catalog, ops,
                             retry_s: float = RECOVERY_RETRY_S) -> None:
    """Finish or undo an interrupted operation (personalization or renewal) as soon as its card is
    seen again, or at start. An operation left open (request still queued at the personalizer,
    personalizer unreachable) is tried again every ``retry_s`` while its card stays in the reader:
    it follows the same request ids, so a queued request finishes without a reinsert. Each device
    recovers in its own task: a recovery waiting on one reader never delays another."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue = asyncio.Queue()
    _seq, readers, unsubscribe = registry.subscribe_with_snapshot(
        lambda ev: loop.call_soon_threadsafe(queue.put_nowait, ev.reader))
    for r in readers:
        queue.put_nowait(r)

    def again_later(name: str) -> None:
        def push() -> None:
            view = registry.reader(name)
            if view is not None:
                queue.put_nowait(view)
        loop.call_later(retry_s, push)

    ops.on_open = again_later   # an operation the API left open (CA closed, stopped) is retried too
    running: dict[str, asyncio.Task] = {}

    async def recover_one(reader) -> None:
        card = reader.card
        try:
            out = await ops.recover(connect=PcscLink, reader=reader.name, card_serial=card.serial,
                                    model=catalog.models[card.model_id])
            if out is not None:
                log.info("card %s: interrupted %s finished as %s", card.serial, out.op_id, out.state)
                if out.state != "open":   # the card changed (finished or undone): show it as it is now
                    try:
                        await asyncio.to_thread(reread_card, registry, reader.name, PcscLink,
                                                catalog.models[card.model_id])
                    except Exception as exc:
                        log.info("could not re-read the card in %s after recovery: %s", reader.name, exc)
        except Exception as exc:  # a card pulled again, the personalizer down: retried
            log.warning("card %s: recovery not finished (%s); retried in %.0f s and when the card is seen "
                        "again", card.serial, exc, retry_s)
            again_later(reader.name)

    try:
        while True:
            reader = await queue.get()
            card = reader.card
            if card is None or not card.serial or card.model_id not in catalog.models:
                continue
            task = running.get(reader.name)
            if task is not None and not task.done():
                continue   # one recovery per device at a time; others go on (locks are per device)
            running[reader.name] = asyncio.create_task(recover_one(reader), name=f"recover:{reader.name}")
    finally:
        unsubscribe()
        for task in running.values():
            task.cancel()
        await asyncio.gather(*running.values(), return_exceptions=True)


async def run_agent(sock: Path, profiles: Path | None, config: Path | None = None) -> None:
    catalog = Catalog.load(profiles)
    log.info("loaded %d card model(s): %s", len(catalog.models), ", ".join(catalog.model_ids) or "none")
    registry = DeviceRegistry()
    monitor = PcscMonitor(registry, catalog)
    facts = AgentFacts(version=_version(), socket_path=str(sock), profiles_dir=str(profiles or ""),
                       model_ids=catalog.model_ids, pcsc_status=lambda: monitor.status)
    ops = operations = None
    if config is not None:
        try:
            cfg = station_config.load(config)
            ops = await StationOps.open(cfg)
        except (station_config.StationConfigError, OperationError) as exc:
            raise CommandError(str(exc)) from exc
        operations = Operations(ops, catalog, registry, PcscLink)
        log.info("station %s (%s): device operations enabled, personalizer %s", cfg.station.id,
                 cfg.station.chamber_code, cfg.personalizer.primary)
    server = await start_server(sock, AgentLocalService(registry, facts, operations))
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
    if ops is not None:
        tasks.add(asyncio.create_task(_recover_on_insert(registry, catalog, ops), name="recover-on-insert"))
        if cfg.station.role == "station":   # issue 18: renew the station certificate at start, then daily
            from agent.uplink.enroll import renewal_loop
            tasks.add(asyncio.create_task(renewal_loop(cfg), name="station-cert-renewal"))
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
        if ops is not None:
            await ops.close()
        log.info("agent stopped")
    if failure is not None:
        raise CommandError(f"agent stopped on an error: {failure}")


def run(args: argparse.Namespace) -> int:
    try:
        asyncio.run(run_agent(socket_path(args), args.profiles, args.config))
    except (CatalogError, RunDirError) as exc:
        raise CommandError(str(exc)) from exc
    return 0
