"""Per-request timeline of a daemon's store calls, for benchmarks (issue 17 item 6: where p99 comes from).

With ``CNS_PHASE_TRACE=<folder>`` in its environment, each daemon process wraps its request store in
``PhaseTrace`` (``traced``, called by the composition root; without the variable the store is returned as is).
The wrapper notes the wall-clock start and end of ``enqueue`` and ``complete_issue`` per request id and, over
PostgreSQL, turns on ``pg.Database``'s group-commit trace: for a call that went through the group commit, when it
queued and when its shared transaction started and ended; per shared transaction, how many callers it carried. At ``close`` it writes them as one JSON file,
``<folder>/phases-<pid>.json``; the benchmark joins them with its clients' send and answer times by request id.
Memory is bounded (``MAX_EVENTS`` per process). No request data but the request id is written.

Imports nothing of ours; any store (SQLite, PostgreSQL, memory) can be wrapped: every other attribute is the
wrapped store's.
"""
from __future__ import annotations

import inspect
import json
import os
import time
from pathlib import Path

ENV = "CNS_PHASE_TRACE"
MAX_EVENTS = 200_000


def traced(store):
    """``store`` wrapped in a ``PhaseTrace`` when ``CNS_PHASE_TRACE`` names a folder, else ``store``."""
    folder = os.environ.get(ENV, "")
    return PhaseTrace(store, Path(folder)) if folder else store


class PhaseTrace:
    def __init__(self, store, folder: Path):
        self._store = store
        self._folder = folder
        # (request id, call, start, end, [queued, shared transaction start, end] or None), wall clock
        self._events: list[tuple] = []
        self._calls: dict[str, int] = {}
        self._opened = time.time()
        self._db = getattr(store, "database", None)
        if self._db is not None:
            self._db.trace = []

    def __getattr__(self, name):
        attr = getattr(self._store, name)
        if not inspect.iscoroutinefunction(attr):
            return attr

        async def counted(*args, **kwargs):   # how often each store call runs (background polls included)
            self._calls[name] = self._calls.get(name, 0) + 1
            return await attr(*args, **kwargs)
        return counted

    def _note(self, request_id: str, call: str, start: float) -> None:
        timing = self._db.take_write_timing() if self._db is not None else None
        if len(self._events) < MAX_EVENTS:
            self._events.append((request_id, call, start, time.time(), timing))

    async def enqueue(self, rec, **kwargs):
        start = time.time()
        try:
            return await self._store.enqueue(rec, **kwargs)
        finally:
            self._note(rec.request_id, "enqueue", start)

    async def complete_issue(self, request_id, *args, **kwargs):
        start = time.time()
        try:
            return await self._store.complete_issue(request_id, *args, **kwargs)
        finally:
            self._note(request_id, "complete_issue", start)

    async def close(self) -> None:
        try:
            await self._store.close()
        finally:
            self._folder.mkdir(parents=True, exist_ok=True)
            out = {"events": self._events, "calls": self._calls, "seconds": time.time() - self._opened, "group_commits": getattr(self._db, "trace", None) or [],
                   "counters": {k: getattr(self._db, k) for k in ("transactions", "reads", "statements", "group_commits",
                                                                  "group_callers", "pool_wait_s")
                                if hasattr(self._db, k)}}
            (self._folder / f"phases-{os.getpid()}.json").write_text(json.dumps(out))
