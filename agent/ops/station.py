"""What one station needs to run device operations: journal, uplink, central card administration, requester.

``StationOps`` is built from a ``station_config.StationConfig`` and a card
``Catalog``; the local API and the CLI call ``personalize`` and ``recover`` on
it. Card access goes through a ``connect(reader) -> ApduTransport`` callable
(PC/SC in the agent, in-process emulation in tests). No issuer (admin) key is
on the station: a card's challenges are answered by the personalizer's
CardAdmin service (``card_admin``, issue 12); unreachable, no card is administered.

Locks are per device (``device_lock(reader)``): an operation on one reader never
waits for another, and a personalization waiting for a closed CA does not hold
its card (it returns ``open``; ``on_open(reader)`` asks the agent to retry it).
Each running operation has a stop event (``stop(reader)``: the operator's
Ctrl-C); ``resolve(op_id, "finish"|"discard")`` settles an open operation
explicitly. Imports ``agent.ops`` and ``station_config``; the operations' modules (and so cryptography) only
when an operation runs (an idle agent with a station configuration does not hold them, issue 18).
"""
from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
from typing import TYPE_CHECKING, Any, Callable

from agent.card.transport import ApduTransport
from agent.ops.engine import UNDO, Engine, JournalState, decide
from agent.ops.errors import OperationError, PreconditionError
from agent.ops.holder import Codes, HolderRecord
from agent.ops.journal import Journal
from agent.ops.p11check import Pkcs11Check
from agent.ops.uplink import Uplink
from station_config import StationConfig

if TYPE_CHECKING:
    from agent.ops import renew as _renew
    from agent.ops.personalize import Outcome, Personalizer
    from agent.ops.renew import RenewalPolicy, Renewer

# the operations' modules (agent.ops.personalize, agent.ops.renew, agent.ops.cardlink: they
# import cryptography, ~10 MB resident) are imported by the method that runs an operation, never by an idle
# agent (issue 18: idle RSS); the journal is read without them
PERSONALIZE = "personalize"   # agent.ops.personalize.KIND
RENEW = "renew"               # agent.ops.renew.KIND

log = logging.getLogger("cns.agent.ops")

Connect = Callable[[str], ApduTransport]


class StationOps:
    def __init__(self, cfg: StationConfig, journal: Journal, *, operator_id: str | None = None,
                 renewal_policy: RenewalPolicy | None = None, watch_timeout_s: float | None = None,
                 uplink: Uplink | None = None):
        self.cfg = cfg
        self.uplink = uplink   # injected by the composition root (agent.app); one for the agent's life
        self.journal = journal
        if renewal_policy is not None:
            self.renewal_policy = renewal_policy
        # how long one attempt follows a queued request before leaving the operation open (retried later)
        self.watch_timeout_s = watch_timeout_s or cfg.operations.watch_timeout_seconds
        self.operator_id = operator_id or os.environ.get("USER") or f"uid-{os.getuid()}"
        self.pkcs11 = Pkcs11Check.from_env()   # cards are reached through PC/SC here: OpenSC can open them
        self._locks: dict[str, asyncio.Lock] = {}      # per reader: one operation at a time per device
        self._stops: dict[str, asyncio.Event] = {}     # per reader: the running operation's stop request
        self.on_open: Callable[[str], None] = lambda reader: None   # an operation left open: retry it later
        # the engine's step callback (agent.ops.engine) of every operation run here: (kind, step, phase);
        # tests' fault hooks hang on it (tests/support/kill_at.py)
        self.on_step: Callable[[str, str, str], None] = lambda kind, step, phase: None

    @functools.cached_property
    def renewal_policy(self) -> "RenewalPolicy":
        from agent.ops.renew import RenewalPolicy
        return RenewalPolicy(window_days=self.cfg.renewal.window_days)

    def uplink_session(self) -> contextlib.AbstractAsyncContextManager[Uplink]:
        if self.uplink is None:
            raise OperationError("no uplink to the personalizer was given to this station (agent.app builds one)")
        return contextlib.nullcontext(self.uplink)

    def device_lock(self, reader: str) -> asyncio.Lock:
        """The lock of one device (reader): operations, PIN and lifecycle calls on it take it."""
        return self._locks.setdefault(reader, asyncio.Lock())

    def stop(self, reader: str) -> bool:
        """Ask the operation running in ``reader`` to stop at its next safe point; False when none runs."""
        event = self._stops.get(reader)
        if event is None:
            return False
        event.set()
        return True

    def _stop_event(self, reader: str) -> asyncio.Event:
        event = asyncio.Event()
        self._stops[reader] = event
        return event

    def _done(self, reader: str, out):
        self._stops.pop(reader, None)
        if out is not None and getattr(out, "state", "") == "open":
            self.on_open(reader)
        return out

    @classmethod
    async def open(cls, cfg: StationConfig, **kw) -> "StationOps":
        return cls(cfg, await Journal.open(cfg.station.data_dir / "journal.db"), **kw)

    async def close(self) -> None:
        await self.journal.close()

    def card_admin(self, kind: str, uplink: Uplink):
        """The card's issuer challenges answered by the personalizer's CardAdmin service through ``uplink``
        (the one this station received; issue 12): no key is on this station; call on the event loop."""
        return uplink.card_admin(kind, self.requester)

    @property
    def requester(self) -> dict[str, str]:
        return {"station_id": self.cfg.station.id, "chamber_code": self.cfg.station.chamber_code,
                "operator_id": self.operator_id}

    def _personalizer(self, uplink, progress, stop: asyncio.Event | None = None) -> Personalizer:
        from agent.ops.personalize import Personalizer
        return Personalizer(journal=self.journal, uplink=uplink, requester=self.requester,
                            card_admin=self.card_admin(PERSONALIZE, uplink), progress=progress,
                            watch_timeout_s=self.watch_timeout_s, pkcs11=self.pkcs11, stop=stop,
                            on_step=lambda step, phase: self.on_step(PERSONALIZE, step, phase))

    def _renewer(self, uplink, progress, stop: asyncio.Event | None = None) -> Renewer:
        from agent.ops import renew as _renew

        def on_step(step: str, phase: str) -> None:
            self.on_step(RENEW, step, phase)
            # the renewal's safe points are its journaled step ends (the old certificates stay in use)
            if stop is not None and stop.is_set() and phase == "done" and step not in ("switch", *_UNDOING):
                raise _StopRenewal(step)
        return _renew.Renewer(journal=self.journal, uplink=uplink, requester=self.requester,
                              card_admin=self.card_admin(RENEW, uplink), progress=progress,
                              policy=self.renewal_policy, watch_timeout_s=self.watch_timeout_s, pkcs11=self.pkcs11,
                              on_step=on_step)

    async def personalize(self, *, connect: Connect, reader: str, model, holder: HolderRecord | None, codes: Codes,
                          progress: Callable[[str, str], None] | None = None,
                          registration_id: str = "") -> Outcome:
        """``registration_id`` (deferred issuance): the holder comes from that registration, not ``holder``."""
        async with self.device_lock(reader), _Links(connect, reader) as links:
            stop = self._stop_event(reader)
            out = None
            try:
                async with self.uplink_session() as uplink:
                    registration = None
                    if registration_id:
                        from agent.ops.personalize import registration_holder
                        registration, holder = await registration_holder(uplink, registration_id)
                        if progress:
                            progress("registration", f"registration {registration.registration_id}: "
                                                     f"{holder.given_name} {holder.surname}, {holder.codice_fiscale}")
                    out = await self._personalizer(uplink, progress, stop).start(
                        connect=links.open, reader=reader, model=model, holder=holder, codes=codes,
                        registration=registration)
            finally:
                self._done(reader, out)
            return out

    async def renew(self, *, connect: Connect, reader: str, model, codes: Codes,
                    progress: Callable[[str, str], None] | None = None) -> _renew.Outcome:
        """Renew both certificates of the personalized card in ``reader`` (or finish its open renewal)."""
        async with self.device_lock(reader), _Links(connect, reader) as links:
            stop = self._stop_event(reader)
            out = None
            try:
                async with self.uplink_session() as uplink:
                    try:
                        out = await self._renewer(uplink, progress, stop).start(
                            connect=links.open, reader=reader, model=model, codes=codes)
                    except _StopRenewal as stopped:
                        out = await self._renewal_stopped(reader, stopped, progress)
            finally:
                self._done(reader, out)
            return out

    async def _renewal_stopped(self, reader: str, stopped: "_StopRenewal", progress) -> _renew.Outcome:
        from agent.ops.renew import Outcome as RenewalOutcome
        [op] = [o for o in await self.journal.open_operations() if o.reader == reader and o.kind == RENEW][:1] \
            or [None]
        op_id, serial = (op.op_id, op.card_serial) if op else ("", "")
        msg = (f"stopped by the operator after step {stopped.step}; the card keeps its current certificates. "
               f"Renewal {op_id} is kept open: `cns-agent operations finish {op_id}` (with the PIN) or "
               f"`cns-agent operations discard {op_id}`; without either it is undone when the card is seen again")
        if progress:
            progress("stopped", msg)
        return RenewalOutcome(op_id, serial, "open", message=msg)

    async def recover(self, *, connect: Connect, reader: str, card_serial: str, model,
                      codes: Codes | None = None, progress=None) -> Outcome | _renew.Outcome | None:
        """Finish or undo the open operation of a card just seen (agent start, card insert):
        personalizations and renewals alike, each by its own resume rules."""
        if not await self.journal.open_operations(card_serial):
            return None
        lock = self.device_lock(reader)
        if lock.locked():
            return None   # an operation runs on this device now; it settles the card itself
        async with lock, _Links(connect, reader) as links:
            ops = await self.journal.open_operations(card_serial)   # again, under the lock: it may have finished
            if not ops:
                return None
            out = None
            try:
                async with self.uplink_session() as uplink:
                    runner = self._renewer(uplink, progress) if ops[0].kind == RENEW \
                        else self._personalizer(uplink, progress)
                    out = await runner.resume(ops[0], connect=links.open, model=model, codes=codes)
            finally:
                if out is not None and out.state == "open":
                    self.on_open(reader)
        log.info("recovered %s on card %s: %s %s", ops[0].kind, card_serial, out.state, out.message)
        return out

    async def resolve(self, op_id: str, action: str, *, connect: Connect, reader: str, model,
                      codes: Codes | None = None, progress=None) -> Outcome | _renew.Outcome:
        """``finish`` (resume forward; needs the PIN when the requests are not signed yet) or ``discard``
        (undo: blank card or old certificates kept, certificates issued for it revoked) an open operation
        whose card is in ``reader``."""
        if action not in ("finish", "discard"):
            raise PreconditionError(f"unknown action {action!r}: finish or discard")
        from agent.ops import personalize as _personalize, renew as _renew
        from agent.ops.cardlink import open_link
        async with self.device_lock(reader), _Links(connect, reader) as links:
            op = await self.journal.get(op_id)
            if op is None or op.state != "running":
                raise PreconditionError(f"no open operation {op_id} (see `cns-agent operations`)")
            stop = self._stop_event(reader)
            out = None
            try:
                async with self.uplink_session() as uplink:
                    if op.kind == PERSONALIZE:
                        runner = self._personalizer(uplink, progress, stop)
                        if action == "discard":
                            link = await asyncio.to_thread(open_link, links.open, model)
                            serial = await asyncio.to_thread(link.cns.read_serial)
                            if serial != op.card_serial:
                                raise PreconditionError(f"operation {op_id} is for card {op.card_serial}, "
                                                        f"not the card {serial} in {reader!r}")
                            out = await runner.undo(op, link, model, op.data.get("undo_reason")
                                                     or "discarded by the operator")
                        else:
                            plan = _personalize.build_plan(model)
                            st = JournalState.of(plan, op, codes_at_hand=codes is not None)
                            if decide(plan, st).action == UNDO and not st.undoing:
                                raise PreconditionError(f"finishing {op_id} needs the holder's PIN: its certificate "
                                                        "requests are not signed yet (give --codes-file)")
                            out = await runner.resume(op, connect=links.open, model=model, codes=codes)
                    elif op.kind == RENEW:
                        runner = self._renewer(uplink, progress, stop)
                        if action == "discard":
                            plan = _renew.build_plan(model)
                            if Engine.past_no_return(plan, op):
                                raise PreconditionError(f"renewal {op_id} has switched to the new certificates: it "
                                                        f"can only be finished (`cns-agent operations finish {op_id}`)")
                            codes = None   # a renewal resumed without the PIN before its CSRs is undone
                            if decide(plan, JournalState.of(plan, op, codes_at_hand=False)).action != UNDO:
                                link = await asyncio.to_thread(open_link, links.open, model)
                                out = await runner.undo(op, link, model, "discarded by the operator")
                        if out is None:
                            out = await runner.resume(op, connect=links.open, model=model, codes=codes)
                    else:
                        raise PreconditionError(f"operation {op_id} is a {op.kind}: it is resolved by its own command")
            except _StopRenewal as stopped:
                out = await self._renewal_stopped(reader, stopped, progress)
            finally:
                self._done(reader, out)
            return out

    async def open_operations(self) -> list[Any]:
        return await self.journal.open_operations()


_UNDOING = ("undo", "revoke-orphans")   # an undo under way is finished, not stopped


class _StopRenewal(Exception):
    def __init__(self, step: str):
        super().__init__(f"stopped after {step}")
        self.step = step


class _Links:
    """Opens card connections for one operation and closes them all at its end."""

    def __init__(self, connect: Connect, reader: str):
        self.connect, self.reader, self.opened = connect, reader, []

    def open(self) -> ApduTransport:
        link = self.connect(self.reader)
        self.opened.append(link)
        return link

    async def __aenter__(self) -> "_Links":
        return self

    async def __aexit__(self, *exc) -> None:
        for link in self.opened:
            close = getattr(link, "close", None)
            if close is not None:
                try:
                    await asyncio.to_thread(close)
                except Exception:  # the card may be gone already
                    pass
