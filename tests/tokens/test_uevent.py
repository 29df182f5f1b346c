"""The USB backend's hotplug signal from the kernel's uevents (agent.devices.uevent), so the idle agent
scans the bus on an event and every IDLE_S, instead of polling libusb every 90 ms (issue 18: idle CPU).

The kernel part is real: a uevent made by writing to a sysfs ``uevent`` file (root; this machine has no
USB bus, so the test listens to the ``net`` subsystem of the loopback device for the same mechanism)."""
from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path

from agent.devices import usb as usbmod
from agent.devices.uevent import KernelEvents, subsystem_of

LO = Path("/sys/class/net/lo/uevent")


def test_subsystem_is_read_from_the_event():
    assert subsystem_of(b"add@/devices/pci0000:00/usb1/1-1\0ACTION=add\0SUBSYSTEM=usb\0DEVTYPE=usb_device\0") == "usb"
    assert subsystem_of(b"change@/devices/virtual/net/lo\0ACTION=change\0SUBSYSTEM=net\0") == "net"
    assert subsystem_of(b"garbage") == ""


def _kernel_events(subsystems):
    ev = KernelEvents.open(subsystems, settle_s=0.1)
    assert ev is not None, "kernel uevents (netlink) are not available on this machine"
    assert LO.exists(), "no /sys/class/net/lo/uevent to make a uevent with"
    return ev


def test_a_kernel_uevent_of_the_subsystem_signals_and_others_do_not():
    heard, other = [], []
    usb_only = _kernel_events(("usb",))
    net = _kernel_events(("net",))
    got = threading.Event()
    try:
        net.listen(lambda: (heard.append(time.monotonic()), got.set()))
        usb_only.listen(lambda: other.append(1))
        t0 = time.monotonic()
        LO.write_text("change\n")
        assert got.wait(2), "no signal within 2 s of the kernel's uevent"
        assert heard[0] - t0 < 0.1, f"signalled {heard[0] - t0:.3f} s after the event"
        time.sleep(0.3)
        assert len(heard) == 2, heard   # at once and once more after settle_s (libusb may list it late)
        assert other == []              # a net event is no USB hotplug
    finally:
        usb_only.close()
        net.close()


def test_the_monitor_on_real_libusb_scans_on_signals_not_every_90_ms(monkeypatch):
    """Without the emulated bus: the monitor takes the kernel's signal and, idle, enumerates once per
    IDLE_S; a signal makes it scan at once (before: an enumeration every poll_s, 11 per second)."""
    probe = KernelEvents.open(("usb",))
    assert probe is not None, "kernel uevents (netlink) are not available on this machine"
    probe.close()
    backend = usbmod.UsbBackend(poll_s=0.09, idle_s=5.0)
    scans = []
    real = backend.detector.enumerate
    monkeypatch.setattr(backend.detector, "enumerate", lambda: (scans.append(time.monotonic()), real())[1])

    async def go():
        task = asyncio.create_task(backend.monitor())
        await asyncio.sleep(1.0)
        idle = len(scans)
        remove = backend.detector.hotplug_signal()   # the same signal the monitor registered on
        assert remove is not None
        backend._signal()                            # what an event does
        await asyncio.sleep(0.2)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        return idle, len(scans)
    try:
        idle, after = asyncio.run(go())
    finally:
        if backend.detector._uevents:
            backend.detector._uevents.close()
    assert backend.detection == "hotplug signal"
    assert idle == 1, f"{idle} enumerations in 1 s while idle"
    assert after == 2, "the signal did not make a scan"
