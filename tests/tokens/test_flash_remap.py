"""The emulated flash's translation layer (firmware_profiles/usbemu/flash.py): a copy inside the flash is a
page remap, yet every read, hash and tear is what a byte-for-byte copy gives. Each test checks the flash
against a plain bytearray that is written and copied byte by byte (the reference), and hashes against
hashlib over the bytes read back."""
from __future__ import annotations

import hashlib
import random

import pytest

from firmware_profiles.usbemu.flash import Flash, PowerCut

P = 4096
SIZE = 256 * P


def _filled(tmp_path, name="flash.bin", seed=1, **kw) -> tuple[Flash, bytearray]:
    f = Flash(tmp_path / name, SIZE, page=P, **kw)
    ref = bytearray(random.Random(seed).randbytes(SIZE))
    f.write(0, bytes(ref))
    return f, ref


def _same(f: Flash, ref: bytearray) -> None:
    assert f.read(0, SIZE) == bytes(ref)
    buf = bytearray(SIZE - 3 * P - 5)
    f.readinto(3 * P + 5, buf)
    assert buf == ref[3 * P + 5:]
    assert f.hashes(0, SIZE // P, P) == [hashlib.sha256(ref[i:i + P]).digest() for i in range(0, SIZE, P)]
    for off, n in ((0, SIZE), (8 * P, 200 * P + 123), (3 * P, 100 * P), (5 * P, 7 * P)):
        assert f.digest(off, n) == hashlib.sha256(ref[off:off + n]).digest()


def test_a_remapped_copy_reads_back_the_source_bytes_and_counts_as_written(tmp_path):
    f, ref = _filled(tmp_path)
    w0 = f.bytes_written
    f.copy(32 * P, 4 * P, 20 * P)
    ref[32 * P:52 * P] = ref[4 * P:24 * P]
    assert f.bytes_written - w0 == 20 * P          # the modelled flash writes of a copy, as before
    assert f._map, "the copy was not a remap"       # (the point of the layer: no bytes rewritten)
    _same(f, ref)
    assert f.read(33 * P + 100, 2 * P) == bytes(ref[33 * P + 100:35 * P + 100])   # reads across pages


@pytest.mark.parametrize("target", ["source", "copy"])
def test_a_write_to_either_page_breaks_the_sharing(tmp_path, target):
    f, ref = _filled(tmp_path)
    f.copy(40 * P, 8 * P, 8 * P)
    ref[40 * P:48 * P] = ref[8 * P:16 * P]
    assert f.digest(8 * P, 8 * P) == f.digest(40 * P, 8 * P)    # cached while shared
    base = 8 * P if target == "source" else 40 * P
    for off, data in ((base + 2 * P, b"\xaa" * P), (base + 5 * P + 7, b"partial write")):
        f.write(off, data)
        ref[off:off + len(data)] = data
    _same(f, ref)
    assert f.read(8 * P, 8 * P) != f.read(40 * P, 8 * P)
    f.copy(8 * P, 40 * P, 8 * P)                                 # copy back over a page others read
    ref[8 * P:16 * P] = ref[40 * P:48 * P]
    _same(f, ref)


@pytest.mark.parametrize("cut", [0, 1, P - 1, P, 3 * P + 1000, 6 * P - 1])
def test_a_tear_mid_copy_leaves_what_a_torn_byte_copy_leaves(tmp_path, cut):
    f, ref = _filled(tmp_path)
    w0 = f.bytes_written
    f.cut_after(cut)
    with pytest.raises(PowerCut):
        f.copy(48 * P, 2 * P, 6 * P)
    ref[48 * P:48 * P + cut] = ref[2 * P:2 * P + cut]          # each page: the new bytes or the old, one torn
    assert f.bytes_written - w0 == cut
    _same(f, ref)
    f.cut_after(None)
    again = Flash(tmp_path / "flash.bin", SIZE, page=P)          # the emulator restarted on the same file
    _same(again, ref)
    again.close()


def test_hashes_stay_right_under_random_writes_copies_and_restarts(tmp_path):
    rng = random.Random(7)
    f, ref = _filled(tmp_path)
    for step in range(300):
        kind = rng.choice(("write", "copy", "copy", "page", "restart"))
        if kind == "write":
            off, n = rng.randrange(SIZE - 3000), rng.randrange(1, 3000)
            data = rng.randbytes(n)
            f.write(off, data)
            ref[off:off + n] = data
        elif kind == "page":
            off = rng.randrange(SIZE // P) * P
            f.write(off, bytes([step % 256]) * P)
            ref[off:off + P] = bytes([step % 256]) * P
        elif kind == "copy":
            n = rng.randrange(1, 8)
            src, dst = rng.sample(range(0, SIZE // P - n, n), 2) if SIZE // P - n > 2 * n else (0, n)
            if abs(src - dst) < n:
                continue
            f.copy(dst * P, src * P, n * P)
            ref[dst * P:(dst + n) * P] = ref[src * P:(src + n) * P]
        else:
            f.close()
            f = Flash(tmp_path / "flash.bin", SIZE, page=P)
        if step % 25 == 0:
            _same(f, ref)
        else:
            p = rng.randrange(SIZE // P)
            assert f.hashes(p * P, 1, P) == [hashlib.sha256(ref[p * P:(p + 1) * P]).digest()]
    _same(f, ref)
    f.close()


def test_a_clone_reads_its_base_writes_only_itself_and_survives_a_restart(tmp_path):
    base, ref = _filled(tmp_path, "factory.bin")
    base.close()
    before = (tmp_path / "factory.bin").read_bytes()
    clone = Flash(tmp_path / "clone.bin", SIZE, page=P, base=tmp_path / "factory.bin")
    _same(clone, ref)
    clone.write(5 * P + 10, b"new bytes")                       # a partial page: the rest from the base
    ref[5 * P + 10:5 * P + 19] = b"new bytes"
    clone.copy(30 * P, 5 * P, 4 * P)
    ref[30 * P:34 * P] = ref[5 * P:9 * P]
    clone.write(6 * P, b"\x01" * P)                             # the source of a copy, written
    ref[6 * P:7 * P] = b"\x01" * P
    _same(clone, ref)
    clone.close()
    assert (tmp_path / "factory.bin").read_bytes() == before  # the base is never written
    again = Flash(tmp_path / "clone.bin", SIZE, page=P)         # restarted: the base is in its record
    _same(again, ref)
    again.close()
    with pytest.raises(ValueError, match="clone of"):
        Flash(tmp_path / "clone.bin", SIZE, page=P, base=tmp_path / "other.bin")
    with pytest.raises(ValueError, match="cannot be a base"):   # its file alone is not what it reads
        Flash(tmp_path / "clone2.bin", SIZE, page=P, base=tmp_path / "clone.bin")


def test_a_new_flash_file_ignores_the_record_of_a_deleted_one(tmp_path):
    f, ref = _filled(tmp_path)
    f.copy(10 * P, 0, 4 * P)
    f.close()
    (tmp_path / "flash.bin").unlink()                           # the record (flash.bin.ftl) stays behind
    fresh = Flash(tmp_path / "flash.bin", SIZE, page=P)
    assert fresh.read(0, SIZE) == b"\0" * SIZE
    fresh.close()


def test_a_cached_hash_is_dropped_by_a_write_without_any_copy(tmp_path):
    f, ref = _filled(tmp_path)
    _same(f, ref)                                                 # every page hash cached
    f.write(9 * P + 5, b"changed")
    ref[9 * P + 5:9 * P + 12] = b"changed"
    for _ in range(2):                  # the written page hashed again, the rest from the cache; then a hit
        assert f.digest(0, SIZE) == hashlib.sha256(ref).digest()
    _same(f, ref)
    f.close()
