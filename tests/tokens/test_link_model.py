"""The token's USB link as the emulator models it (SCHEMA.md §9) and the partition data path on it (§10):
every transfer costs time by its type (a control transfer at least a microframe, bulk in 512-byte packets
13 a microframe plus a per-transfer overhead), and image blocks ride the management interface's bulk
endpoint, never the control pipe."""
from __future__ import annotations

import asyncio
import hashlib

import pytest

from agent.devices.usb import UsbTokenBackend
from firmware_profiles.usbtoken import protocol as P
from tests.tokens.helpers import cdrom_payload, read_cdrom, setup_token, signed, update

MiB = 1 << 20


def test_high_speed_link_costs_follow_usb2_chapter_5(token_models):
    link = token_models["cns-token-ccid"].link
    assert link.raw_bytes_per_second == 13 * 512 * 8000            # Table 5-10: 53,248,000 B/s
    assert link.control_seconds(0) == pytest.approx(125e-6)       # no control transfer is free
    assert link.control_seconds(1) == link.control_seconds(64)    # one microframe at best
    assert link.control_seconds(4096) == pytest.approx(3 * 125e-6)  # 64 packets, ≤ 31 a microframe
    one = link.bulk_seconds(MiB)
    assert one == pytest.approx(125e-6 + 158 * 125e-6)            # 2048 packets in 158 microframes + overhead
    small = 256 * link.bulk_seconds(4096)                         # the same MiB in 4 KiB transfers
    assert small - one >= 255 * link.bulk_transfer_overhead_us / 1e6


def test_full_speed_link_uses_frames(token_models):
    link = token_models["cns-token-hid"].link
    assert link.raw_bytes_per_second == 19 * 64 * 1000             # Table 5-9
    assert link.control_seconds(0) == pytest.approx(1e-3)


def test_every_transfer_costs_at_least_a_microframe_however_small(tmp_path, token_models):
    """Bytes alone would make 1,000 tiny requests nearly free; each is two control
    transfers, so they take at least 2,000 microframes."""
    model = token_models["cns-token-ccid"]
    bus, token = setup_token(tmp_path, model)
    link = UsbTokenBackend(bus).open(token.serial)
    t0, n0 = token.link_seconds, token.link_transfers["control"]
    for _ in range(1000):
        link.request(P.OP_CONFIRM, bytes([0]), what="a no-op confirm")
    assert token.link_transfers["control"] - n0 == 2000
    assert token.link_seconds - t0 >= 2000 * 125e-6 * 0.999


def _control_outs(bus):
    """(management op, bytes) of every control OUT transfer carrying data."""
    sizes: list[tuple[int, int]] = []
    inner = bus.ctrl_transfer

    def recording(handle, bm, req, value, index, data, timeout):
        if not bm & 0x80 and len(data):
            sizes.append((data[0], len(data)))
        return inner(handle, bm, req, value, index, data, timeout)
    bus.ctrl_transfer = recording
    return sizes


def _many_blocks_changed() -> bytes:
    """A CD-ROM image of ~300 new 4 KiB blocks: more than one bulk write (≤ 256 blocks each)."""
    from firmware_profiles.usbemu import build_cdrom_image
    return build_cdrom_image({"NEW.BIN": b"".join(hashlib.sha256(bytes([i % 256, i // 256])).digest()
                                                  for i in range(1_200_000 // 32))})


def test_image_blocks_ride_the_bulk_endpoint_not_the_control_pipe(tmp_path, token_models):
    model = token_models["cns-token-ccid"]
    bus, token = setup_token(tmp_path, model)
    new = _many_blocks_changed()
    outs = _control_outs(bus)
    bulk0, nbulk0 = token.link_payload["bulk"], token.link_transfers["bulk"]
    result, stats = asyncio.run(update(tmp_path, bus, token, signed(model, new)))
    nbulk = token.link_transfers["bulk"] - nbulk0
    assert stats.sent_blocks > P.MAX_BULK_BLOCKS                      # ~300 changed blocks: more than one bulk write
    assert token.link_payload["bulk"] - bulk0 >= stats.sent_bytes     # every sent block went over bulk
    ops = {op for op, _ in outs}
    assert P.OP_BULK_WRITE in ops and P.OP_WRITE not in ops            # no control request carried a block
    assert sum(n for _, n in outs) < 0.01 * stats.sent_bytes + 1024   # commands: ~32 bytes (a SHA-256) a block
    assert nbulk <= -(-stats.sent_blocks // P.MAX_BULK_BLOCKS) + 2     # in large transfers
    assert result.state == "done" and read_cdrom(bus, token) == new


def test_write_time_is_within_1_2_of_the_raw_link_and_the_control_pipe_is_not(tmp_path, token_models):
    """A blank-slot write of a 4 MiB image: within 1.2 × the raw link time under the per-transfer model;
    the same blocks in control requests (as before the bulk endpoint) take several times longer."""
    import dataclasses

    from firmware_profiles.usbemu import build_cdrom_image
    model = token_models["cns-token-ccid"]
    payload = build_cdrom_image({"BIG.BIN": hashlib.sha256(b"x").digest() * (4 * MiB // 32)})
    raw = len(payload) / model.link.raw_bytes_per_second
    ratios = {}
    for path in ("bulk", "control"):
        d = tmp_path / path
        d.mkdir()
        bus, token = setup_token(d, model)
        t0 = token.link_seconds

        def connect(bus=bus, token=token, path=path):
            link = UsbTokenBackend(bus).open(token.serial)
            if path == "control":
                link.bulk_out = None   # as a token without the bulk endpoint: OP_WRITE per block
            return link
        from agent.ops.journal import Journal
        from agent.ops.token_update import run_update

        async def go():
            j = await Journal.open(d / "journal.db")
            try:
                return await run_update(j, connect, model, "cdrom", signed(model, payload))
            finally:
                await j.close()
        result, stats = asyncio.run(go())
        assert result.state == "done" and stats.sent_blocks >= len(payload) // 4096 - 16
        ratios[path] = (token.link_seconds - t0) / raw
    assert ratios["bulk"] <= 1.2, ratios
    assert ratios["control"] > 3 * ratios["bulk"], ratios
    assert dataclasses.asdict(model.link)["bulk_packets_per_frame"] == 13


def test_a_block_damaged_on_the_link_is_not_written_and_the_update_is_undone(tmp_path, token_models):
    model = token_models["cns-token-ccid"]
    bus, token = setup_token(tmp_path, model)
    old = read_cdrom(bus, token)
    inner = token._bulk_in
    hit, damaged = [0], []

    def damaging(data: bytes) -> None:
        if not hit[0] and len(data) > 8192:
            hit[0] = 1
            data = data[:5000] + bytes([data[5000] ^ 1]) + data[5001:]   # one bit flipped in a run's 2nd block
            damaged.append(hashlib.sha256(data[4096:8192]).digest())
        inner(data)
    token._bulk_in = damaging
    blob = signed(model, _many_blocks_changed())
    result, _ = asyncio.run(update(tmp_path, bus, token, blob))
    assert hit[0] and result.state == "undone"
    assert "damaged on the link" in result.reason and "\n" not in result.reason
    assert read_cdrom(bus, token) == old
    staged = UsbTokenBackend(bus).open(token.serial).hashes("A", 0, 256) + \
        UsbTokenBackend(bus).open(token.serial).hashes("A", 256, 256)
    assert damaged[0] not in staged                               # the damaged block never reached the flash
    result, _ = asyncio.run(update(tmp_path, bus, token, blob))    # the operator retries: it works
    assert result.state == "done"


def test_a_stalled_bulk_endpoint_undoes_the_update_and_a_retry_works(tmp_path, token_models):
    model = token_models["cns-token-ccid"]
    bus, token = setup_token(tmp_path, model)
    old = read_cdrom(bus, token)
    token.bulk_fault = 1
    blob = signed(model, _many_blocks_changed())
    result, _ = asyncio.run(update(tmp_path, bus, token, blob))
    assert result.state == "undone" and "endpoint stalled" in result.reason
    assert read_cdrom(bus, token) == old
    result, _ = asyncio.run(update(tmp_path, bus, token, blob))
    assert result.state == "done" and read_cdrom(bus, token) != old


def test_a_power_cut_mid_bulk_transfer_resumes_with_the_blocks_not_yet_written(tmp_path, token_models):
    model = token_models["cns-token-ccid"]
    bus, token = setup_token(tmp_path, model)
    new = _many_blocks_changed()
    blob = signed(model, new)
    token.flash.cut_after(60 * 4096 + 1000)     # inside the first bulk write, ~60 blocks in
    result, _ = asyncio.run(update(tmp_path, bus, token, blob))
    assert result.state != "done"
    bus.replug(token)
    result, second = asyncio.run(update(tmp_path, bus, token, blob))
    assert result.state == "done" and read_cdrom(bus, token) == new
    assert second.skipped_blocks >= 40                 # the blocks that reached the flash are not sent again
    assert second.sent_blocks <= second.blocks - 40


def test_bulk_data_without_an_announcement_stalls(tmp_path, token_models):
    import usb.core
    model = token_models["cns-token-ccid"]
    bus, token = setup_token(tmp_path, model)
    link = UsbTokenBackend(bus).open(token.serial)
    before = token.flash.bytes_written
    with pytest.raises(usb.core.USBError) as ei:
        link.dev.write(link.bulk_out, b"\0" * 4096)
    assert ei.value.errno == 32 and token.flash.bytes_written == before


def test_announced_blocks_may_arrive_in_several_bulk_transfers_but_not_more(tmp_path, token_models):
    import struct

    import usb.core
    model = token_models["cns-token-ccid"]
    bus, token = setup_token(tmp_path, model)
    link = UsbTokenBackend(bus).open(token.serial)
    blocks = [bytes([i]) * 4096 for i in (1, 2, 3)]
    header = struct.pack(">BIH", P.REGIONS.index("A"), 10, 3) + b"".join(hashlib.sha256(b).digest() for b in blocks)
    link.request(P.OP_BULK_WRITE, header)
    data = b"".join(blocks)
    link.dev.write(link.bulk_out, data[:5096])
    link.dev.write(link.bulk_out, data[5096:])
    assert link._response("a split bulk write") == struct.pack(">H", 3)
    assert link.hashes("A", 10, 3) == [hashlib.sha256(b).digest() for b in blocks]
    link.request(P.OP_BULK_WRITE, header[:5] + struct.pack(">H", 1) + header[7:39])
    with pytest.raises(usb.core.USBError) as ei:
        link.dev.write(link.bulk_out, blocks[0] + b"x")         # one byte more than announced
    assert ei.value.errno == 32
    with pytest.raises(Exception, match="region in use"):
        link.request(P.OP_BULK_WRITE, struct.pack(">BIH", P.REGIONS.index("cdrom"), 0, 1) + bytes(32))
