"""Fleet's ``install_release`` command on a station agent (issue 15 item 3, issue 14): the same release install
as the holder's, then the token's own attestation of what it runs.

``ReleaseInstaller(agent, url=, proxy=, state_dir=)`` (the composition root's ``Agent``, the station's
``[updates]`` repository). ``accept(command)`` refuses a command without a device serial or release;
``await install(command, progress)`` gives the command's ``Outcome``:

1. the token ``command.device_serial`` must be plugged in (not in its bootloader); the install waits, up
   to ``idle_wait_s``, until it is idle (``TokenOperations.idle`` with the agent's ``token_busy``: the
   holder's signing is never disturbed by central IT);
2. the release ``command.release`` of the token's model is looked up and downloaded from the station's
   release repository (TUF, verified chunk by chunk, resumable: ``agent.updates.token_releases``), with
   the firmware of the release the token runs now (the install's undo flashes it again);
3. ``TokenOperations.install_release`` runs the journaled release plan (all components or none); a token
   already on that release is not touched again (a command repeated after a lost result);
4. the token is asked to attest (management request ``OP_ATTEST``): it signs, with its device key, an
   installed-release manifest it composes itself, naming this command, only if it runs exactly the
   release's components, committed. The answer becomes the result's ``FleetAttestation``, which the
   personalizer verifies against the model's attestation CA: no signature, no success.

Every failure is a failed ``Outcome`` with one line; the token stays on a consistent release.
Imports ``agent.updates``, ``agent.ops`` (errors, token_release), ``agent.devices.usb``,
``firmware_profiles.usbtoken.protocol`` and ``proto``.
"""
from __future__ import annotations

import asyncio
import json
import logging
import struct
import time
from pathlib import Path

from agent.devices.usb import TokenError
from agent.fleet.client import Outcome
from agent.ops.errors import OperationError, PreconditionError
from firmware_profiles.usbtoken.protocol import OP_ATTEST
from proto.cns.v1 import fleet_pb2 as pb

log = logging.getLogger(__name__)
IDLE_WAIT_S = 600.0


def attestation_of(raw: bytes) -> bytes:
    """The token's ``OP_ATTEST`` answer → a serialized ``FleetAttestation``."""
    try:
        (n,) = struct.unpack(">H", raw[:2])
        manifest = raw[2:2 + n]
        (m,) = struct.unpack(">H", raw[2 + n:4 + n])
        sig, cert = raw[4 + n:4 + n + m], raw[4 + n + m:]
    except struct.error:
        raise TokenError("the token's attestation answer is malformed") from None
    if len(manifest) != n or len(sig) != m or not cert:
        raise TokenError("the token's attestation answer is truncated")
    return pb.FleetAttestation(manifest=manifest, signature=sig, device_certificate=cert).SerializeToString()


class ReleaseInstaller:
    def __init__(self, agent, *, url: str, proxy: str | None, state_dir: Path, idle_wait_s: float = IDLE_WAIT_S,
                 poll_s: float = 1.0) -> None:
        self.agent, self.url, self.proxy, self.state_dir = agent, url, proxy, Path(state_dir)
        self.idle_wait_s, self.poll_s = idle_wait_s, poll_s

    def accept(self, command: pb.FleetCommand) -> str | None:
        if not command.device_serial or not command.release:
            return "install_release needs a device serial and a release"
        return None

    def _row(self, serial: str) -> dict | None:
        return next((r for r in self.agent.tokens() if r.get("serial") == serial), None)

    def _download(self, model: str, version: str, installed: dict[str, str]) -> Path:
        """The manifest path of release ``version`` of ``model``, its files downloaded (blocking)."""
        from agent.updates import token_releases as tr
        from agent.updates.client import UpdateClient
        from cns_spec import releases as spec

        client = UpdateClient(self.state_dir, self.url, proxy=self.proxy)
        releases = client.token_releases(model)
        rel = next((r for r in releases if r.version == version), None)
        if rel is None:
            raise PreconditionError(f"release {version} of token model {model} is not published in this station's "
                                    "release repository")
        now = spec.release_of(installed, releases)
        current = next((r for r in releases if r.version == now), None)
        return Path(tr.fetch(client, tr.Offer(rel, current))["manifest"])

    async def _attest(self, command: pb.FleetCommand, rel) -> bytes:
        usb = self.agent.token_ops.usb
        body = json.dumps({"nonce": command.command_id, "release": rel.version,
                           "components": rel.versions()}, sort_keys=True).encode()
        async with usb.exclusive():
            def ask() -> bytes:
                link = usb.detector.open(command.device_serial)
                return link.request(OP_ATTEST, body, what="attesting its installed release")
            return attestation_of(await asyncio.to_thread(ask))

    async def install(self, command: pb.FleetCommand, progress) -> Outcome:
        from agent.ops.token_release import installed_from_row
        from agent.updates.client import UpdateError
        from agent.updates.token_releases import files

        serial, version, ops = command.device_serial, command.release, self.agent.token_ops
        loop = asyncio.get_running_loop()
        try:
            row = self._row(serial)
            if row is None or row.get("mode") != "runtime":
                return Outcome(False, f"token {serial} is not plugged in (or is in its bootloader) on this station")
            deadline = time.monotonic() + self.idle_wait_s
            while (why := await ops.idle(serial, self.agent.token_busy)) is not None:
                if time.monotonic() > deadline:
                    return Outcome(False, f"token {serial} was not idle for {self.idle_wait_s:.0f} s ({why}): "
                                          "nothing installed")
                await progress(0, f"waiting: {why}")
                await asyncio.sleep(self.poll_s)
            await progress(1, f"downloading release {version}")
            manifest = await asyncio.to_thread(self._download, row["model"], version, installed_from_row(row))
            rel, _, _ = files(manifest)
            if row.get("release") != version:
                last: list = [None]

                def step(name: str, done: int, total: int) -> None:   # worker thread; about one message per percent
                    pct = min(95, 5 + (done * 90 // total if total else 90))
                    if last[0] != (name, pct):
                        last[0] = (name, pct)
                        asyncio.run_coroutine_threadsafe(progress(pct, f"installing: {name}"), loop)
                res = await ops.install_release(serial, manifest, step)
                if res.state != "done":
                    return Outcome(False, f"release {version} {res.state} on token {serial}: {res.message}")
                sent = f" ({res.sent_bytes} image bytes sent)"
            else:
                sent = " (already installed)"
            attestation = await self._attest(command, rel)
            await progress(100, "attested")
            return Outcome(True, f"release {version} installed on token {serial}{sent}", attestation)
        except (PreconditionError, OperationError, TokenError, UpdateError, OSError) as exc:
            log.warning("fleet install of release %s on token %s: %s", version, serial, exc)
            return Outcome(False, str(exc)[:500])
