"""ISO 7816-4 values as enums, status-word names, and the short-APDU builder.

Pure data: imports nothing of ours and does no I/O. Only short APDUs
(Lc ≤ 255, Le ≤ 256): CNS cards take long data through command chaining
(``agent.card.transport.ChainingProcessor``), never extended APDUs.
"""
from __future__ import annotations

import enum
from dataclasses import dataclass

CLA_ISO = 0x00
CLA_CHAINING = 0x10  # ISO 7816-4 §5.1.1: more commands of this chain follow


class INS(enum.IntEnum):
    VERIFY = 0x20
    MANAGE_SECURITY_ENVIRONMENT = 0x22
    CHANGE_REFERENCE_DATA = 0x24
    PERFORM_SECURITY_OPERATION = 0x2A
    RESET_RETRY_COUNTER = 0x2C
    GENERATE_ASYMMETRIC_KEY_PAIR = 0x46
    SELECT = 0xA4
    READ_BINARY = 0xB0
    GET_RESPONSE = 0xC0
    UPDATE_BINARY = 0xD6
    CREATE_FILE = 0xE0
    DELETE_FILE = 0xE4


class SelectP1(enum.IntEnum):
    BY_FILE_ID = 0x00
    CHILD_DF = 0x01
    CHILD_EF = 0x02
    PARENT_DF = 0x03
    BY_DF_NAME = 0x04
    PATH_FROM_MF = 0x08
    PATH_FROM_CURRENT_DF = 0x09


class SelectP2(enum.IntEnum):
    RETURN_FCI = 0x00
    RETURN_FCP = 0x04
    RETURN_FMD = 0x08
    NO_RESPONSE = 0x0C


class SW(enum.IntEnum):
    OK = 0x9000
    END_OF_FILE = 0x6282  # fewer bytes than Le: CNS cards answer this at EOF
    FILE_INVALIDATED = 0x6283
    MEMORY_FAILURE = 0x6581
    WRONG_LENGTH = 0x6700
    LOGICAL_CHANNEL_NOT_SUPPORTED = 0x6881
    SECURE_MESSAGING_NOT_SUPPORTED = 0x6882
    LAST_COMMAND_EXPECTED = 0x6883
    CHAINING_NOT_SUPPORTED = 0x6884
    COMMAND_INCOMPATIBLE_WITH_FILE = 0x6981
    SECURITY_STATUS_NOT_SATISFIED = 0x6982
    AUTH_METHOD_BLOCKED = 0x6983
    REFERENCE_DATA_NOT_USABLE = 0x6984
    CONDITIONS_NOT_SATISFIED = 0x6985
    COMMAND_NOT_ALLOWED = 0x6986
    WRONG_DATA = 0x6A80
    FUNCTION_NOT_SUPPORTED = 0x6A81
    FILE_NOT_FOUND = 0x6A82
    RECORD_NOT_FOUND = 0x6A83
    NOT_ENOUGH_MEMORY = 0x6A84
    INCORRECT_P1P2 = 0x6A86
    REFERENCE_DATA_NOT_FOUND = 0x6A88
    WRONG_P1P2 = 0x6B00
    INS_NOT_SUPPORTED = 0x6D00
    CLA_NOT_SUPPORTED = 0x6E00
    NO_PRECISE_DIAGNOSIS = 0x6F00


# Status-word families whose low byte carries a number.
SW1_BYTES_REMAINING = 0x61  # 61xx: xx more bytes with GET RESPONSE
SW1_WRONG_LE = 0x6C  # 6Cxx: re-send with Le = xx
SW_COUNTER_MASK = 0xFFF0
SW_COUNTER = 0x63C0  # 63Cx: verification failed, x tries left


def sw_name(sw: int) -> str:
    """The symbolic name of a status word, with the family's number where it has one."""
    try:
        return SW(sw).name
    except ValueError:
        pass
    sw1, sw2 = sw >> 8, sw & 0xFF
    if sw1 == SW1_BYTES_REMAINING:
        return f"BYTES_REMAINING[{sw2}]"
    if sw1 == SW1_WRONG_LE:
        return f"WRONG_LE[{sw2}]"
    if sw & SW_COUNTER_MASK == SW_COUNTER:
        return f"VERIFY_FAILED[{sw & 0x0F} tries left]"
    if sw1 == 0x64:
        return "EXECUTION_ERROR"
    return "UNKNOWN_STATUS"


def tries_left(sw: int) -> int | None:
    """x of a 63Cx status word, else None."""
    return sw & 0x0F if sw & SW_COUNTER_MASK == SW_COUNTER else None


@dataclass(frozen=True)
class Apdu:
    """A short command APDU. ``le`` None means no Le field; 256 encodes as 00."""

    cla: int
    ins: int
    p1: int = 0
    p2: int = 0
    data: bytes = b""
    le: int | None = None

    def __post_init__(self) -> None:
        for name in ("cla", "ins", "p1", "p2"):
            if not 0 <= getattr(self, name) <= 0xFF:
                raise ValueError(f"APDU {name} out of range")
        if self.le is not None and not 0 <= self.le <= 256:
            raise ValueError("APDU le out of range (short APDUs only)")

    def encode(self) -> bytes:
        if len(self.data) > 255:
            raise ValueError("data longer than 255 bytes needs command chaining")
        out = bytes([self.cla, self.ins, self.p1, self.p2])
        if self.data:
            out += bytes([len(self.data)]) + self.data
        if self.le is not None:
            out += bytes([self.le & 0xFF])
        return out

    def encode_long(self) -> bytes:
        """As ``encode`` but allows a data field over 255 bytes (Lc as 00 + 2 bytes).

        Only for handing a long command to ``ChainingProcessor``, which splits it.
        """
        if len(self.data) <= 255:
            return self.encode()
        out = bytes([self.cla, self.ins, self.p1, self.p2, 0]) + len(self.data).to_bytes(2, "big") + self.data
        if self.le is not None:
            out += (self.le % 65536).to_bytes(2, "big")
        return out

    @classmethod
    def decode(cls, raw: bytes) -> "Apdu":
        """Parse a short APDU, or the long form ``encode_long`` writes."""
        if len(raw) < 4:
            raise ValueError("APDU shorter than 4 bytes")
        cla, ins, p1, p2 = raw[:4]
        body = raw[4:]
        if not body:
            return cls(cla, ins, p1, p2)
        if len(body) == 1:
            return cls(cla, ins, p1, p2, le=body[0] or 256)
        if body[0] == 0 and len(body) >= 3:  # extended length form
            lc = int.from_bytes(body[1:3], "big")
            data, rest = body[3:3 + lc], body[3 + lc:]
            if len(data) != lc or len(rest) not in (0, 2):
                raise ValueError("bad extended APDU length")
            le = (int.from_bytes(rest, "big") or 256) if rest else None
            return cls(cla, ins, p1, p2, data, min(le, 256) if le else le)
        lc = body[0]
        data, rest = body[1:1 + lc], body[1 + lc:]
        if len(data) != lc or len(rest) > 1:
            raise ValueError("APDU Lc does not match its data")
        return cls(cla, ins, p1, p2, data, (rest[0] or 256) if rest else None)
