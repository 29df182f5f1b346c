"""The live device list and its event stream: pure state, no I/O.

``DeviceRegistry`` is fed by the monitor thread (``reader_added``,
``card_inserted``, ``card_read`` ...) and produces numbered ``DeviceEvent``s
for listeners. Thread-safe; listeners are called outside the lock and must not
block (the API bridges them into asyncio with ``call_soon_threadsafe``).
Imports nothing of ours beyond the standard library.
"""
from __future__ import annotations

import enum
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace


class CardState(enum.Enum):
    READING = "reading"
    READY = "ready"
    UNSUPPORTED = "unsupported"
    ERROR = "error"


class EventKind(enum.Enum):
    READER_ADDED = "reader_added"
    READER_REMOVED = "reader_removed"
    CARD_INSERTED = "card_inserted"
    CARD_READ = "card_read"
    CARD_REMOVED = "card_removed"
    CARD_ERROR = "card_error"


@dataclass(frozen=True)
class CardView:
    atr: bytes
    state: CardState
    model_id: str = ""
    model_name: str = ""
    serial: str = ""
    holder_label: str = ""
    blank: bool = False
    error: str = ""

    @property
    def supported(self) -> bool:
        return self.state is not CardState.UNSUPPORTED

    def as_dict(self) -> dict:
        return {"atr": self.atr.hex().upper(), "state": self.state.value, "supported": self.supported,
                "model_id": self.model_id, "model_name": self.model_name, "serial": self.serial,
                "holder_label": self.holder_label, "blank": self.blank, "error": self.error}


@dataclass(frozen=True)
class ReaderView:
    name: str
    card: CardView | None = None

    def as_dict(self) -> dict:
        return {"name": self.name, "card_present": self.card is not None,
                "card": self.card.as_dict() if self.card else None}


@dataclass(frozen=True)
class DeviceEvent:
    sequence: int
    kind: EventKind
    reader: ReaderView
    interrupted: bool = False
    time_unix_ms: int = field(default_factory=lambda: int(time.time() * 1000))

    def describe(self) -> str:
        card = self.reader.card
        extra = ""
        if card:
            extra = f" {card.state.value}"
            if card.model_id:
                extra += f" model={card.model_id}"
            if card.serial:
                extra += f" serial={card.serial}"
            if card.state is CardState.READY:
                extra += " holder=" + (repr(card.holder_label) if not card.blank else "(blank card)")
            if card.error:
                extra += f" error={card.error}"
        if self.interrupted:
            extra += " (pulled while being read)"
        return f"#{self.sequence} {self.kind.value} [{self.reader.name}]{extra}"


Listener = Callable[[DeviceEvent], None]


class DeviceRegistry:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._readers: dict[str, ReaderView] = {}
        self._sequence = 0
        self._listeners: list[Listener] = []

    # -- queries -----------------------------------------------------------
    def snapshot(self) -> tuple[int, list[ReaderView]]:
        with self._lock:
            return self._sequence, [self._readers[n] for n in sorted(self._readers)]

    def reader(self, name: str) -> ReaderView | None:
        with self._lock:
            return self._readers.get(name)

    # -- listeners ---------------------------------------------------------
    def subscribe(self, listener: Listener) -> Callable[[], None]:
        with self._lock:
            self._listeners.append(listener)

        def unsubscribe() -> None:
            with self._lock:
                if listener in self._listeners:
                    self._listeners.remove(listener)
        return unsubscribe

    def subscribe_with_snapshot(self, listener: Listener) -> tuple[int, list[ReaderView], Callable[[], None]]:
        """Atomically take a snapshot and subscribe, so no event falls between them."""
        with self._lock:
            self._listeners.append(listener)
            seq, readers = self._sequence, [self._readers[n] for n in sorted(self._readers)]

        def unsubscribe() -> None:
            with self._lock:
                if listener in self._listeners:
                    self._listeners.remove(listener)
        return seq, readers, unsubscribe

    # -- updates (monitor thread) -------------------------------------------
    def _emit(self, kind: EventKind, reader: ReaderView, *, interrupted: bool = False) -> DeviceEvent:
        with self._lock:
            self._sequence += 1
            if kind is EventKind.READER_REMOVED:
                self._readers.pop(reader.name, None)
            else:
                self._readers[reader.name] = reader
            event = DeviceEvent(self._sequence, kind, reader, interrupted)
            listeners = list(self._listeners)
        for listener in listeners:
            listener(event)
        return event

    def reader_added(self, name: str) -> DeviceEvent | None:
        if self.reader(name) is not None:
            return None
        return self._emit(EventKind.READER_ADDED, ReaderView(name))

    def reader_removed(self, name: str) -> DeviceEvent | None:
        current = self.reader(name)
        if current is None:
            return None
        if current.card is not None:
            self.card_removed(name)
        return self._emit(EventKind.READER_REMOVED, ReaderView(name))

    def card_inserted(self, name: str, atr: bytes, *, supported: bool, model_id: str = "",
                      model_name: str = "") -> DeviceEvent:
        self.reader_added(name)
        state = CardState.READING if supported else CardState.UNSUPPORTED
        card = CardView(atr, state, model_id=model_id, model_name=model_name)
        return self._emit(EventKind.CARD_INSERTED, ReaderView(name, card))

    def card_read(self, name: str, *, serial: str, holder_label: str, blank: bool) -> DeviceEvent | None:
        current = self.reader(name)
        if current is None or current.card is None:
            return None
        card = replace(current.card, state=CardState.READY, serial=serial, holder_label=holder_label, blank=blank)
        return self._emit(EventKind.CARD_READ, ReaderView(name, card))

    def card_error(self, name: str, error: str, *, serial: str = "") -> DeviceEvent | None:
        current = self.reader(name)
        if current is None or current.card is None:
            return None
        card = replace(current.card, state=CardState.ERROR, error=error, serial=serial or current.card.serial)
        return self._emit(EventKind.CARD_ERROR, ReaderView(name, card))

    def card_removed(self, name: str, *, interrupted: bool = False) -> DeviceEvent | None:
        current = self.reader(name)
        if current is None or current.card is None:
            return None
        return self._emit(EventKind.CARD_REMOVED, ReaderView(name, None), interrupted=interrupted)

    def clear(self) -> None:
        """Every reader gone (PC/SC service lost)."""
        for reader in self.snapshot()[1]:
            self.reader_removed(reader.name)
