"""Token release: bytes downloaded vs changed chunks, install time vs raw link time, randomized fault trials.

Item 6 of issue 14. Two releases of one token model are built with personalizer.releases and served by
nginx (tests.releases.nginx): firmware + a CD-ROM image of ``--cdrom-mib`` (the issue's figure: 700) +
the disk's content, each a signed token image; release 2 changes the firmware and ``--changed`` scattered
4 KiB blocks of the CD-ROM and of the disk.

1. **Download**: the agent's TUF client, holding release 1 (what it downloaded before), fetches release
   2: bytes received against the changed 1 MiB chunks plus the metadata (target ≤ 1.1×), time against a
   raw GET of the same bytes; then ``--faults`` trials through a proxy that drops each response at a
   random byte, each ending with the exact release 2 bytes.
2. **Install**: an emulated token (pyusb over the emulated bus) that runs release 1 from the factory gets
   release 2 through ``agent.ops.token_release`` from the downloaded files: wall time, the modelled link
   time of what crossed the link, against the raw link time of the changed bytes and of the whole
   release at the token's modelled rate; the token must end with release 2's exact bytes.
3. **Fault trials** (``--install-faults``, on a release of ``--fault-cdrom-mib``: a fresh token per trial):
   each downloads release 2 and installs it under one random fault: ``drop`` (the connection cut mid-file),
   ``kill`` (the agent dies at a random progress point), ``tear`` (power cut after a random number of flash
   bytes), ``unplug`` (the token pulled at a random USB transfer), ``stall`` (the token refuses one random
   management request: the install is undone). Right after the fault the token must be usable (a committed
   set meeting the constraints, or its bootloader waiting for the same firmware); then the agent's recovery
   (``agent.ops.token_recovery``, as on the next insert) runs, and the token must be on release 1 or 2
   exactly (every byte), never a mix, with no operation left open. Target: 0 mixed or broken.
   The output gives the fault space of a clean install (``fault_probe``: progress calls, flash bytes
   written, USB transfers, management requests: what the draws range over) and the seconds per trial
   by phase.

**Fault trials at 700 MiB.** A fresh token per trial is a clone of one factory token's flash file (no copy;
``Flash``'s base), and the emulated flash is a translation layer (``firmware_profiles.usbemu.flash``): the
stage step's OP_COPY of every unchanged block into the staging slot is a page remap that still counts its
736 MB of modelled flash writes towards the tear budget, and OP_HASH/DIGEST use page hashes cached until a
page is written, so the token's own work costs about what the change costs. The checks read both
partitions from the token's flash (through its map) and compare them byte for byte with the release
payloads. What a trial costs is mostly the agent's own work (``agent.ops.token_release``): an install
hashes each 700 MiB file once against the manifest's SHA-256 (that digest is what the journal's binding
holds), checks its Ed25519 signature and its payload against the signed SHA-256 once, and hashes the
CD-ROM's blocks once in the stage step: 3 SHA-256 passes and one Ed25519 check (4 and one before); a
recovery after a kill, tear or unplug reads the journaled files and hashes each once against the journal,
checks the signature again and hashes the blocks only of a partition still to stage: 1-2 passes and one
check (3 and one before); the image is never copied (views). SHA-256 runs at about 680 MB/s here.
Measured 2026-12-02, one process, one setup, the agent code before (7f53d5a) and after (90d0f17)
alternating: a clean install + a kill at the middle progress point + its recovery took 20.1 s before and
11.7 s after (load 3.7 → 3.0), then 13.2 s after and 28.6 s before (load rising with other work): the
clean install 7.5-9.2 s → 4.2 s, the recovery 7.0-11.7 s → 3.8-5.2 s. Under the bench lock the same day
(load 25 → 10, other engineers' tests running) the clean install at ``--cdrom-mib 700`` took 10.3 s wall,
1.30 s modelled link time, against 0.006 s raw link time for the changed bytes and 15.6 s for the whole
release; its download 7.78 MB against a target of 8.54 MB (ratio 1.0). The trials measure correctness,
not speed: they need no bench lock; run them at ``nice -n 19`` with ``--workers 2`` in chunks
(``--budget-s``: no trial starts after it; distinct ``--seed`` per chunk) and add the chunks up with
``--sum FILE...`` (each run's last JSON line). The fault kinds take turns, so every chunk of 5 or more
trials draws each kind. ``--workers N`` runs N trials at once, each in a process forked after the setup
(its own token, files and fault proxy; the setup's payloads shared copy-on-write); each trial draws from
its own generator seeded by (``--seed``, trial number), so a trial draws the same whichever worker runs
it, and ``fault_trials_per_hour`` is the run's throughput. On 2026-12-02 (commit 27c5a04), 453
trials at 700 MiB in chunks of ``--budget-s 1260`` (the last 854; seeds 201-204), 0 mixed or broken, every kind
drawn in every chunk, at 181-625 trials an hour beside the other engineers' work (load 3 to 480).
At 700 MiB a uniform draw mostly lands inside the CD-ROM's stage step (2,137
management requests of a clean install against 49 at 4 MiB, 4,438 transfers against 250): ``--fault-cdrom-mib
4`` spreads the same number of draws over every step boundary (0.2 s a trial).
"""
from __future__ import annotations

import argparse
import asyncio
import hashlib
import os
import random
import shutil
import tempfile
import time
from collections import Counter
from pathlib import Path

MiB = 1 << 20
V1 = {"firmware": "1.2.0", "cdrom": "2.5.0", "disk": "1.0.0"}
V2 = {"firmware": "2.1.0", "cdrom": "3.0.0", "disk": "1.1.0"}
FAULTS = ("drop", "kill", "tear", "unplug", "stall")


class _Killed(BaseException):
    """The agent died (nothing after this point runs, as under SIGKILL)."""


class _Setup:
    """Two signed releases of one (shrunk) model, published in a TUF repository served by nginx, their
    payloads (what a token's partitions must read, byte for byte) and a factory token on release 1."""

    def __init__(self, tmp: Path, base_model, cdrom_mib: int, disk_mib: int, changed: int, seed: int):
        from personalizer.releases.repository import ReleaseRepo
        from tests.releases import nginx
        from tests.releases.conftest import write_release
        from tests.releases.tokenrel import changed as change, payloads, provision, small_model
        from firmware_profiles.usbemu import test_release_key
        from firmware_profiles.usbtoken.image import build_image

        self.tmp = tmp
        self.model = small_model(base_model, cdrom_mib=cdrom_mib + 1, disk_mib=disk_mib, slot_mib=cdrom_mib + 2)
        self.d1 = payloads(self.model, seed, cdrom_bytes=cdrom_mib * MiB, fw_bytes=256 * 1024)
        d2 = change(self.d1, seed + 1, blocks=changed)
        self.payloads = {"1.0.0": self.d1, "2.0.0": d2}
        self.blob_sha: dict[str, dict[str, str]] = {}
        self.blob_len: dict[str, int] = {}
        self.changed_bytes = 0
        self.repo = ReleaseRepo.init(tmp / "repo", tmp / "off", tmp / "on")
        previous = None
        for version, versions, data in (("1.0.0", V1, self.d1), ("2.0.0", V2, d2)):
            blobs = {n: build_image(test_release_key(), kind=n, model=self.model.id, version=v, payload=data[n])
                     for n, v in versions.items()}
            self.blob_sha[version] = {n: _sha(b) for n, b in blobs.items()}
            if previous is not None:      # the changed 1 MiB chunks of the signed files (what a delta must fetch)
                for n, b in blobs.items():
                    a = previous[n]
                    self.changed_bytes += sum(len(b[i:i + MiB]) for i in range(0, len(b), MiB) if a[i:i + MiB] != b[i:i + MiB])
                self.blob_len = {n: len(b) for n, b in blobs.items()}
            rule = () if version == "1.0.0" else (("cdrom>=3", "firmware>=2.1"),)
            self.repo.add_token_release(write_release(tmp / "in" / version, self.model.id, version,
                                                      {n: (versions[n], b) for n, b in blobs.items()}, rule))
            self.repo.sign(tmp / "off")
            self.repo.publish(tmp / "on")
            previous = blobs
        del previous, blobs
        shutil.rmtree(tmp / "in", ignore_errors=True)
        self.factory = tmp / "factory-flash.bin"     # a token on release 1 as it leaves the factory
        _, token = provision(self.model, self.factory, V1, self.d1)
        token.flash.close()
        self.server = nginx.start(self.repo.served, tmp / "nginx")
        self.root = (self.repo.meta_dir / "1.root.json").read_bytes()
        self.metadata_bytes = sum(p.stat().st_size for p in self.repo.meta_dir.glob("*.json"))

    def client(self, state: Path, proxy: str | None = None):
        from agent.updates.client import UpdateClient
        return UpdateClient(state, self.server.url, proxy=proxy, bootstrap_root=self.root, retries=50, timeout_s=10)

    def holding_release_1(self, state: Path, proxy: str | None = None):
        """A client that downloaded release 1 before (what an agent on release 1 keeps)."""
        c = self.client(state, proxy)
        r1, r2 = c.token_releases(self.model.id)
        for comp in r1.components:
            c.download(comp.target)
        return c, r1, r2

    def downloaded_exact(self, c, comp, checked: Path | None = None) -> bool:
        """The target downloads as release 2's file: its SHA-256, or byte for byte the same as ``checked``
        (a copy whose SHA-256 was checked once)."""
        got = c.download(comp.target)
        if checked is None:
            return _file_sha(got) == self.blob_sha["2.0.0"][comp.name]
        return _same_file(got, checked / comp.target)

    def token(self, flash: Path, bus=None):
        """A fresh token on release 1: a clone of the factory token's flash (no copy of its bytes)."""
        from tests.releases.tokenrel import clone
        return clone(self.model, self.factory, flash, bus)

    def close(self) -> None:
        self.server.stop()


def _sha(b: bytes) -> str:
    return hashlib.sha256(b).hexdigest()


def _file_sha(p: Path) -> str:
    h = hashlib.sha256()
    with open(p, "rb") as f:
        while block := f.read(MiB):
            h.update(block)
    return h.hexdigest()


def _same_file(a: Path, b: Path) -> bool:
    if a.stat().st_size != b.stat().st_size:
        return False
    with open(a, "rb") as fa, open(b, "rb") as fb:
        while block := fa.read(16 * MiB):
            if block != fb.read(16 * MiB):
                return False
    return True


_READ: dict[tuple, bytes] = {}


def _read(p: Path) -> bytes:
    """The file's bytes, read once per file (the trials' update states hard-link the files downloaded at
    setup; a file downloaded in a trial is a new file, read anew)."""
    st = p.stat()
    key = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
    if key not in _READ:
        if len(_READ) >= 4:           # a release's 3 files and the old firmware
            _READ.clear()
        _READ[key] = p.read_bytes()
    return _READ[key]


def _files(c, rel) -> dict[str, Path]:
    return {comp.name: c.targets_dir / comp.target for comp in rel.components}


def _install(setup: _Setup, d: Path, c, r1, r2, token_bus, *, progress=None):
    """Install r2 (downloaded by ``c``) on the token; the journal and its file paths as the agent keeps them."""
    from agent.devices.usb import UsbTokenBackend
    from agent.ops.journal import Journal
    from agent.ops.token_release import run_release
    from cns_spec import releases as spec

    bus, token = token_bus
    new, old = _files(c, r2), {"firmware": _files(c, r1)["firmware"]}   # the token keeps its old partitions
    manifest = d / "manifest.json"
    manifest.write_bytes(spec.manifest_json(r2))
    paths = {"manifest": str(manifest), **{f"new:{n}": str(p) for n, p in new.items()},
             **{f"old:{n}": str(p) for n, p in old.items()}}
    backend = UsbTokenBackend(bus, models={setup.model.id: setup.model})

    async def go():
        j = await Journal.open(d / "journal.db")
        try:
            return await run_release(j, lambda: backend.open(token.serial), setup.model, r2,
                                     {n: _read(p) for n, p in new.items()},
                                     {n: _read(p) for n, p in old.items()}, agent_version="1.0",
                                     progress=progress, paths=paths)
        finally:
            await j.close()
    return asyncio.run(go())


def _recover(setup: _Setup, d: Path, token_bus) -> list:
    from agent.devices.usb import UsbTokenBackend
    from agent.ops.journal import Journal
    from agent.ops.token_recovery import recover_token

    bus, token = token_bus
    backend = UsbTokenBackend(bus, models={setup.model.id: setup.model})

    async def go():
        j = await Journal.open(d / "journal.db")
        try:
            return await recover_token(j, lambda: backend.open(token.serial), {setup.model.id: setup.model}), \
                len(await j.open_operations(token.serial))
        finally:
            await j.close()
    return asyncio.run(go())


class Broken(AssertionError):
    """A token left on a mix, or unusable."""


def _reads_as(token, name: str, data: bytes) -> bool:
    """The partition ``name`` reads (through the token's map, from its flash) exactly ``data``."""
    off, _ = token.model.flash.region(token.meta["map"][name])
    if token.meta["images"][name]["length"] != len(data):
        return False
    buf = bytearray(16 * MiB)
    for pos in range(0, len(data), len(buf)):
        n = min(len(buf), len(data) - pos)
        view = memoryview(buf)[:n]
        token.flash.readinto(off + pos, view)
        if not data.startswith(view, pos):      # a memcmp, no copy of either
            return False
    return True


def _partitions(setup: _Setup, token) -> dict[str, str | None]:
    """Partition → the release whose image it reads byte for byte ("1.0.0" | "2.0.0"), or None. The
    release its metadata names is compared first (one read of each partition when it is that one)."""
    from tests.releases.tokenrel import token_set
    have, out = token_set(token), {}
    for name in ("cdrom", "disk"):
        order = ("2.0.0", "1.0.0") if have[name] == V2[name] else ("1.0.0", "2.0.0")
        out[name] = next((v for v in order if _reads_as(token, name, setup.payloads[v][name])), None)
    return out


def _which(setup: _Setup, token) -> str:
    """"1.0.0" | "2.0.0" when every byte is that release's, else raises Broken."""
    from tests.releases.tokenrel import token_set
    have, got = token_set(token), _partitions(setup, token)
    for version, versions in (("1.0.0", V1), ("2.0.0", V2)):
        if have == versions and got["cdrom"] == got["disk"] == version:
            return version
    raise Broken(f"the token is on a mix: {have}")


def _usable(setup: _Setup, token) -> str:
    """Right after a fault, before any repair: a committed set within the constraints, every partition
    reading a whole image of release 1 or 2; or the bootloader (a firmware download was cut)."""
    from tests.releases.tokenrel import token_set
    have, got = token_set(token), _partitions(setup, token)
    if any(k.applies(have) and not k.met(have) for k in _constraints()):
        raise Broken(f"the token runs a set that breaks the release's constraints: {have}")
    for name in ("cdrom", "disk"):
        if got[name] is None:
            raise Broken(f"the token's {name} reads neither release's image")
    return "bootloader" if token.mode == "bootloader" else "usable"


def _constraints():
    from cns_spec import releases as spec
    return (spec.Constraint("cdrom>=3", "firmware>=2.1"),)


def _probe(setup: _Setup, d: Path, state: Path) -> dict:
    """A clean install, counting what the fault draws are drawn over."""
    from firmware_profiles.usbtoken.protocol import REQ_COMMAND

    d.mkdir()
    c, r1, r2 = setup.holding_release_1(state)
    for comp in r2.components:
        c.download(comp.target)
    bus, token = setup.token(d / "flash.bin")
    calls, mgmt = [0], [0]
    orig = token._mgmt_control

    def counting(req, data, length):
        if req == REQ_COMMAND:
            mgmt[0] += 1
        return orig(req, data, length)
    token._mgmt_control = counting
    w0, t0 = token.flash.bytes_written, bus.transfers
    result, _ = _install(setup, d, c, r1, r2, (bus, token), progress=lambda *a: calls.__setitem__(0, calls[0] + 1))
    assert result.state == "done", result.reason
    out = {"progress": calls[0], "flash_bytes": token.flash.bytes_written - w0, "transfers": bus.transfers - t0,
           "mgmt": mgmt[0]}
    token.flash.close()
    return out


def _trial(setup: _Setup, d: Path, seeded: tuple[Path, Path], fault: str, rng: random.Random, probe: dict, proxy,
           phases: Counter | None = None) -> tuple[str, str]:
    """One trial; returns (state right after the fault, release at the end). ``seeded``: an update state holding
    release 1 (a drop trial downloads release 2 into a copy of it, through the faulty proxy) and one holding
    both (the other faults hit the install: release 2 was downloaded and checked once, at setup). The copies
    are hard links: the client replaces metadata files atomically and writes new targets as new files, it
    never writes into a file it kept. ``phases`` adds the seconds spent per phase."""
    from agent.devices.usb import TokenError
    from agent.ops.errors import OperationError, PreconditionError
    from firmware_profiles.usbemu.token import Stall
    from firmware_profiles.usbtoken.protocol import REQ_COMMAND

    phases = phases if phases is not None else Counter()
    t0 = time.perf_counter()
    d.mkdir()
    shutil.copytree(seeded[0] if fault == "drop" else seeded[1], d / "state", copy_function=os.link)
    c = setup.client(d / "state", proxy.url if fault == "drop" else None)
    r1, r2 = c.token_releases(setup.model.id)
    if fault == "drop":
        proxy.cut(responses=1, after_bytes=rng.randrange(1000, 2 * MiB))
        for comp in r2.components:
            if not setup.downloaded_exact(c, comp, seeded[1] / "targets"):
                raise Broken(f"the downloaded {comp.name} is not release 2's")
    t1 = time.perf_counter()
    phases["download"] += t1 - t0
    bus, token = setup.token(d / "flash.bin")
    t2 = time.perf_counter()
    phases["provision"] += t2 - t1
    progress = None
    if fault == "kill":
        at, calls = rng.randrange(1, probe["progress"] + 1), [0]

        def progress(step, done, total):
            calls[0] += 1
            if calls[0] == at:
                raise _Killed()
    elif fault == "tear":
        token.flash.cut_after(rng.randrange(probe["flash_bytes"]))
    elif fault == "unplug":
        bus.unplug_after(rng.randrange(1, probe["transfers"]))
    elif fault == "stall":
        at, seen, orig = rng.randrange(1, probe["mgmt"] + 1), [0], token._mgmt_control

        def control(req, data, length):
            if req == REQ_COMMAND:
                seen[0] += 1
                if seen[0] == at:
                    raise Stall()
            return orig(req, data, length)
        token._mgmt_control = control
    began = True
    t3 = time.perf_counter()
    try:
        _install(setup, d, c, r1, r2, (bus, token), progress=progress)
    except _Killed:
        pass
    except PreconditionError:                 # the fault hit before the operation began (checked below)
        began = False
    except (TokenError, OperationError):      # e.g. a refusal past the point of no return: left open, resumed
        pass
    t4 = time.perf_counter()
    phases["install_under_fault"] += t4 - t3
    token.flash.cut_after(None)
    bus.unplug_after(None)
    token.__dict__.pop("_mgmt_control", None)
    if token not in bus.tokens():
        bus.replug(token)                     # the holder plugs it in again
    after = _usable(setup, token)
    (results, left) = _recover(setup, d, (bus, token))
    if left or any(r.state not in ("done", "undone") for _, r in results):
        raise Broken(f"recovery left the install open: {[(r.state, r.reason) for _, r in results]}")
    if not began and _which(setup, token) == "1.0.0":
        result, _ = _install(setup, d, c, r1, r2, (bus, token))   # the holder (or the schedule) runs it again
        if result.state != "done":
            raise Broken(f"the repeated install ended {result.state}: {result.reason}")
    end = _which(setup, token)
    phases["check_and_recover"] += time.perf_counter() - t4
    token.flash.close()
    shutil.rmtree(d, ignore_errors=True)
    return after, end


_W: dict = {}   # what a forked worker inherits: the setup, the seeded update states, the probe, the deadline


def _one(i: int, seed: int, proxy) -> tuple:
    """Fault trial ``i`` of a run (its fault kind by turn, its draws from its own seeded generator, so a trial
    draws the same whichever worker runs it): (fault, state after, end, broken reason, phases, seconds, pid),
    or None when the run's budget is spent before it starts."""
    if time.time() > _W["deadline"]:
        return None
    fault, phases, t0 = FAULTS[i % len(FAULTS)], Counter(), time.perf_counter()
    try:
        after, end = _trial(_W["setup"], _W["tmp"] / f"t{i}", _W["seeded"], fault, random.Random(seed * 1_000_003 + i),
                            _W["probe"], proxy, phases)
        out = (fault, after, end, None)
    except Broken as exc:
        out = (fault, None, None, f"trial {i} ({fault}): {exc}")
    return (*out, dict(phases), time.perf_counter() - t0, os.getpid())


def _worker_init() -> None:
    """A forked worker: its own fault proxy (the parent's proxy thread is not inherited), nice as the parent."""
    from tests.releases.netfaults import FaultyProxy
    _W["proxy"] = FaultyProxy()


def _worker_trial(args: tuple[int, int]):
    return _one(*args, _W["proxy"])


def _trials(n: int, seed: int, workers: int, proxy) -> list:
    """Run up to ``n`` fault trials, ``workers`` at a time (each a forked process with its own tokens, files
    and proxy; the setup is shared copy-on-write), in trial order of their results."""
    if workers <= 1:
        return [r for r in (_one(i, seed, proxy) for i in range(n)) if r is not None]
    import gc
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor
    from concurrent.futures.process import BrokenProcessPool
    # gc.freeze: a forked worker never collects what it inherited (e.g. the parent's pyusb handles, whose
    # finalizers would call into the parent's libusb context: a segfault seen when forked from pytest).
    # ProcessPoolExecutor: a worker that dies is an error here; multiprocessing.Pool waited forever for it.
    gc.freeze()
    try:
        with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork"),
                                 initializer=_worker_init) as pool:
            results = list(pool.map(_worker_trial, [(i, seed) for i in range(n)], chunksize=1))
    except BrokenProcessPool:
        raise SystemExit("bench token-release: a fault-trial worker process died (its trial has no result); "
                         "run again with --workers 1 to see its error in this process") from None
    finally:
        gc.unfreeze()
    return [r for r in results if r is not None]


def summed(chunks: list[dict]) -> dict:
    """The fault trials of several runs (chunks with distinct seeds) added up: trials, ends by fault kind,
    the states right after the faults, mixed or broken tokens; ``ok`` only when every chunk's is."""
    ends, afters = Counter(), Counter()
    for c in chunks:
        ends.update(c["fault_trials_by_end"])
        afters.update(c["after_fault"])
    kinds = Counter()
    for k, n in ends.items():
        kinds[k.split(":")[0]] += n
    return {"chunks": len(chunks), "seeds": [c.get("seed") for c in chunks],
            "fault_cdrom_mib": sorted({c["fault_cdrom_mib"] for c in chunks}),
            "fault_trials": sum(c["fault_trials"] for c in chunks),
            "fault_trials_by_kind": dict(sorted(kinds.items())),
            "fault_trials_by_end": dict(sorted(ends.items())), "after_fault": dict(afters),
            "tokens_mixed_or_broken": sum(c["tokens_mixed_or_broken"] for c in chunks),
            "fault_trial_s_mean": round(sum(c["fault_trial_s_mean"] * c["fault_trials"] for c in chunks)
                                        / max(1, sum(c["fault_trials"] for c in chunks)), 3),
            "ok": bool(chunks) and all(c["ok"] for c in chunks)}


def _sum_files(paths: list[str]) -> dict:
    import json
    chunks = []
    for p in paths:
        lines = [ln for ln in Path(p).read_text().splitlines() if ln.startswith("{")]
        if not lines:
            raise SystemExit(f"bench token-release --sum: {p} holds no result line (the JSON a run prints last)")
        chunks.append(json.loads(lines[-1]))
    return summed(chunks)


def main(argv: list[str]) -> dict:
    if argv[:1] == ["--sum"]:
        return _sum_files(argv[1:])
    ap = argparse.ArgumentParser(prog="bench token-release")
    ap.add_argument("--cdrom-mib", type=int, default=64, help="CD-ROM image of the clean run (the issue's: 700)")
    ap.add_argument("--disk-mib", type=int, default=16)
    ap.add_argument("--changed", type=int, default=3, help="4 KiB blocks changed in each of CD-ROM and disk")
    ap.add_argument("--faults", type=int, default=20, help="download trials with a dropped connection")
    ap.add_argument("--install-faults", type=int, default=40, help="download + install trials under a random fault")
    ap.add_argument("--fault-cdrom-mib", type=int, default=700, help="CD-ROM image of the fault trials (4: 0.2 s a trial)")
    ap.add_argument("--seed", type=int, default=1, help="payloads, fault draws (distinct seeds: independent chunks)")
    ap.add_argument("--budget-s", type=float, default=600,
                    help="start no fault trial after this many seconds of the run (default 600); fault_trials says "
                         "how many ran")
    ap.add_argument("--model", default="cns-token-ccid")
    ap.add_argument("--workers", type=int, default=1,
                    help="fault trials run at once, each in a forked process on its own token (2 halves the wall "
                         "time on an idle 2-core machine)")
    opts = ap.parse_args(argv)

    import urllib3
    from firmware_profiles.usbemu.token import LINK_EFFICIENCY
    from firmware_profiles.usbtoken import load_token_models
    from tests.releases.netfaults import FaultyProxy

    base = load_token_models()[opts.model]
    rng = random.Random(opts.seed)
    t_start, load_start = time.perf_counter(), os.getloadavg()
    tmp = Path(tempfile.mkdtemp(prefix="bench-token-release-"))
    big = small = proxy = None
    try:
        proxy = FaultyProxy()
        big = _Setup(tmp / "big", base, opts.cdrom_mib, opts.disk_mib, opts.changed, opts.seed)
        # 1. download
        c, r1, r2 = big.holding_release_1(tmp / "clean")
        b0, t0 = c.fetcher.bytes_received, time.perf_counter()
        ok = all(big.downloaded_exact(c, comp) for comp in r2.components)
        clean_bytes, clean_s = c.fetcher.bytes_received - b0, time.perf_counter() - t0
        http = urllib3.PoolManager()
        t0, raw = time.perf_counter(), 0
        for comp in r2.components:
            raw += len(http.request("GET", c._url_of(c.info(comp.target))).data)
        raw_full_s = time.perf_counter() - t0
        drops = []
        for i in range(opts.faults):
            fc, _, fr2 = big.holding_release_1(tmp / f"drop-{i}", proxy.url)
            fb0 = fc.fetcher.bytes_received
            good = True
            for comp in fr2.components:
                proxy.cut(responses=1, after_bytes=rng.randrange(1000, MiB + 1000))
                good &= big.downloaded_exact(fc, comp)
            drops.append((fc.fetcher.bytes_received - fb0, good))
            shutil.rmtree(tmp / f"drop-{i}", ignore_errors=True)
        target = 1.1 * big.changed_bytes + big.metadata_bytes
        # 2. install
        bus, token = big.token(tmp / "big-flash.bin")
        link0, bytes0, t0 = token.link_seconds, token.link_bytes, time.perf_counter()
        result, sent = _install(big, tmp, c, r1, r2, (bus, token))
        install_s, install_link_s = time.perf_counter() - t0, token.link_seconds - link0
        installed = result.state == "done" and _which(big, token) == "2.0.0"
        rate = big.model.link_bits_per_second * LINK_EFFICIENCY / 8
        whole = sum(big.blob_len.values())
        changed_link_bytes = big.blob_len["firmware"] + 2 * opts.changed * 4096
        out = {
            "cdrom_mib": opts.cdrom_mib, "disk_mib": opts.disk_mib, "changed_blocks_per_image": opts.changed,
            "changed_bytes": big.changed_bytes, "metadata_bytes": big.metadata_bytes,
            "downloaded_target_bytes_clean": clean_bytes,
            "downloaded_bytes_clean_with_metadata": clean_bytes + big.metadata_bytes,
            "ratio_clean": round(clean_bytes / big.changed_bytes, 3), "target_ratio": 1.1, "target_bytes": int(target),
            "download_s_clean": round(clean_s, 3), "raw_get_full_release_s": round(raw_full_s, 3),
            "raw_get_changed_s_estimate": round(raw_full_s * big.changed_bytes / raw, 3),
            "drop_trials": len(drops), "drop_trials_exact": sum(g for _, g in drops),
            "downloaded_bytes_dropped_max": max((b for b, _ in drops), default=0),
            "install_s": round(install_s, 3), "install_link_s_modelled": round(install_link_s, 3),
            "install_link_bytes": token.link_bytes - bytes0, "install_image_bytes_sent": sent,
            "raw_link_changed_s": round(changed_link_bytes / rate, 3),
            "raw_link_whole_release_s": round(whole / rate, 3),
            "link_bits_per_second": big.model.link_bits_per_second, "units": "bytes, seconds",
        }
        token.flash.close()
        big.close()
        big = None
        # 3. fault trials
        t_setup = time.perf_counter()
        small = _Setup(tmp / "small", base, opts.fault_cdrom_mib, 2, opts.changed, opts.seed + 7)
        seeded = tmp / "seeded"
        small.holding_release_1(seeded)
        both = tmp / "seeded-both"          # release 1 and 2 downloaded and checked, once
        shutil.copytree(seeded, both, copy_function=os.link)
        sc = small.client(both)
        if not all(small.downloaded_exact(sc, comp) for comp in sc.token_releases(small.model.id)[1].components):
            raise Broken("release 2 did not download exactly")
        probe = _probe(small, tmp / "probe", tmp / "probe-state")
        setup_s = time.perf_counter() - t_setup
        ends, afters, broken, phases, per_trial, pids = Counter(), Counter(), [], Counter(), [], set()
        _W.update(setup=small, tmp=tmp, seeded=(seeded, both), probe=probe,
                  deadline=time.time() - (time.perf_counter() - t_start) + (opts.budget_s or float("inf")))
        if opts.workers > 1:              # each worker makes its own proxy: this one's thread is not forked
            proxy.close()
            proxy = None
        t_trials = time.perf_counter()
        for fault, after, end, bad, trial_phases, seconds, pid in _trials(opts.install_faults, opts.seed,
                                                                           opts.workers, proxy):
            pids.add(pid)
            if bad is None:
                ends[f"{fault}:{end}"] += 1
                afters[after] += 1
            else:
                broken.append(bad)
            phases.update(trial_phases)
            per_trial.append(seconds)
        trials_s = time.perf_counter() - t_trials
        n = max(1, len(per_trial))
        out.update({
            "fault_setup_s": round(setup_s, 2), "fault_probe": probe,
            "fault_trial_s_mean": round(sum(per_trial) / n, 3), "fault_trial_s_max": round(max(per_trial, default=0), 3),
            "fault_trial_s_by_phase_mean": {k: round(v / n, 3) for k, v in sorted(phases.items())},
            "fault_trials": len(per_trial), "fault_trials_asked": opts.install_faults, "seed": opts.seed,
            "workers": opts.workers, "fault_trial_processes": len(pids), "fault_trials_wall_s": round(trials_s, 1),
            "fault_trials_per_hour": round(3600 * len(per_trial) / max(trials_s, 1e-9), 1),
            "fault_cdrom_mib": opts.fault_cdrom_mib,
            "fault_trials_by_end": dict(sorted(ends.items())), "after_fault": dict(afters),
            "tokens_mixed_or_broken": len(broken), "broken": broken[:5],
            "loadavg_start": [round(x, 2) for x in load_start], "loadavg_end": [round(x, 2) for x in os.getloadavg()],
            "wall_s": round(time.perf_counter() - t_start, 1),
            "ok": (ok and installed and clean_bytes + out["metadata_bytes"] <= target and all(g for _, g in drops)
                   and not broken),
        })
        return out
    finally:
        _READ.clear()
        for x in (big, small, proxy):
            if x is not None:
                x.close()
        shutil.rmtree(tmp, ignore_errors=True)

