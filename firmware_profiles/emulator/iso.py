"""ISO 7816-4/-8/-9 values the emulator speaks: status words, instructions,
tags, and the short-APDU parser.

Owns: named constants and ``Command.parse`` (bytes → command or a status word).
Imports nothing of ours.
"""
from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum


class SW(IntEnum):
    OK = 0x9000
    BYTES_REMAINING = 0x6100  # | remaining (00 = 256 or more)
    END_OF_FILE = 0x6282  # fewer bytes than asked: end of file reached (CNS)
    VERIFY_FAILED = 0x63C0  # | tries left
    MEMORY_FAILURE = 0x6581
    WRONG_LENGTH = 0x6700
    LOGICAL_CHANNEL_NOT_SUPPORTED = 0x6881
    SECURE_MESSAGING_NOT_SUPPORTED = 0x6882
    LAST_COMMAND_OF_CHAIN_EXPECTED = 0x6883
    COMMAND_CHAINING_NOT_SUPPORTED = 0x6884
    COMMAND_INCOMPATIBLE_WITH_FILE = 0x6981
    SECURITY_STATUS_NOT_SATISFIED = 0x6982
    AUTH_METHOD_BLOCKED = 0x6983
    REFERENCE_DATA_NOT_USABLE = 0x6984
    CONDITIONS_NOT_SATISFIED = 0x6985
    NO_CURRENT_EF = 0x6986
    WRONG_DATA = 0x6A80
    FUNCTION_NOT_SUPPORTED = 0x6A81
    FILE_NOT_FOUND = 0x6A82
    NOT_ENOUGH_MEMORY = 0x6A84
    INCORRECT_P1P2 = 0x6A86
    REFERENCED_DATA_NOT_FOUND = 0x6A88
    FILE_ALREADY_EXISTS = 0x6A89
    WRONG_P1P2 = 0x6B00
    INS_NOT_SUPPORTED = 0x6D00
    CLA_NOT_SUPPORTED = 0x6E00
    NO_PRECISE_DIAGNOSIS = 0x6F00

    @staticmethod
    def name_of(sw: int) -> str:
        for base in (SW.BYTES_REMAINING, SW.VERIFY_FAILED):
            if sw & 0xFF00 == base & 0xFF00 and (base != SW.VERIFY_FAILED or sw & 0xFFF0 == 0x63C0):
                return f"{base.name}({sw & (0xFF if base == SW.BYTES_REMAINING else 0x0F)})"
        try:
            return SW(sw).name
        except ValueError:
            return f"{sw:04X}"


class INS(IntEnum):
    ERASE_KEY = 0xEA  # proprietary (CLA 80), number from the model's dialect
    SWITCH_KEYSET = 0xD8  # proprietary (CLA 80)
    GET_INFO = 0xCA  # proprietary GET DATA (CLA 80)
    SELECT = 0xA4
    READ_BINARY = 0xB0
    UPDATE_BINARY = 0xD6
    VERIFY = 0x20
    CHANGE_REFERENCE_DATA = 0x24
    RESET_RETRY_COUNTER = 0x2C
    MANAGE_SECURITY_ENVIRONMENT = 0x22
    PERFORM_SECURITY_OPERATION = 0x2A
    GENERATE_ASYMMETRIC_KEY_PAIR = 0x46
    GET_CHALLENGE = 0x84
    EXTERNAL_AUTHENTICATE = 0x82
    GET_RESPONSE = 0xC0
    CREATE_FILE = 0xE0
    DELETE_FILE = 0xE4


CLA_ISO = 0x00
CLA_CHAINING = 0x10
CLA_PROPRIETARY = 0x80

# SELECT
SELECT_P1_BY_FID = 0x00
SELECT_P1_CHILD_DF = 0x01
SELECT_P1_CHILD_EF = 0x02
SELECT_P1_PARENT = 0x03
SELECT_P1_BY_NAME = 0x04
SELECT_P1_PATH_FROM_MF = 0x08
SELECT_P1_PATH_FROM_CURRENT = 0x09
SELECT_P2_FCI = 0x00
SELECT_P2_FCP = 0x04
SELECT_P2_NO_DATA = 0x0C

# MSE
MSE_RESTORE = 0xF3
MSE_SET_COMPUTE = 0x41
MSE_SET_CNS = 0xF1  # what OpenSC's itacns driver sends
CRT_DST = 0xB6  # digital signature
CRT_CT = 0xB8  # confidentiality (decipher)
CRT_AT = 0xA4  # authentication
TAG_KEY_REF = 0x83
TAG_KEY_REF_PRIVATE = 0x84

# PSO
PSO_CDS = (0x9E, 0x9A)
PSO_DECIPHER = (0x80, 0x86)
PADDING_INDICATOR_NONE = 0x00

# FCP (ISO 7816-4 table 12)
TAG_FCP = 0x62
TAG_FILE_SIZE = 0x80
TAG_FILE_DESCRIPTOR = 0x82
TAG_FILE_ID = 0x83
TAG_LIFE_CYCLE = 0x8A
TAG_SEC_ATTR_PROPRIETARY = 0x86
FD_TRANSPARENT_EF = 0x01
FD_DF = 0x38
LCS_OPERATIONAL_ACTIVATED = 0x05

# GENERATE ASYMMETRIC KEY PAIR
GEN_P1_GENERATE = 0x00
GEN_P1_READ_PUBLIC = 0x01
TAG_KEY_BITS = 0x80
TAG_PUBLIC_KEY = 0x7F49
TAG_MODULUS = 0x81
TAG_EXPONENT = 0x82

MAX_SHORT_LE = 256


@dataclass(frozen=True)
class Command:
    cla: int
    ins: int
    p1: int
    p2: int
    data: bytes
    le: int | None  # None: no Le field; 256 for Le = 00

    @property
    def chained(self) -> bool:
        return bool(self.cla & CLA_CHAINING)

    @classmethod
    def parse(cls, apdu: bytes) -> "Command | SW":
        """Short APDUs only (the CNS has no extended length); a malformed one is WRONG_LENGTH."""
        n = len(apdu)
        if n < 4:
            return SW.WRONG_LENGTH
        cla, ins, p1, p2 = apdu[:4]
        if n == 4:
            return cls(cla, ins, p1, p2, b"", None)
        if n == 5:
            return cls(cla, ins, p1, p2, b"", apdu[4] or MAX_SHORT_LE)
        lc = apdu[4]
        if lc == 0:  # extended length: not supported by this card
            return SW.WRONG_LENGTH
        if n == 5 + lc:
            return cls(cla, ins, p1, p2, bytes(apdu[5:]), None)
        if n == 6 + lc:
            return cls(cla, ins, p1, p2, bytes(apdu[5:5 + lc]), apdu[-1] or MAX_SHORT_LE)
        return SW.WRONG_LENGTH


def tlv(tag: int, value: bytes) -> bytes:
    """BER-TLV with definite length (tags of one or two bytes)."""
    t = tag.to_bytes(2 if tag > 0xFF else 1, "big")
    n = len(value)
    if n < 0x80:
        ln = bytes([n])
    elif n <= 0xFF:
        ln = bytes([0x81, n])
    else:
        ln = bytes([0x82]) + n.to_bytes(2, "big")
    return t + ln + value


def parse_tlvs(data: bytes) -> dict[int, bytes] | None:
    """Flat BER-TLV list (one-byte tags) → {tag: value}; None if malformed."""
    out: dict[int, bytes] = {}
    i = 0
    while i < len(data):
        if i + 2 > len(data):
            return None
        tag, n = data[i], data[i + 1]
        i += 2
        if n == 0x81:
            if i >= len(data):
                return None
            n, i = data[i], i + 1
        elif n == 0x82:
            if i + 2 > len(data):
                return None
            n, i = int.from_bytes(data[i:i + 2], "big"), i + 2
        elif n > 0x80:
            return None
        if i + n > len(data):
            return None
        out[tag] = data[i:i + n]
        i += n
    return out
