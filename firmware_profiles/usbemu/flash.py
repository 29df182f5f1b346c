"""The emulated token's flash: a sparse file (a 1 GiB token costs no disk), power-cut tears,
the metadata record that maps partitions to regions, and a small flash translation layer.

Tear model: ``Flash.cut_after(n)`` lets the next n bytes of writes through and then raises
``PowerCut`` mid-write (the bytes before the cut are on flash, as after a real power loss).
Metadata lives twice (copies at 0 and 4096, each with a sequence number and CRC-32): a write
goes to the older copy, so a torn metadata write leaves the previous record readable. That
write is the token's one atomic switch.

Translation layer (what keeps a 700 MiB install cheap to emulate; the host sees the same bytes):

- ``copy`` (the token's OP_COPY) records, per page, a mapping to the page it copies instead of
  rewriting the bytes, as a real FTL does. It still counts ``length`` modelled flash bytes towards
  ``bytes_written`` and ``cut_after``; a page the budget does not cover whole is written for real
  (the prefix, then ``PowerCut``), so a torn copy leaves exactly what a torn byte copy leaves.
  A write to either page breaks the sharing first (the page that keeps the old bytes gets them).
- ``page_hash`` / ``hashes`` / ``digest``: SHA-256 per page, cached and dropped on every write to
  the page; ``digest`` of a long range whose pages are (all but a few) hashed is looked up by the
  sequence of its page hashes (the same page contents have the same digest; the first time, the
  bytes are hashed).
- ``base``: a clone of a factory flash file (read only, never written while clones use it) reads
  every page it has not written from the base, so a fresh token costs no copy.

The mappings, the pages a clone owns and its base are appended to ``<file>.ftl`` (after the data
they refer to is on the file), so a replug or an emulator restart on the same file reads the
same bytes.

Imports ``firmware_profiles.usbtoken`` only.
"""
from __future__ import annotations

import hashlib
import json
import os
import struct
import zlib
from collections import OrderedDict
from pathlib import Path

from firmware_profiles.usbtoken.model import META_BYTES, TokenModel

META_COPY = 4096
FIRMWARE_OFFSET = 64 * 1024
FIRMWARE_MAX = META_BYTES - FIRMWARE_OFFSET
_MAGIC = b"CNSM"


class PowerCut(Exception):
    """Power was lost mid-write (tear fault): the token is gone until replugged."""


_REC = struct.Struct(">cQQI")       # kind (M map, U unmap, O own), page, source page, count
_DIGESTS: OrderedDict[bytes, bytes] = OrderedDict()   # page-hash fingerprint → SHA-256 of the range
_BASE_HASHES: dict[tuple, dict[int, bytes]] = {}      # a base file (by identity) → its page hashes


class Flash:
    def __init__(self, path: str | Path, size: int, *, page: int = 4096, base: str | Path | None = None):
        self.path = Path(path)
        self.size, self.page = size, page
        self._log_path = self.path.with_name(self.path.name + ".ftl")
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            st = os.fstat(fd)
            if st.st_size != size or st.st_size == 0:
                os.ftruncate(fd, size)  # sparse: holes read as zero and take no blocks
                self._log_path.unlink(missing_ok=True)   # a new (or resized) flash: no earlier mappings
        finally:
            os.close(fd)
        self._f = open(self.path, "r+b", buffering=0)
        self._budget: int | None = None
        self.bytes_written = 0
        self._map: dict[int, int] = {}           # page → the page whose bytes it reads (never itself mapped)
        self._sharers: dict[int, set[int]] = {}  # page → the pages mapped to it
        self._own: set[int] = set()              # with a base: the pages this file holds
        self._hash: dict[int, bytes] = {}        # page → SHA-256 of its bytes (pages this file holds)
        self._log: int | None = None
        self._base = None
        self._base_hash: dict[int, bytes] = {}
        try:
            self._open_log(base)
        except BaseException:
            self.close()
            raise

    # -------------------------------------------------------------- the translation layer's record
    def _open_log(self, base) -> None:
        logged = None
        if self._log_path.exists():
            raw = self._log_path.read_bytes()
            blen = int.from_bytes(raw[:4], "big")
            logged = raw[4:4 + blen].decode() or None
            for i in range(4 + blen, len(raw) - _REC.size + 1, _REC.size):
                kind, a, b, n = _REC.unpack_from(raw, i)
                for k in range(n):
                    if kind == b"M":
                        self._link(a + k, b + k)
                    elif kind == b"U":
                        self._unlink(a + k)
                    else:
                        self._own.add(a + k)
        if base is not None and logged is not None and Path(logged) != Path(base):
            raise ValueError(f"{self.path} is a clone of {logged}, not of {base}")
        base = logged or (str(base) if base is not None else None)
        if base is not None:
            if Path(f"{base}.ftl").exists():
                raise ValueError(f"{base} has remapped pages (or is a clone itself): it cannot be a base")
            self._base = open(base, "rb", buffering=0)
            st = os.fstat(self._base.fileno())
            if st.st_size != self.size:
                raise ValueError(f"the base {base} is {st.st_size} bytes, this flash {self.size}")
            key = (os.path.realpath(base), st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
            self._base_hash = _BASE_HASHES.setdefault(key, {})
        if base is not None or self._map:
            self._ensure_log(base)

    def _ensure_log(self, base: str | None = None) -> None:
        if self._log is None:
            fresh = not self._log_path.exists()
            self._log = os.open(self._log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
            if fresh:
                b = (base or "").encode()
                os.write(self._log, len(b).to_bytes(4, "big") + b)

    def _record(self, recs: list[tuple[bytes, int, int, int]]) -> None:
        if recs:
            self._ensure_log()
            os.write(self._log, b"".join(_REC.pack(*r) for r in recs))

    def _link(self, d: int, s: int) -> None:
        self._unlink(d)
        self._map[d] = s
        self._sharers.setdefault(s, set()).add(d)

    def _unlink(self, d: int) -> None:
        s = self._map.pop(d, None)
        if s is not None:
            peers = self._sharers[s]
            peers.discard(d)
            if not peers:
                del self._sharers[s]

    def _file_of(self, p: int):
        """(file, page) holding page ``p``'s bytes."""
        s = self._map.get(p, p)
        return (self._base, s) if self._base is not None and s not in self._own else (self._f, s)

    def _detach(self, p: int, recs: list, whole: bool) -> None:
        """Before page ``p`` is written: every page sharing its bytes gets its own copy of them (what it read
        until now), and a clone's page taken from the base holds the base's bytes unless ``whole``."""
        P = self.page
        for d in sorted(self._sharers.get(p, ())):
            self._own_copy(d, self._read_page(p), recs)
        if p in self._map:
            self._own_copy(p, self._read_page(p), recs)
        elif self._base is not None and p not in self._own:
            if not whole:
                os.pwrite(self._f.fileno(), self._read_page(p), p * P)
            self._own.add(p)
            recs.append((b"O", p, 0, 1))

    def _own_copy(self, d: int, data: bytes, recs: list) -> None:
        h = self.page_hash(d)
        os.pwrite(self._f.fileno(), data, d * self.page)
        self._unlink(d)
        recs.append((b"U", d, 0, 1))
        if self._base is not None and d not in self._own:
            self._own.add(d)
            recs.append((b"O", d, 0, 1))
        self._hash[d] = h

    def _read_page(self, p: int) -> bytes:
        f, s = self._file_of(p)
        return os.pread(f.fileno(), self.page, s * self.page).ljust(self.page, b"\0")

    # -------------------------------------------------------------- the flash as the token sees it
    def close(self) -> None:
        self._f.close()
        if self._base is not None:
            self._base.close()
        if self._log is not None:
            os.close(self._log)
            self._log = None

    def cut_after(self, nbytes: int | None) -> None:
        """Arm (or with None disarm) a power cut after ``nbytes`` more bytes written."""
        self._budget = nbytes

    def _runs(self, offset: int, length: int) -> list[tuple[int, int, int]]:
        """(file descriptor, offset in it, length): the runs of pages consecutive in one file that hold
        ``length`` bytes from ``offset``."""
        if offset < 0 or length < 0 or offset + length > self.size:
            raise ValueError("read outside the flash")
        own = self._f.fileno()
        if not self._map and self._base is None:
            return [(own, offset, length)]
        P, m, mine, base = self.page, self._map, self._own, self._base
        bfd = base.fileno() if base is not None else own
        out: list[list[int]] = []
        pos, end = offset, offset + length
        for p in range(offset // P, -(-end // P)):
            s = m.get(p, p)
            fd = bfd if base is not None and s not in mine else own
            lo, hi = max(pos, p * P), min(end, (p + 1) * P)
            at = s * P + lo - p * P
            last = out[-1] if out else None
            if last is not None and last[0] == fd and last[1] + last[2] == at:
                last[2] += hi - lo
            else:
                out.append([fd, at, hi - lo])
        return [tuple(r) for r in out]

    def read(self, offset: int, length: int) -> bytes:
        return b"".join(os.pread(fd, n, at).ljust(n, b"\0") for fd, at, n in self._runs(offset, length))

    def readinto(self, offset: int, buf: bytearray | memoryview) -> None:
        """``read(offset, len(buf))`` into ``buf`` (no new buffer: for long comparisons)."""
        view, pos = memoryview(buf), 0
        for fd, at, n in self._runs(offset, len(view)):
            got = os.preadv(fd, [view[pos:pos + n]], at)
            view[pos + got:pos + n] = bytes(n - got)       # past the end of a file: zeros
            pos += n

    def write(self, offset: int, data: bytes) -> None:
        if offset < 0 or offset + len(data) > self.size:
            raise ValueError("write outside the flash")
        cut = self._budget is not None and len(data) > self._budget
        if cut:
            data = data[:self._budget]
        P, end = self.page, offset + len(data)
        recs: list = []
        for p in range(offset // P, -(-end // P)):
            self._hash.pop(p, None)
            if self._map or self._sharers or self._base is not None:
                self._detach(p, recs, whole=offset <= p * P and (p + 1) * P <= end)
                self._hash.pop(p, None)
        os.pwrite(self._f.fileno(), data, offset)
        self._record(recs)          # after the bytes are on the file: a restart reads them, not the base
        self.bytes_written += len(data)
        if self._budget is not None:
            self._budget -= len(data)
        if cut:
            self._budget = None
            raise PowerCut(f"power cut after {len(data)} bytes of a write at {offset}")

    def copy(self, dst: int, src: int, length: int) -> None:
        """Copy ``length`` bytes from ``src`` to ``dst`` inside the flash (counted as written: ``length``)."""
        if min(dst, src) < 0 or max(dst, src) + length > self.size:
            raise ValueError("copy outside the flash")
        P = self.page
        if dst % P or src % P or length % P or abs(dst - src) < length:
            for pos in range(0, length, P):
                n = min(P, length - pos)
                self.write(dst + pos, self.read(src + pos, n))
            return
        recs: list = []
        try:
            for i in range(length // P):
                d, s = dst // P + i, src // P + i
                if self._budget is not None and self._budget < P:
                    self._record(recs)
                    recs = []
                    self.write(d * P, self._read_page(s))   # the torn page: its prefix, then PowerCut
                s = self._map.get(s, s)
                if s != d:              # (s == d: the source already reads this page's bytes)
                    for x in sorted(self._sharers.get(d, ())):
                        self._own_copy(x, self._read_page(d), recs)
                    self._link(d, s)
                    self._hash.pop(d, None)
                    last = recs[-1] if recs else None
                    if last and last[0] == b"M" and last[1] + last[3] == d and last[2] + last[3] == s:
                        recs[-1] = (b"M", last[1], last[2], last[3] + 1)
                    else:
                        recs.append((b"M", d, s, 1))
                self.bytes_written += P
                if self._budget is not None:
                    self._budget -= P
        finally:
            self._record(recs)

    # -------------------------------------------------------------- hashes
    def _cache_of(self, p: int) -> tuple[dict[int, bytes], int]:
        f, s = self._file_of(p)
        return (self._hash if f is self._f else self._base_hash), s

    def page_hash(self, p: int) -> bytes:
        """SHA-256 of page ``p``'s bytes (cached until the page is written)."""
        cache, s = self._cache_of(p)
        h = cache.get(s)
        if h is None:
            h = cache[s] = hashlib.sha256(self._read_page(p)).digest()
        return h

    def hashes(self, offset: int, count: int, block: int) -> list[bytes]:
        """SHA-256 of each of ``count`` blocks of ``block`` bytes from ``offset``."""
        if block != self.page or offset % block:
            return [hashlib.sha256(self.read(offset + i * block, block)).digest() for i in range(count)]
        first = offset // block
        slots = [self._cache_of(first + i) for i in range(count)]
        out = [c.get(s) for c, s in slots]
        if None in out:                     # one read for the pages not hashed yet
            data = self.read(offset, count * block)
            for i, h in enumerate(out):
                if h is None:
                    c, s = slots[i]
                    out[i] = c[s] = hashlib.sha256(data[i * block:(i + 1) * block]).digest()
        return out

    def digest(self, offset: int, length: int) -> bytes:
        """SHA-256 of ``length`` bytes from ``offset``: looked up by the range's page hashes when every page
        is hashed already (the same bytes were hashed before), else hashed."""
        P = self.page
        full, first = length // P, offset // P
        pages = [] if offset % P or full < 64 else [c.get(s) for c, s in map(self._cache_of, range(first, first + full))]
        missing = [i for i, h in enumerate(pages) if h is None]
        if len(missing) <= full // 16:      # a few pages written since they were hashed: hash those
            for i in missing:
                pages[i] = self.page_hash(first + i)
        key = None
        if pages and None not in pages:
            fp = hashlib.sha256(struct.pack(">QQ", length, P))
            fp.update(b"".join(pages))
            fp.update(self.read(offset + full * P, length - full * P))
            key = fp.digest()
            if key in _DIGESTS:
                _DIGESTS.move_to_end(key)
                return _DIGESTS[key]
        h = hashlib.sha256()
        for pos in range(0, length, 1 << 24):
            h.update(self.read(offset + pos, min(1 << 24, length - pos)))
        if key is not None:
            _DIGESTS[key] = h.digest()
            while len(_DIGESTS) > 64:
                _DIGESTS.popitem(last=False)
        return h.digest()


def factory_meta(model: TokenModel, serial: str) -> dict:
    return {
        "seq": 0, "serial": serial, "model": model.id,
        "map": {"cdrom": "cdrom", "disk": "disk"}, "previous": {},
        "images": {"cdrom": {"version": "0.0.0", "length": 0, "sha256": ""},
                   "disk": {"version": "0.0.0", "length": model.flash.disk_bytes, "sha256": ""}},
        "firmware": {"version": model.firmware.version, "valid": True, "sha256": ""},
        "bootloader": model.firmware.bootloader,
    }


def _decode(raw: bytes) -> dict | None:
    if raw[:4] != _MAGIC:
        return None
    seq, length, crc = struct.unpack(">III", raw[4:16])
    body = raw[16:16 + length]
    if length > META_COPY - 16 or zlib.crc32(body) != crc:
        return None
    meta = json.loads(body)
    return meta if meta.get("seq") == seq else None


def read_meta(flash: Flash) -> dict | None:
    """The newest intact metadata copy, or None on a blank flash."""
    copies = [m for m in (_decode(flash.read(i * META_COPY, META_COPY)) for i in (0, 1)) if m]
    return max(copies, key=lambda m: m["seq"]) if copies else None


def write_meta(flash: Flash, meta: dict) -> dict:
    """Write ``meta`` with the next sequence number into the older copy (the atomic switch)."""
    new = dict(meta, seq=meta["seq"] + 1)
    body = json.dumps(new, sort_keys=True).encode()
    if len(body) > META_COPY - 16:
        raise ValueError("metadata record too large")
    rec = (_MAGIC + struct.pack(">III", new["seq"], len(body), zlib.crc32(body)) + body).ljust(META_COPY, b"\0")
    flash.write((new["seq"] % 2) * META_COPY, rec)
    return new
