"""The central IT status page as server-rendered HTML: one ``StatusView`` in, one escaped document out.

``render(view)`` shows CA health (operational, why not, breaker, service window, response times),
the outbox's queue depth per lane, fleet counts (stations, connected, devices, certificates expiring,
by chamber, model and agent version, the stations seen last) and the rollouts in progress. Every
value goes through ``html.escape`` (agent versions, device models and rollout names are what a
station or an operator typed); the page has no script and refreshes itself with a meta tag.
``refusal(status, title, text)`` is the small page for a refused or failed request.

Pure: imports the outbox's ``StatusFigures`` and the fleet store's ``Counts`` (data classes) only.
"""
from __future__ import annotations

import datetime as _dt
import html
from dataclasses import dataclass

from personalizer.fleet.store import Counts
from personalizer.outbox.metrics import StatusFigures

REFRESH_SECONDS = 30
OK_COLOUR, BAD_COLOUR = "#1b7f3b", "#b3261e"   # the banner: green when the CA is operational, red otherwise
STYLE = f"""
body {{ font-family: sans-serif; margin: 0; color: #1d1d1d; background: #fff; }}
header {{ padding: 16px 24px; color: #fff; }}
header.ok {{ background: {OK_COLOUR}; }}
header.bad {{ background: {BAD_COLOUR}; }}
header h1 {{ margin: 0; font-size: 22px; }}
main {{ padding: 8px 24px; }}
section {{ margin: 12px 0 20px; }}
h2 {{ font-size: 17px; border-bottom: 1px solid #ccc; }}
table {{ border-collapse: collapse; }}
th, td {{ text-align: left; padding: 3px 14px 3px 0; font-size: 14px; }}
td.n {{ text-align: right; }}
"""


@dataclass(frozen=True)
class StatusView:
    generated_at: float
    ca: StatusFigures | None           # None: the CA status could not be read (``ca_error`` says why)
    fleet: Counts | None               # None: the daemon runs without the fleet
    streams_here: int = 0              # fleet streams open on this daemon process
    rollouts: tuple[dict, ...] = ()    # ``Rollouts.status()`` of the running and paused rollouts
    ca_error: str = ""


def _e(value) -> str:
    return html.escape(str(value), quote=True)


def _when(ts: float | None) -> str:
    if not ts:
        return "-"
    return _dt.datetime.fromtimestamp(ts, _dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


def _table(cid: str, head: tuple[str, ...], rows, numeric: tuple[int, ...] = ()) -> str:
    """A table; ``head`` of empty strings: a key/value table without a heading row."""
    out = [f'<table id="{cid}">']
    if any(head):
        out.append("<tr>" + "".join(f"<th>{_e(h)}</th>" for h in head) + "</tr>")
    for row in rows:
        out.append("<tr>" + "".join(f'<td class="n">{_e(v)}</td>' if i in numeric else f"<td>{_e(v)}</td>"
                                    for i, v in enumerate(row)) + "</tr>")
    if not rows:
        out.append(f'<tr><td colspan="{len(head)}">none</td></tr>')
    return "".join(out) + "</table>"


def _ca(view: StatusView) -> tuple[bool, str]:
    ca = view.ca
    if ca is None:
        return False, ('<section id="ca"><h2>Certification authority</h2><p id="ca-state">unknown: '
                       f"{_e(view.ca_error or 'the CA status could not be read')}</p></section>")
    rows = [("state", "operational" if ca.operational else "NOT operational"),
            ("detail", ca.detail or "-"), ("connector", ca.connector or "-"),
            ("planned maintenance now", "yes" if ca.in_maintenance else "no"),
            ("expected back", _when(ca.reactivation_at)), ("circuit breaker", ca.breaker_state or "-"),
            ("service window", "open" if ca.window_open else "closed"),
            ("window changes at", _when(ca.window_changes_at)),
            ("issued in the last 10 minutes", ca.issued_recent),
            ("mean issuance time", f"{ca.mean_issue_ms:.0f} ms")]
    kinds = [(k.kind, f"{k.p50_ms:.0f}", f"{k.p95_ms:.0f}", k.samples) for k in ca.per_kind]
    planned = [(w.id, _when(w.starts_at), _when(w.ends_at), w.reason) for w in ca.planned]
    body = ('<section id="ca"><h2>Certification authority</h2>' + _table("ca-health", ("", ""), rows) +
            "<h2>CA response times (last 10 minutes)</h2>" +
            _table("ca-response", ("request", "p50 ms", "p95 ms", "answers"), kinds, (1, 2, 3)) +
            "<h2>Planned CA maintenance</h2>" + _table("ca-planned", ("id", "from", "to", "reason"), planned) +
            "</section>"
            '<section id="queue"><h2>Queue depth per lane</h2>' +
            _table("queue-depth", ("lane", "waiting"), sorted(ca.queue_depth.items()), (1,)) + "</section>")
    return ca.operational, body


def _fleet(view: StatusView) -> str:
    f = view.fleet
    if f is None:
        return '<section id="fleet"><h2>Fleet</h2><p>this daemon runs without the fleet</p></section>'
    totals = [("stations", f.stations), ("connected", f.connected), ("streams on this instance", view.streams_here),
              ("devices", f.devices), (f"certificates expiring within {f.within_days} days", f.expiring)]
    recent = [(s.station_id, s.chamber, s.agent_version or "-", s.device_count, _when(s.last_seen),
               "yes" if s.connected else "no") for s in f.recent]
    return ('<section id="fleet"><h2>Fleet</h2>' + _table("fleet-totals", ("", ""), totals, (1,)) +
            "<h2>Stations by chamber</h2>" +
            _table("fleet-chambers", ("chamber", "stations", "connected"), f.by_chamber, (1, 2)) +
            "<h2>Devices by model</h2>" + _table("fleet-models", ("model", "devices"), f.by_model, (1,)) +
            "<h2>Agent versions</h2>" +
            _table("fleet-versions", ("agent version", "stations"), f.by_agent_version, (1,)) +
            "<h2>Stations seen last</h2>" +
            _table("fleet-recent", ("station", "chamber", "agent", "devices", "last seen", "connected"),
                   recent, (3,)) + "</section>")


def _rollouts(view: StatusView) -> str:
    rows = []
    for r in view.rollouts:
        c, total = r["counts"], r["total"]
        done = sum(c.get(k, 0) for k in ("succeeded", "failed", "rejected", "timed_out"))
        rows.append((r["spec"].name, r["rollout_id"], r["state"], r["spec"].release, f"{done}/{total}",
                     c.get("succeeded", 0), c.get("failed", 0) + c.get("rejected", 0) + c.get("timed_out", 0),
                     c.get("sent", 0), r["group"], f"{r['rate']:g}/min", r["reason"] or "-"))
    return ('<section id="rollouts"><h2>Rollouts in progress</h2>' +
            _table("rollouts-active", ("name", "id", "state", "release", "done", "succeeded", "failed", "in flight",
                                       "group", "rate", "reason"), rows, (5, 6, 7, 8)) + "</section>")


def _document(title: str, header_class: str, header: str, body: str, *, refresh: bool) -> str:
    meta = f'<meta http-equiv="refresh" content="{REFRESH_SECONDS}">' if refresh else ""
    return (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">{meta}<title>{_e(title)}</title>'
            f'<style>{STYLE}</style></head><body><header class="{header_class}"><h1 id="banner">{header}</h1>'
            f"</header><main>{body}</main></body></html>")


def render(view: StatusView) -> str:
    ok, ca = _ca(view)
    banner = "CA operational" if ok else "CA NOT operational"
    stamp = f'<p id="generated">as of {_e(_when(view.generated_at))}; refreshes every {REFRESH_SECONDS} s</p>'
    return _document("CNS personalizer status", "ok" if ok else "bad", _e(banner),
                     stamp + ca + _fleet(view) + _rollouts(view), refresh=True)


def refusal(status: int, title: str, text: str) -> str:
    return _document(f"{status} {title}", "bad", _e(f"{status} {title}"), f'<p id="refusal">{_e(text)}</p>',
                     refresh=False)
