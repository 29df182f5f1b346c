"""Emulated tokens on a known release, and signed releases for them: shared by the token-release tests
and ``scripts/bench token-release``.

``small_model`` shrinks a token model's flash (the test models have a 128 MiB CD-ROM and a 192 MiB disk;
a test wants a few MiB, the benchmark 700 MiB); ``parts`` makes the payloads of a release with a few
changed blocks against another; ``signed_release`` signs each payload as the model's image and builds
the manifest; ``provision`` makes a token that runs a release from the factory (firmware version,
CD-ROM and disk content in their home regions), as a token leaves the factory; ``clone`` another such
token from that one's flash file without copying it.
"""
from __future__ import annotations

import hashlib
import json
import random
from dataclasses import replace
from pathlib import Path

from cns_spec import releases as spec
from firmware_profiles.usbemu import EmulatedUsbBus, make_token, test_release_key
from firmware_profiles.usbemu.flash import write_meta
from firmware_profiles.usbtoken import TokenModel
from firmware_profiles.usbtoken.image import build_image
from firmware_profiles.usbtoken.model import META_BYTES

MiB = 1 << 20
RULE = ("cdrom>=3", "firmware>=2.1")   # the example: CD-ROM 3.x needs firmware ≥ 2.1


def small_model(model: TokenModel, *, cdrom_mib: int = 4, disk_mib: int = 2, slot_mib: int | None = None) -> TokenModel:
    slot = (slot_mib or max(cdrom_mib, disk_mib) + 1) * MiB
    cd, disk = cdrom_mib * MiB, disk_mib * MiB
    flash = replace(model.flash, cdrom_bytes=cd, disk_bytes=disk, slot_bytes=slot, reserved_bytes=2 * slot,
                    size_bytes=META_BYTES + cd + disk + 2 * slot)
    return replace(model, flash=flash)


def _random(rng: random.Random, n: int) -> bytes:
    return b"".join(rng.randbytes(min(64 * MiB, n - i)) for i in range(0, n, 64 * MiB))


def payloads(model: TokenModel, seed: int, *, cdrom_bytes: int | None = None, fw_bytes: int = 64 * 1024) -> dict:
    rng = random.Random(seed)
    cd = cdrom_bytes if cdrom_bytes is not None else model.flash.cdrom_bytes - 2 * MiB
    return {"firmware": _random(rng, fw_bytes), "cdrom": _random(rng, cd), "disk": _random(rng, model.flash.disk_bytes)}


def changed(base: dict, seed: int, blocks: int = 3, block: int = 4096) -> dict:
    """``base`` with ``blocks`` scattered 4 KiB blocks of the CD-ROM and of the disk changed, new firmware."""
    rng = random.Random(seed)
    out = {"firmware": rng.randbytes(len(base["firmware"]))}
    for name in ("cdrom", "disk"):
        img = bytearray(base[name])
        for _ in range(blocks):
            at = rng.randrange(len(img) // block) * block
            img[at:at + block] = rng.randbytes(block)
        out[name] = bytes(img)
    return out


def signed_release(model: TokenModel, version: str, versions: dict[str, str], data: dict[str, bytes],
                   constraints=(RULE,), min_agent: str = "0.1", folder: Path | None = None,
                   release_model: str | None = None):
    """(Release, {component: signed image bytes}); with ``folder``, the images are written there too."""
    blobs, comps = {}, []
    for name, ver in versions.items():
        blob = build_image(test_release_key(), kind=name, model=model.id, version=ver, payload=data[name])
        blobs[name] = blob
        comps.append({"name": name, "version": ver, "target": f"components/{model.id}/{name}-{ver}",
                      "length": len(blob), "sha256": hashlib.sha256(blob).hexdigest()})
        if folder is not None:
            folder.mkdir(parents=True, exist_ok=True)
            (folder / f"{name}-{ver}").write_bytes(blob)
    rel = spec.parse_manifest({"schema": 1, "kind": "token-release", "model": release_model or model.id,
                               "version": version, "min_agent_version": min_agent, "components": comps,
                               "constraints": [{"when": w, "needs": n} for w, n in constraints]})
    return rel, blobs


def provision(model: TokenModel, flash_path: Path, versions: dict[str, str], data: dict[str, bytes],
              bus: EmulatedUsbBus | None = None):
    """A token that runs ``versions``/``data`` from the factory, plugged into ``bus`` (a new one if None)."""
    bus = bus or EmulatedUsbBus()
    token = make_token(model, flash_path, cdrom=data["cdrom"], cdrom_version=versions["cdrom"])
    off, _ = model.flash.region("disk")
    token.flash.write(off, data["disk"])
    meta = json.loads(json.dumps(token.meta))
    meta["images"]["disk"] = {"version": versions["disk"], "length": len(data["disk"]),
                              "sha256": hashlib.sha256(data["disk"]).hexdigest()}
    meta["firmware"] = dict(meta["firmware"], version=versions["firmware"])
    token.meta = write_meta(token.flash, meta)
    token.power_up()
    bus.plug(token)
    return bus, token


def clone(model: TokenModel, factory: Path, flash_path: Path, bus: EmulatedUsbBus | None = None):
    """A fresh token whose flash is a clone of ``factory`` (a closed ``provision``ed token's flash file, never
    written again): it reads as that token did and costs no copy (``Flash``'s ``base``), plugged into ``bus``."""
    bus = bus or EmulatedUsbBus()
    token = make_token(model, flash_path, base=factory)
    bus.plug(token)
    return bus, token


def contents(token) -> dict[str, bytes]:
    """What the token's partitions hold now (read from the flash through its map) and its firmware version."""
    out = {}
    for name in ("cdrom", "disk"):
        off, _ = token.model.flash.region(token.meta["map"][name])
        out[name] = token.flash.read(off, token.meta["images"][name]["length"])
    out["firmware"] = token.meta["firmware"]["version"].encode()
    return out


def token_set(token) -> dict[str, str]:
    m = token.meta
    return {"firmware": m["firmware"]["version"], "cdrom": m["images"]["cdrom"]["version"],
            "disk": m["images"]["disk"]["version"]}
