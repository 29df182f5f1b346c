"""USB tokens: detection and the token's USB device interface (issue 13 item 3).

``UsbTokenBackend`` finds composite CNS tokens through pyusb, by the VID/PID table of the
token models (runtime and DFU bootloader ids) and, for tokens we have no model of, by their
interface classes (a smart-card reader, CCID 0B or HID 03, beside mass storage 08/06/50);
real composite tokens libccid lists are seeded as known-but-unmanaged. It never claims an
interface the OS drivers own (mass storage, CCID): it speaks only on the management channel
(vendor interface or HID feature report) and DFU. ``watch`` polls the bus and reports
``arrived`` / ``left`` events (polling every 20 ms: well inside 100 ms of a hotplug).

Detection is cheap (issue 13 item 3): a scan enumerates the bus (in memory for libusb and the
emulated bus) and talks to a device only when it is new on the bus: what a device is (its serial,
state, or "not a token") is cached per bus, address and USB ids, an enumeration the device loses
on any unplug, reset or DFU re-enumeration. A cached token's state is re-read after ``REFRESH_S``
(another program may have changed it) and after our own token operations (``invalidate``).
Where there is a hotplug notification ``UsbBackend.monitor`` scans on each signal and otherwise
every ``IDLE_S`` only: the pyusb backend's own (``add_hotplug_listener``, as the emulated bus does),
else the kernel's USB uevents on Linux (``agent.devices.uevent``; pyusb exposes no libusb hotplug
callback). Without either it polls every ``poll_s``.

``TokenLink`` is the transport seam for one token: management requests (control pipe), image
blocks (the management interface's bulk OUT endpoint, ``write_blocks``; feature reports on a model
without one), DFU requests, USB reset; every USB failure is a ``TokenError`` subclass with a one-line message.
``UsbBackend`` is the USB ``DeviceBackend`` for the composition root (name ``usb``,
``status``, ``monitor()``, ``open_link(serial)``), with ``snapshot()`` for ``cns-agent devices``.

Imports pyusb, ``agent.devices.backend`` (the seam), ``firmware_profiles.usbtoken`` (models and
protocol); never the emulator.
The pyusb backend is injected (None: libusb on a real machine, the emulated bus in tests).
"""
from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import usb.core
import usb.util

from agent.devices.backend import DeviceBackend
from firmware_profiles.usbtoken import TokenModel, load_token_models
from firmware_profiles.usbtoken import protocol as P
from firmware_profiles.usbtoken.model import version_from_bcd

# Real composite tokens with a CCID reader that libccid's Info.plist lists (REFERENCE.md §7):
# recognised and shown, not managed (no published management protocol).
KNOWN_FOREIGN = {(0x25DD, 0x2351): "Bit4id Digital DNA Key", (0x0DC3, 0x100F): "Athena IDProtect Flash"}
POLL_S = 0.02
REFRESH_S = 10.0   # a cached token's state is read again after this long
BULK_TIMEOUT_MS = 10_000   # one bulk write (≤ 1 MiB: ~20 ms at high speed, ~0.9 s at full speed)
IDLE_S = 5.0       # with a hotplug signal: a scan this often anyway (a signal lost is then seen late, not never)


class TokenError(Exception):
    """A token operation failed; the message says what and what to do."""


class TokenGone(TokenError):
    """The token was pulled (or lost power) mid-transfer."""


class TokenProtocolError(TokenError):
    """The token stalled or answered something that is not our protocol."""


class TokenRefused(TokenError):
    """The token refused a request (status code in ``status``)."""

    def __init__(self, msg: str, status: int):
        super().__init__(msg)
        self.status = status


@dataclass(frozen=True)
class TokenInfo:
    serial: str
    vendor_id: int
    product_id: int
    mode: str              # runtime | bootloader | foreign
    model_id: str = ""
    model_name: str = ""
    firmware: str = ""
    bootloader: str = ""
    partitions: dict[str, Any] = field(default_factory=dict)   # cdrom/disk → {version, length, sha256, region}
    chip_serial: str = ""
    error: str = ""

    def as_dict(self) -> dict:
        return {"kind": "usb-token", "serial": self.serial, "usb_id": f"{self.vendor_id:04x}:{self.product_id:04x}",
                "mode": self.mode, "model": self.model_id, "model_name": self.model_name,
                "firmware": self.firmware, "bootloader": self.bootloader, "partitions": self.partitions,
                "chip_serial": self.chip_serial, "error": self.error}

    def describe(self) -> str:
        if self.mode == "foreign":
            return f"USB token {self.model_name} ({self.vendor_id:04x}:{self.product_id:04x}) serial {self.serial}: not managed"
        parts = ", ".join(f"{k} {v.get('version', '?')}" for k, v in sorted(self.partitions.items()))
        s = f"USB token {self.model_id} serial {self.serial} firmware {self.firmware}"
        if self.mode == "bootloader":
            s += " (in DFU bootloader mode: a firmware update did not finish; run the update again)"
        if parts:
            s += f"; partitions: {parts}"
        if self.chip_serial:
            s += f"; chip {self.chip_serial}"
        return s + (f" [{self.error}]" if self.error else "")


def _usb_call(fn, what: str):
    try:
        return fn()
    except (ValueError, UnicodeDecodeError):
        raise TokenProtocolError(f"the token answered {what} with something that is not USB") from None
    except usb.core.USBError as exc:
        if exc.errno in (errno.ENODEV, errno.ENOENT, errno.ESHUTDOWN) or exc.backend_error_code == -4:
            raise TokenGone(f"the token was removed during {what}: plug it in again; the operation resumes") from None
        if exc.errno == errno.EPIPE:
            raise TokenProtocolError(f"the token refused {what} (endpoint stalled)") from None
        raise TokenError(f"USB error during {what}: {exc.strerror or exc}") from None


class TokenLink:
    """The USB device interface of one token (management channel, DFU, reset)."""

    def __init__(self, dev, model: TokenModel):
        self.dev, self.model = dev, model
        # langid given: pyusb's langids lookup would swallow an unplug and answer ValueError
        self.serial = _usb_call(lambda: usb.util.get_string(dev, dev.iSerialNumber, 0x0409), "reading its serial") or ""
        cfg = _usb_call(dev.get_active_configuration, "reading its configuration")
        intfs = list(cfg)
        self.mode = "bootloader" if dev.idProduct == model.usb.bootloader_product_id else "runtime"
        self.dfu_intf = next((i.bInterfaceNumber for i in intfs if i.bInterfaceClass == 0xFE
                              and i.bInterfaceSubClass == 1), None)
        mgmt = next((i for i in intfs if i.bInterfaceClass == 0xFF), None)
        self.mgmt_intf = mgmt.bInterfaceNumber if mgmt is not None else None
        # the bulk OUT endpoint image data rides (SCHEMA.md §10); None: blocks go in control requests (HID model)
        self.bulk_out = next((e.bEndpointAddress for e in (mgmt or ()) if (e.bmAttributes & 3) == 2
                              and not e.bEndpointAddress & 0x80), None)
        self.hid_intf = next((i.bInterfaceNumber for i in intfs if i.bInterfaceClass == 0x03), None)

    @property
    def bcd_version(self) -> str:
        return version_from_bcd(self.dev.bcdDevice)

    # -------------------------------------------------------------- management
    def request(self, op: int, args: bytes = b"", *, what: str = "a management request") -> bytes:
        frame = bytes([op]) + args
        if self.mgmt_intf is not None:
            _usb_call(lambda: self.dev.ctrl_transfer(0x41, P.REQ_COMMAND, 0, self.mgmt_intf, frame), what)
            raw = _usb_call(lambda: self.dev.ctrl_transfer(0xC1, P.REQ_RESPONSE, 0, self.mgmt_intf,
                                                           P.MAX_RESPONSE), what)
        elif self.hid_intf is not None:
            wv = 0x0300 | P.MGMT_REPORT_ID
            _usb_call(lambda: self.dev.ctrl_transfer(0x21, 0x09, wv, self.hid_intf, frame), what)
            raw = _usb_call(lambda: self.dev.ctrl_transfer(0xA1, 0x01, wv, self.hid_intf, P.MAX_RESPONSE), what)
        else:
            raise TokenError("this token has no management channel in its current mode")
        return self._check(bytes(raw), what)

    def _response(self, what: str) -> bytes:
        """The answer the token made after a bulk data phase (RESPONSE without a new COMMAND)."""
        raw = _usb_call(lambda: self.dev.ctrl_transfer(0xC1, P.REQ_RESPONSE, 0, self.mgmt_intf, P.MAX_RESPONSE), what)
        return self._check(bytes(raw), what)

    @staticmethod
    def _check(raw: bytes, what: str) -> bytes:
        if not raw:
            raise TokenProtocolError(f"the token gave no answer to {what}")
        if raw[0] != P.ST_OK:
            text = P.STATUS_TEXT.get(raw[0])
            if text is None:
                raise TokenProtocolError(f"the token answered {what} with an unknown status {raw[0]:#04x}")
            raise TokenRefused(f"{text} ({what})", raw[0])
        return raw[1:]

    def info(self) -> dict:
        raw = self.request(P.OP_INFO, what="reading its state")
        try:
            info = json.loads(raw)
            if not isinstance(info, dict) or not {"map", "images", "firmware"} <= set(info):
                raise ValueError
        except ValueError:
            raise TokenProtocolError("the token's state is not what this agent understands (garbage answer)") from None
        return info

    def hashes(self, region: str, first: int, count: int) -> list[bytes]:
        raw = self.request(P.OP_HASH, struct.pack(">BIH", P.REGIONS.index(region), first, count),
                           what=f"hashing blocks of {region}")
        if len(raw) != 32 * count:
            raise TokenProtocolError("the token answered a hash request with the wrong length")
        return [raw[i * 32:(i + 1) * 32] for i in range(count)]

    def digest(self, region: str, length: int) -> bytes:
        raw = self.request(P.OP_DIGEST, struct.pack(">BQ", P.REGIONS.index(region), length),
                           what=f"hashing {region}")
        if len(raw) != 32:
            raise TokenProtocolError("the token answered a digest request with the wrong length")
        return raw

    def write_block(self, slot: str, block: int, data: bytes) -> None:
        self.write_blocks(slot, block, [data])

    def write_blocks(self, slot: str, first: int, blocks: list[bytes]) -> None:
        """Write consecutive blocks (each one block long, at most ``MAX_BULK_BLOCKS``) from ``first`` into a free
        region: announced with their SHA-256 on the control pipe, sent as one bulk transfer, answered with the
        count the token wrote (it writes only blocks that match their hash). Without a bulk endpoint (HID
        model) one control request per block."""
        what = f"writing blocks {first}+{len(blocks)} of region {slot}"
        if self.bulk_out is None:
            for i, data in enumerate(blocks):
                self.request(P.OP_WRITE, struct.pack(">BI", P.REGIONS.index(slot), first + i) + data,
                             what=f"writing block {first + i} of region {slot}")
            return
        if not 1 <= len(blocks) <= P.MAX_BULK_BLOCKS:
            raise ValueError(f"1..{P.MAX_BULK_BLOCKS} blocks per bulk write")
        self.request(P.OP_BULK_WRITE, struct.pack(">BIH", P.REGIONS.index(slot), first, len(blocks))
                     + b"".join(hashlib.sha256(b).digest() for b in blocks), what=what)
        data = b"".join(blocks)
        sent = _usb_call(lambda: self.dev.write(self.bulk_out, data, BULK_TIMEOUT_MS), what)
        if sent != len(data):
            raise TokenProtocolError(f"the token took {sent} of {len(data)} bytes {what}")
        raw = self._response(what)
        if len(raw) != 2 or int.from_bytes(raw, "big") != len(blocks):
            raise TokenProtocolError(f"the token's answer to {what} is not the count of blocks written")

    def copy_blocks(self, src: str, slot: str, block: int, count: int) -> None:
        self.request(P.OP_COPY, struct.pack(">BBIH", P.REGIONS.index(src), P.REGIONS.index(slot), block, count),
                     what=f"copying blocks {block}+{count} into slot {slot}")

    def switch(self, part: str, slot: str, length: int, sha256: bytes, version: str) -> None:
        self.request(P.OP_SWITCH, struct.pack(">BBQ", P.PARTS.index(part), P.REGIONS.index(slot), length)
                     + sha256 + version.encode(), what=f"switching the {part} to slot {slot}")

    def confirm(self, part: str) -> None:
        self.request(P.OP_CONFIRM, bytes([P.PARTS.index(part)]), what=f"confirming the new {part}")

    # -------------------------------------------------------------- DFU 1.1
    def _dfu(self, req: int, value: int = 0, data=None, length: int = 0, *, what: str):
        if self.dfu_intf is None:
            raise TokenError("this token has no DFU interface")
        if data is not None:
            return _usb_call(lambda: self.dev.ctrl_transfer(0x21, req, value, self.dfu_intf, data), what)
        if length:
            return bytes(_usb_call(lambda: self.dev.ctrl_transfer(0xA1, req, value, self.dfu_intf, length), what))
        return _usb_call(lambda: self.dev.ctrl_transfer(0x21, req, value, self.dfu_intf, b""), what)

    def dfu_status(self) -> tuple[int, int]:
        raw = self._dfu(P.DFU_GETSTATUS, length=6, what="reading the DFU status")
        if len(raw) != 6:
            raise TokenProtocolError("the token's DFU status is not 6 bytes")
        return raw[0], raw[4]  # bStatus, bState

    def dfu_detach(self) -> None:
        self._dfu(P.DFU_DETACH, 1000, what="asking the token to enter its bootloader")

    def dfu_clear(self) -> None:
        status, state = self.dfu_status()
        if state == P.DFU_ERROR:
            self._dfu(P.DFU_CLRSTATUS, what="clearing the DFU error")
        elif state != P.DFU_IDLE:
            self._dfu(P.DFU_ABORT, what="aborting a DFU transfer")

    def dfu_abort(self) -> None:
        """Leave a download: ABORT (after CLRSTATUS when the bootloader is in its error state)."""
        status, state = self.dfu_status()
        if state == P.DFU_ERROR:
            self._dfu(P.DFU_CLRSTATUS, what="clearing the DFU error")
        self._dfu(P.DFU_ABORT, what="aborting the firmware download")

    def dfu_download(self, block: int, data: bytes) -> None:
        self._dfu(P.DFU_DNLOAD, block & 0xFFFF, data, what=f"sending firmware block {block}")

    def reset(self) -> None:
        try:
            _usb_call(self.dev.reset, "a USB reset")
        except TokenGone:
            pass  # the reset re-enumerates: this handle is gone by design


def reader_for(token_serial: str, reader_names: list[str]) -> str | None:
    """The PC/SC reader of a token: pcsc-lite names a USB CCID reader ``Product [Interface] (SERIAL) NN MM``
    with the device's USB serial, so the token's serial pairs it. None: no such reader (a HID-reader
    token, or pcscd has not listed it yet)."""
    if not token_serial:
        return None
    hits = [r for r in reader_names if f"({token_serial})" in r]
    return hits[0] if len(hits) == 1 else None


def paired_reader(token_serial: str, chip_serial: str, readers):
    """The PC/SC reader (a registry ``ReaderView``) of a token: the one pcsc-lite names with the token's USB
    serial (``reader_for``), else the only reader whose card has the chip serial the token reports (the
    chip reached another way, e.g. through vpcd). None: not paired."""
    readers = list(readers)
    name = reader_for(token_serial, [r.name for r in readers])
    if name is None and chip_serial:
        hits = [r.name for r in readers if r.card is not None and r.card.serial == chip_serial]
        name = hits[0] if len(hits) == 1 else None
    return next((r for r in readers if r.name == name), None) if name else None


def with_reader(row: dict, readers) -> dict:
    """A token row (``TokenInfo.as_dict``) with ``reader`` and ``chip_holder`` from its paired reader."""
    r = paired_reader(row.get("serial", ""), row.get("chip_serial", ""), readers)
    holder = r.card.holder_label if r is not None and r.card is not None else ""
    return dict(row, reader=r.name if r is not None else "", chip_holder=holder)


class UsbTokenBackend:
    """Detects tokens on one pyusb backend; ``scan`` lists them, ``open`` gives a ``TokenLink``."""

    def __init__(self, usb_backend=None, models: dict[str, TokenModel] | None = None):
        self.usb_backend = usb_backend
        self.models = models if models is not None else load_token_models()
        self._by_id: dict[tuple[int, int], tuple[TokenModel, str]] = {}
        for m in self.models.values():
            self._by_id[(m.usb.vendor_id, m.usb.runtime_product_id)] = (m, "runtime")
            self._by_id[(m.usb.vendor_id, m.usb.bootloader_product_id)] = (m, "bootloader")
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.present: dict[str, TokenInfo] = {}
        self.refresh_s = REFRESH_S
        # (bus, address, vid, pid) → (what the device is: a TokenInfo, None for "not a token"; when read)
        self._cache: dict[tuple[int, int, int, int], tuple[TokenInfo | None, float]] = {}
        self._cache_lock = threading.Lock()
        self._uevents = None   # agent.devices.uevent.KernelEvents once looked up (False: none here)

    def _pyusb_backend(self):
        """The pyusb backend, looked up once (``usb.core.find`` without one looks libusb up on every call)."""
        if self.usb_backend is None:
            import usb.backend.libusb0
            import usb.backend.libusb1
            import usb.backend.openusb
            for mod in (usb.backend.libusb1, usb.backend.openusb, usb.backend.libusb0):
                found = mod.get_backend()
                if found is not None:
                    self.usb_backend = found
                    break
        return self.usb_backend

    def _devices(self):
        backend = self._pyusb_backend()
        if backend is None:
            return []
        try:
            return list(usb.core.find(find_all=True, backend=backend))
        except (usb.core.NoBackendError, usb.core.USBError):
            return []

    def hotplug_signal(self):
        """A hotplug notification, ``register(callback) -> remove``: the pyusb backend's own (the emulated
        bus), else the kernel's USB uevents (``agent.devices.uevent``, Linux; libusb has none pyusb shows);
        None when neither exists (the monitor then polls)."""
        backend = self._pyusb_backend()
        own = getattr(backend, "add_hotplug_listener", None)
        if own is not None:
            return own
        if not type(backend).__module__.startswith("usb.backend."):
            return None   # another pyusb backend (a test's wrapper): the kernel's events are not its devices'
        if self._uevents is None:
            from agent.devices.uevent import KernelEvents
            self._uevents = KernelEvents.open(("usb",)) or False
        return self._uevents.listen if self._uevents else None

    @staticmethod
    def _key(dev) -> tuple[int, int, int, int]:
        return (dev.bus, dev.address, dev.idVendor, dev.idProduct)

    def invalidate(self) -> None:
        """Forget what the devices are: the next scan reads every token again (after our own operation)."""
        with self._cache_lock:
            self._cache.clear()

    def enumerate(self) -> list:
        return self._devices()

    def known(self, devices) -> bool:
        """True when a scan of ``devices`` needs no transfer (every one is cached and fresh)."""
        now = time.monotonic()
        with self._cache_lock:
            return all((hit := self._cache.get(self._key(d))) is not None and now - hit[1] < self.refresh_s
                       for d in devices)

    @staticmethod
    def _composite_reader(dev) -> bool:
        try:
            classes = {(i.bInterfaceClass, i.bInterfaceSubClass, i.bInterfaceProtocol)
                       for i in dev.get_active_configuration()}
        except usb.core.USBError:
            return False
        return (0x08, 0x06, 0x50) in classes and any(c[0] in (0x0B, 0x03) for c in classes)

    def scan(self, devices=None) -> list[TokenInfo]:
        """The tokens among ``devices`` (default: the bus enumerated now); only devices new on the bus
        (or whose state is older than ``refresh_s``) are talked to."""
        devices = self._devices() if devices is None else devices
        now = time.monotonic()
        out, seen = [], set()
        for dev in devices:
            key = self._key(dev)
            seen.add(key)
            with self._cache_lock:
                hit = self._cache.get(key)
            if hit is not None and now - hit[1] < self.refresh_s:
                info = hit[0]
            else:
                info = self._identify(dev)
                if info is None or not info.error:   # a token that failed to answer is asked again next scan
                    with self._cache_lock:
                        self._cache[key] = (info, now)
            if info is not None:
                out.append(info)
        with self._cache_lock:
            for key in self._cache.keys() - seen:
                del self._cache[key]
        return out

    def _identify(self, dev) -> TokenInfo | None:
        key = (dev.idVendor, dev.idProduct)
        if key in self._by_id:
            return self._describe(dev, *self._by_id[key])
        if key in KNOWN_FOREIGN or self._composite_reader(dev):
            try:
                serial = dev.serial_number or ""
            except (usb.core.USBError, ValueError):
                serial = ""
            return TokenInfo(serial, dev.idVendor, dev.idProduct, "foreign",
                             model_name=KNOWN_FOREIGN.get(key, "unknown composite token"))
        return None

    def _describe(self, dev, model: TokenModel, mode: str) -> TokenInfo:
        base = dict(vendor_id=dev.idVendor, product_id=dev.idProduct, mode=mode, model_id=model.id,
                    model_name=model.name)
        try:
            link = TokenLink(dev, model)
            if mode == "bootloader":
                return TokenInfo(link.serial, firmware="none (bootloader)", bootloader=link.bcd_version, **base)
            info = link.info()
        except TokenError as exc:
            return TokenInfo("", error=str(exc), **base)
        parts = {p: dict(info["images"][p], region=info["map"][p]) for p in ("cdrom", "disk")}
        return TokenInfo(link.serial, firmware=info["firmware"], bootloader=info.get("bootloader", ""),
                         partitions=parts, chip_serial=info.get("chip", ""), **base)

    def open(self, serial: str | None = None) -> TokenLink:
        """The link to the token with ``serial`` (None: the only managed token present)."""
        found = []
        for dev in self._devices():
            hit = self._by_id.get((dev.idVendor, dev.idProduct))
            if hit is None:
                continue
            link = TokenLink(dev, hit[0])
            if serial is None or link.serial == serial:
                found.append(link)
        if not found:
            raise TokenGone(f"no CNS token{' ' + serial if serial else ''} is plugged in: plug it in and retry")
        if len(found) > 1:
            raise TokenError("more than one CNS token is plugged in: name one with --serial")
        return found[0]

    # -------------------------------------------------------------- hotplug
    def watch(self, on_event: Callable[[str, TokenInfo], None], *, poll_s: float = POLL_S) -> None:
        """Start a thread calling ``on_event("arrived" | "left", info)``; ``stop()`` ends it."""
        def loop() -> None:
            while not self._stop.is_set():
                now = {i.serial or f"{i.vendor_id:04x}:{i.product_id:04x}": i for i in self.scan()}
                for k in self.present.keys() - now.keys():
                    on_event("left", self.present[k])
                for k in now.keys() - self.present.keys():
                    on_event("arrived", now[k])
                self.present = now
                self._stop.wait(poll_s)
        self._stop.clear()
        self._thread = threading.Thread(target=loop, name="usb-token-watch", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 2.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)


class UsbBackend(DeviceBackend):
    """The USB-token ``DeviceBackend`` (``agent.devices.backend``, declared): ``name``, ``status``,
    ``monitor()`` (a coroutine scanning the bus on each hotplug signal, or polling every ``poll_s``
    without one, keeping ``tokens`` current and telling listeners ``arrived`` / ``left`` /
    ``changed``), ``open_link(serial)``; ``exclusive()`` pauses the scans for a token operation and
    has the tokens read again after it.

    A token's link is its ``TokenLink`` (management channel and DFU) with a per-token lock as its
    transaction; the chip inside is reached through the token's PC/SC reader (paired by the chip
    serial the token reports), never by claiming the CCID interface.
    """

    name = "usb"

    def __init__(self, registry=None, catalog=None, *, usb_backend=None, models: dict[str, TokenModel] | None = None,
                 poll_s: float = POLL_S, idle_s: float = IDLE_S) -> None:
        self.detector = UsbTokenBackend(usb_backend, models)
        self.poll_s, self.idle_s = poll_s, idle_s
        self.detection = ""      # "hotplug signal" | "polling every N ms", once monitoring
        self._wake = None        # asyncio.Event of the running monitor, with the loop that owns it
        self.tokens: dict[str, TokenInfo] = {}
        self._listeners: list[Callable[[str, TokenInfo], None]] = []
        self._locks: dict[str, threading.RLock] = {}
        self._status = "starting"
        self._scan_lock = None   # asyncio.Lock, made in the loop: held by a scan, or by ``exclusive()``

    @property
    def status(self) -> str:
        return self._status

    def subscribe(self, listener: Callable[[str, TokenInfo], None]) -> Callable[[], None]:
        self._listeners.append(listener)
        return lambda: self._listeners.remove(listener)

    def snapshot(self) -> list[dict]:
        """What ``cns-agent devices --json`` shows of the tokens."""
        return [t.as_dict() for t in sorted(self.tokens.values(), key=lambda t: t.serial)]

    def _lock(self):
        import asyncio
        if self._scan_lock is None:
            self._scan_lock = asyncio.Lock()
        return self._scan_lock

    @contextlib.asynccontextmanager
    async def exclusive(self):
        """``async with backend.exclusive():`` no scan talks to any token meanwhile (a token operation's
        requests and the scan's INFO would otherwise interleave on the management channel); afterwards
        the tokens are read again at once (the operation changed their state)."""
        async with self._lock():
            try:
                yield
            finally:
                self.detector.invalidate()
                self._signal()

    def _signal(self) -> None:
        """Wake the monitor for a scan now (from any thread)."""
        if self._wake is not None:
            event, loop = self._wake
            try:
                loop.call_soon_threadsafe(event.set)
            except RuntimeError:   # the loop has closed: nothing to wake
                pass

    async def monitor(self) -> None:
        import asyncio
        wake = asyncio.Event()
        self._wake = (wake, asyncio.get_running_loop())
        register = self.detector.hotplug_signal()
        remove = register(self._signal) if register is not None else None
        interval = self.idle_s if remove is not None else self.poll_s
        self.detection = "hotplug signal" if remove is not None else f"polling every {self.poll_s * 1000:.0f} ms"
        try:
            while True:
                wake.clear()
                async with self._lock():
                    devices = self.detector.enumerate()     # in memory: no transfer, no thread
                    if self.detector.known(devices):
                        found = self.detector.scan(devices)
                    else:                                    # a device new on the bus is asked what it is
                        found = await asyncio.to_thread(self.detector.scan, devices)
                self._status = "ok"
                now = {i.serial or f"{i.vendor_id:04x}:{i.product_id:04x}": i for i in found}
                events = [("left", self.tokens[k]) for k in self.tokens.keys() - now.keys()]
                events += [("arrived", now[k]) for k in now.keys() - self.tokens.keys()]
                events += [("changed", now[k]) for k in now.keys() & self.tokens.keys() if now[k] != self.tokens[k]]
                self.tokens = now
                for kind, info in events:
                    for listener in list(self._listeners):
                        listener(kind, info)
                if remove is None:      # polling: a plain sleep (a wake-up costs less than wait_for's task)
                    await asyncio.sleep(interval)
                    continue
                try:
                    async with asyncio.timeout(interval):   # not wait_for: 3.11's can lose a cancel
                        await wake.wait()
                except TimeoutError:
                    pass
        finally:
            if remove is not None:
                remove()
            self._wake = None

    def open_link(self, device: str) -> "TokenDeviceLink":
        return TokenDeviceLink(self.detector.open(device), self._locks.setdefault(device, threading.RLock()))


class TokenDeviceLink:
    """A token's link for operations: ``transaction()`` holds the token for one step (per-token lock)."""

    def __init__(self, link: TokenLink, lock: threading.RLock):
        self.token, self._lock = link, lock

    def transaction(self):
        return self._lock

    def close(self) -> None:
        pass  # pyusb handles are released with the device object
