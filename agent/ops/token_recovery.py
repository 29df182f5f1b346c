"""Finish a token's unfinished partition update or firmware refresh when the token is plugged
in again or the agent starts (DESIGN.md: restarting or reinserting finishes or undoes it).

``recover_token`` looks in the journal for the open token operations of the token ``connect``
reaches, reads the image from the path journaled when the operation began, and runs the same
plan again (``run_update`` / ``run_firmware`` check that it is the same image, by hash). An
image that is gone or changed leaves the operation open with a one-line reason; the token is
still readable (old or new image, or its bootloader waiting for the same firmware).

Imports ``agent.ops.token_update``, ``agent.ops.token_firmware``, ``agent.ops.journal``/``engine``.
"""
from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping
from pathlib import Path

from agent.devices.usb import TokenLink
from agent.ops import token_firmware, token_update
from agent.ops.engine import Result
from agent.ops.errors import PreconditionError
from agent.ops.journal import Journal
from firmware_profiles.usbtoken import TokenModel

KINDS = (token_update.KIND, token_firmware.KIND)


async def recover_token(journal: Journal, connect: Callable[[], TokenLink],
                        models: Mapping[str, TokenModel]) -> list[tuple[str, Result]]:
    """Run every open token operation of this token to its end; returns (op_id, result) pairs."""
    link = connect()
    out: list[tuple[str, Result]] = []
    for op in await journal.open_operations(link.serial):
        if op.kind not in KINDS:
            continue
        model = models.get(op.model_id)
        path = op.data.get("image_path")
        blob = None
        if model is not None and path:
            try:
                blob = Path(path).read_bytes()
            except OSError:
                blob = None
        if model is None or blob is None:
            out.append((op.op_id, Result("open", reason=f"the image of the unfinished {op.kind} ({path or 'no path'}) "
                                                         "is not readable: run the update again with that image")))
            continue
        if hashlib.sha256(blob).hexdigest() != op.data.get("image_sha256"):
            out.append((op.op_id, Result("open", reason=f"{path} is no longer the image the {op.kind} began with: "
                                                         "run the update again with that image")))
            continue
        try:
            if op.kind == token_update.KIND:
                result, _ = await token_update.run_update(journal, connect, model, op.data["partition"], blob,
                                                          image_path=path)
            else:
                result = await token_firmware.run_firmware(journal, connect, model, blob, image_path=path)
        except PreconditionError as exc:
            result = Result("open", reason=str(exc))
        out.append((op.op_id, result))
    return out
