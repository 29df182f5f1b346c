"""CA health figures (EM.2): response time per request kind and load, over a sliding window.

``CAMetrics`` keeps (time, kind, milliseconds, ok) samples for ``window``
seconds and answers p50/p95 per kind and the number of requests the CA
answered. The relay records every CA call; GetCAStatus and the Prometheus
collector read the same object, so both show the same figures. The clock is
injected. ``MetricsServer`` serves them on HTTP (prometheus-client) from a
private registry. Imports prometheus_client and nothing of ours.
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


class _Collector:
    def __init__(self, m: CAMetrics):
        self._m = m

    def collect(self):
        m = self._m
        rt = GaugeMetricFamily("cns_ca_response_ms", "CA response time over the sliding window",
                               labels=["kind", "quantile"])
        for f in m.per_kind():
            rt.add_metric([f.kind, "0.5"], f.p50_ms)
            rt.add_metric([f.kind, "0.95"], f.p95_ms)
        yield rt
        yield GaugeMetricFamily("cns_ca_requests_window", "CA requests answered over the sliding window",
                                value=m.load())
        depth = GaugeMetricFamily("cns_queue_depth", "requests waiting in the outbox", labels=["lane"])
        for lane, n in sorted(m.queue_depth.items()):
            depth.add_metric([lane], n)
        yield depth
        br = GaugeMetricFamily("cns_ca_breaker_open", "1 when the circuit breaker towards the CA is not closed",
                               labels=["state"])
        br.add_metric([m.breaker_state], 0 if m.breaker_state == "closed" else 1)
        yield br
        yield GaugeMetricFamily("cns_ca_maintenance", "1 during planned CA maintenance", value=int(m.in_maintenance))
        yield GaugeMetricFamily("cns_service_window_open", "1 when the issuance service window is open",
                                value=int(m.window_open))
        total = CounterMetricFamily("cns_ca_calls", "CA calls since start", labels=["kind", "result"])
        for (kind, result), n in sorted(m.totals.items()):
            total.add_metric([kind, result], n)
        yield total


class MetricsServer:
    """Prometheus text exposition on ``host:port`` (a thread of prometheus-client's)."""

    def __init__(self, metrics: CAMetrics, *, host: str, port: int):
        self.registry = CollectorRegistry()
        self.registry.register(_Collector(metrics))
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
