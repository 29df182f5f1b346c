"""PIN management on a personalized CNS card: status, change, unblock with the PUK.

The holder has ONE PIN and ONE PUK: personalization gives every keyset (CNS0
authentication, CNS1 signature) the same codes, so a change or an unblock is
applied to every keyset of the model, in order, and the status is the worst of
them (fewest tries left). Every answer carries the PIN and PUK tries left —
OpenSC cannot show them — as a ``PinState``.

Rules:

* New codes are checked against the model's ``pin_policy`` (length, digits)
  before the card is touched; a bad one costs no try.
* A blocked PIN is never presented (no try wasted): the answer says to unblock
  it with the PUK; a blocked PUK says the card must be replaced.
* Change and unblock are journaled (``Journal``, in their own file so the
  station's personalization journal never sees them), one step per keyset,
  recorded before it runs. A change interrupted between keysets (card pulled)
  is finished by the next ``change`` with the same codes: keysets already
  changed are checked with the NEW PIN, the others changed from the old one.
  An unblock is simply repeated (the PUK resets every keyset again).

PINs and PUKs are arguments of the call only: never journaled, logged or put
in a message. Imports ``agent.card`` and ``agent.ops``; card I/O runs in a
worker thread.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

from agent.card.cns import CnsSession
from agent.card.errors import PinBlockedError, PinNotSetError, WrongPinError
from agent.card.transport import ApduTransport
from agent.ops.errors import OperationError, PreconditionError
from agent.ops.engine import Engine, Plan, Step, actions
from agent.ops.journal import DONE, FAILED, UNDONE, Journal, Operation

log = logging.getLogger("cns.agent.pin")

KIND_CHANGE, KIND_UNBLOCK = "pin-change", "pin-unblock"
UNKNOWN = -1   # PinStatus: the card does not tell


@dataclass
class KeysetCodes:
    """Tries of one keyset's PIN and PUK (``UNKNOWN`` when the card does not tell)."""

    pin_tries_left: int
    pin_tries_max: int
    puk_tries_left: int
    puk_tries_max: int


@dataclass
class PinState:
    card_serial: str
    pin_tries_left: int
    pin_tries_max: int
    puk_tries_left: int
    puk_tries_max: int
    pin_blocked: bool
    puk_blocked: bool
    message: str = ""
    keysets: dict[str, KeysetCodes] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def summary(self) -> str:
        def tries(left: int, most: int) -> str:
            return "not told by the card" if left == UNKNOWN else f"{left} of {most} tries left"
        pin = "BLOCKED" if self.pin_blocked else tries(self.pin_tries_left, self.pin_tries_max)
        puk = "BLOCKED" if self.puk_blocked else tries(self.puk_tries_left, self.puk_tries_max)
        return f"PIN {pin}; PUK {puk}"


class PinError(OperationError):
    """A PIN operation refused by the card or by the rules; ``state`` is the card's PIN state after it."""

    def __init__(self, message: str, state: PinState | None = None):
        super().__init__(message)
        self.state = state


class WrongCodeError(PinError):
    def __init__(self, what: str, tries_left: int, state: PinState | None):
        self.what, self.tries_left = what, tries_left
        super().__init__(f"wrong {what}: {tries_left} {'try' if tries_left == 1 else 'tries'} left before it "
                         "blocks" + (f" ({state.summary()})" if state else ""), state)


class CodeBlockedError(PinError):
    def __init__(self, what: str, state: PinState | None, hint: str):
        self.what = what
        super().__init__(f"the {what} is blocked: {hint}" + (f" ({state.summary()})" if state else ""), state)


class CodeFormatError(PinError):
    """A new PIN (or a PUK) that the model cannot accept: nothing was sent to the card."""


def build_plan(kind: str, model, runner=None) -> Plan:
    """A PIN change or unblock of ``model``: one step per keyset, in order. A ``replay`` plan: a resume runs
    every step again with the codes given now (a change checks a touched keyset with the new PIN first)."""
    if kind not in (KIND_CHANGE, KIND_UNBLOCK):
        raise ValueError(f"not a PIN operation: {kind}")
    fwd, _ = actions(runner)
    verb = "change" if kind == KIND_CHANGE else "unblock"
    return Plan(kind, tuple(Step(f"{verb}:{ks.name}", fwd(f"{verb}:{ks.name}"), needs_codes=True)
                            for ks in model.keysets), replay=True)


HINT_UNBLOCK = "unblock it with the PUK (`cns-agent pin unblock --reader READER`)"
HINT_REPLACE = ("the card can no longer be unblocked and must be replaced; revoke its certificates "
                "(`cns-agent cert revoke --reader READER`)")


def check_format(code: str, policy, what: str) -> None:
    """``CodeFormatError`` unless ``code`` fits the model's PIN policy. Never echoes the code."""
    lo, hi = policy.min_length, policy.max_length
    size = f"{lo} digits" if lo == hi else f"{lo} to {hi} digits"
    if not code:
        raise CodeFormatError(f"no {what} given")
    if not code.isascii() or (policy.digits_only and not code.isdigit()) or not lo <= len(code) <= hi:
        raise CodeFormatError(f"the {what} must be {size} for this card model")


# -- card side (worker thread) --------------------------------------------------------------

def read_state(cns: CnsSession, model, serial: str) -> PinState:
    """The PIN and PUK tries of every keyset, nothing counted (VERIFY without data)."""
    per: dict[str, KeysetCodes] = {}
    for ks in model.keysets:
        try:
            pin = cns.pin_tries_left(ks.name)
        except PinNotSetError:
            raise PreconditionError(f"card {serial} has no PIN yet: personalize it first") from None
        pin_left = ks.pin_tries if pin is None else pin      # None: verified in this session, counter full
        try:
            puk = cns.puk_tries_left(ks.name)
        except PinNotSetError:
            puk = None
        per[ks.name] = KeysetCodes(pin_left, ks.pin_tries, UNKNOWN if puk is None else puk, ks.puk_tries)
    first = per[model.keysets[0].name]
    known_puk = [k.puk_tries_left for k in per.values() if k.puk_tries_left != UNKNOWN]
    state = PinState(card_serial=serial, pin_tries_left=min(k.pin_tries_left for k in per.values()),
                     pin_tries_max=first.pin_tries_max, puk_tries_left=min(known_puk) if known_puk else UNKNOWN,
                     puk_tries_max=first.puk_tries_max, pin_blocked=any(k.pin_tries_left == 0 for k in per.values()),
                     puk_blocked=any(k == 0 for k in known_puk), keysets=per)
    if state.puk_blocked:
        state.message = f"the PUK is blocked: {HINT_REPLACE}"
    elif state.pin_blocked:
        state.message = f"the PIN is blocked: {HINT_UNBLOCK}"
    differing = {n: k.pin_tries_left for n, k in per.items() if k.pin_tries_left != state.pin_tries_left}
    if differing and not state.message:
        state.message = "PIN tries differ per keyset: " + ", ".join(
            f"{n} {k.pin_tries_left}" for n, k in per.items())
    return state


@dataclass
class _Card:
    cns: CnsSession
    serial: str
    model: Any
    device: Any = None   # the transport connect() returned: its transaction() holds the card for one step

    def held(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        """``fn`` inside the device's PC/SC transaction (no other client's APDU lands in between); a no-op for a
        transport without one. Call the result in the card worker thread."""
        def run(*args):
            begin = getattr(self.device, "transaction", None)
            with (begin() if begin is not None else contextlib.nullcontext()):
                return fn(*args)
        return run

    def state(self) -> PinState:
        return self.held(lambda: read_state(self.cns, self.model, self.serial))()


class PinManager:
    """PIN status, change and unblock for one station. ``journal_path``: the PIN operations' journal."""

    def __init__(self, *, journal_path: Path, lock: asyncio.Lock | None = None):
        self.journal_path = Path(journal_path)
        self.lock = lock or asyncio.Lock()

    async def _open(self, connect: Callable[[], ApduTransport], model) -> tuple[_Card, Any]:
        def go():
            link = connect()
            cns = CnsSession(link, model)
            try:
                card = _Card(cns, "", model, link)
                card.serial = card.held(cns.read_serial)()
                return card, link
            except Exception:
                _close(link)
                raise
        return await asyncio.to_thread(go)

    async def status(self, *, connect: Callable[[], ApduTransport], model) -> PinState:
        async with self.lock:
            card, link = await self._open(connect, model)
            try:
                state = await asyncio.to_thread(card.state)
                pending = await self._pending(card.serial)
                if pending is not None:
                    state.message = (state.message + "; " if state.message else "") + (
                        f"an interrupted {pending.kind} is open on this card: run it again with the same codes")
                return state
            finally:
                await asyncio.to_thread(_close, link)

    async def _pending(self, serial: str) -> Operation | None:
        journal = await Journal.open(self.journal_path)
        try:
            ops = await journal.open_operations(serial)
            return ops[0] if ops else None
        finally:
            await journal.close()

    async def change(self, *, connect: Callable[[], ApduTransport], reader: str, model, old: str, new: str
                     ) -> PinState:
        check_format(old, model.pin_policy, "current PIN")
        check_format(new, model.pin_policy, "new PIN")
        return await self._run(KIND_CHANGE, connect, reader, model, old, new)

    async def unblock(self, *, connect: Callable[[], ApduTransport], reader: str, model, puk: str, new: str
                      ) -> PinState:
        check_format(puk, model.pin_policy, "PUK")
        check_format(new, model.pin_policy, "new PIN")
        return await self._run(KIND_UNBLOCK, connect, reader, model, puk, new)

    async def _run(self, kind: str, connect, reader: str, model, code: str, new: str) -> PinState:
        async with self.lock:
            card, link = await self._open(connect, model)
            journal = await Journal.open(self.journal_path)
            try:
                return await self._drive(kind, journal, card, reader, code, new)
            finally:
                await journal.close()
                await asyncio.to_thread(_close, link)

    async def _drive(self, kind: str, journal: Journal, card: _Card, reader: str, code: str, new: str) -> PinState:
        before = await asyncio.to_thread(card.state)
        open_ops = await journal.open_operations(card.serial)
        op = next((o for o in open_ops if o.kind == kind), None)
        for other in open_ops:
            if other is not op:   # an interrupted operation of the other kind: this one supersedes it
                await journal.finish(other, FAILED, error=f"superseded by a {kind}")
        if kind == KIND_CHANGE and before.pin_blocked:
            raise CodeBlockedError("PIN", before, HINT_UNBLOCK)
        if kind == KIND_UNBLOCK and before.puk_blocked:
            raise CodeBlockedError("PUK", before, HINT_REPLACE)
        if op is None:
            op = await journal.begin_operation(kind=kind, card_serial=card.serial, model_id=card.model.id,
                                               reader=reader, data={"keysets": [k.name for k in card.model.keysets]})
        steps = _PinSteps(self, card, kind, code, new)
        try:
            await Engine(journal).run(build_plan(kind, card.model, steps), op, codes_at_hand=True)
        except (WrongPinError, PinBlockedError) as exc:
            after = await asyncio.to_thread(card.state)
            what = "PIN" if kind == KIND_CHANGE else "PUK"
            index = [k.name for k in card.model.keysets].index(steps.at)
            detail = f"{what} refused at {steps.at}" + (" after earlier keysets were changed" if index else "")
            await journal.finish(op, FAILED, error=detail)
            log.info("card %s: %s %s", card.serial, kind, detail)
            if isinstance(exc, WrongPinError):
                raise WrongCodeError(what, exc.tries_left, after) from None
            raise CodeBlockedError(what, after, HINT_UNBLOCK if what == "PIN" else HINT_REPLACE) from None
        after = await asyncio.to_thread(card.state)
        after.message = ("PIN changed" if kind == KIND_CHANGE else "PIN unblocked and set") + (
            f"; {after.message}" if after.message else "")
        log.info("card %s: %s done (%s)", card.serial, kind, after.summary())
        return after

    async def set_back(self, *, op_id: str, connect: Callable[[], ApduTransport], model, old: str, new: str
                       ) -> tuple[PinState, list[str]]:
        """Undo an interrupted PIN change (``operations discard ID``): every keyset the change touched gets
        ``old`` again, so the card has one PIN, the one it had before; the operation ends undone. A keyset
        begun but never changed (pulled before the card ran the command) is checked with ``old`` instead.
        Wrong codes: refused with the tries left, the operation stays open. The keysets set back."""
        check_format(old, model.pin_policy, "PIN before the change")
        check_format(new, model.pin_policy, "new PIN")
        async with self.lock:
            card, link = await self._open(connect, model)
            journal = await Journal.open(self.journal_path)
            try:
                op = await journal.get(op_id)
                if op is None or op.state != "running" or op.kind != KIND_CHANGE:
                    raise PreconditionError(f"no open PIN change {op_id} (see `cns-agent operations`)")
                if op.card_serial != card.serial:
                    raise PreconditionError(f"{op_id} is for card {op.card_serial}, not the card {card.serial} "
                                            "in this reader")
                done = set(op.data.get("_done", []))
                touched = [ks.name for ks in model.keysets if f"change:{ks.name}" in done
                           or (op.step == f"change:{ks.name}" and op.step_phase == "begun")]
                back: list[str] = []

                def work() -> None:   # one PC/SC transaction for the whole undo
                    for name in touched:
                        try:
                            card.cns.change_pin(new, old, name)
                            back.append(name)
                        except WrongPinError:
                            if f"change:{name}" in done:
                                raise   # changed for sure: the new PIN given is wrong
                            card.cns.verify_pin(old, name)   # begun only: never changed (restores the tries)
                try:
                    await asyncio.to_thread(card.held(work))
                except (WrongPinError, PinBlockedError) as exc:
                    after = await asyncio.to_thread(card.state)
                    if isinstance(exc, WrongPinError):
                        raise WrongCodeError("PIN", exc.tries_left, after) from None
                    raise CodeBlockedError("PIN", after, HINT_UNBLOCK) from None
                await journal.finish(op, UNDONE, error="discarded by the operator: the PIN before the change is "
                                                       "set again" + (f" on {', '.join(back)}" if back else ""))
                after = await asyncio.to_thread(card.state)
                log.info("card %s: pin-change %s set back (%s)", card.serial, op_id, ", ".join(back) or "nothing")
                return after, back
            finally:
                await journal.close()
                await asyncio.to_thread(_close, link)

    @staticmethod
    def _has(card: _Card, name: str, pin: str) -> bool:
        """Whether ``pin`` is the keyset's PIN now (a wrong guess costs a try; a right one restores them)."""
        try:
            card.cns.verify_pin(pin, name)
            return True
        except WrongPinError:
            return False


class _PinSteps:
    """One call's step actions (``build_plan``'s runner). The codes live here for the call only."""

    def __init__(self, manager: PinManager, card: _Card, kind: str, code: str, new: str):
        self.manager, self.card, self.kind, self.code, self.new = manager, card, kind, code, new
        self.at = ""   # the keyset being changed (named in a refusal)

    async def forward(self, step: str, op: Operation, resumed: bool) -> dict[str, Any]:
        self.at = name = step.partition(":")[2]
        card = self.card

        def work() -> None:   # one step, one PC/SC transaction
            if self.kind == KIND_CHANGE:
                # done, or begun when the card was pulled: the new PIN may be set already
                if resumed and self.manager._has(card, name, self.new):
                    return
                card.cns.change_pin(self.code, self.new, name)
            else:   # an unblock is simply repeated: the PUK resets the keyset again
                card.cns.unblock_pin(self.code, self.new, name)
        await asyncio.to_thread(card.held(work))
        return {}


def _close(link) -> None:
    close = getattr(link, "close", None)
    if close is not None:
        try:
            close()
        except Exception:  # the card may be gone already
            pass
