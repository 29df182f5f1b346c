"""A seeded protobuf fuzzer for gRPC servers: raw bytes to every method of a service.

Cases per method (``cases``), all reproducible from one seed:

- ``valid``: a message of the method's input type with random field values
  (reflection over the descriptor; strings of odd characters and lengths,
  extreme integers, unknown enum numbers), optionally laid over a seed
  request the caller provides (e.g. a well-formed SubmitIssue), so the
  handlers and validators behind the decoder are reached too;
- ``random``: random bytes;
- ``truncated``: a valid encoding cut short;
- ``flipped``: a valid encoding with a few bytes changed;
- ``wiretype``: a tag of a valid encoding with its wire type changed;
- ``oversize``: a length prefix replaced by a huge varint;
- ``nested``: a deeply nested group/message bomb.

``fuzz`` sends them through an aio channel with the generic
``channel.unary_unary(method)`` (no serializer: bytes in, bytes out; a
client-streaming method gets one to three cases on one stream, the first laid
over its seed, e.g. Fleet.Connect's hello, then a half-close) and tallies the
status codes; an UNKNOWN or INTERNAL answer is a finding, kept
with a reproducer (method and payload hex). Used by tests/fuzz and by
``scripts/bench fuzz``. Imports grpc and protobuf only.
"""
from __future__ import annotations

import asyncio
import random
from collections import Counter
from dataclasses import dataclass, field

import grpc
from google.protobuf import descriptor as _d
from google.protobuf import message_factory

BAD_CODES = (grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL)
# What a fuzzed request may be answered: a refusal that names the caller's error, or a success. Anything
# else (UNKNOWN, INTERNAL, UNIMPLEMENTED, UNAVAILABLE, DEADLINE_EXCEEDED, CANCELLED, DATA_LOSS) is a finding.
EXPECTED_CODES = frozenset({grpc.StatusCode.OK, grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.PERMISSION_DENIED,
                            grpc.StatusCode.NOT_FOUND, grpc.StatusCode.FAILED_PRECONDITION,
                            grpc.StatusCode.ALREADY_EXISTS, grpc.StatusCode.RESOURCE_EXHAUSTED,
                            grpc.StatusCode.OUT_OF_RANGE, grpc.StatusCode.ABORTED,
                            grpc.StatusCode.UNAUTHENTICATED})
MAX_DETAILS = 400   # characters of a refusal's message


def unclear(code: grpc.StatusCode, details: str) -> str | None:
    """Why a refusal's message is not the one clear line a caller can act on (None: it is)."""
    if code == grpc.StatusCode.OK:
        return None
    if not details.strip():
        return "no message"
    if "\n" in details or "\r" in details:
        return "more than one line"
    if len(details) > MAX_DETAILS:
        return f"{len(details)} characters"
    for raw in ("Traceback", "Exception", "Error(", " object at 0x", "Method not found", "Unexpected ",
                "Internal error", "DecodeError"):
        if raw in details:
            return f"raw text {raw!r}"
    return None
KINDS = ("valid", "random", "truncated", "flipped", "wiretype", "oversize", "nested")

_ODD_STRINGS = ["", " ", "\x00", "A\x00B", "\u202eevil", "é" * 70, "😀", "RM", "../../etc/passwd", "%s%n",
                "' OR 1=1 --", "\ud7ff", "x" * 1000, "\n", "RSSMRA80A01H501U", "2026-02-30", "9999-12-31"]
_ODD_INTS = [0, 1, -1, 2**31 - 1, -2**31, 2**32 - 1, 2**53, 2**63 - 1, -2**63, 2**64 - 1, 7, 1000]


@dataclass(frozen=True)
class Method:
    path: str                # "/cns.v1.Personalizer/SubmitIssue"
    input_type: type         # the request message class
    server_streaming: bool
    client_streaming: bool = False


def methods_of(file_descriptor, service: str) -> list[Method]:
    svc = file_descriptor.services_by_name[service]
    return [Method(f"/{svc.full_name}/{m.name}", message_factory.GetMessageClass(m.input_type),
                   m.server_streaming, m.client_streaming) for m in svc.methods]


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def _read_varint(buf: bytes, i: int) -> tuple[int, int]:
    n = shift = 0
    while i < len(buf):
        b = buf[i]
        n |= (b & 0x7F) << shift
        i += 1
        if not b & 0x80:
            return n, i
        shift += 7
    raise ValueError("truncated varint")


def _fields(buf: bytes) -> list[tuple[int, int, int, int]]:
    """Top-level (tag offset, tag end, wire type, payload start) of a valid encoding."""
    out, i = [], 0
    try:
        while i < len(buf):
            start = i
            tag, i = _read_varint(buf, i)
            wt = tag & 7
            out.append((start, i, wt, i))
            if wt == 0:
                _, i = _read_varint(buf, i)
            elif wt == 1:
                i += 8
            elif wt == 2:
                n, i = _read_varint(buf, i)
                i += n
            elif wt == 5:
                i += 4
            else:
                break
    except ValueError:
        pass
    return out


class Mutator:
    """Every case is a pure function of the seed and the call order."""

    def __init__(self, seed: int):
        self.rng = random.Random(seed)

    def _string(self) -> str:
        r = self.rng
        if r.random() < 0.6:
            return r.choice(_ODD_STRINGS)
        return "".join(chr(r.choice([r.randint(0x20, 0x7e), r.randint(0, 0x10ffff)]))
                       for _ in range(r.randint(0, 80))).encode("utf-8", "replace").decode("utf-8", "replace")

    def _scalar(self, f: _d.FieldDescriptor):
        r = self.rng
        t = f.type
        if t == f.TYPE_STRING:
            s = self._string()
            return "".join(c for c in s if not 0xD800 <= ord(c) <= 0xDFFF)
        if t == f.TYPE_BYTES:
            return r.randbytes(r.choice([0, 1, 16, 300, 5000]))
        if t == f.TYPE_BOOL:
            return r.random() < 0.5
        if t == f.TYPE_ENUM:
            values = [v.number for v in f.enum_type.values]
            return r.choice(values + [99, -1])
        if t in (f.TYPE_DOUBLE, f.TYPE_FLOAT):
            return r.choice([0.0, -1.0, 1e308, float("inf"), float("nan"), 3.5])
        unsigned = t in (f.TYPE_UINT32, f.TYPE_UINT64, f.TYPE_FIXED32, f.TYPE_FIXED64)
        bits = 32 if t in (f.TYPE_INT32, f.TYPE_UINT32, f.TYPE_SINT32, f.TYPE_FIXED32, f.TYPE_SFIXED32) else 64
        lo, hi = (0, 2**bits - 1) if unsigned else (-2**(bits - 1), 2**(bits - 1) - 1)
        v = r.choice(_ODD_INTS + [r.randint(lo, hi)])
        return min(max(v, lo), hi)

    def fill(self, msg, depth: int = 0, p: float = 0.7) -> None:
        """Set random values on a random subset of ``msg``'s fields (in place)."""
        for f in msg.DESCRIPTOR.fields:
            if self.rng.random() > p:
                continue
            repeated = f.is_repeated
            count = self.rng.choice([1, 2, 5]) if repeated else 1
            for _ in range(count):
                if f.type == f.TYPE_MESSAGE:
                    if f.message_type.GetOptions().map_entry:
                        break
                    if depth >= 4:
                        break
                    sub = getattr(msg, f.name).add() if repeated else getattr(msg, f.name)
                    self.fill(sub, depth + 1, p)
                    if not repeated:
                        sub.SetInParent()
                    continue
                value = self._scalar(f)
                try:
                    if repeated:
                        getattr(msg, f.name).append(value)
                    else:
                        setattr(msg, f.name, value)
                except (ValueError, TypeError):
                    pass   # an enum number closed enums refuse: keep the default

    def valid(self, input_type, seeds=()) -> bytes:
        msg = input_type()
        if seeds and self.rng.random() < 0.7:
            msg.CopyFrom(self.rng.choice(seeds))
            self.fill(msg, p=0.25)
        else:
            self.fill(msg)
        return msg.SerializeToString()

    def case(self, kind: str, input_type, seeds=()) -> bytes:
        r = self.rng
        base = self.valid(input_type, seeds)
        if kind == "valid":
            return base
        if kind == "random":
            return r.randbytes(r.choice([1, 2, 7, 64, 700]))
        if kind == "nested":   # message-in-message (field 1, wire type 2) to a depth past any recursion limit
            depth = r.choice([101, 200, 3000])
            out = b""
            for _ in range(depth):
                out = b"\x0a" + _varint(len(out)) + out
            return out if r.random() < 0.5 else b"\x0b" * depth   # or unclosed start-group tags
        if not base:
            base = b"\x0a\x03abc"
        fields = _fields(base)
        if kind == "truncated":
            return base[:r.randrange(0, len(base))] if len(base) > 1 else b"\x0a"
        if kind == "flipped":
            buf = bytearray(base)
            for _ in range(r.randint(1, 4)):
                buf[r.randrange(len(buf))] ^= 1 << r.randrange(8)
            return bytes(buf)
        if kind == "wiretype" and fields:
            start, end, wt, _ = r.choice(fields)
            tag, _ = _read_varint(base, start)
            new = (tag & ~7) | r.choice([t for t in (0, 1, 2, 3, 4, 5, 6, 7) if t != wt])
            return base[:start] + _varint(new) + base[end:]
        if kind == "oversize":
            delimited = [f for f in fields if f[2] == 2]
            huge = _varint(r.choice([2**31 - 1, 2**32, 2**63, 2**64 - 1, len(base) + 1]))
            if delimited:
                start, end, _, _ = r.choice(delimited)
                _, after = _read_varint(base, end)
                return base[:end] + huge + base[after:]
            return base + b"\x0a" + huge
        return r.randbytes(16)


@dataclass
class Tally:
    requests: int = 0
    codes: Counter = field(default_factory=Counter)
    findings: list[str] = field(default_factory=list)   # "method kind code details payload-hex"
    by_method: dict = field(default_factory=dict)       # path → Counter of code names
    unexpected: int = 0                                  # answers outside EXPECTED_CODES
    unclear: int = 0                                     # refusals without one clear line

    def add(self, method: Method, kind: str, payload, code: grpc.StatusCode, details: str) -> None:
        if isinstance(payload, tuple):   # a client stream's messages
            payload = b"|".join(payload)
        self.requests += 1
        self.codes[code.name] += 1
        self.by_method.setdefault(method.path, Counter())[code.name] += 1
        why = unclear(code, details)
        self.unexpected += code not in EXPECTED_CODES
        self.unclear += why is not None
        if (code not in EXPECTED_CODES or why) and len(self.findings) < 50:
            self.findings.append(f"{method.path} {kind} {code.name}{f' ({why})' if why else ''} {details[:300]!r} "
                                 f"payload={payload[:64].hex()}{'…' if len(payload) > 64 else ''} "
                                 f"({len(payload)} bytes)")

    @property
    def bad(self) -> int:
        return sum(self.codes[c.name] for c in BAD_CODES)

    def merge(self, other: "Tally") -> None:
        self.requests += other.requests
        self.codes.update(other.codes)
        for path, codes in other.by_method.items():
            self.by_method.setdefault(path, Counter()).update(codes)
        self.unexpected += other.unexpected
        self.unclear += other.unclear
        self.findings.extend(other.findings[: max(0, 50 - len(self.findings))])


def _sync_stream(channel: grpc.Channel, method: Method, messages: tuple, timeout: float):
    try:
        for _ in channel.stream_stream(method.path)(iter(messages), timeout=timeout):
            pass   # the stream ends when the server has answered our half-close
        return grpc.StatusCode.OK, ""
    except grpc.RpcError as exc:
        return exc.code(), exc.details() or ""


async def _one(channel, method: Method, payload, timeout: float, sync_channel=None) -> tuple[grpc.StatusCode, str]:
    """One call; ``payload``: the request bytes, or for a client-streaming method a tuple of messages
    (bytes alone: a stream of that one message), sent on ``sync_channel`` when given (see ``fuzz``)."""
    try:
        if method.client_streaming:
            messages = payload if isinstance(payload, tuple) else (payload,)
            if sync_channel is not None:
                return await asyncio.to_thread(_sync_stream, sync_channel, method, messages, timeout)
            call = channel.stream_stream(method.path)(iter(messages), timeout=timeout)
            async for _ in call:
                pass
            return grpc.StatusCode.OK, ""
        if method.server_streaming:
            call = channel.unary_stream(method.path)(payload, timeout=timeout)
            async for _ in call:
                break                       # one answer is enough: the request decoded and was accepted
            call.cancel()
            return grpc.StatusCode.OK, ""
        await channel.unary_unary(method.path)(payload, timeout=timeout)
        return grpc.StatusCode.OK, ""
    except grpc.aio.AioRpcError as exc:
        return exc.code(), exc.details() or ""


async def fuzz(channel, methods: list[Method], *, per_method: int, seed: int, seeds: dict | None = None,
               timeout: float = 5.0, concurrency: int = 8, skip=None, sync_channel=None) -> Tally:
    """Send ``per_method`` cases (all kinds in turn) to each method; returns the tally. ``channel``: one
    channel, or a function of the method giving the channel (the identity) to call it on.

    ``sync_channel`` (a function of the method giving a synchronous ``grpc.Channel``): where client
    streams go. grpc.aio's client reports INTERNAL "Internal error from Core" of its own when it is
    still writing a stream's next message as the server ends the call (e.g. INVALID_ARGUMENT for an
    undecodable first message), hiding the server's answer; the synchronous client reports the
    server's status, which is what the fuzz judges."""
    channel_for = channel if callable(channel) else (lambda _m: channel)
    mut = Mutator(seed)
    tally = Tally()
    jobs = []
    for m in methods:
        for i in range(per_method):
            kind = KINDS[i % len(KINDS)]
            case = mut.case(kind, m.input_type, (seeds or {}).get(m.path, ()))
            if m.client_streaming:   # the case alone, after a well-formed opening (a hello), or before more
                opening = mut.valid(m.input_type, (seeds or {}).get(m.path, ()))
                more = tuple(mut.case(KINDS[mut.rng.randrange(len(KINDS))], m.input_type)
                             for _ in range(mut.rng.randint(0, 2)))
                case = (opening, case) if mut.rng.random() < 0.5 else (case,) + more
            jobs.append((m, kind, case))
    sem = asyncio.Semaphore(concurrency)

    async def run(m, kind, payload):
        if skip is not None and skip(m, payload):
            return
        async with sem:
            code, details = await _one(channel_for(m), m, payload, timeout,
                                       sync_channel(m) if sync_channel and m.client_streaming else None)
        tally.add(m, kind, payload, code, details)

    await asyncio.gather(*(run(*j) for j in jobs))
    return tally
