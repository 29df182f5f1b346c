"""Finish a token's unfinished partition update, firmware refresh or release install when the token
is plugged in again or the agent starts (DESIGN.md: restarting or reinserting finishes or undoes it).

``recover_token`` looks in the journal for the open token operations of the token ``connect``
reaches, reads the image from the path journaled when the operation began, and runs the same
plan again (``run_update`` / ``run_firmware`` check that it is the same image, by hash; a release
install, ``token_release.run_release``, reads its journaled manifest and images the same way). An
image that is gone or changed leaves the operation open with a one-line reason; the token is
still readable (old or new image, or its bootloader waiting for the same firmware).

Imports ``agent.ops.token_update``, ``token_firmware``, ``token_release``, ``agent.ops.journal``/``engine``.
"""
from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping
from pathlib import Path

from agent.devices.usb import TokenLink
from agent.ops import token_firmware, token_release, token_update
from agent.ops.engine import Result
from agent.ops.errors import PreconditionError
from agent.ops.journal import Journal
from firmware_profiles.usbtoken import TokenModel

KINDS = (token_update.KIND, token_firmware.KIND, token_release.KIND)


async def recover_token(journal: Journal, connect: Callable[[], TokenLink],
                        models: Mapping[str, TokenModel]) -> list[tuple[str, Result]]:
    """Run every open token operation of this token to its end; returns (op_id, result) pairs."""
    link = connect()
    out: list[tuple[str, Result]] = []
    for op in await journal.open_operations(link.serial):
        if op.kind not in KINDS:
            continue
        model = models.get(op.model_id)
        if op.kind == token_release.KIND:
            out.append((op.op_id, await _recover_release(journal, connect, model, op)))
            continue
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


async def _recover_release(journal: Journal, connect: Callable[[], TokenLink], model: TokenModel | None,
                           op) -> Result:
    from cns_spec import releases as spec
    paths = op.data.get("paths") or {}
    try:
        if model is None:
            raise OSError(f"no model {op.model_id}")
        rel = spec.parse_manifest(Path(paths["manifest"]).read_bytes())
        blobs = {n: Path(paths[f"new:{n}"]).read_bytes() for n in rel.versions()}
        previous = {n: Path(paths[f"old:{n}"]).read_bytes() for n in op.data.get("old_sha256", {})}
    except (OSError, KeyError, spec.ManifestError) as exc:
        return Result("open", reason=f"the files of the unfinished install of release {op.data.get('release')} are "
                                     f"not readable ({exc}): download that release again and install it")
    try:
        result, _ = await token_release.run_release(journal, connect, model, rel, blobs, previous, agent_version="")
    except PreconditionError as exc:
        result = Result("open", reason=str(exc))
    return result
