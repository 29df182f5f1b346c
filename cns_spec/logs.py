"""One log record as one JSON object per line: ``--log-format json`` of cns-personalizer and cns-agent.

``JsonFormatter`` writes ``{"time", "level", "logger", "message", ...fields}``: ``time`` in RFC 3339
UTC with milliseconds, then every field the call passed with ``extra=`` (JSON numbers, strings,
booleans, lists and objects as they are; anything else as its ``str``), ``exc`` (the traceback) and
``stack`` when there is one. Keys are in a fixed order, one object per line, nothing else on it, so
journald, Loki or ``jq`` read the daemon's and the agent's logs alike.

A backstop for "PINs, PUKs and keys never reach a log" (DESIGN): a field whose name says it holds a
secret (``pin``, ``new_pin``, ``puk``, ``passphrase``, ``password``, ``secret``, ``codes``, a private or
master key) is written as ``"[redacted]"``, and a PEM private key block anywhere in the line is cut
out. Code must still not log them; this only keeps a mistake from reaching the log.

The stdlib's ``logging.Formatter`` and ``json`` suffice (python-json-logger would be a dependency for
the same thirty lines, and the redaction would still be ours). Pure: imports the standard library only.
"""
from __future__ import annotations

import datetime as _dt
import json
import logging
import re

REDACTED = "[redacted]"
FORMATS = ("text", "json")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
SECRET_NAME = re.compile(r"(?i)((^|_)(pin|puk|passphrase|password|passwd|secret|codes)|private_?key|master_?key)$")
PRIVATE_KEY_PEM = re.compile(r"-----BEGIN ([A-Z0-9 ]*)PRIVATE KEY-----.*?(-----END \1PRIVATE KEY-----|$)", re.DOTALL)
# the attributes every LogRecord has: anything else on a record came from ``extra=``
_STANDARD = frozenset(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime", "taskName"}


def _scrub(text: str) -> str:
    return PRIVATE_KEY_PEM.sub("[redacted private key]", text) if "PRIVATE KEY-----" in text else text


def _value(name: str, value):
    if SECRET_NAME.search(name):
        return REDACTED
    if isinstance(value, str):
        return _scrub(value)
    if value is None or isinstance(value, (bool, int, float)):
        return value
    if isinstance(value, dict):
        return {str(k): _value(str(k), v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_value(name, v) for v in value]
    return _scrub(str(value))


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        when = _dt.datetime.fromtimestamp(record.created, _dt.timezone.utc)
        out = {"time": when.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
               "level": record.levelname, "logger": record.name, "message": _scrub(record.getMessage())}
        for name, value in vars(record).items():
            if name not in _STANDARD and name not in out:
                out[name] = _value(name, value)
        if record.exc_info:
            out["exc"] = _scrub(self.formatException(record.exc_info))
        elif record.exc_text:
            out["exc"] = _scrub(record.exc_text)
        if record.stack_info:
            out["stack"] = _scrub(self.formatStack(record.stack_info))
        return json.dumps(out, ensure_ascii=False, separators=(",", ":"))


def use(fmt: str, root: logging.Logger | None = None) -> None:
    """Give every handler of ``root`` (default: the root logger) the formatter of ``fmt`` (text or json)."""
    if fmt not in FORMATS:
        raise ValueError(f"log format must be one of {', '.join(FORMATS)}; got {fmt!r}")
    formatter = JsonFormatter() if fmt == "json" else logging.Formatter(TEXT_FORMAT)
    for handler in (root or logging.getLogger()).handlers:
        handler.setFormatter(formatter)
