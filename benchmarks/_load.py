"""The closed-loop load generator shared by the issuance benchmarks, and process CPU accounting.

``drive(call, requests, concurrency)`` runs ``concurrency`` client threads in
this process; each takes the next request, makes one blocking call
(``call(request)``: a gRPC stub call or an HTTPS POST, both release the GIL
while waiting) and records its latency. The same generator drives the
personalizer and CFSSL, so neither side gets a cheaper client. Failures are
counted, never raised: ``call`` raising ``TimeoutError`` counts as a timeout,
anything else as an error.

``cpu_seconds(pid)`` is utime + stime of a process and its live descendants
from /proc (Linux), so a server with worker processes is counted whole.
Imports nothing of ours.
"""
from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

_TICK = os.sysconf("SC_CLK_TCK")


@dataclass
class Run:
    wall_s: float
    latencies_s: list[float] = field(default_factory=list)
    errors: int = 0
    timeouts: int = 0
    client_cpu_s: float = 0.0
    server_cpu_s: float = 0.0
    first_error: str = ""

    @property
    def ok(self) -> int:
        return len(self.latencies_s)

    def figures(self, prefix: str = "") -> dict:
        lat = sorted(self.latencies_s)
        n = max(1, self.ok)
        return {
            f"{prefix}rate": round(self.ok / self.wall_s, 1),
            f"{prefix}p50_latency_ms": round(percentile(lat, 0.50) * 1000, 2),
            f"{prefix}p99_latency_ms": round(percentile(lat, 0.99) * 1000, 2),
            f"{prefix}cpu_ms_per_certificate": round(self.server_cpu_s / n * 1000, 3),
            f"{prefix}cores_used": round(self.server_cpu_s / self.wall_s, 2),
            f"{prefix}client_cpu_ms_per_certificate": round(self.client_cpu_s / n * 1000, 3),
            f"{prefix}issued": self.ok, f"{prefix}errors": self.errors, f"{prefix}timeouts": self.timeouts,
        }


def percentile(sorted_values: Sequence[float], q: float) -> float:
    if not sorted_values:
        return float("nan")
    return sorted_values[min(len(sorted_values) - 1, int(q * len(sorted_values)))]


def descendants(pid: int) -> list[int]:
    """``pid`` and its live descendant processes (Linux /proc)."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        try:
            for task in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{task}/children") as f:
                    todo.extend(int(c) for c in f.read().split())
        except OSError:
            continue
    return out


def cpu_seconds(pid: int) -> float:
    """CPU time (user + system) of ``pid`` and its live descendants, in seconds."""
    total = 0
    for p in descendants(pid):
        try:
            with open(f"/proc/{p}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])      # utime, stime (fields 14, 15 of stat(5))
    return total / _TICK


def drive(call: Callable[[object], None], requests: Sequence, concurrency: int, *, server_pid: int | None = None,
          name: str = "bench-client") -> Run:
    """Send ``requests`` through ``call`` from ``concurrency`` threads; wall time, latencies, CPU, failures."""
    lock = threading.Lock()
    items = list(reversed(requests))
    latencies: list[float] = []
    failures = {"errors": 0, "timeouts": 0, "first": ""}

    def worker():
        while True:
            with lock:
                if not items:
                    return
                req = items.pop()
            t0 = time.perf_counter()
            try:
                call(req)
            except TimeoutError:
                with lock:
                    failures["timeouts"] += 1
                continue
            except Exception as exc:   # counted and reported, the run goes on
                with lock:
                    failures["errors"] += 1
                    failures["first"] = failures["first"] or f"{type(exc).__name__}: {exc}"[:300]
                continue
            dt = time.perf_counter() - t0
            with lock:
                latencies.append(dt)

    threads = [threading.Thread(target=worker, name=f"{name}-{i}", daemon=True) for i in range(concurrency)]
    srv0 = cpu_seconds(server_pid) if server_pid else 0.0
    cli0, start = time.process_time(), time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    run = Run(wall_s=wall, latencies_s=latencies, errors=failures["errors"], timeouts=failures["timeouts"],
              client_cpu_s=time.process_time() - cli0, first_error=failures["first"])
    if server_pid:
        run.server_cpu_s = cpu_seconds(server_pid) - srv0
    return run
