"""The fleet's Prometheus figures, on the daemon's metrics endpoint beside the CA's.

``FleetFigures`` counts in the daemon's loop (hellos by path, polls, refusals by status code, command
reports by state); ``FleetCollector`` reads them, the hub's connected streams and the last snapshot the
rollout engine took of the store (stations known, rollouts by state, targets of active rollouts by
state), from the metrics server's thread without touching the database. Imports prometheus_client.

Families: ``cns_fleet_streams_connected``, ``cns_fleet_stations_known``, ``cns_fleet_hellos_total{path}``,
``cns_fleet_polls_total``, ``cns_fleet_refusals_total{code}``, ``cns_fleet_command_reports_total{state}``,
``cns_fleet_rollouts{state}``, ``cns_fleet_rollout_targets{rollout_id,name,state}``,
``cns_fleet_hello_seconds{stage}`` (a histogram of each accepted stream hello: ``wait`` from the
handler's start to the hello read, ``record`` the store's write of it).
"""
from __future__ import annotations

import collections
from dataclasses import dataclass, field

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

HELLO_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


@dataclass
class Histogram:
    """Observations counted per upper bound (``HELLO_BUCKETS``), in the loop; read from the metrics thread."""
    counts: list = field(default_factory=lambda: [0] * (len(HELLO_BUCKETS) + 1))
    total: float = 0.0

    def observe(self, seconds: float) -> None:
        i = next((k for k, b in enumerate(HELLO_BUCKETS) if seconds <= b), len(HELLO_BUCKETS))
        self.counts[i] += 1
        self.total += seconds

    def buckets(self) -> list[tuple[str, int]]:
        out, n = [], 0
        for b, c in zip((*map(str, HELLO_BUCKETS), "+Inf"), self.counts):
            n += c
            out.append((b, n))
        return out


@dataclass
class FleetFigures:
    hellos: collections.Counter = field(default_factory=collections.Counter)
    polls: int = 0
    refusals: collections.Counter = field(default_factory=collections.Counter)
    reports: collections.Counter = field(default_factory=collections.Counter)
    hello_seconds: dict = field(default_factory=lambda: {"wait": Histogram(), "record": Histogram()})

    def to_dict(self) -> dict:
        return {"hellos": dict(self.hellos), "polls": self.polls, "refusals": dict(self.refusals),
                "reports": dict(self.reports)}

    def add(self, d: dict) -> "FleetFigures":
        """These figures plus another process's (``to_dict``), as a new object."""
        return FleetFigures(self.hellos + collections.Counter(d.get("hellos", {})), self.polls + d.get("polls", 0),
                            self.refusals + collections.Counter(d.get("refusals", {})),
                            self.reports + collections.Counter(d.get("reports", {})))


@dataclass(frozen=True)
class Snapshot:
    stations: int = 0
    rollouts: dict = field(default_factory=dict)          # state -> count
    targets: tuple = ()                                   # (rollout_id, name, state, count) of active rollouts


class FleetCollector:
    def __init__(self, figures: FleetFigures, hub, snapshot, helpers=None):
        """``helpers``: () -> (streams, [figures dicts]) of the daemon's helper processes, last read."""
        self._figures, self._hub, self._snapshot = figures, hub, snapshot   # snapshot: () -> Snapshot
        self._helpers = helpers or (lambda: (0, []))

    def collect(self):
        f, snap = self._figures, self._snapshot()
        streams, others = self._helpers()
        for d in others:
            f = f.add(d)
        g = GaugeMetricFamily("cns_fleet_streams_connected", "fleet streams connected to this daemon now")
        g.add_metric([], len(self._hub) + streams)
        yield g
        g = GaugeMetricFamily("cns_fleet_stations_known", "stations in the inventory")
        g.add_metric([], snap.stations)
        yield g
        c = CounterMetricFamily("cns_fleet_hellos", "hellos accepted", labels=["path"])
        for path in ("stream", "poll"):
            c.add_metric([path], f.hellos[path])
        yield c
        c = CounterMetricFamily("cns_fleet_polls", "Fleet.Poll calls answered")
        c.add_metric([], f.polls)
        yield c
        c = CounterMetricFamily("cns_fleet_refusals", "fleet calls and messages refused", labels=["code"])
        for code, n in sorted(f.refusals.items()):
            c.add_metric([code], n)
        yield c
        c = CounterMetricFamily("cns_fleet_command_reports", "command reports by resulting state", labels=["state"])
        for state, n in sorted(f.reports.items()):
            c.add_metric([state], n)
        yield c
        g = GaugeMetricFamily("cns_fleet_rollouts", "rollouts by state", labels=["state"])
        for state in ("running", "paused", "cancelled", "aborted", "completed"):
            g.add_metric([state], snap.rollouts.get(state, 0))
        yield g
        g = GaugeMetricFamily("cns_fleet_rollout_targets", "devices of active rollouts by state",
                              labels=["rollout_id", "name", "state"])
        for rid, name, state, n in snap.targets:
            g.add_metric([rid, name, state], n)
        yield g
        h = HistogramMetricFamily("cns_fleet_hello_seconds", "stream hellos: wait for it, record it",
                                  labels=["stage"])
        for stage, hist in f.hello_seconds.items():
            h.add_metric([stage], hist.buckets(), hist.total)
        yield h
