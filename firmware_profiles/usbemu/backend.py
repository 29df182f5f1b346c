"""A pyusb backend (``usb.backend.IBackend``) in pure Python that routes every transfer to
emulated tokens: no libusb, no kernel USB (REFERENCE.md §7). ``usb.core.find(backend=bus)``
sees the tokens plugged into the bus.

Hotplug: ``plug`` / ``unplug``; a token's power cut (a flash tear) unplugs it mid-transfer.
``add_hotplug_listener(callback)`` is the bus's hotplug notification (what libusb's
``libusb_hotplug_register_callback`` gives a host): ``callback()`` runs after every arrival and
departure, re-enumerations included (possibly with the bus lock held: it must only signal, never
block); it returns the function that removes it.
Re-enumeration (DFU detach, USB reset) gives the token a new address; handles opened before
fail with ``USBError`` errno ENODEV, as under libusb. A STALL is ``USBError`` errno EPIPE.
Faults: ``unplug_after(n)`` pulls the token at the n-th next transfer.
Every transfer that reaches a token is charged to its modelled link (``EmulatedToken.account``) by type:
control (standard requests included), bulk, interrupt.

Imports pyusb and ``firmware_profiles.usbemu`` only.
"""
from __future__ import annotations

import errno
import itertools
import threading

import usb.backend
from usb.core import USBError

from firmware_profiles.usbemu.descriptors import (MSOS_VENDOR_CODE, bos_descriptor, string_descriptor,
                                                  winusb_descriptor_set)
from firmware_profiles.usbemu.flash import PowerCut
from firmware_profiles.usbemu.token import EmulatedToken, Stall


class _Enumeration:
    """One appearance of a token on the bus (what pyusb's ``dev`` is)."""

    def __init__(self, token: EmulatedToken, bus: int, address: int):
        self.token, self.address = token, address
        self.desc, self.config = token.descriptors(bus, address)
        self.role_of = {i.bInterfaceNumber: i.role for i in self.config.interfaces}
        self.role_of_ep = {e.bEndpointAddress: i.role for i in self.config.interfaces for e in i.endpoints}
        self.packet_of_ep = {e.bEndpointAddress: e.wMaxPacketSize for i in self.config.interfaces for e in i.endpoints}


class _Handle:
    def __init__(self, enum: _Enumeration):
        self.enum = enum


class EmulatedUsbBus(usb.backend.IBackend):
    def __init__(self, bus_number: int = 1):
        self.bus_number = bus_number
        self._lock = threading.RLock()
        self._present: dict[int, _Enumeration] = {}  # id(token) → current enumeration
        self._addresses = itertools.count(2)
        self._unplug_in: int | None = None
        self.events: list[tuple[str, str]] = []  # ("arrived" | "left", serial)
        self._hotplug: list = []
        self.transfers = 0
        # tests that play the OS driver (mass storage, CCID) set this; the agent never does
        self.host_owns_os_interfaces = False

    # -------------------------------------------------------------- hotplug
    def add_hotplug_listener(self, callback):
        """``callback()`` after every arrival or departure; returns the function that removes it."""
        self._hotplug.append(callback)
        return lambda: self._hotplug.remove(callback) if callback in self._hotplug else None

    def _notify(self) -> None:
        for callback in list(self._hotplug):
            callback()

    def plug(self, token: EmulatedToken) -> None:
        with self._lock:
            self._present[id(token)] = _Enumeration(token, self.bus_number, next(self._addresses))
            self.events.append(("arrived", token.serial))
        self._notify()

    def unplug(self, token: EmulatedToken) -> None:
        with self._lock:
            gone = self._present.pop(id(token), None) is not None
            if gone:
                self.events.append(("left", token.serial))
        if gone:
            self._notify()

    def replug(self, token: EmulatedToken) -> None:
        """Power the token up again (re-reading its flash) and plug it in."""
        self.unplug(token)
        token.power_up()
        self.plug(token)

    def unplug_after(self, transfers: int | None) -> None:
        self._unplug_in = transfers

    def tokens(self) -> list[EmulatedToken]:
        with self._lock:
            return [e.token for e in self._present.values()]

    def _reenumerate(self, token: EmulatedToken) -> None:
        self.unplug(token)
        token.power_up(bootloader=token.detach_requested and token.mode == "runtime")
        self.plug(token)

    # -------------------------------------------------------------- checks
    def _live(self, h: _Handle) -> _Enumeration:
        e = h.enum
        if self._present.get(id(e.token)) is not e:
            raise USBError("No such device (it may have been disconnected)", -4, errno.ENODEV)
        return e

    def _run(self, h: _Handle, fn):
        with self._lock:
            e = self._live(h)
            self.transfers += 1
            if self._unplug_in is not None:
                self._unplug_in -= 1
                if self._unplug_in <= 0:
                    self._unplug_in = None
                    self.unplug(e.token)
                    raise USBError("No such device (it may have been disconnected)", -4, errno.ENODEV)
            try:
                out = fn(e)
            except Stall:
                raise USBError("Pipe error", -9, errno.EPIPE) from None
            except PowerCut:
                self.unplug(e.token)
                raise USBError("No such device (it may have been disconnected)", -4, errno.ENODEV) from None
            t = e.token
            if t.detach_requested or t.reset_requested:
                self._reenumerate(t)
            return out

    # -------------------------------------------------------------- IBackend: descriptors
    def enumerate_devices(self):
        with self._lock:
            return list(self._present.values())

    def get_parent(self, dev):
        return None

    def get_device_descriptor(self, dev):
        return dev.desc

    def get_configuration_descriptor(self, dev, config):
        if config != 0:
            raise IndexError(config)
        return dev.config

    def get_interface_descriptor(self, dev, intf, alt, config):
        if config != 0 or alt != 0 or intf >= len(dev.config.interfaces):
            raise IndexError((intf, alt))
        return dev.config.interfaces[intf]

    def get_endpoint_descriptor(self, dev, ep, intf, alt, config):
        return self.get_interface_descriptor(dev, intf, alt, config).endpoints[ep]

    # -------------------------------------------------------------- IBackend: handles
    def open_device(self, dev):
        with self._lock:
            h = _Handle(dev)
            self._live(h)
            return h

    def close_device(self, dev_handle):
        pass

    def set_configuration(self, dev_handle, config_value):
        self._live(dev_handle)

    def get_configuration(self, dev_handle):
        self._live(dev_handle)
        return 1

    def set_interface_altsetting(self, dev_handle, intf, altsetting):
        self._live(dev_handle)

    def claim_interface(self, dev_handle, intf):
        # as on a real machine: mass storage and CCID are bound to the OS drivers, claiming them fails
        if self._live(dev_handle).role_of.get(intf) in ("msc", "ccid") and not self.host_owns_os_interfaces:
            raise USBError("Resource busy (the OS driver owns this interface)", -6, errno.EBUSY)

    def release_interface(self, dev_handle, intf):
        pass

    def is_kernel_driver_active(self, dev_handle, intf):
        # mass storage and CCID belong to the OS drivers on a real machine; report them so
        role = self._live(dev_handle).role_of.get(intf)
        return role in ("msc", "ccid")

    def detach_kernel_driver(self, dev_handle, intf):
        raise USBError("Access denied (the OS driver owns this interface)", -3, errno.EACCES)

    def attach_kernel_driver(self, dev_handle, intf):
        pass

    def clear_halt(self, dev_handle, ep):
        self._live(dev_handle)

    def reset_device(self, dev_handle):
        def do(e):
            e.token.reset_requested = True
        self._run(dev_handle, do)

    # -------------------------------------------------------------- IBackend: transfers
    @staticmethod
    def _fill(buff, data: bytes) -> int:
        n = min(len(buff), len(data))
        buff[:n] = type(buff)(buff.typecode, data[:n])
        return n

    @staticmethod
    def _charged(e: _Enumeration, kind: str, n: int, ep: int | None = None) -> int:
        e.token.account(kind, n, e.packet_of_ep.get(ep, 64) if ep is not None else 64)
        return n

    def bulk_write(self, dev_handle, ep, intf, data, timeout):
        return self._run(dev_handle, lambda e: self._charged(
            e, "bulk", e.token.bulk_write(e.role_of_ep.get(ep, ""), bytes(data))))

    def bulk_read(self, dev_handle, ep, intf, buff, timeout):
        return self._run(dev_handle, lambda e: self._charged(
            e, "bulk", self._fill(buff, e.token.bulk_read(e.role_of_ep.get(ep, ""), len(buff)))))

    def intr_write(self, dev_handle, ep, intf, data, timeout):
        return self._run(dev_handle, lambda e: self._charged(
            e, "interrupt", e.token.intr_write(e.role_of_ep.get(ep, ""), bytes(data)), ep))

    def intr_read(self, dev_handle, ep, intf, buff, timeout):
        return self._run(dev_handle, lambda e: self._charged(
            e, "interrupt", self._fill(buff, e.token.intr_read(e.role_of_ep.get(ep, ""), len(buff))), ep))

    def ctrl_transfer(self, dev_handle, bmRequestType, bRequest, wValue, wIndex, data, timeout):
        is_in = bool(bmRequestType & 0x80)

        def do(e):
            if (bmRequestType & 0x60) == 0 and bRequest == 6 and is_in:  # GET_DESCRIPTOR
                kind, index = wValue >> 8, wValue & 0xFF
                if kind == 1:
                    raw = e.desc.raw()
                elif kind == 2:
                    raw = e.config.raw()
                elif kind == 3 and (index == 0 or index in e.token.strings()):
                    raw = string_descriptor(index, e.token.strings())
                elif kind == 0x0F and e.token.winusb() is not None:   # BOS: Microsoft OS 2.0 capability
                    raw = bos_descriptor(e.token.winusb())
                else:
                    raise Stall()
                return self._charged(e, "control", self._fill(data, raw))
            if bmRequestType == 0xC0 and bRequest == MSOS_VENDOR_CODE and wIndex == 7 \
                    and e.token.winusb() is not None:                  # the Microsoft OS 2.0 descriptor set
                return self._charged(e, "control", self._fill(data, winusb_descriptor_set(e.token.winusb())))
            if (bmRequestType & 0x60) == 0 and bRequest == 9 and not is_in:  # SET_CONFIGURATION
                return self._charged(e, "control", 0)
            out = e.token.control(bmRequestType, bRequest, wValue, wIndex,
                                  None if is_in else bytes(data), len(data), e.role_of)
            if is_in:
                return self._charged(e, "control", self._fill(data, out or b""))
            return self._charged(e, "control", len(data))
        return self._run(dev_handle, do)
