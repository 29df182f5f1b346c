"""The fleet streams connected to this process: one session per station, woken when it has commands.

A station has at most one session: a new stream of the same station replaces the old one (whose
connection is most likely dead behind a proxy), and the old writer ends with ``Replaced``. ``wake``
tells a station's writer to look in the store for commands to send, or hands it the new commands; the
store, not the session, holds what is pending, so nothing is lost when a stream breaks. With several
daemon processes over one store, ``on_miss`` passes a wake for a station connected elsewhere on
(``fleet.notify``). Pure asyncio: no grpc, no proto, no store.
"""
from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

WAKE = "wake"


class Replaced(Exception):
    """Another stream of the same station connected."""


class Stopping(EOFError):
    """The daemon is stopping: the stream ends normally; its agent reconnects within ``spread_seconds``."""

    def __init__(self, spread_seconds: float = 0.0):
        super().__init__("the personalizer is stopping")
        self.spread_seconds = spread_seconds


class Mailbox:
    """What a stream's writer waits for: items in order, one reader (the writer). An ``asyncio.Queue`` per
    stream held three deques (~2 KiB; 20,000 streams: ~40 MiB); this holds a list and, while the writer
    waits, one future."""
    __slots__ = ("_items", "_waiter")

    def __init__(self) -> None:
        self._items: list = []
        self._waiter: asyncio.Future | None = None

    def put_nowait(self, item) -> None:
        self._items.append(item)
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    async def get(self):
        while not self._items:
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        return self._items.pop(0)

    def qsize(self) -> int:
        return len(self._items)


@dataclass(eq=False, slots=True)
class Session:
    station: str
    queue: Mailbox = field(default_factory=Mailbox)
    sent: set[str] = field(default_factory=set)   # command ids written on this stream
    heard: float = 0.0                             # monotonic time of the agent's last message (the watchdog's)

    def wake(self, commands: list | None = None) -> None:
        self.queue.put_nowait(commands if commands else WAKE)

    def fail(self, exc: BaseException) -> None:
        self.queue.put_nowait(exc)


class Hub:
    def __init__(self) -> None:
        self._sessions: dict[str, Session] = {}
        self.ended = 0   # streams detached so far, replaced ones included (``fleet.gc_freeze`` watches the churn)
        self.on_miss = None   # station -> None: called when a station to wake has no stream here (other instances)

    def attach(self, station: str) -> Session:
        old = self._sessions.get(station)
        if old is not None:
            old.fail(Replaced(f"another stream of {station} connected; this one is closed"))
        s = self._sessions[station] = Session(station)
        s.wake()   # deliver whatever is pending
        return s

    def detach(self, session: Session) -> bool:
        """True when ``session`` was still the station's current one."""
        self.ended += 1
        if self._sessions.get(session.station) is session:
            del self._sessions[session.station]
            return True
        return False

    def wake(self, station: str, commands: list | None = None, *, local_only: bool = False) -> bool:
        """``commands``: the new commands themselves (written as they are, no store read); else the writer
        reads the station's open commands from the store. A station without a stream here is handed to
        ``on_miss`` (unless ``local_only``: the wake came from another instance)."""
        s = self._sessions.get(station)
        if s is None:
            if self.on_miss is not None and not local_only:
                self.on_miss(station)
            return False
        s.wake(commands)
        return True

    def wake_all(self) -> None:
        """Every session reads its open commands from the store (wake-ups from elsewhere may have been lost)."""
        for s in list(self._sessions.values()):
            s.wake()

    def close_all(self, spread_seconds: float = 0.0) -> int:
        """End every stream normally (the daemon is stopping): agents reconnect, to another instance or
        to this one restarted, instead of seeing their calls cancelled at the end of the grace period;
        ``spread_seconds``: the window they are told to spread their reconnects over."""
        for s in list(self._sessions.values()):
            s.fail(Stopping(spread_seconds))
        return len(self._sessions)

    def sessions(self) -> list[Session]:
        return list(self._sessions.values())

    def is_connected(self, station: str) -> bool:
        return station in self._sessions

    def __len__(self) -> int:
        return len(self._sessions)
