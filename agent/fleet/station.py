"""A station agent's fleet stream, fed by its device registry: the task the composition root supervises.

``run_station(cfg, registry, version=...)`` runs a ``FleetAgent`` whose hello lists the registry's
readers and its read cards (serial, model, reader: no holder data leaves the station), and whose
inventory deltas follow the registry's events (card read → present; card removed or its reader gone →
removed; readers added or removed → the reader list). The registry calls its listeners from the
monitor thread; they hand the event to the loop with ``call_soon_threadsafe`` and never block.

Commands this agent runs today (``StationExecutor``): refresh_inventory (the whole inventory again,
as a delta) and, with ``releases`` (``agent.fleet.releases.ReleaseInstaller``: the station has an
``[updates]`` repository and a USB backend), install_release: the token release plan, then the
token's own attestation in the result. Renewals and log collection are refused with a reason naming
what is missing, until the operations behind them are wired here; a refused command is reported REJECTED.
Certificate expiry per keyset is not in the registry yet, so cards are reported without it.
With ``tokens`` (a ``TokenSource``: the composition root's ``Agent``), the USB tokens are in the hello
and their deltas follow the USB backend's events: each with its firmware, partition versions and the
release it runs as a whole (``token_release``, issue 14: the fleet store's ``token_release``).
Imports ``agent.devices.registry`` and ``agent.fleet.client``.
"""
from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Protocol

from agent.devices.registry import CardState, DeviceEvent, DeviceRegistry, EventKind, ReaderView
from agent.fleet.client import DeviceInfo, FleetAgent, Options, Outcome
from proto.cns.v1 import fleet_pb2 as pb


def card_device(reader: ReaderView) -> DeviceInfo | None:
    card = reader.card
    if card is None or card.state is not CardState.READY or not card.serial:
        return None
    return DeviceInfo(serial=card.serial, kind="card", model=card.model_id, reader=reader.name)


class TokenSource(Protocol):
    def tokens(self) -> list[dict]:
        """Rows as ``cns-agent devices --json`` lists them, with ``release``."""
    def subscribe_tokens(self, listener: Callable[[str, dict], None]) -> Callable[[], None]:
        """``listener("arrived" | "changed" | "left", row)``; returns the unsubscribe."""


def token_device(row: dict) -> DeviceInfo | None:
    if row.get("mode") not in ("runtime", "bootloader") or not row.get("serial"):
        return None
    parts = " ".join(f"{k} {p.get('version', '')}" for k, p in sorted((row.get("partitions") or {}).items()))
    return DeviceInfo(serial=row["serial"], kind="token", model=row.get("model", ""),
                      firmware_version=row.get("firmware", ""), partition_version=parts,
                      token_release=row.get("release", ""))


class RegistryInventory:
    def __init__(self, registry: DeviceRegistry, tokens: TokenSource | None = None):
        self.registry, self.tokens = registry, tokens

    async def snapshot(self) -> tuple[list[str], list[DeviceInfo]]:
        _, readers = self.registry.snapshot()
        devices = [d for d in map(card_device, readers) if d is not None]
        if self.tokens is not None:
            rows = await asyncio.to_thread(self.tokens.tokens)   # reads the release manifests on disk
            devices += [d for d in map(token_device, rows) if d is not None]
        return [r.name for r in readers], devices


class StationExecutor:
    def __init__(self, inventory: RegistryInventory, releases=None):
        self.inventory = inventory
        self.releases = releases       # agent.fleet.releases.ReleaseInstaller, or None
        self.agent: FleetAgent | None = None

    def accept(self, command: pb.FleetCommand) -> str | None:
        if command.kind == pb.FLEET_COMMAND_REFRESH_INVENTORY:
            return None
        if command.kind == pb.FLEET_COMMAND_INSTALL_RELEASE:
            if self.releases is None:
                return ("install_release needs a station configuration with an [updates] release repository and "
                        "the USB token backend")
            return self.releases.accept(command)
        return f"{pb.FleetCommandKind.Name(command.kind)} is not supported by this agent version yet"

    async def run(self, command: pb.FleetCommand, progress) -> Outcome:
        if command.kind == pb.FLEET_COMMAND_INSTALL_RELEASE:
            return await self.releases.install(command, progress)
        readers, devices = await self.inventory.snapshot()
        self.agent.report_delta(present=devices, readers=readers)
        return Outcome(True, f"{len(devices)} device(s) in {len(readers)} reader(s)")


class _Follower:
    """Registry events → inventory deltas, on the loop."""

    def __init__(self, agent: FleetAgent, registry: DeviceRegistry, loop: asyncio.AbstractEventLoop):
        self.agent, self.registry, self.loop = agent, registry, loop
        self.serials: dict[str, str] = {}   # reader → serial reported present

    def listener(self, event: DeviceEvent) -> None:   # the monitor thread
        self.loop.call_soon_threadsafe(self.apply, event)

    def apply(self, event: DeviceEvent) -> None:
        name = event.reader.name
        if event.kind is EventKind.CARD_READ:
            dev = card_device(event.reader)
            if dev is not None:
                self.serials[name] = dev.serial
                self.agent.report_delta(present=[dev])
        elif event.kind in (EventKind.CARD_REMOVED, EventKind.READER_REMOVED, EventKind.CARD_INSERTED):
            serial = self.serials.pop(name, None)
            if serial is not None:
                self.agent.report_delta(removed=[serial])
        if event.kind in (EventKind.READER_ADDED, EventKind.READER_REMOVED):
            self.agent.report_delta(readers=[r.name for r in self.registry.snapshot()[1]])

    def token_listener(self, kind: str, row: dict) -> None:
        self.loop.call_soon_threadsafe(self.apply_token, kind, row)

    def apply_token(self, kind: str, row: dict) -> None:
        dev = token_device(row)
        if dev is None:
            return
        if kind == "left":
            self.agent.report_delta(removed=[dev.serial])
        else:
            self.agent.report_delta(present=[dev])


async def run_station(cfg, registry: DeviceRegistry, *, version: str, options: Options = Options(),
                      tokens: TokenSource | None = None, releases=None) -> None:
    """Until cancelled. One line in the composition root:
    ``agent.add_task("fleet", lambda: run_station(cfg.station, registry, version=cfg.version, tokens=agent))``."""
    inventory = RegistryInventory(registry, tokens)
    executor = StationExecutor(inventory, releases)
    agent = executor.agent = FleetAgent(cfg, inventory, executor, version=version, options=options)
    follower = _Follower(agent, registry, asyncio.get_running_loop())
    _, readers = registry.snapshot()
    follower.serials = {r.name: d.serial for r in readers if (d := card_device(r)) is not None}
    unsubscribe = registry.subscribe(follower.listener)
    unsubscribe_tokens = tokens.subscribe_tokens(follower.token_listener) if tokens is not None else (lambda: None)
    try:
        await agent.run()
    finally:
        unsubscribe()
        unsubscribe_tokens()
