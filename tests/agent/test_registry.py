"""The device registry: events, numbering, idempotent removal, snapshots."""
from __future__ import annotations

from agent.devices.registry import CardState, DeviceRegistry, EventKind


def test_insert_read_remove_sequence():
    reg = DeviceRegistry()
    seen = []
    reg.subscribe(seen.append)
    reg.reader_added("R0")
    reg.card_inserted("R0", b"\x3b\x00", supported=True, model_id="m", model_name="M")
    reg.card_read("R0", serial="1234567890123456", holder_label="MARIO ROSSI", blank=False)
    assert reg.reader("R0").card.state is CardState.READY
    reg.card_removed("R0")
    assert reg.card_removed("R0") is None  # a second removal is not a new event
    assert [e.kind for e in seen] == [EventKind.READER_ADDED, EventKind.CARD_INSERTED, EventKind.CARD_READ,
                                      EventKind.CARD_REMOVED]
    assert [e.sequence for e in seen] == [1, 2, 3, 4]
    assert reg.snapshot() == (4, [reg.reader("R0")]) and reg.reader("R0").card is None


def test_unsupported_and_interrupted():
    reg = DeviceRegistry()
    ev = reg.card_inserted("R1", b"\x3b\x02\x14\x50", supported=False)
    assert ev.reader.card.state is CardState.UNSUPPORTED and not ev.reader.card.supported
    assert reg.card_read("R1", serial="x", holder_label="", blank=True).reader.card.state is CardState.READY
    ev = reg.card_removed("R1", interrupted=True)
    assert ev.interrupted and "pulled" in ev.describe()


def test_reader_removal_removes_its_card_first():
    reg = DeviceRegistry()
    seen = []
    reg.card_inserted("R0", b"\x3b", supported=False)
    reg.subscribe(seen.append)
    reg.reader_removed("R0")
    assert [e.kind for e in seen] == [EventKind.CARD_REMOVED, EventKind.READER_REMOVED]
    assert reg.snapshot()[1] == []


def test_subscribe_with_snapshot_misses_nothing():
    reg = DeviceRegistry()
    reg.reader_added("R0")
    seen = []
    seq, readers, unsubscribe = reg.subscribe_with_snapshot(seen.append)
    assert seq == 1 and [r.name for r in readers] == ["R0"]
    reg.reader_added("R1")
    unsubscribe()
    reg.reader_added("R2")
    assert [e.sequence for e in seen] == [2]
