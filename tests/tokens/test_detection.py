"""The agent's USB backend finds tokens (runtime, bootloader, foreign) and reports hotplug."""
from __future__ import annotations

import dataclasses
import threading
import time

import pytest

from agent.devices.usb import TokenGone, UsbTokenBackend
from firmware_profiles.usbemu import make_token


def test_scan_shows_model_serial_firmware_partitions_and_chip(token, bus, model):
    claimed = []
    orig = bus.claim_interface
    bus.claim_interface = lambda h, i: (claimed.append(i), orig(h, i))
    [info] = UsbTokenBackend(bus).scan()
    assert (info.model_id, info.serial, info.mode) == (model.id, token.serial, "runtime")
    assert info.firmware == model.firmware.version
    assert info.partitions["cdrom"]["version"] == "1.0.0"
    assert info.partitions["cdrom"]["sha256"] == token.meta["images"]["cdrom"]["sha256"]
    assert info.chip_serial == token.card.serial  # pairs the token with its chip (and so its PC/SC reader)
    os_owned = {1} | ({0} if model.reader == "ccid" else set())  # mass storage, CCID reader
    assert not os_owned & set(claimed)  # never claims what the OS drivers own
    d = info.as_dict()
    assert d["usb_id"] == f"1209:{model.usb.runtime_product_id:04x}" and d["kind"] == "usb-token"
    assert token.serial in info.describe() and model.firmware.version in info.describe()


def test_a_token_in_its_bootloader_is_found_by_the_bootloader_ids(token, bus, model):
    backend = UsbTokenBackend(bus)
    backend.open().dfu_detach()
    [info] = backend.scan()
    assert info.mode == "bootloader" and info.product_id == model.usb.bootloader_product_id
    assert info.serial == token.serial and "bootloader" in info.describe()


def test_foreign_composite_token_is_listed_not_managed(tmp_path, token_models, bus):
    m = token_models["cns-token-ccid"]
    foreign = dataclasses.replace(m, id="bit4id", usb=dataclasses.replace(m.usb, vendor_id=0x25DD,
                                                                         runtime_product_id=0x2351))
    t = make_token(foreign, tmp_path / "f.bin")
    bus.plug(t)
    [info] = UsbTokenBackend(bus).scan()
    assert info.mode == "foreign" and info.model_name == "Bit4id Digital DNA Key"
    with pytest.raises(TokenGone, match="no CNS token is plugged in"):
        UsbTokenBackend(bus).open()


def test_hotplug_events_within_100_ms(tmp_path, token_models, bus):
    t = make_token(token_models["cns-token-hid"], tmp_path / "f.bin")
    backend = UsbTokenBackend(bus)
    seen: list[tuple[str, float]] = []
    got = threading.Event()

    def on_event(kind, info):
        seen.append((kind, time.monotonic()))
        got.set()
    backend.watch(on_event)
    try:
        for action, kind in ((bus.plug, "arrived"), (bus.unplug, "left"), (bus.plug, "arrived")):
            got.clear()
            t0 = time.monotonic()
            action(t)
            assert got.wait(1.0)
            assert seen[-1][0] == kind and seen[-1][1] - t0 < 0.1
    finally:
        backend.stop()


def test_usb_backend_monitor_keeps_tokens_and_reports_events(tmp_path, token_models, bus):
    import asyncio

    from agent.devices.usb import UsbBackend
    t = make_token(token_models["cns-token-ccid"], tmp_path / "f.bin")
    backend = UsbBackend(usb_backend=bus)
    events = []
    backend.subscribe(lambda kind, info: events.append((kind, info.serial, time.monotonic())))

    async def scenario():
        task = asyncio.create_task(backend.monitor())
        try:
            await asyncio.sleep(0.05)
            assert backend.status == "ok" and backend.snapshot() == []
            t0 = time.monotonic()
            bus.plug(t)
            while not events:
                await asyncio.sleep(0.005)
            assert events[-1][:2] == ("arrived", t.serial) and events[-1][2] - t0 < 0.1
            [row] = backend.snapshot()
            assert row["model"] == "cns-token-ccid" and row["firmware"] == "1.2.0"
            assert row["partitions"]["cdrom"]["version"] == "1.0.0" and row["chip_serial"] == t.card.serial
            link = backend.open_link(t.serial)
            with link.transaction():
                assert link.token.info()["serial"] == t.serial
            t0 = time.monotonic()
            bus.unplug(t)
            while events[-1][0] != "left":
                await asyncio.sleep(0.005)
            assert events[-1][2] - t0 < 0.1 and backend.snapshot() == []
        finally:
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
    asyncio.run(scenario())


def test_a_token_is_paired_with_its_pcsc_reader_by_usb_serial():
    from agent.devices.usb import reader_for
    names = ["Virtual PCD 00 00", "CNS Token CCID [CNS reader] (TKC12345678) 00 00",
             "CNS Token CCID [CNS reader] (TKC87654321) 01 00"]
    assert reader_for("TKC12345678", names) == names[1]
    assert reader_for("TKC1234567", names) is None  # exact serial only, never a prefix
    assert reader_for("", names) is None
    assert reader_for("TKC12345678", names + [names[1].replace(" 00 00", " 02 00")]) is None  # ambiguous


class _NoHotplug:
    """The emulated bus as a pyusb backend without a hotplug notification (libusb through pyusb)."""

    def __init__(self, bus):
        self._bus = bus

    def __getattr__(self, name):
        if name == "add_hotplug_listener":
            raise AttributeError(name)
        return getattr(self._bus, name)


def _monitor_scenario(backend, body):
    import asyncio

    async def run():
        task = asyncio.create_task(backend.monitor())
        try:
            await asyncio.sleep(0.05)
            await body()
        finally:
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
    asyncio.run(run())


@pytest.mark.parametrize("signal", [True, False], ids=["hotplug-signal", "polling"])
def test_an_idle_monitor_does_not_talk_to_a_plugged_token_and_still_sees_hotplug_in_100_ms(
        tmp_path, token_models, bus, signal):
    """Issue 13 item 3: detection is cheap. A token that stays plugged in is read once, not at every
    scan (the old scan sent ~30 USB transfers a second to an idle token); insert and remove events
    still come within 100 ms, with the bus's hotplug signal and with polling alike."""
    import asyncio

    from agent.app import USB_POLL_S
    from agent.devices.usb import UsbBackend
    t = make_token(token_models["cns-token-ccid"], tmp_path / "f.bin")
    backend = UsbBackend(usb_backend=bus if signal else _NoHotplug(bus), poll_s=USB_POLL_S)
    events = []
    backend.subscribe(lambda kind, info: events.append((kind, time.monotonic())))

    async def body():
        assert backend.detection == ("hotplug signal" if signal else "polling every 90 ms")
        for action, kind in ((bus.plug, "arrived"), (bus.unplug, "left"), (bus.plug, "arrived")):
            t0, n = time.monotonic(), len(events)
            action(t)
            while len(events) == n:
                assert time.monotonic() - t0 < 1
                await asyncio.sleep(0.002)
            assert events[-1][0] == kind and events[-1][1] - t0 < 0.1, (kind, events[-1][1] - t0)
        await asyncio.sleep(0.05)
        before = bus.transfers
        await asyncio.sleep(0.6)                                   # idle: several polls, no signal
        assert bus.transfers == before, f"{bus.transfers - before} USB transfers to an idle token"
        assert [k for k, _ in events] == ["arrived", "left", "arrived"]
    _monitor_scenario(backend, body)


def test_a_token_is_read_again_after_our_operation_and_after_a_re_enumeration(tmp_path, token_models, bus):
    """The cache never hides a change: an operation under ``exclusive()`` has the token read again at
    once (``changed`` with the new state), and a DFU re-enumeration is a new device on the bus."""
    import asyncio

    from agent.devices.usb import UsbBackend
    t = make_token(token_models["cns-token-hid"], tmp_path / "f.bin")
    bus.plug(t)
    backend = UsbBackend(usb_backend=bus)
    events = []
    backend.subscribe(lambda kind, info: events.append((kind, info)))

    async def body():
        while not events:
            await asyncio.sleep(0.005)
        assert events[-1][0] == "arrived" and events[-1][1].partitions["disk"]["version"] != "9.9.9"
        async with backend.exclusive():                # as a partition update would, behind the cache
            meta = dict(t.meta)
            meta["images"] = dict(meta["images"], disk=dict(meta["images"]["disk"], version="9.9.9"))
            t.meta = meta
        t0 = time.monotonic()
        while events[-1][0] != "changed":
            assert time.monotonic() - t0 < 1, events
            await asyncio.sleep(0.005)
        assert events[-1][1].partitions["disk"]["version"] == "9.9.9" and time.monotonic() - t0 < 0.1
        await asyncio.to_thread(lambda: backend.detector.open().dfu_detach())   # re-enumerates
        while backend.snapshot()[0]["mode"] != "bootloader":
            assert time.monotonic() - t0 < 1, backend.snapshot()
            await asyncio.sleep(0.005)
    _monitor_scenario(backend, body)
