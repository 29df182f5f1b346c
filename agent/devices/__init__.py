"""Devices: PC/SC readers and cards, watched and read.

Public API::

    from agent.devices import Catalog, DeviceRegistry, PcscMonitor, PcscTransport
    catalog = Catalog.load(profiles_dir)          # card models (firmware_profiles, models only)
    registry = DeviceRegistry()                   # live list + numbered events, thread-safe
    monitor = PcscMonitor(registry, catalog); monitor.start(); ...; monitor.stop()

``pcsc`` is the only module that calls pyscard. Never imports the emulator.
"""
from agent.devices.catalog import Catalog, CatalogError
from agent.devices.inspect import Inspection, inspect_card
from agent.devices.monitor import PcscMonitor
from agent.devices.pcsc import PcscContext, PcscTransport
from agent.devices.registry import CardState, CardView, DeviceEvent, DeviceRegistry, EventKind, ReaderView

__all__ = ["Catalog", "CatalogError", "Inspection", "inspect_card", "PcscMonitor", "PcscContext", "PcscTransport",
           "CardState", "CardView", "DeviceEvent", "DeviceRegistry", "EventKind", "ReaderView"]
