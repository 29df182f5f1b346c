"""Installing a token release (issue 14 item 1): firmware + CD-ROM image + disk content as one
versioned system, a plan on the step engine over the token's own partition and firmware procedures.

A release (``cns_spec.releases.Release``) names per token model the signed images of its components
and the constraints between them. Before anything is begun (``preflight``; nothing touched): the
release is for this token's model, this agent is recent enough, each image is the manifest's (length,
sha256), signed with the model's release key, of the right kind and version; the constraints hold
on the final set and on every intermediate set the commit order passes through; and, when the release
changes the firmware and more, the firmware image the token runs now is at hand (``previous``: the
component of the release it reports): the token keeps one firmware bank, so undoing new firmware means
flashing the old one again.

Steps, one per changed component in ``cns_spec.releases.install_order`` (firmware before the CD-ROM
that needs it), then ``verify`` and ``commit``:

- ``firmware``: DFU download, manifest (the bootloader verifies and switches banks), reset;
- ``cdrom`` / ``disk``: stage into the partition's free region (``token_update.pick_region``; only changed
  blocks cross the link), verify (the token hashes the slot), switch (one atomic metadata write); the old
  image stays kept (``previous``);
- ``verify``: every component reads back as the release's (firmware version, partition hashes);
- ``commit`` (the point of no return): each switched partition confirmed, its kept image freed.

Each component's switch is atomic, so the token is at every moment on a set of committed components;
the order keeps each such set within the constraints. A refusal or a failed verification before
``commit`` undoes the steps begun, newest first (each undo idempotent: a component already on its old
image is left alone): a partition is switched back to the image it kept, the firmware flashed again
from the old image; the token ends on the old release everywhere. A token pulled or losing power holds
the operation open (``hold_on``); on the next insert or start (``agent.ops.token_recovery``) the same
images finish it, or finish its undo. Resuming with another release or other images is refused.

Hashing (the agent's own cost of a 700 MiB image): a run hashes each signed file once (``preflight``
against the manifest's SHA-256, or ``_resumed`` against the digest journaled when the install began: a
file changed since then is refused, naming it), carries that digest in ``Inputs.digests`` into the
journal's binding, verifies each signature once (again on resume: the journal is no trust anchor), hashes
each payload against its signed header once when the install begins (not on resume: the same bytes passed
it, and the token hashes the staged slot against it), and the blocks of a partition only when its stage
step runs. Images are views into the files' bytes, never copied.

``installed_set`` / ``installed_from_row`` read a token's component versions; ``release_of``
(``cns_spec.releases``) names the release it runs as a whole ("" for a mix or an unknown set).

Imports ``agent.ops.engine``/``journal``/``errors``/``token_update``/``token_firmware``,
``agent.devices.usb`` (the token link, injected as ``connect``), ``firmware_profiles.usbtoken`` and
``cns_spec.releases``.
"""
from __future__ import annotations

import asyncio
import hashlib
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

from agent.devices.usb import TokenError, TokenGone, TokenLink, TokenProtocolError, TokenRefused
from agent.ops import token_firmware, token_update
from agent.ops.engine import Engine, Plan, Result, Step
from agent.ops.errors import PreconditionError, VerificationError
from agent.ops.journal import Journal, Operation
from cns_spec import releases as spec
from firmware_profiles.usbtoken import TokenModel
from firmware_profiles.usbtoken.image import Image, ImageError, check_for, parse_image

KIND = "token-release"
PARTITIONS = ("cdrom", "disk")
Progress = Callable[[str, int, int], None]   # (step, done, total)


def installed_set(info: Mapping) -> dict[str, str]:
    """Component → version of a token's INFO answer."""
    return {"firmware": str(info["firmware"]), "cdrom": str(info["images"]["cdrom"]["version"]),
            "disk": str(info["images"]["disk"]["version"])}


def installed_from_row(row: Mapping) -> dict[str, str]:
    """Component → version of a ``cns-agent devices`` token row (``TokenInfo.as_dict``)."""
    parts = row.get("partitions") or {}
    return {"firmware": str(row.get("firmware", "")),
            **{p: str((parts.get(p) or {}).get("version", "")) for p in PARTITIONS}}


release_of = spec.release_of   # the release a token runs as a whole (pure: cns_spec.releases)


@dataclass
class Inputs:
    """The verified images of one install: the release's (``new``) and the token's current ones (``old``),
    with the SHA-256 of each signed file as checked once (``digests``: ``new:NAME`` / ``old:NAME``; the
    journal's binding is built from them, never by hashing the files again)."""
    release: spec.Release
    new: dict[str, tuple[bytes, Image]] = field(default_factory=dict)
    old: dict[str, tuple[bytes, Image]] = field(default_factory=dict)
    changes: list[str] = field(default_factory=list)   # components to install, in commit order
    digests: dict[str, str] = field(default_factory=dict)


def _sha(blob: bytes) -> str:
    return hashlib.sha256(blob).hexdigest()


def _parse(blob: bytes, model: TokenModel, kind: str, what: str, *, payload_checked: bool = False) -> Image:
    try:
        image = parse_image(blob, model.firmware.signing_public_key, payload_checked=payload_checked)
        check_for(image, model, kind=kind)
    except ImageError as exc:
        raise PreconditionError(f"{what}: {exc}") from None
    if kind == "disk" and len(image.payload) != model.flash.disk_bytes:
        raise PreconditionError(f"{what}: a disk image must be exactly the token's disk size "
                                f"({model.flash.disk_bytes} bytes), this one is {len(image.payload)} bytes")
    return image


def _numeric(version: str) -> str:
    """``"1.4.2+g1234"`` → ``"1.4.2"``; a development build without a number counts as 0."""
    m = re.match(r"^[0-9]{1,6}(\.[0-9]{1,6}){0,3}", version or "")
    return m.group(0) if m else "0"


def _on_token(info: Mapping, name: str, image: Image) -> bool:
    if name == "firmware":
        return info["firmware"] == image.version
    return info["images"][name]["sha256"] == image.sha256


def preflight(rel: spec.Release, model: TokenModel, info: Mapping, blobs: Mapping[str, bytes],
              previous: Mapping[str, bytes], agent_version: str) -> Inputs:
    """Every check that needs no write; raises PreconditionError (one line). See the module docstring."""
    if rel.model != model.id:
        raise PreconditionError(f"release {rel.version} is for token model {rel.model}, this token is a {model.id}: "
                                "pick the release of this model")
    if spec.parse_version(_numeric(agent_version)) < spec.parse_version(rel.min_agent_version):
        raise PreconditionError(f"release {rel.version} needs agent {rel.min_agent_version} or newer (this is "
                                f"{agent_version}): update the agent first (cns-agent update apply)")
    have = installed_set(info)
    bad = spec.unmet_constraints(rel, have)
    if bad:
        raise PreconditionError(f"release {rel.version} would break {bad[0].when} ⇒ {bad[0].needs} on this token "
                                f"(it has {', '.join(f'{k} {v}' for k, v in sorted(have.items()))})")
    state = dict(have)
    for name in spec.install_order(rel):
        state[name] = rel.component(name).version
        broken = [k for k in rel.constraints if k.applies(state) and not k.met(state)]
        if broken:
            raise PreconditionError(f"release {rel.version}: after its {name}, {broken[0].when} ⇒ "
                                    f"{broken[0].needs} would not hold: no commit order keeps the token usable")
    inputs = Inputs(rel)
    for c in rel.components:
        blob = blobs.get(c.name)
        if blob is None:
            raise PreconditionError(f"release {rel.version}: its {c.name} image was not downloaded: download it again")
        digest = _sha(blob) if len(blob) == c.length else ""
        if digest != c.sha256:
            raise PreconditionError(f"release {rel.version}: the {c.name} file is not the one the release names "
                                    "(length or hash): download it again")
        image = _parse(blob, model, c.name, f"release {rel.version} {c.name}")
        if image.version != c.version:
            raise PreconditionError(f"release {rel.version}: its {c.name} image says version {image.version}, the "
                                    f"release says {c.version}: refused")
        if c.name == "firmware":
            try:
                check_for(image, model, kind="firmware", current_version=info["firmware"],
                          bootloader=info.get("bootloader"))
            except ImageError as exc:
                raise PreconditionError(f"release {rel.version} firmware: {exc}") from None
        inputs.new[c.name] = (blob, image)
        inputs.digests[f"new:{c.name}"] = digest
    inputs.changes = [n for n in spec.install_order(rel) if not _on_token(info, n, inputs.new[n][1])]
    if not inputs.changes:
        raise PreconditionError(f"the token already runs every component of release {rel.version}")
    for name in [n for n in inputs.changes if n == "firmware"] if len(inputs.changes) > 1 else ():
        blob = previous.get(name)
        if blob is None:
            raise PreconditionError(f"release {rel.version} changes {', '.join(inputs.changes)}; undoing it needs the "
                                    f"{name} the token runs now ({have[name]}), which this agent does not have: "
                                    "download the release the token runs first")
        image = _parse(blob, model, name, f"the token's current {name}")
        if not _on_token(info, name, image):
            raise PreconditionError(f"the {name} image given as the token's current one is not what the token runs "
                                    f"({have[name]}): refused")
        inputs.old[name] = (blob, image)
        inputs.digests[f"old:{name}"] = _sha(blob)
    return inputs


class _Data:
    """What the token procedures read of an operation (the slot of a partition update)."""

    def __init__(self, **data):
        self.data = data


class _Runner:
    def __init__(self, connect: Callable[[], TokenLink], model: TokenModel, inputs: Inputs,
                 progress: Progress | None):
        self.connect, self.model, self.inputs = connect, model, inputs
        self.progress = progress or (lambda step, done, total: None)
        self.sent_bytes = 0

    def _labelled(self, label: str) -> Progress:
        return lambda step, done, total: self.progress(f"{label}:{step}", done, total)

    # -- firmware: the DFU procedure (idempotent: a token already running ``image`` is left alone) ---------
    def _firmware(self, blob: bytes, image: Image, label: str) -> None:
        link = self.connect()
        if link.mode == "runtime" and link.bcd_version == image.version:
            return
        r = token_firmware._Runner(self.connect, blob, image, self.model, self._labelled(label))
        op = _Data()
        r.detach(op, False)
        r.download(op, False)
        r.manifest(op, False)
        r.reset(op, False)

    # -- a partition: stage, verify, switch; the old image stays kept (``previous``) until ``commit`` -------
    def _partition(self, name: str, image: Image) -> None:
        info = self.connect().info()
        if info["images"][name]["sha256"] == image.sha256:
            return                        # switched already (a resume)
        slot = token_update.pick_region(info, self.model, name, len(image.payload))
        if slot is None:
            raise TokenRefused(f"the token has no free slot for the {name} image: its reserved area is full", 5)
        r = token_update._Runner(self.connect, image, name, self.model.flash.block_bytes, self._labelled(name))
        op = _Data(slot=slot)
        r.stage(op)
        r.verify(op)
        r.switch(op)
        self.sent_bytes += r.stats.sent_bytes

    def forward(self, name: str) -> dict:
        blob, image = self.inputs.new[name]
        if name == "firmware":
            self._firmware(blob, image, name)
        else:
            self._partition(name, image)
        return {f"{name}_version": image.version}

    def undo(self, name: str, op: Operation) -> None:
        """Back to the component the token had: the firmware flashed again from its image; a partition switched
        back to the image the token kept (re-hashed by the token), then that switch confirmed."""
        if name == "firmware":
            if name in self.inputs.old:
                blob, image = self.inputs.old[name]
                self._firmware(blob, image, f"undo-{name}")
            return
        link = self.connect()
        info = link.info()
        old = op.data["from_images"][name]
        kept = info["previous"].get(name)
        if info["images"][name]["sha256"] == self.inputs.new[name][1].sha256:
            if kept is None:
                raise VerificationError(f"the token no longer keeps its old {name}: the install cannot be undone")
            link.switch(name, kept, int(old["length"]), bytes.fromhex(old["sha256"]), old["version"])
            info = link.info()
        if kept is not None and info["images"][name]["sha256"] == old["sha256"] and name in info["previous"]:
            link.confirm(name)            # frees the slot the new image was staged in

    def verify(self) -> dict:
        """Every component on the token reads back as the release's: firmware running, partitions hashed."""
        link = self.connect()
        info = link.info()
        wrong = [n for n, (_, img) in self.inputs.new.items() if not _on_token(info, n, img)]
        for i, n in enumerate(p for p in PARTITIONS if p in self.inputs.new and p not in wrong):
            image = self.inputs.new[n][1]
            if link.digest(info["map"][n], len(image.payload)) != bytes.fromhex(image.sha256):
                wrong.append(n)
            self.progress("verify", i + 1, len(PARTITIONS))
        if wrong:
            raise VerificationError(f"after the install the token does not read back the release's {', '.join(wrong)}")
        return {}

    def commit(self) -> dict:
        """The point of no return: every switched partition confirmed (the kept old image freed)."""
        link = self.connect()
        info = link.info()
        for n in PARTITIONS:
            if n in self.inputs.new and n in info["previous"]:
                link.confirm(n)
        return {"release": self.inputs.release.version}


def build_plan(runner: _Runner | None, changes: list[str]) -> Plan:
    def fwd(name):
        return lambda op, resumed: asyncio.to_thread(runner.forward, name)

    def undo(name):
        return lambda op: asyncio.to_thread(runner.undo, name, op)

    async def verify(op, resumed):
        return await asyncio.to_thread(runner.verify)

    async def commit(op, resumed):
        return await asyncio.to_thread(runner.commit)
    steps = tuple(Step(n, fwd(n), undo=undo(n)) for n in changes) + (
        Step("verify", verify), Step("commit", commit, point_of_no_return=True))
    return Plan(kind=KIND, steps=steps, noun="token release",
                undo_on=(TokenRefused, TokenProtocolError, VerificationError), hold_on=(TokenGone,))


def _binding(rel: spec.Release, digests: Mapping[str, str]) -> dict:
    """What the journaled operation is bound to: the release, its manifest and its files' SHA-256 (as checked)."""
    return {"release": rel.version, "manifest_sha256": _sha(spec.manifest_json(rel)),
            "images_sha256": {k[4:]: v for k, v in sorted(digests.items()) if k.startswith("new:")}}


def _resumed(op: Operation, rel: spec.Release, model: TokenModel, blobs: Mapping[str, bytes],
             previous: Mapping[str, bytes]) -> Inputs:
    """The inputs of the open install ``op``, from the same release and files: each file hashed once and
    compared with the digest journaled when the install began (a file changed since then is refused, naming
    it); its signature verified again (the journal is no trust anchor), its payload not hashed again (these
    bytes passed that check when the install began, and the token hashes the staged slot against it)."""
    want = _binding(rel, {})
    if (op.data.get("release"), op.data.get("manifest_sha256")) != (want["release"], want["manifest_sha256"]):
        raise PreconditionError(f"token {op.card_serial} has an unfinished install of release {op.data['release']}: "
                                "run it again with that release, not another")
    inputs = Inputs(rel, changes=list(op.data["changes"]))
    paths = op.data.get("paths") or {}
    journaled = {**{f"new:{n}": d for n, d in (op.data.get("images_sha256") or {}).items()},
                 **{f"old:{n}": d for n, d in (op.data.get("old_sha256") or {}).items()}}
    given = {**{f"new:{n}": blobs.get(n) for n in rel.versions()},
             **{f"old:{n}": b for n, b in previous.items() if f"old:{n}" in journaled}}
    for key, blob in given.items():
        kind, name = key.split(":")
        if blob is None:
            raise PreconditionError(f"the install of release {rel.version} needs its {name} image again to finish: "
                                    "download the release again")
        digest = _sha(blob)
        if digest != journaled.get(key):
            where = f" ({paths[key]})" if key in paths else ""
            what = f"the token's old {name}" if kind == "old" else f"the {name}"
            raise PreconditionError(f"{what} image{where} changed since the install of release {rel.version} began: "
                                    f"put back the file downloaded then (or download release {rel.version} again)")
        label = f"the token's old {name}" if kind == "old" else f"release {rel.version} {name}"
        image = _parse(blob, model, name, label, payload_checked=True)
        (inputs.old if kind == "old" else inputs.new)[name] = (blob, image)
        inputs.digests[key] = digest
    missing = {k[4:] for k in journaled if k.startswith("old:")} - set(inputs.old)
    if missing:
        raise PreconditionError(f"the install of release {rel.version} needs the token's old "
                                f"{', '.join(sorted(missing))} image again to finish: it is gone")
    return inputs


async def run_release(journal: Journal, connect: Callable[[], TokenLink], model: TokenModel, rel: spec.Release,
                      blobs: Mapping[str, bytes], previous: Mapping[str, bytes], *, agent_version: str,
                      progress: Progress | None = None, paths: Mapping[str, str] | None = None) -> tuple[Result, int]:
    """Start, or resume with the same release and images, the install of ``rel`` on the token ``connect``
    reaches. ``blobs``/``previous``: component → signed image bytes of the release and of what the token
    runs now. ``paths`` (journaled: manifest, new:NAME, old:NAME → file) let ``token_recovery`` finish it.
    Returns the engine's result and the image bytes sent over the link. Each file is hashed once per run
    (``preflight``, or ``_resumed``), its blocks once more only when its stage step runs."""
    try:
        link = connect()
        serial = link.serial
        open_ops = await journal.open_operations(serial)
        op = next((o for o in open_ops if o.kind == KIND), None)
        if open_ops and op is None:
            raise PreconditionError(f"token {serial} has an unfinished {open_ops[0].kind}: finish that first")
        if op is not None:
            inputs = _resumed(op, rel, model, blobs, previous)
        else:
            if link.mode != "runtime":
                raise PreconditionError(f"token {serial} is in its bootloader (a firmware update did not finish): "
                                        "finish that first")
            info = link.info()
            inputs = preflight(rel, model, info, blobs, previous, agent_version)
            op = await journal.begin_operation(kind=KIND, card_serial=serial, model_id=model.id, reader="usb", data={
                **_binding(rel, inputs.digests), "changes": inputs.changes, "from": installed_set(info),
                "from_images": {p: dict(info["images"][p]) for p in PARTITIONS},
                "old_sha256": {k[4:]: v for k, v in inputs.digests.items() if k.startswith("old:")},
                "paths": dict(paths or {})})
    except TokenError as exc:   # nothing begun yet: the token is as it was
        raise PreconditionError(str(exc).replace("the operation resumes", "repeat the command")) from None
    runner = _Runner(connect, model, inputs, progress)
    try:
        result = await Engine(journal).run(build_plan(runner, inputs.changes), op, codes_at_hand=True)
    except (TokenError, VerificationError) as exc:   # past the commit, or mid-undo: only forward now, later
        result = Result("open", op.step, exc, f"{exc}; the install of release {rel.version} is finished when the "
                                              "agent next sees the token")
    return result, runner.sent_bytes
