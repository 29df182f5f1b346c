"""Card insert → agent event latency through pcscd, and APDU round trip pcscd+vpcd vs in-process.

Starts a private pcscd (tests.support.pcscd) and runs the agent's PC/SC monitor
in this process. A card (the in-process emulator of the first CNS profile) is
inserted over vpcd N times; for each insert we time the socket connect → the
agent's CARD_INSERTED event (ATR identified) and → CARD_READ (serial and
holder read over PC/SC). Then the same READ BINARY is timed through
pcscd+vpcd and directly on the in-process card. Options: --inserts N (≥ 50
by default), --apdus N.

The vpcd card side sets TCP_QUICKACK (firmware_profiles/emulator/vpcd.py): without it a
delayed ACK against vpcd's two-write framing costs ~40 ms per APDU.
"""
from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import threading
import time
from pathlib import Path


def _pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(p / 100 * (len(ordered) - 1))))]


def _ms(values: list[float]) -> dict:
    return {"median_ms": round(statistics.median(values) * 1000, 3), "p95_ms": round(_pct(values, 95) * 1000, 3),
            "max_ms": round(max(values) * 1000, 3), "n": len(values)}


def main(argv: list[str]) -> dict:
    ap = argparse.ArgumentParser(prog="bench detect")
    ap.add_argument("--inserts", type=int, default=50)
    ap.add_argument("--apdus", type=int, default=300)
    opts = ap.parse_args(argv)

    from tests.support.pcscd import start_pcscd

    work = Path(tempfile.mkdtemp(prefix="bench-detect-"))
    pcscd = start_pcscd(work / "pcscd")
    os.environ["PCSCLITE_CSOCK_NAME"] = str(pcscd.socket_path)  # before the first PC/SC context
    try:
        return _run(pcscd, opts)
    finally:
        pcscd.stop()


def _run(pcscd, opts) -> dict:
    import firmware_profiles
    from firmware_profiles.emulator import EmulatedCard

    from agent.card.apdu import INS, Apdu
    from agent.card.cns import CnsSession
    from agent.devices import Catalog, DeviceRegistry, EventKind, PcscContext, PcscMonitor, PcscTransport
    from tests.support.vpcd import insert

    models = firmware_profiles.load_models()
    model = models[sorted(models)[0]]
    catalog = Catalog(models)
    registry = DeviceRegistry()
    reader = pcscd.reader_names[0]
    arrived: dict[EventKind, float] = {}
    cond = threading.Condition()

    def on_event(event) -> None:
        if event.reader.name == reader:
            with cond:
                arrived[event.kind] = time.perf_counter()
                cond.notify_all()

    registry.subscribe(on_event)
    monitor = PcscMonitor(registry, catalog)
    monitor.start()
    inserted: list[float] = []
    read: list[float] = []
    failures = 0
    card = EmulatedCard(model)
    try:
        for _ in range(opts.inserts):
            with cond:
                arrived.clear()
            t0 = time.perf_counter()
            bridge = insert(pcscd.vpcd_address(0), card)
            with cond:
                ok = cond.wait_for(lambda: EventKind.CARD_READ in arrived or EventKind.CARD_ERROR in arrived, 10)
            if ok and EventKind.CARD_READ in arrived:
                inserted.append(arrived[EventKind.CARD_INSERTED] - t0)
                read.append(arrived[EventKind.CARD_READ] - t0)
            else:
                failures += 1
            with cond:
                arrived.clear()
            bridge.stop()
            with cond:
                cond.wait_for(lambda: EventKind.CARD_REMOVED in arrived, 10)

        # APDU round trip: the same READ BINARY both ways
        with cond:
            arrived.clear()
        bridge = insert(pcscd.vpcd_address(0), card)
        with cond:
            cond.wait_for(lambda: EventKind.CARD_READ in arrived, 10)
        read_cmd = Apdu(0, INS.READ_BINARY, 0, 0, le=16).encode()
        ctx = PcscContext()
        with PcscTransport(ctx, reader) as transport:
            CnsSession(transport, model).select(model.paths.id_carta)
            pcsc_times = []
            for _ in range(opts.apdus):
                t = time.perf_counter()
                transport.transmit(read_cmd)
                pcsc_times.append(time.perf_counter() - t)
        ctx.close()
        bridge.stop()
        local = EmulatedCard(model)
        local.power_on()
        from tests.support.emulated import EmulatedTransport
        lt = EmulatedTransport(local)
        CnsSession(lt, model).select(model.paths.id_carta)
        local_times = []
        for _ in range(opts.apdus):
            t = time.perf_counter()
            lt.transmit(read_cmd)
            local_times.append(time.perf_counter() - t)
    finally:
        monitor.stop()
    pcsc_med = statistics.median(pcsc_times)
    local_med = statistics.median(local_times)
    return {
        "ok": failures == 0 and len(read) >= 1,
        "model": model.id,
        "inserts": opts.inserts,
        "failed_inserts": failures,
        "insert_to_card_inserted_event": _ms(inserted) if inserted else None,
        "insert_to_card_read_event": _ms(read) if read else None,
        "apdu_round_trip_pcscd_vpcd": _ms(pcsc_times),
        "apdu_round_trip_in_process": {"median_us": round(local_med * 1e6, 2), "p95_us": round(_pct(local_times, 95) * 1e6, 2)},
        "apdu_ratio_pcscd_over_in_process": round(pcsc_med / local_med, 1) if local_med else None,
        "units": "ms / us as named; ratio of medians",
        "note": "insert latency is bounded below by pcscd polling the vpcd driver for presence (~400 ms period)",
    }
