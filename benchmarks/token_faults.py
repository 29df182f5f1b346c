"""Randomized tear, unplug and kill faults across token partition and firmware updates: bricked tokens must be 0.

Each trial (``tests/tokens/faults.py``) takes a fresh emulated token (sparse 1 GiB flash,
in-process pyusb bus), starts a CD-ROM partition update or a DFU firmware refresh through the
agent's step-engine plans, injects one fault (``tear``: power cut after a drawn number of flash
bytes, uniform over the operation's writes or near the start of one of them; ``unplug``: the token pulled at a random USB transfer; ``kill``: the
agent dies at a progress point), replugs the token and checks it before any repair (CD-ROM
image hash old or new; firmware old, new, or the bootloader found by its ids; in runtime mode the
chip signs through the token's reader), then runs the operation again as the agent does on the
next insert: it must end done, nothing left open, the chip signing through its reader (a
PIN-verified signature checked against the chip's certificate). Models alternate (CCID and HID).

Usage: scripts/bench token-faults [--trials N] [--seed S]   (default 10,000 trials, the issue's
figure: about 15 minutes on one core here; CI runs a bounded sample, tests/tokens/test_bench_tokens.py)
"""
from __future__ import annotations

import argparse
import os
import random
import tempfile
import time
from pathlib import Path

from firmware_profiles.usbtoken import load_token_models
from tests.tokens import faults
from tests.tokens.faults import FAULTS, firmware_trial, partition_tear_points, partition_trial
from tests.tokens.helpers import firmware


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="scripts/bench token-faults")
    ap.add_argument("--trials", type=int, default=10_000)
    ap.add_argument("--seed", type=int, default=1)
    return ap


def main(argv: list[str]) -> dict:
    args = parser().parse_args(argv)
    rng = random.Random(args.seed)
    models = list(load_token_models().values())
    counts: dict[str, int] = {}
    bricked: list[str] = []
    signatures0 = faults.SIGNATURES[0]
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(dir="/dev/shm" if os.path.isdir("/dev/shm") else None) as tmp:
        work = Path(tmp)
        totals, blobs = {}, {}
        for m in models:
            (work / f"probe-{m.id}").mkdir()
            totals[m.id] = partition_tear_points(work / f"probe-{m.id}", m)
            blobs[m.id] = firmware(m)
        for i in range(args.trials):
            model = models[i % len(models)]
            op = "partition" if (i // len(models)) % 2 == 0 else "firmware"
            fault = FAULTS[(i // (2 * len(models))) % len(FAULTS)]
            d = work / f"t{i}"
            d.mkdir()
            try:
                if op == "partition":
                    after = partition_trial(d, model, fault, rng, totals[model.id])
                else:
                    after = firmware_trial(d, model, fault, rng, blobs[model.id])
            except Exception as exc:  # Bricked, or anything our code did not expect: both count
                after = "bricked"
                bricked.append(f"trial {i} {model.id} {op} {fault}: {type(exc).__name__}: {exc}")
            key = f"{op}/{fault}/{after}"
            counts[key] = counts.get(key, 0) + 1
            for p in sorted(d.iterdir(), reverse=True):  # keep /dev/shm small: a trial's flash is sparse but not free
                p.unlink() if p.is_file() else None
    elapsed = time.perf_counter() - t0
    return {"benchmark": "token-faults", "trials": args.trials, "seed": args.seed, "bricked": len(bricked),
            "bricked_examples": bricked[:5], "outcomes": dict(sorted(counts.items())),
            "chip_signatures_verified": faults.SIGNATURES[0] - signatures0,
            "seconds": round(elapsed, 1), "trials_per_second": round(args.trials / elapsed, 1),
            "ok": not bricked}
