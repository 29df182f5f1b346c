"""Token releases that wait for the holder's approval (issue 14 item 4, ``[updates] token_install = "ask"``).

``Approvals(path, postpone_s=...)`` holds, per token serial, the newest downloaded release waiting for an
answer (``Pending``: release, model, the release the token runs now, size of its images, the manifest
the install reads). ``offer(...)`` records a release the ``token-updates`` task downloaded and returns the
``Pending`` when the holder must be told now (a new release, or a declined one whose postponement ended),
else None (already waiting or approved, or declined and postponed). ``answer(serial, approve, release)``
is the holder's: approved → installed by the task once the token is plugged in and idle; declined → not
asked again for that release before ``postpone_s`` has passed (a newer release asks at once).
Declines survive a restart of the agent (``path``: a small JSON file, written atomically); waiting
approvals are rebuilt by the next check. ``subscribe(listener)`` tells the local API's watchers and the
desktop notifier of every change. Thread-safe: the task's checks run in a worker thread.

Imports nothing of ours.
"""
from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

log = logging.getLogger(__name__)
DEFAULT_POSTPONE_S = 24 * 3600.0
WAITING, APPROVED, DECLINED = "waiting", "approved", "declined"


class ApprovalError(Exception):
    """No such waiting release, or another one than the holder was shown: one line."""


@dataclass(frozen=True)
class Pending:
    serial: str
    model: str
    release: str
    current: str            # the release the token runs now ("" for a mix or an unknown set)
    size_bytes: int
    manifest: Path
    offered_at: float
    state: str = WAITING
    postponed_until: float = 0.0


class Approvals:
    def __init__(self, path: Path | None = None, *, postpone_s: float = DEFAULT_POSTPONE_S,
                 clock: Callable[[], float] = time.time) -> None:
        self.path, self.postpone_s, self.clock = path, postpone_s, clock
        self._lock = threading.Lock()
        self._by_serial: dict[str, Pending] = {}
        self._declined: dict[str, tuple[str, float]] = self._load()   # serial → (release, until)
        self._listeners: list[Callable[[str, Pending], None]] = []

    # -- persistence of declines ----------------------------------------------------------------
    def _load(self) -> dict[str, tuple[str, float]]:
        if self.path is None or not self.path.is_file():
            return {}
        try:
            raw = json.loads(self.path.read_text())
            return {str(s): (str(v["release"]), float(v["until"])) for s, v in raw.items()}
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            log.warning("%s: unreadable (%s); declined token releases will be asked again", self.path, exc)
            return {}

    def _save(self) -> None:
        if self.path is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps({s: {"release": r, "until": u} for s, (r, u) in self._declined.items()}))
        os.replace(tmp, self.path)

    # -- what the token-updates task calls ------------------------------------------------------
    def offer(self, serial: str, model: str, release: str, current: str, size_bytes: int,
              manifest: Path) -> Pending | None:
        now = self.clock()
        with self._lock:
            have = self._by_serial.get(serial)
            if have is not None and have.release == release and have.state in (WAITING, APPROVED):
                return None
            declined = self._declined.get(serial)
            if declined is not None and declined[0] == release and now < declined[1]:
                self._by_serial[serial] = Pending(serial, model, release, current, size_bytes, Path(manifest),
                                                  now, DECLINED, declined[1])
                return None
            p = Pending(serial, model, release, current, size_bytes, Path(manifest), now)
            self._by_serial[serial] = p
        self._tell("pending", p)
        return p

    def approved(self, serial: str, release: str) -> bool:
        with self._lock:
            p = self._by_serial.get(serial)
            return p is not None and p.release == release and p.state == APPROVED

    def done(self, serial: str) -> None:
        """The release was installed (or the token moved on): nothing waits for it any more."""
        with self._lock:
            self._by_serial.pop(serial, None)
            if self._declined.pop(serial, None) is not None:
                self._save()
        # (no event: a watcher learns that the token moved on from its TOKEN_CHANGED event)

    # -- what the holder answers ----------------------------------------------------------------
    def answer(self, serial: str, approve: bool, release: str = "") -> Pending:
        with self._lock:
            if not serial:
                if len(self._by_serial) != 1:
                    raise ApprovalError("no token release waits for an answer" if not self._by_serial else
                                        "token releases wait for several tokens: give the token's serial "
                                        f"({', '.join(sorted(self._by_serial))})")
                serial = next(iter(self._by_serial))
            p = self._by_serial.get(serial)
            if p is None:
                raise ApprovalError(f"no token release waits for an answer on token {serial}: "
                                    "see `cns-agent update pending --token`")
            if release and release != p.release:
                raise ApprovalError(f"token {serial} waits for release {p.release}, not {release}: "
                                    "answer for the release shown now")
            if approve:
                p = replace(p, state=APPROVED, postponed_until=0.0)
                self._declined.pop(serial, None)
            else:
                until = self.clock() + self.postpone_s
                p = replace(p, state=DECLINED, postponed_until=until)
                self._declined[serial] = (p.release, until)
            self._by_serial[serial] = p
            self._save()
        self._tell("answered", p)
        return p

    def list(self) -> list[Pending]:
        with self._lock:
            return sorted(self._by_serial.values(), key=lambda p: p.serial)

    def subscribe(self, listener: Callable[[str, Pending], None]) -> Callable[[], None]:
        """``listener("pending" | "answered", pending)``, called from the thread that made the change."""
        self._listeners.append(listener)
        return lambda: self._listeners.remove(listener) if listener in self._listeners else None

    def _tell(self, kind: str, p: Pending) -> None:
        for listener in list(self._listeners):
            try:
                listener(kind, p)
            except Exception:  # noqa: BLE001 - a broken watcher never stops the update
                log.exception("approval listener failed")
