"""The one seam to a card, and the processors stacked on it.

``ApduTransport.transmit(apdu) -> (data, sw)`` is all a card session sees.
PC/SC (``agent.devices.pcsc``), an in-process emulator adapter (tests) and a
recorder all implement it. Processors wrap a transport and are transports
themselves:

- ``ResponseProcessor``: 61xx → GET RESPONSE until done; 6Cxx → re-send with Le = xx.
- ``ChainingProcessor``: a data field over 255 bytes goes out as a command chain
  (CLA | 0x10 on all but the last part); each part must answer 9000.

``processed(raw)`` stacks both the way sessions want them.

Recordings, so that a field problem becomes a test: ``RecordingTransport``
keeps the exchanges (PIN data redacted) and ``save``s them as JSON lines;
``ReplayTransport`` serves a saved recording through this same seam and
raises ``ReplayDivergence`` naming the line where the code under test sent
something else. The format (also what ``cns-emulator serve --apdu-log``
writes at the card side)::

    {"meta": {...}}                      optional first line: what was recorded
    {"c": "00a40000023f00", "r": "9000"}  one exchange a line: command, response data + SW
    {"c": "0020008108********", "r": "9000"}  PIN command: each data byte is "**"
    {"c": "00d6000010...", "r": null}     the card went away during this command

Other keys on a line (the emulator's ``"t"`` timestamp) are ignored.

Imports only ``agent.card.apdu`` and ``agent.card.errors``; no pyscard, no emulator.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from agent.card.apdu import CLA_CHAINING, INS, SW, SW1_BYTES_REMAINING, SW1_WRONG_LE, Apdu
from agent.card.errors import CardError, CardRemovedError, MalformedResponseError

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


def _secret(apdu: bytes) -> bool:
    return len(apdu) > 5 and apdu[1] in _SECRET_INS


def redact(apdu: bytes) -> bytes:
    """The APDU with the data of PIN commands replaced by ``*`` bytes of the same length."""
    if _secret(apdu):
        return apdu[:5] + b"*" * (len(apdu) - 5)
    return bytes(apdu)


def redacted_hex(apdu: bytes) -> str:
    """The command as a recording line writes it: hex, with ``**`` for each byte of PIN data."""
    return apdu[:5].hex() + "**" * (len(apdu) - 5) if _secret(apdu) else bytes(apdu).hex()


class RecordingError(CardError):
    """A recording file that cannot be read (names the file and line)."""


class ReplayDivergence(CardError):
    """The code under test sent another command than the recording has at this line."""


@dataclass(frozen=True)
class Exchange:
    command: str            # hex; "**" for a redacted byte
    response: bytes | None  # data + SW; None: the card went away during the command
    line: int = 0           # 1-based line in the recording file (0: not from a file)

    def first_difference(self, apdu: bytes) -> int | None:
        """Offset of the first byte of ``apdu`` the command does not match (``**`` matches any byte)."""
        want = self.command
        for i in range(max(len(want) // 2, len(apdu))):
            pair = want[2 * i:2 * i + 2]
            if i >= len(apdu) or not pair or (pair != "**" and pair != apdu[i:i + 1].hex()):
                return i
        return None

    def matches(self, apdu: bytes) -> bool:
        return self.first_difference(apdu) is None


def _short(hex_command: str, limit: int = 80) -> str:
    n = len(hex_command) // 2
    return hex_command if len(hex_command) <= limit else f"{hex_command[:limit]}… ({n} bytes)"


@dataclass
class Recording:
    exchanges: list[Exchange]
    meta: dict[str, Any] = field(default_factory=dict)
    source: str = "recording"

    def save(self, path: str | Path) -> None:
        lines = [json.dumps({"meta": self.meta}, sort_keys=True)] if self.meta else []
        lines += [json.dumps({"c": e.command, "r": None if e.response is None else e.response.hex()})
                  for e in self.exchanges]
        Path(path).write_text("\n".join(lines) + "\n", encoding="utf-8")

    @classmethod
    def load(cls, path: str | Path) -> "Recording":
        path = Path(path)
        meta: dict[str, Any] = {}
        exchanges: list[Exchange] = []
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise RecordingError(f"cannot read recording {path}: {exc.strerror}") from None
        for n, raw in enumerate(text.splitlines(), 1):
            if not raw.strip():
                continue
            try:
                rec = json.loads(raw)
                if "meta" in rec and n == 1:
                    meta = dict(rec["meta"])
                    continue
                cmd, resp = rec["c"], rec["r"]
                if not isinstance(cmd, str) or len(cmd) % 2 or len(cmd) < 8 or \
                        any(cmd[i:i + 2] != "**" and not _is_hex(cmd[i:i + 2]) for i in range(0, len(cmd), 2)):
                    raise ValueError("command is not hex")
                response = None if resp is None else bytes.fromhex(resp)
                if response is not None and len(response) < 2:
                    raise ValueError("response has no status word")
            except (ValueError, KeyError, TypeError, AttributeError) as exc:
                raise RecordingError(f"{path}:{n}: not a recorded exchange ({exc}): "
                                     'expected {"c": "<hex>", "r": "<hex>"|null}') from None
            exchanges.append(Exchange(cmd.lower(), response, n))
        return cls(exchanges, meta, str(path))


def _is_hex(pair: str) -> bool:
    try:
        bytes.fromhex(pair)
    except ValueError:
        return False
    return len(pair) == 2


class RecordingTransport:
    """Keeps every exchange (command, data, sw) so a field problem can become a fixture.

    PIN-bearing commands are stored redacted (``redact``).
    """

    def __init__(self, inner: ApduTransport) -> None:
        self.inner = inner
        self.exchanges: list[tuple[bytes, bytes, int]] = []
        self._lines: list[Exchange] = []

    def transmit(self, apdu: bytes) -> tuple[bytes, int]:
        try:
            data, sw = self.inner.transmit(apdu)
        except CardRemovedError:
            self._lines.append(Exchange(redacted_hex(apdu), None))
            raise
        self.exchanges.append((redact(apdu), data, sw))
        self._lines.append(Exchange(redacted_hex(apdu), data + sw.to_bytes(2, "big")))
        return data, sw

    def recording(self, meta: dict[str, Any] | None = None) -> Recording:
        """What was exchanged so far, as a ``Recording`` (``.save(path)`` writes the JSON lines)."""
        return Recording(list(self._lines), dict(meta or {}))

    def save(self, path: str | Path, meta: dict[str, Any] | None = None) -> None:
        self.recording(meta).save(path)


class ReplayTransport:
    """Serves a recording: each command sent must be the recording's next one (``**`` bytes match anything).

    A different command raises ``ReplayDivergence`` naming the file and line; a command past the end
    too. ``r: null`` lines raise ``CardRemovedError`` as the card did. ``finish()`` checks that every
    recorded exchange was used.
    """

    def __init__(self, recording: Recording | str | Path) -> None:
        self.recording = recording if isinstance(recording, Recording) else Recording.load(recording)
        self.position = 0

    def _where(self, e: Exchange | None = None) -> str:
        return f"{self.recording.source}:{e.line}" if e and e.line else \
            f"{self.recording.source} exchange {self.position + 1}"

    def transmit(self, apdu: bytes) -> tuple[bytes, int]:
        apdu = bytes(apdu)
        if self.position >= len(self.recording.exchanges):
            raise ReplayDivergence(f"{self._where()}: sent {redacted_hex(apdu)} after the recording's last "
                                   f"exchange ({len(self.recording.exchanges)} recorded)")
        e = self.recording.exchanges[self.position]
        if not e.matches(apdu):
            raise ReplayDivergence(f"{self._where(e)}: sent {_short(redacted_hex(apdu))}, the recording has "
                                   f"{_short(e.command)} (first difference at byte {e.first_difference(apdu)})")
        self.position += 1
        if e.response is None:
            raise CardRemovedError(f"{self._where(e)}: the card went away during this command (recorded)")
        return split_response(e.response)

    def finish(self) -> None:
        """Raise ``ReplayDivergence`` if recorded exchanges were left unused."""
        left = len(self.recording.exchanges) - self.position
        if left:
            e = self.recording.exchanges[self.position]
            raise ReplayDivergence(f"{self._where(e)}: {left} recorded exchange(s) never sent, "
                                   f"the first is {e.command}")
