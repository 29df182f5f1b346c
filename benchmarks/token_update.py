"""Partition update on the emulated token: bytes sent vs blocks changed, beside zsync and casync; write time vs the link.

Three updates of a CD-ROM image (small change: one file edited in place; large change: a
quarter of the files replaced; no change) run through the agent's plan
(``agent.ops.token_update``) against an emulated token over the pure-Python pyusb bus. For
each: blocks changed (4 KiB blocks of the new image that differ from the old at the same
offset), the image bytes the agent sent (WRITE payloads), every byte over the modelled link
(management frames with their 8-byte setup packets: hashes, writes, switch, confirm), and what
zsync (4 KiB blocks, fetched over HTTP range requests from a loopback server) and casync
(content-defined chunks, the chunks missing from the old image's store) would transfer for the
same update, computed in the same run. Targets: image bytes ≤ 1.05 × changed blocks, and no
more than zsync or casync.

Then the time to write a ``--write-mb`` image (default 700, the tender's CD-ROM; the model is
widened to hold two such slots, on a sparse flash) into a blank slot: modelled link seconds under
the model's ``[link]`` table (``LinkModel``, SCHEMA.md §9: every transfer the bus carries charged by
its type, USB 2.0 high speed: a control transfer ≥ one 125 µs microframe, its data stage in 64-byte
packets; bulk in 512-byte packets, 13 a microframe, plus one microframe per transfer) against the raw
link time: the image bytes at the link's bulk ceiling (13 × 512 bytes per microframe, 53,248,000 B/s).
Target ≤ 1.2 ×. The transfers and modelled seconds per type are reported, and, from the same model,
what the same blocks would cost sent in control requests (one 4 KiB request + answer per block, as
before the bulk endpoint). The emulator does not sleep for the modelled time, so the host's wall time
is reported beside it (the emulator's and the agent's CPU time, not the link's).

Usage: scripts/bench token-update [--size-mb N] [--write-mb N] [--seed S]
"""
from __future__ import annotations

import argparse
import asyncio
import dataclasses
import http.server
import os
import random
import shutil
import subprocess
import tempfile
import threading
import time
from pathlib import Path

from agent.devices.usb import UsbTokenBackend
from agent.ops.journal import Journal
from agent.ops.token_update import run_update
from firmware_profiles.usbemu import EmulatedUsbBus, build_cdrom_image, make_token, test_release_key
from firmware_profiles.usbtoken import load_token_models
from firmware_profiles.usbtoken.image import build_image

BLOCK = 4096


def _files(rng: random.Random, n: int, size: int) -> dict[str, bytes]:
    return {f"PKG{i:03d}.BIN": rng.randbytes(size) for i in range(n)}


def _changed_blocks(old: bytes, new: bytes) -> int:
    n = -(-len(new) // BLOCK)
    return sum(1 for i in range(n) if new[i * BLOCK:(i + 1) * BLOCK] != old[i * BLOCK:(i + 1) * BLOCK])


class _RangeHandler(http.server.SimpleHTTPRequestHandler):
    """Serves files with single and multiple byte ranges (zsync needs 206 / multipart/byteranges)."""

    def log_message(self, *a):
        pass

    def do_GET(self):
        path = Path(self.translate_path(self.path))
        if not path.is_file():
            return self.send_error(404)
        data = path.read_bytes()
        rng = self.headers.get("Range")
        self.server.fetched += 0  # type: ignore[attr-defined]
        if not rng:
            self.server.fetched += len(data)  # type: ignore[attr-defined]
            self.send_response(200)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            return self.wfile.write(data)
        spans = []
        for part in rng.split("=", 1)[1].split(","):
            a, b = part.strip().split("-")
            spans.append((int(a), min(int(b), len(data) - 1)))
        self.server.fetched += sum(b - a + 1 for a, b in spans)  # type: ignore[attr-defined]
        if len(spans) == 1:
            a, b = spans[0]
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {a}-{b}/{len(data)}")
            self.send_header("Content-Length", str(b - a + 1))
            self.end_headers()
            return self.wfile.write(data[a:b + 1])
        boundary = "CNSBOUNDARY"
        body = b"".join(f"\r\n--{boundary}\r\nContent-Type: application/octet-stream\r\nContent-Range: bytes "
                        f"{a}-{b}/{len(data)}\r\n\r\n".encode() + data[a:b + 1] for a, b in spans)
        body += f"\r\n--{boundary}--\r\n".encode()
        self.send_response(206)
        self.send_header("Content-Type", f"multipart/byteranges; boundary={boundary}")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


def _zsync(work: Path, old: bytes, new: bytes) -> dict | None:
    if not (shutil.which("zsync") and shutil.which("zsyncmake")):
        return None
    d = work / "zsync"
    d.mkdir()
    (d / "old.iso").write_bytes(old)
    (d / "new.iso").write_bytes(new)
    handler = lambda *a, **k: _RangeHandler(*a, directory=str(d), **k)  # noqa: E731
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    srv.fetched = 0  # type: ignore[attr-defined]
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{srv.server_address[1]}"
        subprocess.run(["zsyncmake", "-b", str(BLOCK), "-u", f"{url}/new.iso", "-o", str(d / "new.zsync"),
                        str(d / "new.iso")], check=True, capture_output=True)
        control = (d / "new.zsync").stat().st_size
        srv.fetched = 0  # type: ignore[attr-defined]
        subprocess.run(["zsync", "-q", "-i", str(d / "old.iso"), "-o", str(d / "out.iso"), f"{url}/new.zsync"],
                       check=True, capture_output=True, cwd=d)
        ok = (d / "out.iso").read_bytes() == new
        return {"fetched_bytes": srv.fetched - control, "control_file_bytes": control, "result_ok": ok}  # type: ignore[attr-defined]
    finally:
        srv.shutdown()


def _casync(work: Path, old: bytes, new: bytes) -> dict | None:
    if not shutil.which("casync"):
        return None
    d = work / "casync"
    d.mkdir()
    (d / "old.iso").write_bytes(old)
    (d / "new.iso").write_bytes(new)
    for name in ("old", "new"):
        subprocess.run(["casync", "make", f"--store={d / (name + '.castr')}", str(d / f"{name}.caibx"),
                        str(d / f"{name}.iso")], check=True, capture_output=True)

    def chunks(store: Path) -> dict[str, int]:
        return {p.name: p.stat().st_size for p in store.rglob("*.cacnk")}
    old_c, new_c = chunks(d / "old.castr"), chunks(d / "new.castr")
    missing = set(new_c) - set(old_c)
    return {"fetched_bytes": sum(new_c[c] for c in missing), "chunks_fetched": len(missing),
            "chunks_total": len(new_c), "index_bytes": (d / "new.caibx").stat().st_size}


async def _update(work: Path, model, old_iso: bytes, new_iso: bytes | None, tag: str) -> dict:
    bus = EmulatedUsbBus()
    token = make_token(model, work / f"{tag}.flash", cdrom=old_iso)
    bus.plug(token)
    blob = build_image(test_release_key(), kind="cdrom", model=model.id, version="2.0.0",
                       payload=new_iso if new_iso is not None else old_iso)
    j = await Journal.open(work / f"{tag}.db", synchronous="OFF")
    link0, t0, w0 = token.link_bytes, token.link_seconds, time.perf_counter()
    kinds0, payload0 = dict(token.link_transfers), dict(token.link_payload)
    try:
        result, stats = await run_update(j, lambda: UsbTokenBackend(bus).open(token.serial), model, "cdrom", blob)
        state = result.state
    except Exception as exc:  # the no-change update is refused before it starts
        state, stats = f"refused: {exc}", None
    finally:
        await j.close()
    out = {"state": state, "link_bytes": token.link_bytes - link0, "link_seconds": token.link_seconds - t0,
           "wall_seconds": round(time.perf_counter() - w0, 3), "usb_transfers": bus.transfers,
           "transfers_by_type": {k: token.link_transfers[k] - kinds0[k] for k in kinds0},
           "payload_bytes_by_type": {k: token.link_payload[k] - payload0[k] for k in payload0}}
    if stats is not None:
        out.update(image_bytes_sent=stats.sent_bytes, blocks_sent=stats.sent_blocks,
                   blocks_copied_on_token=stats.copied_blocks, blocks_skipped=stats.skipped_blocks,
                   blocks=stats.blocks)
    else:
        out.update(image_bytes_sent=0, blocks_sent=0)
    token.flash.close()
    return out


def main(argv: list[str]) -> dict:
    ap = argparse.ArgumentParser(prog="scripts/bench token-update")
    ap.add_argument("--size-mb", type=int, default=16, help="size of the CD-ROM image for the delta runs")
    ap.add_argument("--write-mb", type=int, default=700, help="size of the image for the write-time run (the tender's CD-ROM)")
    ap.add_argument("--seed", type=int, default=13)
    args = ap.parse_args(argv)
    rng = random.Random(args.seed)
    model = load_token_models()["cns-token-ccid"]
    n_files, fsize = 32, args.size_mb * (1 << 20) // 32
    base = _files(rng, n_files, fsize)
    old_iso = build_cdrom_image(base)
    small = dict(base)
    edited = bytearray(small["PKG007.BIN"])
    edited[5000:5100] = rng.randbytes(100)
    small["PKG007.BIN"] = bytes(edited)
    large = dict(base)
    for i in range(0, n_files, 4):
        large[f"PKG{i:03d}.BIN"] = rng.randbytes(fsize)
    scenarios = {"small": build_cdrom_image(small), "large": build_cdrom_image(large), "none": None}
    out: dict = {"benchmark": "token-update", "image_bytes": len(old_iso), "block_bytes": BLOCK, "scenarios": {}}
    ok = True
    with tempfile.TemporaryDirectory(dir="/dev/shm" if os.path.isdir("/dev/shm") else None) as tmp:
        work = Path(tmp)
        for name, new_iso in scenarios.items():
            sub = work / name
            sub.mkdir()
            ours = asyncio.run(_update(sub, model, old_iso, new_iso, name))
            target = new_iso if new_iso is not None else old_iso
            changed = _changed_blocks(old_iso, target)
            row = {"changed_blocks": changed, "changed_bytes": changed * BLOCK, "ours": ours,
                   "zsync": _zsync(sub, old_iso, target), "casync": _casync(sub, old_iso, target)}
            row["ours_vs_changed"] = round(ours["image_bytes_sent"] / max(1, changed * BLOCK), 3)
            row["metadata_bytes"] = ours["link_bytes"] - ours["image_bytes_sent"]
            peers = [row[p]["fetched_bytes"] for p in ("zsync", "casync") if row[p]]
            row["meets_target"] = (ours["image_bytes_sent"] <= 1.05 * changed * BLOCK + 0
                                   and all(ours["image_bytes_sent"] <= p for p in peers))
            ok &= row["meets_target"]
            out["scenarios"][name] = row
        # write time: a blank slot, every block sent
        wm = dataclasses.replace(model, id=model.id, flash=dataclasses.replace(
            model.flash, size_bytes=(2 * args.write_mb + 300) << 20, cdrom_bytes=(args.write_mb + 1) << 20,
            disk_bytes=16 << 20, reserved_bytes=(args.write_mb + 2) * 2 << 20,
            slot_bytes=(args.write_mb + 2) << 20))
        r1 = random.Random(1)   # randbytes takes at most 256 MiB at once: 1 MiB pieces
        big = build_cdrom_image({"BIG.BIN": b"".join(r1.randbytes(1 << 20) for _ in range(args.write_mb))})
        tiny = build_cdrom_image({"README.TXT": b"factory"})
        sub = work / "write"
        sub.mkdir()
        w = asyncio.run(_update(sub, wm, tiny, big, "write"))
        link = model.link
        raw = len(big) / link.raw_bytes_per_second
        if w["state"] != "done":
            raise SystemExit(f"the {args.write_mb} MB write ended {w['state']}")
        # the same blocks in control requests (OP_WRITE: op + region + block + 4 KiB, then the 1-byte answer)
        control_pipe = w["blocks_sent"] * (link.control_seconds(1 + 5 + BLOCK) + link.control_seconds(1))
        out["write"] = {"image_bytes": len(big), "link_speed": model.link_speed, "state": w["state"],
                        "link_model": dataclasses.asdict(link),
                        "raw_link_bytes_per_second": link.raw_bytes_per_second,
                        "modelled_seconds": round(w["link_seconds"], 3),
                        "raw_link_seconds": round(raw, 3), "ratio": round(w["link_seconds"] / raw, 4),
                        "host_wall_seconds": w["wall_seconds"],
                        "host_mb_per_s": round(len(big) / (1 << 20) / max(w["wall_seconds"], 1e-9), 1),
                        "usb_transfers": w["usb_transfers"], "transfers_by_type": w["transfers_by_type"],
                        "payload_bytes_by_type": w["payload_bytes_by_type"],
                        "blocks_sent": w["blocks_sent"],
                        "same_blocks_on_the_control_pipe": {"modelled_seconds": round(control_pipe, 3),
                                                            "ratio": round(control_pipe / raw, 4)},
                        "units": "seconds, bytes, bytes/s"}
        ok &= out["write"]["ratio"] <= 1.2
    out["ok"] = bool(ok)
    return out
