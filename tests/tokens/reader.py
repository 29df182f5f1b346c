"""Host side of a token's smart-card reader, for tests: what pcscd's CCID driver (or, on the HID
model, the host's HID reader driver) does over USB, as an ``ApduTransport`` so the agent's own
card sessions run through it (the agent never claims the reader interface: the OS driver owns it).

``ReaderTransport(bus, token)`` powers the chip up through the reader (CCID ``PC_to_RDR_IccPowerOn``
or its HID framing) and carries APDUs in ``PC_to_RDR_XfrBlock``. ``signs_through_reader(bus, token,
prep)`` is what a user needs of the chip after any fault: a PIN-verified PSO COMPUTE DIGITAL
SIGNATURE through the reader whose result verifies with the certificate on the chip.
"""
from __future__ import annotations

import hashlib
import struct

import usb.core
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding

from agent.card.transport import split_response

POWER_ON, XFR_BLOCK = 0x62, 0x6F


class ReaderError(AssertionError):
    """The reader or the chip behind it did not answer as a reader must."""


class ReaderTransport:
    def __init__(self, bus, token):
        self.bus, self.token = bus, token
        self.dev = usb.core.find(backend=bus, idVendor=token.model.usb.vendor_id,
                                 idProduct=token.model.usb.runtime_product_id)
        if self.dev is None:
            raise ReaderError("the token is not on the bus in runtime mode: no reader")
        self.ccid = token.model.reader == "ccid"
        cls = 0x0B if self.ccid else 0x03
        intf = next(i for i in self.dev.get_active_configuration() if i.bInterfaceClass == cls)
        self.out_ep = next(e.bEndpointAddress for e in intf if not e.bEndpointAddress & 0x80)
        self.in_ep = next(e.bEndpointAddress for e in intf if e.bEndpointAddress & 0x80 and e.bmAttributes == 2) \
            if self.ccid else next(e.bEndpointAddress for e in intf if e.bEndpointAddress & 0x80)
        self.seq = 0
        self.atr = self._xfr(POWER_ON)

    def _xfr(self, mtype: int, body: bytes = b"") -> bytes:
        owned = self.bus.host_owns_os_interfaces
        self.bus.host_owns_os_interfaces = True   # we play the OS's reader driver here
        try:
            self.seq = (self.seq + 1) & 0xFF
            msg = struct.pack("<BIBBBBB", mtype, len(body), 0, self.seq, 0, 0, 0) + body
            resp = self._ccid(msg) if self.ccid else self._hid(msg)
        finally:
            self.bus.host_owns_os_interfaces = owned
        if len(resp) < 10 or resp[0] not in (0x80, 0x81) or struct.unpack("<I", resp[1:5])[0] != len(resp) - 10:
            raise ReaderError(f"the reader answered a malformed message {resp[:10].hex()}")
        if resp[7] & 0x40:   # bmICCStatus / bmCommandStatus: failed
            raise ReaderError(f"the reader reports a failed command (status {resp[7]:#04x}, error {resp[8]:#04x})")
        return resp[10:]

    def _ccid(self, msg: bytes) -> bytes:
        self.dev.write(self.out_ep, msg)
        return bytes(self.dev.read(self.in_ep, 65536 + 10))

    def _hid(self, msg: bytes) -> bytes:
        chunks = [msg[i:i + 63] for i in range(0, len(msg), 63)]
        for i, c in enumerate(chunks):
            self.dev.write(self.out_ep, bytes([len(c) | (0x80 if i == len(chunks) - 1 else 0)]) + c.ljust(63, b"\0"))
        out = b""
        while True:
            r = bytes(self.dev.read(self.in_ep, 64))
            out += r[1:1 + (r[0] & 0x3F)]
            if r[0] & 0x80:
                return out

    # ApduTransport
    def transmit(self, apdu: bytes) -> tuple[bytes, int]:
        return split_response(self._xfr(XFR_BLOCK, bytes(apdu)))

    def transaction(self):
        from contextlib import nullcontext
        return nullcontext()

    def close(self) -> None:
        pass


def signs_through_reader(bus, token, prep, keyset: str = "CNS1") -> None:
    """Raise ``ReaderError`` unless the chip, reached through the token's reader, signs with its
    ``keyset`` key after VERIFY PIN and the signature verifies with that keyset's certificate."""
    from agent.card.cns import CnsSession
    from agent.card.issuer import IssuerSession

    model = token.card.model
    transport = ReaderTransport(bus, token)
    if transport.atr != token.card.atr:
        raise ReaderError("the reader gives another ATR than the chip's")
    session = CnsSession(transport, model)
    ks = next(k for k in model.keysets if k.name == keyset)
    session.verify_pin(prep.pin, keyset)
    document = b"a document signed after a fault on token " + token.serial.encode()
    digest = hashlib.sha256(document).digest()
    k = model.rsa_bits // 8
    info = bytes.fromhex("3031300d060960864801650304020105000420") + digest       # DigestInfo, SHA-256
    block = b"\x00\x01" + b"\xff" * (k - 3 - len(info)) + b"\x00" + info
    sig = IssuerSession(session, model).raw_sign(ks, ks.key_ref, block)
    try:
        prep.certs[keyset].public_key().verify(sig, document, padding.PKCS1v15(), hashes.SHA256())
    except Exception as exc:
        raise ReaderError(f"the chip's signature does not verify with its certificate ({type(exc).__name__})") \
            from None
