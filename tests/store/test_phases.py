"""``store.phases``: the benchmark's per-request timeline of store calls (issue 17 item 6)."""
from __future__ import annotations

import asyncio
import json

from personalizer.store import MemoryRequestStore, phases
from tests.store.test_contract import audit, certificate, put


def test_without_the_variable_the_store_is_not_wrapped(monkeypatch):
    monkeypatch.delenv(phases.ENV, raising=False)
    store = MemoryRequestStore()
    assert phases.traced(store) is store


def test_the_trace_notes_each_requests_enqueue_and_completion(monkeypatch, tmp_path):
    monkeypatch.setenv(phases.ENV, str(tmp_path / "trace"))

    async def go():
        store = phases.traced(MemoryRequestStore())
        assert isinstance(store, phases.PhaseTrace)
        assert await put(store, "p1", claimer="relay")
        assert (await store.get_request("p1")).state == "PENDING"   # everything else is the store's
        await store.complete_issue("p1", certificate(5), "cns-auth", card_id="7420000000000005", holder_cf="",
                                   audit=audit("p1", "done"))
        await store.close()
    asyncio.run(go())
    files = list((tmp_path / "trace").glob("phases-*.json"))
    assert len(files) == 1
    events = json.loads(files[0].read_text())["events"]
    assert [(e[0], e[1]) for e in events] == [("p1", "enqueue"), ("p1", "complete_issue")]
    assert all(e[2] <= e[3] for e in events) and events[0][3] <= events[1][2]
