"""CA health figures (EM.2): response time per request kind and load, over a sliding window.

``CAMetrics`` keeps (time, kind, milliseconds, ok) samples for ``window``
seconds and answers p50/p95 per kind and the number of requests the CA
answered. The relay records every CA call; GetCAStatus and the Prometheus
collector read the same object, so both show the same figures. The clock is
injected. ``MetricsServer`` serves them on HTTP (prometheus-client) from a
private registry.

The rest of GetCAStatus (operational, maintenance and reactivation time,
planned maintenance, live queue depth per lane) is known only to the daemon:
``MetricsServer(status=...)`` takes a callable returning ``StatusFigures``
(the daemon builds it from the same sources as GetCAStatus, in its event
loop) and the collector exposes those; without it the collector falls back
to the relay's last-known values kept here. Imports prometheus_client and
nothing of ours.

Exposed families: ``cns_ca_operational``, ``cns_ca_maintenance``,
``cns_ca_reactivation_timestamp_seconds``, ``cns_ca_planned_maintenance_start_timestamp_seconds{id}``
/ ``..._end_...{id}``, ``cns_ca_response_ms{kind,quantile}``,
``cns_ca_response_samples{kind}``, ``cns_ca_requests_window`` (load over the
``WINDOW_SECONDS`` sliding window: the last 10 minutes), ``cns_queue_depth{lane}``,
``cns_ca_breaker_open{state}``, ``cns_service_window_open``, ``cns_ca_calls_total{kind,result}``.
"""
from __future__ import annotations

import collections
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

log = logging.getLogger(__name__)
WINDOW_SECONDS = 600.0
MAX_SAMPLES = 100_000


@dataclass(frozen=True)
class KindFigures:
    kind: str
    p50_ms: float
    p95_ms: float
    samples: int


def _quantile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return 0.0
    return sorted_values[min(len(sorted_values) - 1, int(q * len(sorted_values)))]


@dataclass(frozen=True)
class PlannedWindow:
    id: str
    starts_at: float    # seconds since the epoch
    ends_at: float
    reason: str = ""


@dataclass(frozen=True)
class StatusFigures:
    """One consistent reading of the CA status, as GetCAStatus answers it (``ca_status.read_ca_status``)."""

    operational: bool
    in_maintenance: bool
    reactivation_at: float | None
    planned: tuple[PlannedWindow, ...]
    per_kind: tuple[KindFigures, ...]
    load: int
    queue_depth: dict[str, int]
    breaker_state: str
    window_open: bool
    connector: str = ""
    detail: str = ""
    window_changes_at: float | None = None   # when the service window next opens or closes
    issued_recent: int = 0                   # issuances in the last stats window (10 minutes)
    mean_issue_ms: float = 0.0


class CAMetrics:
    def __init__(self, *, window: float = WINDOW_SECONDS, clock: Callable[[], float] = time.time):
        self.window = window
        self._clock = clock
        self._samples: collections.deque = collections.deque(maxlen=MAX_SAMPLES)
        self.totals: collections.Counter = collections.Counter()     # (kind, result) since start
        self.queue_depth: dict[str, int] = {}
        self.breaker_state = "closed"
        self.in_maintenance = False
        self.window_open = True

    def record(self, kind: str, ms: float, ok: bool) -> None:
        self._samples.append((self._clock(), kind, ms, ok))
        self.totals[(kind, "ok" if ok else "error")] += 1

    def _recent(self) -> list[tuple]:
        cutoff = self._clock() - self.window
        while self._samples and self._samples[0][0] < cutoff:
            self._samples.popleft()
        return list(self._samples)

    def per_kind(self) -> list[KindFigures]:
        by: dict[str, list[float]] = collections.defaultdict(list)
        for _, kind, ms, _ok in self._recent():
            by[kind].append(ms)
        out = []
        for kind, values in sorted(by.items()):
            values.sort()
            out.append(KindFigures(kind, _quantile(values, 0.50), _quantile(values, 0.95), len(values)))
        return out

    def load(self) -> int:
        return len(self._recent())

    def totals_now(self) -> collections.Counter:
        """(kind, result) -> CA calls since the daemon started."""
        return collections.Counter(self.totals)

    def close(self) -> None:
        """Nothing to release here (``SharedCAMetrics`` closes its file)."""


class _Collector:
    def __init__(self, m: CAMetrics, status: Callable[[], StatusFigures | None] | None = None):
        self._m = m
        self._status = status

    def _figures(self) -> StatusFigures:
        got = None
        if self._status is not None:
            try:
                got = self._status()
            except Exception:   # a scrape must never fail; fall back to the relay's last values
                log.exception("CA status for the metrics endpoint failed; serving last-known figures")
        if got is not None:
            return got
        m = self._m
        return StatusFigures(operational=m.breaker_state == "closed" and not m.in_maintenance,
                             in_maintenance=m.in_maintenance, reactivation_at=None, planned=(),
                             per_kind=tuple(m.per_kind()), load=m.load(), queue_depth=dict(m.queue_depth),
                             breaker_state=m.breaker_state, window_open=m.window_open)

    def collect(self):
        f = self._figures()
        yield GaugeMetricFamily("cns_ca_operational", "1 when the CA is operational (as GetCAStatus.operational)",
                                value=int(f.operational))
        yield GaugeMetricFamily("cns_ca_maintenance", "1 during planned CA maintenance", value=int(f.in_maintenance))
        yield GaugeMetricFamily("cns_ca_reactivation_timestamp_seconds",
                                "expected end of the current CA outage or maintenance; 0 if none",
                                value=f.reactivation_at or 0)
        start = GaugeMetricFamily("cns_ca_planned_maintenance_start_timestamp_seconds",
                                  "start of a current or future planned CA maintenance window", labels=["id"])
        end = GaugeMetricFamily("cns_ca_planned_maintenance_end_timestamp_seconds",
                                "end of a current or future planned CA maintenance window", labels=["id"])
        for w in f.planned:
            start.add_metric([w.id], w.starts_at)
            end.add_metric([w.id], w.ends_at)
        yield start
        yield end
        rt = GaugeMetricFamily("cns_ca_response_ms", "CA response time over the sliding window",
                               labels=["kind", "quantile"])
        samples = GaugeMetricFamily("cns_ca_response_samples", "CA answers per kind over the sliding window",
                                    labels=["kind"])
        for k in f.per_kind:
            rt.add_metric([k.kind, "0.5"], k.p50_ms)
            rt.add_metric([k.kind, "0.95"], k.p95_ms)
            samples.add_metric([k.kind], k.samples)
        yield rt
        yield samples
        yield GaugeMetricFamily("cns_ca_requests_window", "CA requests answered over the sliding window "
                                f"({int(self._m.window)} s)", value=f.load)
        depth = GaugeMetricFamily("cns_queue_depth", "requests waiting in the outbox", labels=["lane"])
        for lane, n in sorted(f.queue_depth.items()):
            depth.add_metric([lane], n)
        yield depth
        br = GaugeMetricFamily("cns_ca_breaker_open", "1 when the circuit breaker towards the CA is not closed",
                               labels=["state"])
        br.add_metric([f.breaker_state], 0 if f.breaker_state == "closed" else 1)
        yield br
        yield GaugeMetricFamily("cns_service_window_open", "1 when the issuance service window is open",
                                value=int(f.window_open))
        total = CounterMetricFamily("cns_ca_calls", "CA calls since start", labels=["kind", "result"])
        for (kind, result), n in sorted(self._m.totals_now().items()):
            total.add_metric([kind, result], n)
        yield total


class MetricsServer:
    """Prometheus text exposition on ``host:port`` (a thread of prometheus-client's)."""

    def __init__(self, metrics: CAMetrics, *, host: str, port: int,
                 status: Callable[[], StatusFigures | None] | None = None):
        self.registry = CollectorRegistry()
        self.registry.register(_Collector(metrics, status))
        self._host, self._port = host, port
        self._server = None
        self.port = 0

    def start(self) -> int:
        self._server, _thread = start_http_server(self._port, addr=self._host, registry=self.registry)
        self.port = self._server.server_address[1]
        log.info("metrics on http://%s:%d/metrics", self._host, self.port)
        return self.port

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
