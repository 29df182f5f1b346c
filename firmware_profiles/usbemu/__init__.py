"""The emulated composite CNS USB token behind a pure-Python pyusb backend (issue 13 item 2).

Public API: ``EmulatedUsbBus`` (the ``usb.backend.IBackend``), ``EmulatedToken``, ``Flash``,
``PowerCut``, ``make_token``, ``build_cdrom_image``, ``test_release_key``.
Imports pyusb, pycdlib, ``firmware_profiles``, ``firmware_profiles.emulator`` (the chip).
Like ``firmware_profiles.emulator``, production agent code never imports it.
"""
from firmware_profiles.usbemu.backend import EmulatedUsbBus
from firmware_profiles.usbemu.flash import Flash, PowerCut
from firmware_profiles.usbemu.signing import build_cdrom_image, make_token, test_release_key
from firmware_profiles.usbemu.token import EmulatedToken

__all__ = ["EmulatedToken", "EmulatedUsbBus", "Flash", "PowerCut", "build_cdrom_image", "make_token",
           "test_release_key"]
