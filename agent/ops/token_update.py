"""Partition update of a USB token (CD-ROM or disk image) as a plan on the step engine
(issue 13 item 4).

Steps (journaled by ``agent.ops.engine``, each begun before it runs):

1. ``stage``   the signed image goes into the partition's inactive region (``pick_region``: A/B,
               each partition alternating between its factory home and its slot of the reserved
               area), block by block with a SHA-256 per block: a block the slot already holds is skipped (an
               interrupted write resumes where it stopped), a block the live image already
               has is copied on the token (not sent), only changed blocks cross the link, in runs of
               consecutive blocks sent as one bulk transfer each (up to ``HASH_BATCH`` blocks: 1 MiB
               at 4 KiB blocks) on the management interface's bulk endpoint, each block with its SHA-256;
2. ``verify``  the token hashes the staged slot and the digest must be the image's;
3. ``switch``  the token re-hashes the whole image and switches the partition to the slot in
               one atomic metadata write (point of no return); the OS sees UNIT ATTENTION;
4. ``confirm`` the partition, read back through the token, hashes as the image; only then is
               the old region freed.

The live image stays mapped until ``switch``: a power cut, tear or unplug at any byte leaves
the token reading the old or the new image, never between; the operation stays open
(``hold_on``: the token is gone) and ``run_update`` with the same image finishes it on the next
insert. Resuming with another image is refused. The image's signature, hash and model are
checked before the operation begins: a bad image never touches the token.

Imports ``agent.ops.engine``/``journal``/``errors``, ``agent.devices.usb`` (the token's USB device
interface, injected as a ``connect`` callable) and ``firmware_profiles.usbtoken``.
"""
from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Callable
from dataclasses import dataclass

from agent.devices.usb import TokenError, TokenGone, TokenLink, TokenProtocolError, TokenRefused
from agent.ops.engine import Engine, Plan, Result, Step
from agent.ops.errors import PreconditionError, VerificationError
from agent.ops.journal import Journal, Operation
from firmware_profiles.usbtoken import TokenModel
from firmware_profiles.usbtoken.image import Image, ImageError, check_for, parse_image

KIND = "token-update"
HASH_BATCH = 256
Progress = Callable[[str, int, int], None]  # (step, done, total)


@dataclass
class UpdateStats:
    blocks: int = 0
    sent_blocks: int = 0
    sent_bytes: int = 0
    copied_blocks: int = 0
    skipped_blocks: int = 0


# Where a partition's next image goes (SCHEMA.md §10, "A/B"): its factory home and "its" slot first, so
# the CD-ROM alternates cdrom ↔ A and the disk disk ↔ B, and while both partitions have an unconfirmed
# switch (a release install) each still has its other region free; the other partition's places only
# when an image does not fit its own (a CD-ROM image larger than its home goes to a slot).
PREFERENCE = {"cdrom": ("cdrom", "A", "B", "disk"), "disk": ("disk", "B", "A", "cdrom")}


def free_regions(info: dict) -> list[str]:
    """The regions the token reports neither live nor kept (a token that predates ``free_regions``
    reports only its free A/B slots)."""
    return list(info.get("free_regions", info["free_slots"]))


def pick_region(info: dict, model: TokenModel, partition: str, length: int) -> str | None:
    """The free region the next ``partition`` image of ``length`` bytes is staged in, or None when the token
    has none that fits (every region holds a live image or one kept by an unconfirmed switch)."""
    free = free_regions(info)
    return next((r for r in PREFERENCE[partition] if r in free and model.flash.region(r)[1] >= length), None)


def _blocks(payload: bytes | memoryview, bs: int) -> list[bytes | memoryview]:
    """The image's blocks as views into it (no copy of the image); only a short last block is padded."""
    view = memoryview(payload)
    out: list[bytes | memoryview] = [view[i:i + bs] for i in range(0, len(view), bs)]
    if out and len(out[-1]) < bs:
        out[-1] = bytes(out[-1]) + b"\0" * (bs - len(out[-1]))
    return out


def load_image(blob: bytes, model: TokenModel, partition: str) -> Image:
    """Verify a partition image for ``model``: raises PreconditionError with a one-line reason."""
    if partition not in ("cdrom", "disk"):
        raise PreconditionError(f"--partition must be cdrom or disk, not {partition!r}")
    try:
        image = parse_image(blob, model.firmware.signing_public_key)
        check_for(image, model, kind=partition)
    except ImageError as exc:
        raise PreconditionError(str(exc)) from None
    if partition == "disk" and len(image.payload) != model.flash.disk_bytes:
        raise PreconditionError(f"a disk image must be exactly the token's disk size ({model.flash.disk_bytes} bytes),"
                                f" this one is {len(image.payload)} bytes: pick the right file")
    if len(image.payload) > model.flash.slot_bytes:
        raise PreconditionError(f"the {partition} image ({len(image.payload)} bytes) is larger than the token's "
                                f"update slot ({model.flash.slot_bytes} bytes): pick the right file")
    return image


class _Runner:
    def __init__(self, connect: Callable[[], TokenLink], image: Image, partition: str, block_bytes: int,
                 progress: Progress | None):
        self.connect, self.image, self.partition = connect, image, partition
        self.bs = block_bytes
        self.blocks = _blocks(image.payload, block_bytes)
        self.want = [hashlib.sha256(b).digest() for b in self.blocks]
        self.progress = progress or (lambda step, done, total: None)
        self.stats = UpdateStats(blocks=len(self.blocks))

    def _switched(self, info: dict, slot: str) -> bool:
        return info["map"][self.partition] == slot and info["images"][self.partition]["sha256"] == self.image.sha256

    def stage(self, op: Operation) -> dict:
        link = self.connect()
        info = link.info()
        slot = op.data["slot"]
        if self._switched(info, slot):
            return {"already": "switched"}
        if slot not in free_regions(info):
            raise TokenRefused(f"region {slot} is no longer free on the token", 2)
        live = info["map"][self.partition]
        live_len = info["images"][self.partition]["length"]
        live_blocks = -(-live_len // self.bs) if self.partition == "cdrom" else len(self.blocks)
        n, done = len(self.blocks), 0
        run: list[int] = []   # consecutive blocks to send in one bulk write

        def flush() -> None:
            if run:
                link.write_blocks(slot, run[0], [self.blocks[b] for b in run])
                self.stats.sent_blocks += len(run)
                self.stats.sent_bytes += len(run) * self.bs
                run.clear()
        for first in range(0, n, HASH_BATCH):
            count = min(HASH_BATCH, n - first)
            have = link.hashes(slot, first, count)
            old = link.hashes(live, first, min(count, max(0, live_blocks - first))) if first < live_blocks else []
            i = 0
            while i < count:
                b = first + i
                if have[i] == self.want[b]:
                    self.stats.skipped_blocks += 1
                    flush()
                    i += 1
                    continue
                j = i
                while j < count and j < len(old) and old[j] == self.want[first + j] and have[j] != self.want[first + j]:
                    j += 1
                if j > i:
                    flush()
                    link.copy_blocks(live, slot, b, j - i)
                    self.stats.copied_blocks += j - i
                    i = j
                    continue
                if run and run[-1] != b - 1:
                    flush()
                run.append(b)
                i += 1
            flush()   # a run never spans batches: each batch's writes are done before its progress
            done += count
            self.progress("stage", done, n)
        return {"sent_blocks": self.stats.sent_blocks, "copied_blocks": self.stats.copied_blocks,
                "skipped_blocks": self.stats.skipped_blocks}

    def _check_region(self, link: TokenLink, region: str) -> None:
        """The token hashes the region (one request, 32 bytes back) and it must be the image's SHA-256."""
        if link.digest(region, len(self.image.payload)) != bytes.fromhex(self.image.sha256):
            raise VerificationError(f"the token's {region} does not hold the image: the update is undone; run it again")
        self.progress("verify", len(self.blocks), len(self.blocks))

    def verify(self, op: Operation) -> dict:
        link = self.connect()
        if self._switched(link.info(), op.data["slot"]):
            return {}
        self._check_region(link, op.data["slot"])
        return {}

    def switch(self, op: Operation) -> dict:
        link = self.connect()
        slot = op.data["slot"]
        if not self._switched(link.info(), slot):
            link.switch(self.partition, slot, len(self.image.payload), bytes.fromhex(self.image.sha256),
                        self.image.version)
        return {}

    def confirm(self, op: Operation) -> dict:
        link = self.connect()
        info = link.info()
        if not self._switched(info, op.data["slot"]):
            raise VerificationError("the token does not show the new image after the switch")
        self._check_region(link, op.data["slot"])
        link.confirm(self.partition)
        return {"version": self.image.version}


def build_plan(runner: _Runner | None) -> Plan:
    async def call(fn, op):
        return await asyncio.to_thread(fn, op)

    async def nothing(op: Operation) -> None:
        return None  # the staged slot is free space: nothing on the token to reverse

    def fwd(name):
        return lambda op, resumed: call(getattr(runner, name), op)
    return Plan(
        kind=KIND,
        steps=(Step("stage", fwd("stage"), undo=nothing), Step("verify", fwd("verify"), undo=nothing),
               Step("switch", fwd("switch"), point_of_no_return=True), Step("confirm", fwd("confirm"))),
        undo_on=(TokenRefused, TokenProtocolError, VerificationError),
        hold_on=(TokenGone,),
    )


async def run_update(journal: Journal, connect: Callable[[], TokenLink], model: TokenModel, partition: str,
                     blob: bytes, *, progress: Progress | None = None,
                     image_path: str | None = None) -> tuple[Result, UpdateStats]:
    """Start, or resume with the same image, the partition update of the token ``connect`` reaches.
    ``image_path`` (journaled) lets ``agent.ops.token_recovery`` finish it on the next insert or start."""
    image = load_image(blob, model, partition)
    digest = hashlib.sha256(blob).hexdigest()   # once: the binding of a new operation, or compared with it
    try:
        link = connect()
    except TokenError as exc:
        raise PreconditionError(str(exc).replace("the operation resumes", "repeat the command")) from None
    serial = link.serial
    open_ops = [o for o in await journal.open_operations(serial)]
    op = next((o for o in open_ops if o.kind == KIND), None)
    if open_ops and op is None:
        raise PreconditionError(f"token {serial} has an unfinished {open_ops[0].kind}: finish that first")
    if op is not None:
        if (op.data["partition"], op.data["image_sha256"]) != (partition, digest):
            raise PreconditionError(f"token {serial} has an unfinished update of its {op.data['partition']} to "
                                    f"version {op.data['version']}: run it again with that image, not another")
    else:
        try:
            info = link.info()
        except TokenError as exc:  # nothing begun yet: the token is as it was
            raise PreconditionError(str(exc).replace("the operation resumes", "repeat the command")) from None
        if info["images"][partition]["sha256"] == image.sha256:
            raise PreconditionError(f"the token's {partition} already holds version {image.version}")
        slot = pick_region(info, model, partition, len(image.payload))
        if slot is None:
            raise PreconditionError(f"the token's reserved area has no free slot for the {partition} image (every "
                                    "region holds a live image or one kept by an unconfirmed switch): finish the "
                                    "other update on this token first")
        op = await journal.begin_operation(kind=KIND, card_serial=serial, model_id=model.id, reader="usb", data={
            # bound to the whole signed file: another release (even with the same payload) is another input
            "partition": partition, "image_sha256": digest, "version": image.version,
            "slot": slot, "length": len(image.payload), "image_path": image_path})
    runner = _Runner(connect, image, partition, model.flash.block_bytes, progress)
    result = await Engine(journal).run(build_plan(runner), op, codes_at_hand=True)
    return result, runner.stats
