"""The CA-status read model: one reading of the CA's state for GetCAStatus and for Prometheus.

``read_ca_status`` combines the connector's health, the relay (planned maintenance, circuit breaker,
service window, response-time metrics) and the store (queue depth, recent issuances) into one
``StatusFigures``. The gRPC servicer maps it to ``CAStatusResponse``; the metrics endpoint exposes the
same object, so the two views cannot disagree. Imports the outbox's metrics and the store protocol; no
grpc, no proto.
"""
from __future__ import annotations

from personalizer.ca.base import CAConnector
from personalizer.outbox.metrics import KindFigures, PlannedWindow, StatusFigures
from personalizer.store.protocol import RequestStore

CAStatus = StatusFigures


async def read_ca_status(*, ca: CAConnector, relay, store: RequestStore, stats_window: float) -> StatusFigures:
    """``relay`` is the daemon's Relay, or None when none runs (then the CA's own health is the answer)."""
    health = await ca.health()
    count, mean_ms = await store.recent_issuance_stats(stats_window)
    depth = await store.queue_depth()
    operational, detail = health.operational, health.detail
    reactivation = health.reactivation_at.timestamp() if health.reactivation_at else None
    if relay is None:
        return StatusFigures(operational=operational, in_maintenance=False, reactivation_at=reactivation,
                             planned=(), per_kind=(), load=0, queue_depth=depth, breaker_state="",
                             window_open=False, connector=health.connector, detail=detail, issued_recent=count,
                             mean_issue_ms=mean_ms)
    now = relay.now_dt()
    m = relay.active_maintenance()
    if m is not None:
        operational, reactivation = False, m.ends_at.timestamp()
        detail = f"planned maintenance: {m.reason}" if m.reason else "planned maintenance"
    elif relay.breaker.state != "closed":
        operational = False
        detail = f"CA unreachable (circuit {relay.breaker.state}): {relay.last_health_detail}".rstrip(": ")
    change = relay.calendar.next_change(now)
    metrics = relay.metrics
    return StatusFigures(
        operational=operational, in_maintenance=m is not None, reactivation_at=reactivation,
        planned=tuple(PlannedWindow(w.id, w.starts_at.timestamp(), w.ends_at.timestamp(), w.reason)
                      for w in relay.maintenance if w.ends_at > now),
        per_kind=tuple(KindFigures(f.kind, f.p50_ms, f.p95_ms, f.samples) for f in metrics.per_kind()),
        load=metrics.load(), queue_depth=depth, breaker_state=relay.breaker.state,
        window_open=relay.calendar.is_open(now), connector=health.connector, detail=detail,
        window_changes_at=change.timestamp() if change else None, issued_recent=count, mean_issue_ms=mean_ms)
