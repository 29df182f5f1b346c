"""The conformance report as people read it: terminal lines and one self-contained HTML file.

Works on the report as a dict (``checks.Report.as_dict()``, or the same shape rebuilt from the
local API's message by ``cns-agent conformance``). Every value that comes from the card (serial,
details) is HTML-escaped; the page has no script, no external resource. ``write_html`` writes
atomically (temporary file, fsync, rename): a report file is whole or absent.

Imports the standard library only.
"""
from __future__ import annotations

import html
import os
import tempfile
import time
from pathlib import Path

STATUS_CLASS = {"pass": "pass", "fail": "fail", "not run": "notrun"}
CSS = """body{font-family:sans-serif;margin:2em;color:#222}table{border-collapse:collapse;width:100%}
td,th{border:1px solid #bbb;padding:.4em;text-align:left;vertical-align:top}th{background:#eee}
.pass{background:#dfd}.fail{background:#fdd}.notrun{background:#eee}.verdict{font-size:1.3em}"""


def verdict(report: dict) -> str:
    fails = [c for c in report["checks"] if c["status"] == "fail"]
    not_run = [c for c in report["checks"] if c["status"] == "not run"]
    head = "CONFORMS" if report["conforming"] else "DOES NOT CONFORM"
    text = f"{head} to §5.2.1.2: {len(report['checks']) - len(fails) - len(not_run)} passed, {len(fails)} failed, " \
           f"{len(not_run)} not run"
    return text


def lines(report: dict) -> list[str]:
    out = [f"card {report['card_serial']} ({report['model_id']}) in {report['reader']}: {verdict(report)}",
           f"  run: {report['mode']}"]
    for c in report["checks"]:
        out.append(f"  {c['status'].upper():8} {c['clause']}: {c['detail']}")
    for what in report.get("left_on_card", []):
        out.append(f"  LEFT ON THE CARD: {what}")
    return out


def to_html(report: dict, *, generated: float | None = None) -> str:
    e = html.escape
    when = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(generated or time.time()))
    rows = []
    for c in report["checks"]:
        figures = ", ".join(f"{k} = {v:g}" for k, v in sorted(c.get("figures", {}).items()))
        rows.append(f'<tr class="{STATUS_CLASS.get(c["status"], "notrun")}" data-check="{e(c["id"])}">'
                    f"<td>{e(c['status'])}</td><td>{e(c['clause'])}</td><td>{e(c['detail'])}</td>"
                    f"<td>{e(figures)}</td></tr>")
    left = "".join(f"<li>{e(x)}</li>" for x in report.get("left_on_card", []))
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="default-src 'none'; style-src 'unsafe-inline'">
<title>CNS conformance: card {e(report['card_serial'])}</title><style>{CSS}</style></head>
<body><h1>Tender conformance (§5.2.1.2): card {e(report['card_serial'])}</h1>
<p class="verdict" id="verdict">{e(verdict(report))}</p>
<table><tr><th>Card serial</th><td id="serial">{e(report['card_serial'])}</td></tr>
<tr><th>Model</th><td>{e(report['model_id'])}</td></tr><tr><th>Reader</th><td>{e(report['reader'])}</td></tr>
<tr><th>Run</th><td id="mode">{e(report['mode'])}</td></tr>
<tr><th>Duration</th><td>{report.get('seconds', 0):.1f} s</td></tr><tr><th>Generated</th><td>{e(when)}</td></tr></table>
<h2>Checks</h2>
<table id="checks"><tr><th>Result</th><th>Clause</th><th>What was measured</th><th>Figures</th></tr>
{''.join(rows)}</table>
{f'<h2>Left on the card</h2><ul id="left">{left}</ul>' if left else ''}
</body></html>
"""


def write_html(path: Path, report: dict) -> None:
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent or ".")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(to_html(report))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
