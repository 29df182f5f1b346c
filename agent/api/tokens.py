"""Token operations of the running agent (issue 13 items 4-5, issue 14): ``UpdateToken`` and recovery on insert/start.

``TokenOperations(usb, journal_path)`` runs the token plans of ``agent.ops`` (``token_update.run_update``
for a CD-ROM or disk image, ``token_firmware.run_firmware`` for firmware, ``token_release.run_release``
for a downloaded token release: target ``release``, the path its manifest) on the token the USB backend
(``agent.devices.usb.UsbBackend``) reaches, with the backend's scans paused (``exclusive()``: the scan's
requests must not interleave with the operation's on the management channel). Each operation is
journaled in the agent's token journal (SQLite, opened on first use), with the image's path, so
``recover(...)`` (the supervised task ``token-recovery``) finishes or undoes an unfinished one when the
token is seen again (at start every token present arrives). Progress is coalesced to about one message
per percent. Refusals (wrong image, another unfinished operation, no token) are FAILED_PRECONDITION with
one line; the token is untouched.

Imports ``agent.devices.usb``, ``agent.ops`` (token plans, journal, errors), ``firmware_profiles.usbtoken``,
``proto``.
"""
from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import grpc

from agent.devices.usb import TokenError, UsbBackend
from agent.ops import token_firmware, token_recovery, token_release, token_update
from agent.ops.errors import OperationError, PreconditionError
from agent.ops.journal import Journal
from firmware_profiles.usbtoken.image import ImageError, parse_image
from proto.cns.v1 import agent_pb2 as pb

log = logging.getLogger(__name__)
TARGETS = ("cdrom", "disk", "partition", "firmware", "release")   # partition: whichever of cdrom/disk the image is for
KIND_NAME = {"cdrom": "CD-ROM", "disk": "disk"}
MAX_IMAGE_BYTES = 2 << 30     # larger than any token's flash: refused before it is read


class TokenOperations:
    def __init__(self, usb: UsbBackend, journal_path: Path, *, agent_version: str = "0") -> None:
        self.usb, self.journal_path, self.agent_version = usb, journal_path, agent_version
        self._journal: Journal | None = None
        self._journal_lock = asyncio.Lock()
        self._running: set[str] = set()     # serials with a token operation under way in this agent

    async def journal(self, *, create: bool = True) -> Journal | None:
        async with self._journal_lock:
            if self._journal is None and (create or self.journal_path.exists()):
                self.journal_path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
                self._journal = await Journal.open(self.journal_path)
            return self._journal

    async def close(self) -> None:
        if self._journal is not None:
            await self._journal.close()
            self._journal = None

    def _connect(self, serial: str):
        return lambda: self.usb.detector.open(serial or None)

    # ------------------------------------------------------------------ UpdateToken
    async def update(self, request: pb.UpdateTokenRequest, context):
        if request.target not in TARGETS:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"target must be one of {', '.join(TARGETS)}")
        path = Path(request.image_path)
        try:
            if not path.is_absolute():
                raise PreconditionError(f"{path}: give the image's absolute path")
            if request.target == "release":
                blob = b""            # a release manifest: its images are read by _run_release
            elif path.stat().st_size > MAX_IMAGE_BYTES:
                raise PreconditionError(f"{path} is larger than any token's flash: pick the right file")
            else:
                blob = await asyncio.to_thread(path.read_bytes)
        except PreconditionError as exc:
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, str(exc))
        except OSError as exc:
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION,
                                f"{path}: cannot read it ({exc.strerror or exc}); nothing was changed")
        queue: asyncio.Queue = asyncio.Queue()
        loop = asyncio.get_running_loop()
        last: dict[str, int] = {}

        def progress(step: str, done: int, total: int) -> None:   # worker threads
            pct = done * 100 // total if total else 100
            if last.get(step) == pct:
                return
            last[step] = pct
            loop.call_soon_threadsafe(queue.put_nowait, pb.TokenProgress(step=step, done=done, total=total))

        run = (self.install_release(request.serial, path, progress) if request.target == "release"
               else self._run(request, blob, str(path), progress))
        task = asyncio.create_task(run, name="token-update")
        while not (task.done() and queue.empty()):
            try:
                yield await asyncio.wait_for(queue.get(), 0.1)
            except asyncio.TimeoutError:
                continue
        try:
            result = task.result()
        except (PreconditionError, TokenError) as exc:
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, f"{exc}; nothing was changed")
        except OperationError as exc:
            await context.abort(grpc.StatusCode.ABORTED, str(exc))
        yield pb.TokenProgress(step="result", result=result)

    async def _run(self, request: pb.UpdateTokenRequest, blob: bytes, path: str, progress) -> pb.TokenResult:
        journal = await self.journal()
        connect = self._connect(request.serial)
        async with self.usb.exclusive():
            link = await asyncio.to_thread(connect)
            model = link.model
            try:
                kind = parse_image(blob, model.firmware.signing_public_key).kind
            except ImageError as exc:
                raise PreconditionError(str(exc)) from None
            connect = self._connect(link.serial)
            if request.target == "firmware":
                if kind != "firmware":
                    raise PreconditionError(f"this is a {kind} image: use `cns-agent token update`")
                out = await token_firmware.run_firmware(journal, connect, model, blob, progress=progress,
                                                        image_path=path)
                sent = 0
            else:
                if kind == "firmware":
                    raise PreconditionError("this is a firmware image: use `cns-agent token firmware`")
                if request.target in KIND_NAME and kind != request.target:
                    raise PreconditionError(f"{path} is a {KIND_NAME[kind]} image, not a {KIND_NAME[request.target]} "
                                            f"image: give --partition {kind}, or the {request.target} image")
                out, stats = await token_update.run_update(journal, connect, model, kind, blob, progress=progress,
                                                           image_path=path)
                sent = stats.sent_bytes
        version = parse_image(blob, model.firmware.signing_public_key).version
        return pb.TokenResult(serial=link.serial, state=out.state,
                              target=kind, version=version, sent_bytes=sent,
                              message=out.reason or (str(out.error) if out.error else ""))

    # ------------------------------------------------------------------ token releases (issue 14)
    async def install_release(self, serial: str, manifest: Path, progress=None) -> pb.TokenResult:
        """Install the downloaded release ``manifest`` names (``agent.updates.token_releases.files``) on the
        token ``serial`` (empty: the only one), or finish its unfinished install of that release. The
        firmware image of the release the token runs now (found among the releases downloaded beside it)
        is read too: the install's undo flashes it again (the token keeps its old partition images)."""
        from agent.ops.token_release import installed_set, run_release
        from agent.updates.client import UpdateError, known_releases
        from agent.updates.token_releases import files
        from cns_spec import releases as spec

        try:
            rel, new_files, targets = files(manifest)
        except UpdateError as exc:
            raise PreconditionError(str(exc)) from None
        journal = await self.journal()
        async with self.usb.exclusive():
            link = await asyncio.to_thread(self._connect(serial))
            serial, model = link.serial, link.model
            self._running.add(serial)
            try:
                open_op = next((o for o in await journal.open_operations(serial) if o.kind == token_release.KIND),
                               None)
                if open_op is not None:      # finishing it: the old images the journal names
                    old_files = {k[4:]: Path(v) for k, v in (open_op.data.get("paths") or {}).items()
                                 if k.startswith("old:")}
                else:
                    if link.mode != "runtime":
                        raise PreconditionError(f"token {serial} is in its bootloader (a firmware update did not "
                                                "finish): plug it in again and let the agent finish it first")
                    have = installed_set(await asyncio.to_thread(link.info))
                    now = spec.release_of(have, known_releases(targets.parent, model.id))
                    current = next((r for r in known_releases(targets.parent, model.id) if r.version == now), None)
                    fw = current.component("firmware") if current else None
                    old_files = {"firmware": targets / fw.target} if fw is not None else {}   # partitions: kept

                def read() -> tuple[dict, dict]:
                    try:
                        return ({n: p.read_bytes() for n, p in new_files.items()},
                                {n: p.read_bytes() for n, p in old_files.items() if p.is_file()})
                    except OSError as exc:
                        raise PreconditionError(f"{exc.filename}: cannot read it ({exc.strerror}); download "
                                                f"release {rel.version} again") from None
                blobs, previous = await asyncio.to_thread(read)
                paths = {"manifest": str(manifest), **{f"new:{n}": str(p) for n, p in new_files.items()},
                         **{f"old:{n}": str(p) for n, p in old_files.items() if n in previous}}
                out, sent = await run_release(journal, self._connect(serial), model, rel, blobs, previous,
                                              agent_version=self.agent_version, progress=progress, paths=paths)
            finally:
                self._running.discard(serial)
        return pb.TokenResult(serial=serial, state=out.state, target="release", version=rel.version,
                              sent_bytes=sent, message=out.reason or (str(out.error) if out.error else ""))

    async def idle(self, serial: str, busy=None) -> str | None:
        """None when the token ``serial`` may be updated now: plugged in and running, no token operation of
        this agent under way on it, no open operation in the journal, and ``busy(serial)`` (the composition
        root's check of the token's chip: a PC/SC transaction or a card operation) says nothing. Else why not."""
        info = next((t for t in self.usb.tokens.values() if t.serial == serial), None)
        if info is None or info.mode != "runtime":
            return "the token is not plugged in"
        if serial in self._running:
            return "a token operation is under way"
        journal = await self.journal(create=False)
        if journal is not None and await journal.open_operations(serial):
            return "the token has an unfinished operation"
        if busy is not None:
            reason = await asyncio.to_thread(busy, serial)
            if reason:
                return reason
        return None

    # ------------------------------------------------------------------ recovery
    async def recover(self) -> None:
        """Until cancelled: every token that arrives (at start, every token present) has its unfinished
        operations finished or undone; a token without any costs one journal lookup."""
        arrived: asyncio.Queue[str] = asyncio.Queue()
        loop = asyncio.get_running_loop()

        def listener(kind: str, info) -> None:
            if kind == "arrived" and info.mode in ("runtime", "bootloader") and info.serial:
                loop.call_soon_threadsafe(arrived.put_nowait, info.serial)
        unsubscribe = self.usb.subscribe(listener)
        try:
            while True:
                serial = await arrived.get()
                journal = await self.journal(create=False)
                if journal is None or not await journal.open_operations(serial):
                    continue
                try:
                    async with self.usb.exclusive():
                        for op_id, res in await token_recovery.recover_token(journal, self._connect(serial),
                                                                             self.usb.detector.models):
                            log.info("token %s: unfinished operation %s %s%s", serial, op_id, res.state,
                                     f" ({res.reason})" if res.reason else "")
                except (TokenError, OperationError) as exc:
                    log.warning("token %s: unfinished operation not finished yet: %s", serial, exc)
        finally:
            unsubscribe()
