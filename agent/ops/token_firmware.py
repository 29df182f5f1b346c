"""Firmware refresh of a USB token over DFU 1.1 as a plan on the step engine (issue 13 item 5).

Steps: ``detach`` (runtime → the bootloader, which enumerates with its own product id),
``download`` (the signed image in wTransferSize blocks, GETSTATUS after each), ``manifest``
(zero-length DNLOAD: the bootloader verifies signature, model and bootloader version, then
switches firmware banks), ``reset`` (USB reset: back to runtime, the new version in bcdDevice).

The image and the model's version rules (no downgrade unless the model allows it and the image
says so; minimum bootloader) are checked before the operation begins: a bad image never
reaches the token. Once a download has begun the token boots into its bootloader until a
manifest succeeds, so a power cut mid-flash leaves it in bootloader mode: it is found by its
bootloader ids and ``run_firmware`` with the same image flashes it again (DFU has no resume:
the download restarts). The old firmware stays in its bank until the manifest switches: an
image the bootloader refuses is undone (ABORT, reset) back to the old firmware.

Imports ``agent.ops.engine``/``journal``/``errors``, ``agent.devices.usb``, ``firmware_profiles.usbtoken``.
"""
from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Callable

from agent.devices.usb import TokenError, TokenGone, TokenLink, TokenProtocolError, TokenRefused
from agent.ops.engine import Engine, Plan, Result, Step
from agent.ops.errors import PreconditionError, VerificationError
from agent.ops.journal import Journal, Operation
from firmware_profiles.usbtoken import TokenModel
from firmware_profiles.usbtoken import protocol as P
from firmware_profiles.usbtoken.image import Image, ImageError, check_for, parse_image

KIND = "token-firmware"
Progress = Callable[[str, int, int], None]


class ImageRejected(VerificationError):
    """The token's bootloader refused the image at manifest."""


class _Runner:
    def __init__(self, connect: Callable[[], TokenLink], blob: bytes, image: Image, model: TokenModel,
                 progress: Progress | None):
        self.connect, self.blob, self.image, self.model = connect, blob, image, model
        self.progress = progress or (lambda step, done, total: None)

    def _new_running(self, link: TokenLink) -> bool:
        return link.mode == "runtime" and link.bcd_version == self.image.version

    def detach(self, op: Operation, resumed: bool) -> dict:
        link = self.connect()
        if link.mode == "bootloader" or (resumed and self._new_running(link)):
            return {}
        link.dfu_detach()
        return {}

    def _download(self, link: TokenLink) -> None:
        link.dfu_clear()
        bs = self.model.flash.block_bytes
        n = len(self.blob)
        for i, pos in enumerate(range(0, n, bs)):
            link.dfu_download(i, self.blob[pos:pos + bs])
            status, state = link.dfu_status()
            if status != P.ERR_OK:
                raise TokenRefused(f"the token's bootloader refused firmware block {i} (DFU status {status:#04x})",
                                   status)
            self.progress("download", min(pos + bs, n), n)

    def download(self, op: Operation, resumed: bool) -> dict:
        link = self._in_bootloader()
        if link is not None:
            self._download(link)
        return {}

    def _in_bootloader(self) -> TokenLink | None:
        """The token in bootloader mode (None: it already runs the new firmware). A token replugged
        after the detach comes back in runtime mode with the old firmware: detach it again."""
        link = self.connect()
        if self._new_running(link):
            return None
        if link.mode == "runtime":
            link.dfu_detach()
            link = self.connect()
            if link.mode != "bootloader":
                raise TokenProtocolError("the token did not enter its bootloader after DETACH")
        return link

    def manifest(self, op: Operation, resumed: bool) -> dict:
        link = self._in_bootloader()
        if link is None:
            return {}
        if resumed:  # a cut during the manifest: the bootloader starts over from an empty download
            status, state = link.dfu_status()
            if state == P.DFU_MANIFEST_WAIT_RESET:
                return {}
            self._download(link)
        link.dfu_download(0, b"")
        status, state = link.dfu_status()
        if status != P.ERR_OK:
            raise ImageRejected(f"the token's bootloader refused the firmware image (DFU status {status:#04x}): "
                                "the old firmware is kept")
        return {}

    def reset(self, op: Operation, resumed: bool) -> dict:
        link = self.connect()
        if link.mode == "bootloader":
            link.reset()
            link = self.connect()
        if not self._new_running(link):
            raise VerificationError(f"after the reset the token runs {link.bcd_version} in {link.mode} mode, "
                                    f"not {self.image.version}")
        return {"firmware": self.image.version}

    def undo_download(self, op: Operation) -> None:
        """Back to the old firmware: ABORT the download and reset into runtime."""
        link = self.connect()
        if link.mode != "bootloader":
            return
        link.dfu_abort()
        link.reset()


def build_plan(runner: _Runner | None) -> Plan:
    def fwd(name):
        return lambda op, resumed: asyncio.to_thread(getattr(runner, name), op, resumed)

    async def undo(op: Operation) -> None:
        await asyncio.to_thread(runner.undo_download, op)
    return Plan(
        kind=KIND,
        steps=(Step("detach", fwd("detach"), undo=undo), Step("download", fwd("download"), undo=undo),
               Step("manifest", fwd("manifest"), undo=undo), Step("reset", fwd("reset"), point_of_no_return=True)),
        undo_on=(TokenRefused, TokenProtocolError, VerificationError),
        hold_on=(TokenGone,),
    )


def load_firmware(blob: bytes, model: TokenModel, *, current: str | None, bootloader: str | None) -> Image:
    try:
        image = parse_image(blob, model.firmware.signing_public_key)
        check_for(image, model, kind="firmware", current_version=current, bootloader=bootloader)
    except ImageError as exc:
        raise PreconditionError(str(exc)) from None
    return image


async def run_firmware(journal: Journal, connect: Callable[[], TokenLink], model: TokenModel, blob: bytes, *,
                       progress: Progress | None = None, image_path: str | None = None) -> Result:
    """Start, or resume with the same image, the firmware refresh of the token ``connect`` reaches.
    ``image_path`` (journaled) lets ``agent.ops.token_recovery`` finish it on the next insert or start."""
    try:
        link = connect()
    except TokenError as exc:
        raise PreconditionError(str(exc).replace("the operation resumes", "repeat the command")) from None
    serial = link.serial
    open_ops = await journal.open_operations(serial)
    op = next((o for o in open_ops if o.kind == KIND), None)
    if open_ops and op is None:
        raise PreconditionError(f"token {serial} has an unfinished {open_ops[0].kind}: finish that first")
    if op is None:
        try:
            if link.mode == "runtime":
                info = link.info()
                current, boot = info["firmware"], info["bootloader"]
            else:  # stuck in its bootloader (an earlier flash never finished): any valid image for it
                current, boot = None, link.bcd_version
        except TokenError as exc:  # nothing begun yet: the token is as it was
            raise PreconditionError(str(exc).replace("the operation resumes", "repeat the command")) from None
        image = load_firmware(blob, model, current=current, bootloader=boot)
        if current == image.version:
            raise PreconditionError(f"the token already runs firmware {image.version}")
        op = await journal.begin_operation(kind=KIND, card_serial=serial, model_id=model.id, reader="usb", data={
            # bound to the whole signed file: another release (even with the same payload) is another input
            "image_sha256": hashlib.sha256(blob).hexdigest(), "version": image.version, "from": current or "bootloader",
            "image_path": image_path})
    else:
        image = load_firmware(blob, model, current=None, bootloader=None)
        if hashlib.sha256(blob).hexdigest() != op.data["image_sha256"]:
            raise PreconditionError(f"token {serial} has an unfinished firmware update to {op.data['version']}: "
                                    "run it again with that image, not another")
    return await Engine(journal).run(build_plan(_Runner(connect, blob, image, model, progress)), op,
                                     codes_at_hand=True)
