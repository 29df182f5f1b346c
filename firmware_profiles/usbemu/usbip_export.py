"""Export an emulated token over USB/IP (PyPI ``usbip``, pure Python, MIT) so that a machine
with the vhci driver (Linux ``vhci-hcd``, Windows usbip-win2) can attach it as a real device:
``usbip attach -r HOST -b 1-1``. Debian's ``usbip list -r HOST`` lists its interfaces.

The token's runtime descriptors are rendered into a ``usbip.USBDevice`` (same interface
numbers, classes, class descriptors and endpoints); control requests to an interface go to
the token's ``control``; a pump thread per OUT endpoint passes host data to the token and its
answers back on the paired IN endpoint (the management interface's bulk OUT has none: image data only). Imports ``usbip`` and ``firmware_profiles.usbemu``.
"""
from __future__ import annotations

import struct
import threading

import usbip
from usbip.device import In, Out

from firmware_profiles.usbemu.descriptors import MGMT_INTERFACE_GUID, MSOS_VENDOR_CODE
from firmware_profiles.usbemu.flash import PowerCut
from firmware_profiles.usbemu.token import EmulatedToken, Stall

SPEEDS = {"full": usbip.SPEED_FULL, "high": usbip.SPEED_HIGH}


class UsbipExport:
    """``with UsbipExport(token, port=3240): ...`` serves the token until the block ends."""

    def __init__(self, token: EmulatedToken, host: str = "127.0.0.1", port: int = 3240):
        self.token, self.host, self.port = token, host, port
        desc, cfg = token.descriptors(1, 2)
        strings = token.strings()
        dev = usbip.USBDevice(desc.idVendor, desc.idProduct, product=strings[desc.iProduct],
                              manufacturer=strings[desc.iManufacturer], serial=strings[desc.iSerialNumber],
                              bcdDevice=desc.bcdDevice)
        dev.set_composite()
        dev.set_msos_vendor_codes(v2=MSOS_VENDOR_CODE)
        dev.set_speed(SPEEDS[token.model.link_speed])
        self._stop = threading.Event()
        self._pumps: list[tuple[str, object, object, str]] = []
        self.role_of = {}
        for intf in cfg.interfaces:
            group = dev.add_group()
            ifnum = group.claim_interface()
            self.role_of[ifnum] = intf.role
            i_str = dev.add_string(strings[intf.iInterface]) if intf.iInterface else 0
            group.add(struct.pack("<BBBBBBBBB", 9, 4, ifnum, 0, len(intf.endpoints), intf.bInterfaceClass,
                                  intf.bInterfaceSubClass, intf.bInterfaceProtocol, i_str) + intf.extra)
            eps = {}
            for e in intf.endpoints:
                kind = "bulk" if e.bmAttributes == 2 else "interrupt"
                spec = (In if e.bEndpointAddress & 0x80 else Out)(e.bEndpointAddress & 0x0F, kind, e.wMaxPacketSize,
                                                                  e.bInterval)
                eps[(bool(e.bEndpointAddress & 0x80), kind)] = group.add_endpoint(spec)
            for kind in ("bulk", "interrupt"):
                if (False, kind) in eps:
                    self._pumps.append((intf.role, eps[(False, kind)], eps.get((True, kind)), kind))
            if intf.role == "mgmt":
                group.enable_winusb(MGMT_INTERFACE_GUID)  # MS OS 2.0: Windows binds WinUSB itself, no admin needed
            dev.on_control(ifnum, self._control)
        self.dev = dev
        self._plug = None

    def _control(self, setup, data=b""):
        try:
            out = self.token.control(setup.bmRequestType, setup.bRequest, setup.wValue, setup.wIndex,
                                     None if setup.bmRequestType & 0x80 else bytes(data), setup.wLength, self.role_of)
        except (Stall, PowerCut):
            raise usbip.Stall() from None
        return out

    def _pump(self, role: str, ep_out, ep_in, kind: str) -> None:
        while not self._stop.is_set():
            data = ep_out.read(timeout=0.2)
            if not data:
                continue
            try:
                if kind == "bulk":
                    self.token.bulk_write(role, data)
                    while ep_in is not None:
                        out = self.token.bulk_read(role, 1 << 20)
                        if not out:
                            break
                        ep_in.write(out)
                else:
                    self.token.intr_write(role, data)
                    while True:
                        out = self.token.intr_read(role, 64)
                        if not out:
                            break
                        ep_in.write(out)
            except (Stall, PowerCut):
                ep_out.stall()

    def __enter__(self) -> "UsbipExport":
        self._plug = self.dev.plug(via=usbip.USBIP(self.host, self.port))
        for role, ep_out, ep_in, kind in self._pumps:
            threading.Thread(target=self._pump, args=(role, ep_out, ep_in, kind), daemon=True,
                             name=f"usbip-{role}").start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self.dev.unplug()
