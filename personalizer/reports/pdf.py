"""The monthly report as a PDF: tables of the figures (reportlab) and three charts (matplotlib, Agg).

``render(report) -> bytes`` takes the dict of ``monthly.build``. Charts: volumes of the month (bars),
processing time per request kind against the previous months (mean, and p95 of this month), queue
depth over the month (line). Chart colours are fixed (``VOLUME_COLOUR`` …) so a test can find them
in the rendered page. Imports only matplotlib and reportlab.
"""
from __future__ import annotations

import io

import matplotlib

matplotlib.use("Agg")   # no display: the daemon and CI have none
import matplotlib.pyplot as plt  # noqa: E402
from reportlab.lib import colors  # noqa: E402
from reportlab.lib.pagesizes import A4  # noqa: E402
from reportlab.lib.styles import getSampleStyleSheet  # noqa: E402
from reportlab.lib.units import cm  # noqa: E402
from reportlab.platypus import Image, Paragraph, SimpleDocTemplate, Spacer, Table, TableStyle  # noqa: E402

VOLUME_COLOUR = "#1565c0"     # blue bars
CURRENT_COLOUR = "#c62828"    # red: this month's processing time
QUEUE_COLOUR = "#2e7d32"      # green line
KIND_LABEL = {"issue": "issuance", "renew": "renewal", "suspend": "suspension", "reactivate": "reactivation",
              "revoke": "revocation"}


def _png(fig) -> io.BytesIO:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    buf.seek(0)
    return buf


def _volumes_chart(r: dict) -> io.BytesIO:
    labels = ["devices", "certificates", "renewals", "suspensions", "reactivations", "revocations", "failed"]
    sc = r["status_changes"]
    values = [r["issued"]["devices"], r["issued"]["certificates_total"], r["renewals"]["total"], sc["suspensions"],
              sc["reactivations"], sc["revocations"], r["failed"]["total"]]
    fig, ax = plt.subplots(figsize=(7, 2.8))
    ax.bar(labels, values, color=VOLUME_COLOUR)
    ax.set_title(f"Volumes, {r['month']}")
    ax.tick_params(axis="x", labelrotation=20)
    for i, v in enumerate(values):
        ax.annotate(str(v), (i, v), ha="center", va="bottom", fontsize=8)
    return _png(fig)


def _times_chart(r: dict) -> io.BytesIO:
    kinds = list(KIND_LABEL)
    months = list(reversed(r["previous"]))
    fig, ax = plt.subplots(figsize=(7, 2.8))
    width = 0.8 / (len(months) + 2)
    greys = ["#bdbdbd", "#9e9e9e", "#757575", "#616161"]
    for j, prev in enumerate(months):
        ax.bar([i + j * width for i in range(len(kinds))],
               [prev["processing_seconds"].get(k, {}).get("mean") or 0 for k in kinds], width,
               color=greys[j % len(greys)], label=f"{prev['month']} mean")
    cur = r["processing_seconds"]
    n = len(months)
    ax.bar([i + n * width for i in range(len(kinds))], [cur[k]["mean"] or 0 for k in kinds], width,
           color=CURRENT_COLOUR, label=f"{r['month']} mean")
    ax.bar([i + (n + 1) * width for i in range(len(kinds))], [cur[k]["p95"] or 0 for k in kinds], width,
           color="#ef9a9a", label=f"{r['month']} p95")
    ax.set_xticks([i + (n + 1) * width / 2 for i in range(len(kinds))], [KIND_LABEL[k] for k in kinds])
    ax.set_ylabel("seconds")
    ax.set_title("Processing time per request type")
    ax.legend(fontsize=7)
    return _png(fig)


def _queue_chart(r: dict) -> io.BytesIO:
    samples = r["queue_depth"]["samples"]
    fig, ax = plt.subplots(figsize=(7, 2.4))
    ax.plot(range(len(samples)), [s["depth"] for s in samples], color=QUEUE_COLOUR, linewidth=1.5)
    ticks = list(range(0, len(samples), max(1, len(samples) // 6)))
    ax.set_xticks(ticks, [samples[i]["at"][5:10] for i in ticks])
    ax.set_ylabel("requests waiting")
    ax.set_title(f"Queue depth (hourly; peak {r['queue_depth']['peak']})")
    return _png(fig)


def _table(rows: list[list], header: bool = True) -> Table:
    t = Table([[str("" if c is None else c) for c in row] for row in rows], hAlign="LEFT")
    style = [("FONTSIZE", (0, 0), (-1, -1), 8), ("GRID", (0, 0), (-1, -1), 0.25, colors.grey)]
    if header:
        style += [("BACKGROUND", (0, 0), (-1, 0), colors.lightgrey)]
    t.setStyle(TableStyle(style))
    return t


def render(r: dict) -> bytes:
    ss = getSampleStyleSheet()
    story = [Paragraph(f"CNS monthly report {r['month']}", ss["Title"]),
             Paragraph(f"Time zone {r['timezone']}; generated {r['generated_at']}"
                       + ("; the month is not over: figures so far" if r["partial"] else ""), ss["Normal"]),
             Spacer(1, 0.3 * cm), Image(_volumes_chart(r), width=16 * cm, height=6.4 * cm)]
    certs = [["Issued", "count"], ["devices", r["issued"]["devices"]]]
    certs += [[f"devices {m}", n] for m, n in r["issued"]["devices_by_model"].items()]
    certs += [[f"certificates {p}", n] for p, n in r["issued"]["certificates"].items()]
    certs += [[f"renewals {p}", n] for p, n in r["renewals"]["by_profile"].items()]
    certs += [[f"mode {m}", n] for m, n in r["issuance_modes"].items()]
    certs += [[k, v] for k, v in r["status_changes"].items()]
    story += [_table(certs), Spacer(1, 0.3 * cm), Image(_times_chart(r), width=16 * cm, height=6.4 * cm)]
    times = [["request type", "count", "mean s", "min s", "max s", "p95 s"]]
    times += [[KIND_LABEL.get(k, k), v["count"], v["mean"], v["min"], v["max"], v["p95"]]
              for k, v in r["processing_seconds"].items()]
    story += [_table(times), Spacer(1, 0.3 * cm), Paragraph("Requests refused by the CA or failed", ss["Heading2"])]
    failed = [["request type", "code", "count"]] + [[KIND_LABEL.get(k, k), c, n] for k, codes in
                                                    r["failed"]["by_kind"].items() for c, n in codes.items()]
    failed.append(["cancelled before the CA", "", r["failed"]["cancelled"]])
    story += [_table(failed), Paragraph("CA outages and maintenance", ss["Heading2"])]
    outages = [["from", "to", "seconds in month", "detail"]]
    outages += [[o["started_at"], o["ended_at"] or "ongoing", o["seconds_in_month"], o["detail"][:60]]
                for o in r["outages"]]
    outages += [[m["starts_at"], m["ends_at"], m["seconds_in_month"], f"maintenance: {m['reason']}"[:60]]
                for m in r["maintenance"]]
    if len(outages) == 1:
        outages.append(["none", "", "", ""])
    story += [_table(outages), Spacer(1, 0.3 * cm), Image(_queue_chart(r), width=16 * cm, height=5.5 * cm),
              Paragraph("Device stock per chamber", ss["Heading2"])]
    stock = [["chamber", "device type", "sent", "used", "left", "sent in month", "used in month"]]
    stock += [[s["chamber_code"], s["device_model"] or "any", s["sent"], s["used"], s["left"], s["sent_in_month"],
               s["used_in_month"]] for s in r["stock"]] or [["none recorded (cnsctl stock add)", "", "", "", "", "", ""]]
    story.append(_table(stock))
    buf = io.BytesIO()
    SimpleDocTemplate(buf, pagesize=A4, title=f"CNS monthly report {r['month']}", author="cns-personalizer",
                      leftMargin=2 * cm, rightMargin=2 * cm, topMargin=1.5 * cm, bottomMargin=1.5 * cm).build(story)
    return buf.getvalue()
