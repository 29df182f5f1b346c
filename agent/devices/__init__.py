"""Devices: the ``DeviceBackend`` seam and its PC/SC backend (readers and cards, watched and opened).

Public API::

    from agent.devices import Catalog, DeviceRegistry, PcscBackend
    catalog = Catalog.load(profiles_dir)          # card models (firmware_profiles, models only)
    registry = DeviceRegistry()                   # live list + numbered events, thread-safe
    backend = PcscBackend(registry, catalog)      # a DeviceBackend (agent.devices.backend)
    await backend.monitor()                       # a supervised task of agent.app until cancelled
    link = backend.open_link(reader)              # a DeviceLink: transmit, transaction(), close

``pcsc`` (card I/O) and ``monitor`` (the status-change loop) are the modules that call
pyscard. Never imports the emulator.
"""
from agent.devices.catalog import Catalog, CatalogError
from agent.devices.inspect import Inspection, inspect_card
from agent.devices.backend import DeviceBackend, DeviceLink
from agent.devices.monitor import PcscMonitor
from agent.devices.pcsc import PcscContext, PcscLink, PcscTransport
from agent.devices.pcsc_backend import PcscBackend
from agent.devices.registry import CardState, CardView, DeviceEvent, DeviceRegistry, EventKind, ReaderView

__all__ = ["Catalog", "CatalogError", "DeviceBackend", "DeviceLink", "Inspection", "inspect_card", "PcscBackend",
           "PcscLink", "PcscMonitor", "PcscContext", "PcscTransport",
           "CardState", "CardView", "DeviceEvent", "DeviceRegistry", "EventKind", "ReaderView"]
