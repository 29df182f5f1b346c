"""Where an issuance's latency goes: per-request phase histograms (issue 17 item 6, ``bench issue --phases``).

The daemon under test runs with ``CNS_PHASE_TRACE`` (``personalizer.store.phases``): each process writes,
at stop, the wall-clock start and end of ``enqueue`` and ``complete_issue`` per request id and, over
PostgreSQL, its group commits. ``Clients`` wraps the benchmark's blocking call and notes each request's
send and answer times. ``summary`` joins both by request id (same machine, same wall clock) into phases:

- ``intake``: client send → enqueue starts (TLS/gRPC in, validation);
- ``enqueue``: the request's first commit (request + outbox + audit rows), its wait for a shared
  transaction included (``enqueue_queue_wait`` where the store's group commit carried it);
- ``sign``: enqueue done → complete_issue starts (hand-off to the relay, the CA's signature);
- ``complete``: complete_issue (certificate + request + outbox + audit + CA rows), commit wait included:
  ``complete_queue_wait`` (waiting for a shared transaction to start) and the shared transaction itself;
- ``answer``: complete_issue done → the client has the answer (notify, gRPC out).

Each phase as p50/p90/p99/max in ms; also the same phases for the requests whose total is in the slowest 1 %
(what a p99 request spends where), and the group commits' batch sizes and durations. Imports nothing of ours.
"""
from __future__ import annotations

import json
import statistics
import threading
import time
from pathlib import Path

PHASES = ("intake", "enqueue", "sign", "complete", "answer", "total")


class Clients:
    """``call`` wrapped: the send and answer wall times of every request (by ``request_id``) while on."""

    def __init__(self, call):
        self._call, self._lock, self.on = call, threading.Lock(), False
        self.times: dict[str, tuple[float, float]] = {}

    def __call__(self, req):
        start = time.time()
        out = self._call(req)
        if self.on:
            with self._lock:
                self.times[req.request_id] = (start, time.time())
        return out


def _hist(values: list[float]) -> dict:
    if not values:
        return {"n": 0}
    v = sorted(values)

    def pct(p: float) -> float:
        return round(v[min(len(v) - 1, int(p * len(v)))] * 1000.0, 2)
    return {"n": len(v), "p50": pct(0.50), "p90": pct(0.90), "p99": pct(0.99), "max": round(v[-1] * 1000.0, 2),
            "mean": round(statistics.fmean(v) * 1000.0, 2)}


def _load(folder: Path, counters: dict) -> tuple[dict, list]:
    calls: dict[str, dict[str, tuple]] = {}
    commits: list = []
    counters.clear()
    for f in sorted(folder.glob("phases-*.json")):
        data = json.loads(f.read_text())
        for rid, call, start, end, timing in data["events"]:
            calls.setdefault(rid, {})[call] = (start, end, timing)
        commits.extend(data.get("group_commits") or [])
        for k, v in (data.get("counters") or {}).items():
            counters[k] = counters.get(k, 0) + v
        counters["seconds_open"] = max(counters.get("seconds_open", 0), data.get("seconds", 0))
        for k, v in (data.get("calls") or {}).items():
            counters[f"store.{k}"] = counters.get(f"store.{k}", 0) + v
    return calls, commits


def summary(clients: Clients, folder: Path) -> dict:
    counters: dict = {}
    calls, commits = _load(folder, counters)
    rows = []
    for rid, (sent, answered) in clients.times.items():
        c = calls.get(rid, {})
        if "enqueue" not in c or "complete_issue" not in c:
            continue
        e0, e1, et = c["enqueue"]
        c0, c1, ct = c["complete_issue"]
        row = {"intake": e0 - sent, "enqueue": e1 - e0, "sign": c0 - e1, "complete": c1 - c0,
               "answer": answered - c1, "total": answered - sent}
        for name, timing in (("enqueue", et), ("complete", ct)):
            if timing:   # (queued, shared transaction start, end)
                row[f"{name}_queue_wait"] = timing[1] - timing[0]
                row[f"{name}_transaction"] = timing[2] - timing[1]
        rows.append(row)
    out: dict = {"requests_joined": len(rows), "requests_sent": len(clients.times),
                 "issuances_traced": sum(1 for c in calls.values() if "complete_issue" in c)}
    if counters:   # the daemon's whole run (warm-up and scaling included): per traced issuance
        n = max(1, out["issuances_traced"])
        out["daemon_totals"] = {k: round(v, 3) for k, v in sorted(counters.items())}
        out["database_per_issuance"] = {k: round(v / n, 3) for k, v in sorted(counters.items())
                                        if k != "seconds_open"}
    keys = list(PHASES) + [f"{n}_{k}" for n in ("enqueue", "complete") for k in ("queue_wait", "transaction")]
    out["phases_ms"] = {k: _hist([r[k] for r in rows if k in r]) for k in keys if any(k in r for r in rows)}
    if rows:
        cut = sorted(r["total"] for r in rows)[int(0.99 * len(rows))]
        slow = [r for r in rows if r["total"] >= cut]
        out["slowest_1pct_mean_ms"] = {k: round(statistics.fmean([r[k] for r in slow if k in r]) * 1000.0, 2)
                                       for k in keys if any(k in r for r in slow)}
    if commits:
        sizes = [c[2] for c in commits]
        out["group_commits"] = {"n": len(commits), "callers_mean": round(statistics.fmean(sizes), 2),
                                "callers_max": max(sizes), "duration_ms": _hist([c[1] - c[0] for c in commits])}
    return out
