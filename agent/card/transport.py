"""The one seam to a card, and the processors stacked on it.

``ApduTransport.transmit(apdu) -> (data, sw)`` is all a card session sees.
PC/SC (``agent.devices.pcsc``), an in-process emulator adapter (tests) and a
recorder all implement it. Processors wrap a transport and are transports
themselves:

- ``ResponseProcessor``: 61xx → GET RESPONSE until done; 6Cxx → re-send with Le = xx.
- ``ChainingProcessor``: a data field over 255 bytes goes out as a command chain
  (CLA | 0x10 on all but the last part); each part must answer 9000.

``processed(raw)`` stacks both the way sessions want them. Imports only
``agent.card.apdu`` and ``agent.card.errors``; no pyscard, no emulator.
"""
from __future__ import annotations

from typing import Protocol, runtime_checkable

from agent.card.apdu import CLA_CHAINING, INS, SW, SW1_BYTES_REMAINING, SW1_WRONG_LE, Apdu
from agent.card.errors import MalformedResponseError

MAX_SHORT_DATA = 255
MAX_GET_RESPONSE_ROUNDS = 256  # 64 KiB: a card that keeps answering 61xx is broken


@runtime_checkable
class ApduTransport(Protocol):
    def transmit(self, apdu: bytes) -> tuple[bytes, int]:
        """Send one command APDU; return the response data and the status word."""
        ...


def split_response(raw: bytes) -> tuple[bytes, int]:
    """``data + SW1 SW2`` → (data, sw); a response shorter than 2 bytes is malformed."""
    if len(raw) < 2:
        raise MalformedResponseError(f"response of {len(raw)} bytes has no status word")
    return bytes(raw[:-2]), (raw[-2] << 8) | raw[-1]


class ResponseProcessor:
    """Follows 61xx with GET RESPONSE and answers 6Cxx by re-sending with the right Le."""

    def __init__(self, inner: ApduTransport) -> None:
        self.inner = inner

    def transmit(self, apdu: bytes) -> tuple[bytes, int]:
        data, sw = self.inner.transmit(apdu)
        if sw >> 8 == SW1_WRONG_LE:
            cmd = Apdu.decode(apdu)
            resend = Apdu(cmd.cla, cmd.ins, cmd.p1, cmd.p2, cmd.data, (sw & 0xFF) or 256)
            data, sw = self.inner.transmit(resend.encode())
        buf = bytearray(data)
        rounds = 0
        while sw >> 8 == SW1_BYTES_REMAINING:
            rounds += 1
            if rounds > MAX_GET_RESPONSE_ROUNDS:
                raise MalformedResponseError("card never stops answering 61xx")
            get = Apdu(0x00, INS.GET_RESPONSE, 0, 0, le=(sw & 0xFF) or 256)
            data, sw = self.inner.transmit(get.encode())
            buf += data
        return bytes(buf), sw


class ChainingProcessor:
    """Sends a command whose data exceeds 255 bytes as an ISO 7816-4 command chain.

    Takes the long form from ``Apdu.encode_long`` (or any short APDU, passed through).
    """

    def __init__(self, inner: ApduTransport, *, max_chunk: int = MAX_SHORT_DATA) -> None:
        self.inner = inner
        self.max_chunk = max_chunk

    def transmit(self, apdu: bytes) -> tuple[bytes, int]:
        cmd = Apdu.decode(apdu)
        if len(cmd.data) <= self.max_chunk:
            return self.inner.transmit(apdu if len(cmd.data) <= MAX_SHORT_DATA else cmd.encode())
        parts = [cmd.data[i:i + self.max_chunk] for i in range(0, len(cmd.data), self.max_chunk)]
        for part in parts[:-1]:
            head = Apdu(cmd.cla | CLA_CHAINING, cmd.ins, cmd.p1, cmd.p2, part)
            data, sw = self.inner.transmit(head.encode())
            if sw != SW.OK:
                return data, sw
        last = Apdu(cmd.cla, cmd.ins, cmd.p1, cmd.p2, parts[-1], cmd.le)
        return self.inner.transmit(last.encode())


def processed(raw: ApduTransport) -> ApduTransport:
    """The stack a session uses: chaining over response handling over the raw transport."""
    return ChainingProcessor(ResponseProcessor(raw))


_SECRET_INS = {INS.VERIFY, INS.CHANGE_REFERENCE_DATA, INS.RESET_RETRY_COUNTER}


def redact(apdu: bytes) -> bytes:
    """The APDU with the data of PIN commands replaced by ``*`` bytes of the same length."""
    if len(apdu) > 5 and apdu[1] in _SECRET_INS:
        return apdu[:5] + b"*" * (len(apdu) - 5)
    return bytes(apdu)


class RecordingTransport:
    """Keeps every exchange (command, data, sw) so a field problem can become a fixture.

    PIN-bearing commands are stored redacted (``redact``).
    """

    def __init__(self, inner: ApduTransport) -> None:
        self.inner = inner
        self.exchanges: list[tuple[bytes, bytes, int]] = []

    def transmit(self, apdu: bytes) -> tuple[bytes, int]:
        data, sw = self.inner.transmit(apdu)
        self.exchanges.append((redact(apdu), data, sw))
        return data, sw
