"""``CnsSession``: the Italian CNS dialect over an ``ApduTransport``.

Owns: SELECT by path, READ BINARY to the end of a file (CNS answers 6282 at
EOF), EF_IDCarta (card serial), EF_DatiPersonali (holder), PIN status, verify,
change and unblock by the references the model gives. Status words become the
exceptions of ``agent.card.errors`` here; anything unparsable becomes
``MalformedResponseError``. PINs are never put in a message or a log.

Imports: ``agent.card.*`` only. The model is duck-typed (``agent.card.layout``)
so this module never imports ``firmware_profiles``, let alone its emulator.
"""
from __future__ import annotations

from dataclasses import dataclass

from agent.card import datipersonali
from agent.card.apdu import CLA_ISO, INS, SW, Apdu, SelectP1, SelectP2, tries_left
from agent.card.errors import (
    ApduError,
    FileNotFoundOnCardError,
    MalformedResponseError,
    PinBlockedError,
    PinNotSetError,
    SecurityStatusError,
    WrongPinError,
)
from agent.card.layout import CnsLayout, PinRef, layout_from_model
from agent.card.transport import ApduTransport, processed

READ_CHUNK = 0xFF  # OpenSC reads CNS files in 255-byte chunks
MAX_FILE_SIZE = 0x7FFF  # READ BINARY offsets are 15 bits
SERIAL_LEN = 16
PIN_BLOCK_LEN = 8
PIN_PAD = 0xFF


def parse_path(path: str) -> bytes:
    """"3F00/1100/1102" → b"\\x3f\\x00\\x11\\x00\\x11\\x02"."""
    parts = [p for p in path.replace(":", "/").split("/") if p]
    try:
        raw = b"".join(bytes.fromhex(p) for p in parts)
    except ValueError:
        raise ValueError(f"bad file path {path!r}") from None
    if not raw or len(raw) % 2 or any(len(p) != 4 for p in parts):
        raise ValueError(f"bad file path {path!r}: want 2-byte ids like 3F00/1000/1003")
    return raw


def _size_from_fcp(fcp: bytes) -> int | None:
    """Tag 80 (or 81) of an FCP template 62, when present and well formed."""
    if len(fcp) < 2 or fcp[0] != 0x62:
        return None
    end = min(len(fcp), 2 + fcp[1])
    pos = 2
    while pos + 2 <= end:
        tag, n = fcp[pos], fcp[pos + 1]
        value = fcp[pos + 2:pos + 2 + n]
        if len(value) != n:
            return None
        if tag in (0x80, 0x81) and 1 <= n <= 4:
            return int.from_bytes(value, "big")
        pos += 2 + n
    return None


def _pin_block(secret: str, what: str) -> bytes:
    if not (secret.isascii() and secret.isdigit() and 4 <= len(secret) <= PIN_BLOCK_LEN):
        raise ValueError(f"{what} must be 4 to {PIN_BLOCK_LEN} digits")  # never echo it
    return secret.encode("ascii").ljust(PIN_BLOCK_LEN, bytes([PIN_PAD]))


@dataclass(frozen=True)
class CardSummary:
    serial: str
    personal: datipersonali.PersonalData | None  # None: a blank card, no holder yet

    @property
    def holder_label(self) -> str:
        return self.personal.holder_label if self.personal else ""


class CnsSession:
    """One CNS card behind ``transport``; ``model`` chooses paths and PIN references."""

    def __init__(self, transport: ApduTransport, model: object | None = None, *, raw: bool = False) -> None:
        self.transport = transport if raw else processed(transport)
        self.layout: CnsLayout = layout_from_model(model)

    # -- files -------------------------------------------------------------
    def _send(self, apdu: Apdu) -> tuple[bytes, int]:
        return self.transport.transmit(apdu.encode_long())

    def select(self, path: str) -> int | None:
        """Select a file by its path from the MF; returns its size when the FCP gives it."""
        raw = parse_path(path)
        if raw == b"\x3f\x00":
            apdu = Apdu(CLA_ISO, INS.SELECT, SelectP1.BY_FILE_ID, SelectP2.RETURN_FCI, raw, le=256)
        else:
            body = raw[2:] if raw[:2] == b"\x3f\x00" else raw
            apdu = Apdu(CLA_ISO, INS.SELECT, SelectP1.PATH_FROM_MF, SelectP2.RETURN_FCI, body, le=256)
        data, sw = self._send(apdu)
        if sw in (SW.FILE_NOT_FOUND, SW.INCORRECT_P1P2):
            raise FileNotFoundOnCardError(sw, path)
        if sw != SW.OK:
            raise ApduError(sw, f"SELECT {path}")
        return _size_from_fcp(data)

    def read_binary(self, size: int | None = None) -> bytes:
        """Read the selected EF to its end (``size`` bytes when known, else until 6282)."""
        limit = MAX_FILE_SIZE if size is None else min(size, MAX_FILE_SIZE)
        out = bytearray()
        while len(out) < limit:
            want = min(READ_CHUNK, limit - len(out))
            offset = len(out)
            data, sw = self._send(Apdu(CLA_ISO, INS.READ_BINARY, offset >> 8, offset & 0xFF, le=want))
            if len(data) > want:
                raise MalformedResponseError(f"READ BINARY returned {len(data)} bytes, asked {want}")
            out += data
            if sw == SW.END_OF_FILE or (sw in (SW.WRONG_P1P2, SW.INCORRECT_P1P2) and offset):
                break
            if sw == SW.SECURITY_STATUS_NOT_SATISFIED:
                raise SecurityStatusError(sw, "READ BINARY")
            if sw != SW.OK:
                raise ApduError(sw, f"READ BINARY at {offset}")
            if not data:
                break
        else:
            if size is None:
                raise MalformedResponseError(f"file longer than {MAX_FILE_SIZE} bytes, or no end of file")
        return bytes(out)

    def read_file(self, path: str) -> bytes:
        return self.read_binary(self.select(path))

    def update_binary(self, path: str, content: bytes) -> None:
        """ISO UPDATE BINARY of ``content`` from offset 0, in 255-byte parts."""
        self.select(path)
        for offset in range(0, len(content), READ_CHUNK):
            part = content[offset:offset + READ_CHUNK]
            _, sw = self._send(Apdu(CLA_ISO, INS.UPDATE_BINARY, offset >> 8, offset & 0xFF, part))
            if sw == SW.SECURITY_STATUS_NOT_SATISFIED:
                raise SecurityStatusError(sw, f"UPDATE BINARY {path}")
            if sw != SW.OK:
                raise ApduError(sw, f"UPDATE BINARY {path} at {offset}")

    # -- CNS objects -------------------------------------------------------
    def read_serial(self) -> str:
        """EF_IDCarta: the 16-character card serial."""
        raw = self.read_file(self.layout.id_carta)
        text = raw.rstrip(b"\x00\xff ")
        if len(text) != SERIAL_LEN or not all(0x21 <= b < 0x7F for b in text):
            raise MalformedResponseError(f"EF_IDCarta is not {SERIAL_LEN} printable ASCII characters: {raw[:32].hex()}")
        return text.decode("ascii")

    def read_personal_data(self) -> datipersonali.PersonalData | None:
        """EF_DatiPersonali parsed; None on a blank card (file absent or never written)."""
        try:
            raw = self.read_file(self.layout.dati_personali)
        except FileNotFoundOnCardError:
            return None
        if datipersonali.is_blank(raw):
            return None
        return datipersonali.parse(raw)

    def write_personal_data(self, data: datipersonali.PersonalData) -> None:
        self.update_binary(self.layout.dati_personali, datipersonali.serialize(data))

    def summary(self) -> CardSummary:
        return CardSummary(self.read_serial(), self.read_personal_data())

    # -- PINs --------------------------------------------------------------
    def _pin(self, name: str) -> PinRef:
        try:
            return self.layout.pins[name]
        except KeyError:
            raise ValueError(f"model has no PIN named {name!r} (has {sorted(self.layout.pins)})") from None

    def _select_pin_df(self, pin: PinRef) -> None:
        if pin.df:
            self.select(pin.df)

    @staticmethod
    def _pin_sw(sw: int, what: str) -> None:
        if sw == SW.OK:
            return
        left = tries_left(sw)
        if left == 0 or sw == SW.AUTH_METHOD_BLOCKED:
            raise PinBlockedError(sw, what)
        if sw == SW.REFERENCE_DATA_NOT_USABLE:
            raise PinNotSetError(sw, what)
        if left is not None:
            raise WrongPinError(sw, left)
        raise ApduError(sw, what)

    def pin_tries_left(self, name: str = "CNS0") -> int | None:
        """VERIFY without data: tries left (0 when blocked); None when already verified.

        Raises ``PinNotSetError`` when the PIN has no value yet."""
        pin = self._pin(name)
        self._select_pin_df(pin)
        _, sw = self._send(Apdu(CLA_ISO, INS.VERIFY, 0x00, pin.pin_ref))
        if sw == SW.OK:
            return None
        if sw == SW.AUTH_METHOD_BLOCKED:
            return 0
        left = tries_left(sw)
        if left is None:
            self._pin_sw(sw, "PIN")
            raise ApduError(sw, "PIN status")
        return left

    def puk_tries_left(self, name: str = "CNS0") -> int | None:
        """VERIFY without data on the PUK of ``name``: tries left (0 when blocked).

        None when the model names no PUK or the card does not tell (not every mask
        answers a status query on a PUK reference; OpenSC never asks). Nothing is counted.
        Raises ``PinNotSetError`` when the PUK has no value yet."""
        pin = self._pin(name)
        if pin.puk_ref is None:
            return None
        self._select_pin_df(pin)
        _, sw = self._send(Apdu(CLA_ISO, INS.VERIFY, 0x00, pin.puk_ref))
        if sw == SW.AUTH_METHOD_BLOCKED:
            return 0
        if sw == SW.REFERENCE_DATA_NOT_USABLE:
            raise PinNotSetError(sw, "PUK")
        return tries_left(sw)

    def verify_pin(self, pin_value: str, name: str = "CNS0") -> None:
        pin = self._pin(name)
        self._select_pin_df(pin)
        block = _pin_block(pin_value, "PIN")
        _, sw = self._send(Apdu(CLA_ISO, INS.VERIFY, 0x00, pin.pin_ref, block))
        self._pin_sw(sw, "PIN")

    def change_pin(self, old: str, new: str, name: str = "CNS0") -> None:
        pin = self._pin(name)
        self._select_pin_df(pin)
        data = _pin_block(old, "current PIN") + _pin_block(new, "new PIN")
        _, sw = self._send(Apdu(CLA_ISO, INS.CHANGE_REFERENCE_DATA, 0x00, pin.pin_ref, data))
        self._pin_sw(sw, "PIN")

    def unblock_pin(self, puk: str, new_pin: str, name: str = "CNS0") -> None:
        """RESET RETRY COUNTER: the PUK and a new PIN (P1 00) for the PIN's reference."""
        pin = self._pin(name)
        self._select_pin_df(pin)
        data = _pin_block(puk, "PUK") + _pin_block(new_pin, "new PIN")
        _, sw = self._send(Apdu(CLA_ISO, INS.RESET_RETRY_COUNTER, 0x00, pin.pin_ref, data))
        self._pin_sw(sw, "PUK")
