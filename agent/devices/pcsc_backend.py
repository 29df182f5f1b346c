"""The PC/SC ``DeviceBackend``: readers and cards through pcscd (``agent.devices.backend``).

``monitor()`` runs the ``PcscMonitor`` thread for as long as the task runs (it is
stopped, joined in a worker thread, when the task is cancelled) and raises if
that thread dies. ``open_link(reader)`` is a ``PcscLink`` with its own PC/SC
context. Imports ``agent.devices`` only.
"""
from __future__ import annotations

import asyncio

from agent.devices.catalog import Catalog
from agent.devices.monitor import PcscMonitor
from agent.devices.pcsc import PcscLink
from agent.devices.registry import DeviceRegistry

CHECK_S = 1.0   # how often the task looks whether the monitor thread still runs


class PcscBackend:
    name = "pcsc"

    def __init__(self, registry: DeviceRegistry, catalog: Catalog, *, poll_ms: int | None = None) -> None:
        kw = {} if poll_ms is None else {"poll_ms": poll_ms}
        self._monitor = PcscMonitor(registry, catalog, **kw)

    @property
    def status(self) -> str:
        return self._monitor.status

    async def monitor(self) -> None:
        self._monitor.start()
        try:
            while self._monitor.is_alive():
                await asyncio.sleep(CHECK_S)
            raise RuntimeError(f"the PC/SC monitor thread stopped: {self._monitor.failure!r}")
        finally:
            await asyncio.shield(asyncio.to_thread(self._monitor.stop))

    def open_link(self, device: str) -> PcscLink:
        return PcscLink(device)
