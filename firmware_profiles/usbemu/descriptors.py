"""USB descriptors of an emulated token, as the attribute objects pyusb's backend interface
returns and as the raw bytes GET_DESCRIPTOR answers (the same data, one place).

Owns: the 54-byte CCID class descriptor (libccid rejects any other length), the DFU 1.1
functional descriptor, the HID class descriptor, string descriptors, and the Microsoft OS 2.0
descriptors that make Windows bind WinUSB to the management interface by itself (no admin, no
driver package): a BOS platform capability (bcdUSB 2.10) pointing at vendor request
``MSOS_VENDOR_CODE``, which returns the descriptor set (built by PyPI ``usbip``'s pure functions,
the same bytes its USB/IP export serves).
Imports ``usbip.core`` (descriptor builders only) and ``firmware_profiles.usbtoken`` only.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass, field

from usbip import core as _usbip

CCID_FEATURES_SHORT_APDU = 0x00020000 | 0x000004BA  # short APDU exchange + automatic parameters/clock/baud
DFU_ATTRIBUTES = 0x01 | 0x08  # bitCanDnload | bitWillDetach
STRINGS = ("manufacturer", "product", "serial", "CNS token management", "CNS reader", "CNS DFU")
STR_MANUFACTURER, STR_PRODUCT, STR_SERIAL, STR_MGMT, STR_READER, STR_DFU = range(1, 7)
# Microsoft OS 2.0: the vendor request code of the descriptor set (wIndex 7), and the DeviceInterfaceGUID
# Windows registers for the management interface (a host program opens the interface by it)
MSOS_VENDOR_CODE = 0x21
MGMT_INTERFACE_GUID = "{5B0C6E1A-3D2F-4E8B-A1C7-9F4D2E6B8A13}"


def winusb_descriptor_set(mgmt_interface: int) -> bytes:
    """The Microsoft OS 2.0 descriptor set of a composite token: WinUSB for the management interface only."""
    return _usbip.ms_os2_set_subsets([(mgmt_interface, b"WINUSB", MGMT_INTERFACE_GUID)])


def bos_descriptor(mgmt_interface: int) -> bytes:
    """The BOS descriptor with the Microsoft OS 2.0 platform capability."""
    return _usbip.bos(_usbip.msos2_platform_cap(MSOS_VENDOR_CODE, len(winusb_descriptor_set(mgmt_interface))))


def ccid_class_descriptor() -> bytes:
    d = struct.pack(
        "<BBHBBIIIBIIBIIIIIBBHBB",
        54, 0x21, 0x0110, 0, 0x07, 0x03,  # bLength, type, bcdCCID 1.10, bMaxSlotIndex, 5/3/1.8 V, T=0+T=1
        3580, 3580, 0, 9600, 9600, 0,     # clock kHz default/max, clocks, data rate default/max, rates
        254, 0, 0, CCID_FEATURES_SHORT_APDU, 271,  # IFSD, synch, mechanical, features, max message length
        0xFF, 0xFF, 0, 0, 1)              # GetResponse/Envelope echo, LCD, PIN support, busy slots
    assert len(d) == 54
    return d


def dfu_functional_descriptor(transfer_size: int) -> bytes:
    return struct.pack("<BBBHHH", 9, 0x21, DFU_ATTRIBUTES, 1000, transfer_size, 0x0110)


def hid_class_descriptor(report_len: int) -> bytes:
    return struct.pack("<BBHBBBH", 9, 0x21, 0x0111, 0, 1, 0x22, report_len)


@dataclass
class Endpoint:
    bEndpointAddress: int
    bmAttributes: int  # 2 bulk, 3 interrupt
    wMaxPacketSize: int
    bInterval: int = 0
    bLength: int = 7
    bDescriptorType: int = 5
    bRefresh: int = 0
    bSynchAddress: int = 0
    extra_descriptors: list = field(default_factory=list)

    def raw(self) -> bytes:
        return struct.pack("<BBBBHB", 7, 5, self.bEndpointAddress, self.bmAttributes, self.wMaxPacketSize,
                           self.bInterval)


@dataclass
class Interface:
    bInterfaceNumber: int
    bInterfaceClass: int
    bInterfaceSubClass: int
    bInterfaceProtocol: int
    endpoints: list[Endpoint]
    iInterface: int = 0
    extra: bytes = b""
    role: str = ""  # "ccid" | "hid" | "msc" | "mgmt" | "dfu"
    bAlternateSetting: int = 0
    bLength: int = 9
    bDescriptorType: int = 4

    @property
    def bNumEndpoints(self) -> int:
        return len(self.endpoints)

    @property
    def extra_descriptors(self) -> list[int]:
        return list(self.extra)

    def raw(self) -> bytes:
        return struct.pack("<BBBBBBBBB", 9, 4, self.bInterfaceNumber, 0, len(self.endpoints),
                           self.bInterfaceClass, self.bInterfaceSubClass, self.bInterfaceProtocol,
                           self.iInterface) + self.extra + b"".join(e.raw() for e in self.endpoints)


@dataclass
class Configuration:
    interfaces: list[Interface]
    bConfigurationValue: int = 1
    iConfiguration: int = 0
    bmAttributes: int = 0x80
    bMaxPower: int = 50  # 100 mA
    bLength: int = 9
    bDescriptorType: int = 2
    extra_descriptors: list = field(default_factory=list)

    @property
    def bNumInterfaces(self) -> int:
        return len(self.interfaces)

    @property
    def wTotalLength(self) -> int:
        return len(self.raw())

    def raw(self) -> bytes:
        body = b"".join(i.raw() for i in self.interfaces)
        return struct.pack("<BBHBBBBB", 9, 2, 9 + len(body), len(self.interfaces), self.bConfigurationValue,
                           self.iConfiguration, self.bmAttributes, self.bMaxPower) + body


@dataclass
class DeviceDescriptor:
    idVendor: int
    idProduct: int
    bcdDevice: int
    bus: int
    address: int
    speed: int  # libusb speed codes: 2 full, 3 high
    port_number: int = 1
    bcdUSB: int = 0x0200
    bDeviceClass: int = 0
    bDeviceSubClass: int = 0
    bDeviceProtocol: int = 0
    bMaxPacketSize0: int = 64
    iManufacturer: int = STR_MANUFACTURER
    iProduct: int = STR_PRODUCT
    iSerialNumber: int = STR_SERIAL
    bNumConfigurations: int = 1
    bLength: int = 18
    bDescriptorType: int = 1

    @property
    def port_numbers(self) -> tuple[int, ...]:
        return (self.port_number,)

    def raw(self) -> bytes:
        return struct.pack("<BBHBBBBHHHBBBB", 18, 1, self.bcdUSB, self.bDeviceClass, self.bDeviceSubClass,
                           self.bDeviceProtocol, self.bMaxPacketSize0, self.idVendor, self.idProduct,
                           self.bcdDevice, self.iManufacturer, self.iProduct, self.iSerialNumber, 1)


def string_descriptor(index: int, strings: dict[int, str]) -> bytes:
    if index == 0:
        return bytes([4, 3, 0x09, 0x04])  # LANGID en-US
    text = strings[index].encode("utf-16-le")
    return bytes([2 + len(text), 3]) + text
