"""Token release download (issue 14 item 6, download part): bytes fetched against the changed chunks, time against raw.

Builds two releases with personalizer.releases (firmware + CD-ROM image + disk content; the second
changes the firmware and a few scattered blocks of the CD-ROM and disk), serves them with nginx
(tests.releases.nginx) and downloads release 2 with the agent's client seeded by release 1 (what the
agent keeps), first cleanly, then under ``--faults`` randomized dropped connections (a proxy that cuts
each response at a random byte). Reports bytes received against the changed chunks plus metadata
(target: ≤ 1.1×), the time against a raw GET of the same changed bytes, and that every faulted trial
ended with the exact release 2 bytes. Options: --cdrom-mib (64; the issue's figure is 700), --disk-mib,
--changed (blocks changed per image), --faults (trials), --seed. Installing on a token (h-e) is not part.
"""
from __future__ import annotations

import argparse
import hashlib
import random
import shutil
import tempfile
import time
from pathlib import Path

MiB = 1 << 20


def _image(size: int, seed: int) -> bytearray:
    rng = random.Random(seed)
    return bytearray(rng.randbytes(size))


def main(argv: list[str]) -> dict:
    ap = argparse.ArgumentParser(prog="bench token-release")
    ap.add_argument("--cdrom-mib", type=int, default=64)
    ap.add_argument("--disk-mib", type=int, default=16)
    ap.add_argument("--changed", type=int, default=3)
    ap.add_argument("--faults", type=int, default=20)
    ap.add_argument("--seed", type=int, default=1)
    opts = ap.parse_args(argv)

    import urllib3
    from agent.updates.client import UpdateClient
    from personalizer.releases.repository import ReleaseRepo
    from tests.releases import nginx
    from tests.releases.conftest import write_release
    from tests.releases.netfaults import FaultyProxy

    rng = random.Random(opts.seed)
    tmp = Path(tempfile.mkdtemp(prefix="bench-token-release-"))
    srv = proxy = None
    try:
        fw1, fw2 = bytes(_image(MiB // 2, 1)), bytes(_image(MiB // 2, 2))
        cd1, disk1 = _image(opts.cdrom_mib * MiB, 3), _image(opts.disk_mib * MiB, 4)
        cd2, disk2 = bytearray(cd1), bytearray(disk1)
        changed_chunks = set()
        for name, img in (("cdrom", cd2), ("disk", disk2)):
            for _ in range(opts.changed):
                at = rng.randrange(len(img) - 4096)
                img[at:at + 4096] = rng.randbytes(4096)
                changed_chunks.add((name, at // MiB))
                changed_chunks.add((name, (at + 4095) // MiB))
        cd2, disk2 = bytes(cd2), bytes(disk2)
        repo = ReleaseRepo.init(tmp / "repo", tmp / "off", tmp / "on")
        for version, parts in (("1.0.0", {"firmware": ("2.1", fw1), "cdrom": ("3.0", bytes(cd1)),
                                          "disk": ("1.0", bytes(disk1))}),
                               ("1.1.0", {"firmware": ("2.2", fw2), "cdrom": ("3.1", cd2), "disk": ("1.1", disk2)})):
            repo.add_token_release(write_release(tmp / "in" / version, "tok1", version, parts))
            repo.sign(tmp / "off")
            repo.publish(tmp / "on")
        srv = nginx.start(repo.served, tmp / "nginx")
        proxy = FaultyProxy()
        root = (repo.meta_dir / "1.root.json").read_bytes()
        want = {"firmware": fw2, "cdrom": cd2, "disk": disk2}
        changed_bytes = len(fw2) + len(changed_chunks) * MiB

        def trial(name: str, fault: bool) -> tuple[int, float, bool]:
            state = tmp / name
            if state.exists():
                shutil.rmtree(state)
            c = UpdateClient(state, srv.url, proxy=proxy.url, bootstrap_root=root, retries=50, timeout_s=10)
            rels = c.token_releases("tok1")
            for comp in rels[0].components:           # what the agent holds from release 1
                c.download(comp.target)
            start_bytes = c.fetcher.bytes_received
            t0 = time.perf_counter()
            ok = True
            for comp in rels[1].components:
                if fault:
                    proxy.cut(responses=1, after_bytes=rng.randrange(1000, MiB + 1000))
                ok &= hashlib.sha256(c.download(comp.target).read_bytes()).digest() == \
                    hashlib.sha256(want[comp.name]).digest()
            return c.fetcher.bytes_received - start_bytes, time.perf_counter() - t0, ok

        clean_bytes, clean_s, clean_ok = trial("clean", False)
        http = urllib3.PoolManager()
        t0 = time.perf_counter()
        raw = 0
        for path in sorted((repo.targets_dir / "components").rglob("*")):
            if path.is_file() and path.name.split(".", 1)[1] in ("firmware-2.2", "cdrom-3.1", "disk-1.1"):
                rel = path.relative_to(repo.served)
                body = http.request("GET", f"{srv.url}/{rel}").data
                raw += len(body)
        raw_full_s = time.perf_counter() - t0
        raw_changed_s = raw_full_s * changed_bytes / raw
        faulted = [trial(f"fault-{i}", True) for i in range(opts.faults)]
        metadata = sum(p.stat().st_size for p in (repo.meta_dir).glob("*.json"))
        target = 1.1 * changed_bytes + metadata
        return {
            "cdrom_mib": opts.cdrom_mib, "disk_mib": opts.disk_mib, "changed_chunks": len(changed_chunks),
            "changed_bytes": changed_bytes, "metadata_bytes": metadata,
            "downloaded_target_bytes_clean": clean_bytes, "downloaded_bytes_clean_with_metadata": clean_bytes + metadata, "ratio_clean": round(clean_bytes / changed_bytes, 3),
            "download_s_clean": round(clean_s, 3), "raw_get_changed_s_estimate": round(raw_changed_s, 3),
            "raw_get_full_release_s": round(raw_full_s, 3),
            "fault_trials": len(faulted), "fault_trials_exact": sum(ok for _, _, ok in faulted),
            "downloaded_bytes_faulted_max": max((b for b, _, _ in faulted), default=0),
            "target_bytes": int(target),
            "ok": clean_ok and clean_bytes + metadata <= target and all(ok for _, _, ok in faulted),
        }
    finally:
        if proxy:
            proxy.close()
        if srv:
            srv.stop()
        shutil.rmtree(tmp, ignore_errors=True)
