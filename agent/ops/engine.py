"""The one step engine: every journaled device operation is a ``Plan`` run by an ``Engine``.

Owns: ``Step`` (one journaled step: its name as journaled, e.g. ``generate-key:CNS0``,
its async forward action and its async undo), ``Plan`` (an operation kind and its
ordered steps, built by each operation from the card model), the pure decision
``decide(plan, state)`` ("forward from step i", "undo from step j", "nothing to do")
and ``Engine``, which runs a plan forward, resumes it after an interruption and
undoes it, journaling every step *before* it runs (DESIGN.md, "Safety rules").

The rule ``decide`` states, after an interruption (crash, pulled card, lost answer):

1. an undo that was begun is finished, never reversed;
2. once a point-of-no-return step (a renewal's ``switch``) has begun, only forward;
3. once a request may have reached the personalizer (a ``submits`` step begun, or the
   journal says a request was sent), forward: the CA may have issued, and the same
   request id finds that issuance (never a second one);
4. without the holder's codes at hand, while a step that needs them is not done: undo
   (plans without undo: nothing can be done now; the operator repeats the command);
5. otherwise forward from the first step not done (``replay`` plans: from the first
   step, each forward told what the journal says of it).

The journal bookkeeping lives here only: ``_done`` (the journal's), ``_begun`` (every
step ever begun, and ``undo``), ``_submitted`` (request key → True, recorded in the
same commit as the submitting step's begun record) and ``undo_reason``. Operations
journaled by the earlier per-operation loops use the same keys and resume here.

Step bodies signal how a failure ends through the exception classes the plan names:
``undo_on`` (a refusal: undo, unless past the point of no return, where it propagates),
``hold_on`` (personalizer unreachable, CA closed: the operation stays open; also while
undoing, e.g. a card whose issuer key is central: the undo stays begun and is finished on
the next resume) and
``stop_on`` (the operator stopped): the engine returns a ``Result`` saying which.
Anything else propagates with the operation left open (journal as it was).

``on_step(step, phase)`` is called after a step's ``begun`` / ``done`` record is durable
(and by step bodies, through ``Engine.on_step``, at points of their own such as
``answered``); it may raise to interrupt the operation there (the operator's stop,
test fault hooks).

Imports ``agent.ops.journal`` and ``agent.ops.errors`` only; no card, no network.
"""
from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Awaitable, Callable, Mapping

from agent.ops.errors import OperationError
from agent.ops.journal import DONE, UNDONE, Journal, Operation

UNDO_STEP = "undo"


class Phase(str, Enum):
    NOT_BEGUN = "not begun"
    BEGUN = "begun"
    DONE = "done"


Forward = Callable[[Operation, bool], Awaitable[dict[str, Any] | None]]   # (op, resumed) → results to journal
Undo = Callable[[Operation], Awaitable[dict[str, Any] | None]]


async def _unbound(op: Operation, *args) -> dict[str, Any]:
    raise AssertionError("this plan was built for decisions only: its steps have no actions")


def actions(runner) -> tuple[Callable[[str], Forward], Callable[[str], Undo]]:
    """For plan builders: ``runner.forward(step, op, resumed)`` and ``runner.undo(step, op)`` bound to a
    step's name; without a runner (a plan built for ``decide`` only) actions that must never run."""
    if runner is None:
        return (lambda name: _unbound), (lambda name: _unbound)
    return ((lambda name: lambda op, resumed: runner.forward(name, op, resumed)),
            (lambda name: lambda op: runner.undo(name, op)))


@dataclass(frozen=True)
class Step:
    """One journaled step. ``forward(op, resumed)`` returns the public results merged into the
    operation's data; ``resumed`` is True when the journal shows the step begun before (it may
    have run). ``undo(op)`` reverses what forward may have done (None: nothing to reverse)."""
    name: str
    forward: Forward = _unbound
    undo: Undo | None = None
    submits: str | None = None          # the request key (keyset) this step sends to the personalizer
    needs_codes: bool = False           # needs the holder's PIN (or PUK) at hand
    point_of_no_return: bool = False    # once begun, the operation only goes forward
    group: str | None = None            # consecutive steps of one group run concurrently
    detail: Callable[[Operation], dict[str, Any]] | None = None   # journaled with the begun record
    applies: Callable[[Operation], bool] | None = None            # undo tail: skipped (not journaled) when False


@dataclass(frozen=True)
class Plan:
    kind: str
    steps: tuple[Step, ...]
    after_undo: tuple[Step, ...] = ()   # run forward after the card is undone (revoke what was issued)
    replay: bool = False                # a resume runs every step again (forward decides from ``resumed``)
    batch: bool = False                 # a group's done records share the next group's begun commit
    without_codes: str = "resumed without the holder's codes"   # the undo reason of rule 4
    noun: str = ""                      # how messages name it ("renewal"); the kind when empty
    undo_done: Callable[[Operation], dict[str, Any]] | None = None   # results journaled with ``undo`` done
    undo_on: tuple[type[BaseException], ...] = ()
    hold_on: tuple[type[BaseException], ...] = ()
    stop_on: tuple[type[BaseException], ...] = ()

    @property
    def names(self) -> list[str]:
        return [s.name for s in self.steps]

    @property
    def undoable(self) -> bool:
        return any(s.undo is not None for s in self.steps) or bool(self.after_undo)

    def step(self, name: str) -> Step:
        for s in self.steps + self.after_undo:
            if s.name == name:
                return s
        raise KeyError(name)


@dataclass(frozen=True)
class JournalState:
    """What the journal says of an operation, per step, plus what the resumer holds."""
    phases: Mapping[str, Phase] = field(default_factory=dict)   # a step missing: not begun
    submitted: bool = False         # a request of the operation may have reached the personalizer
    undoing: bool = False           # an undo was begun
    codes_at_hand: bool = True

    def phase(self, name: str) -> Phase:
        return self.phases.get(name, Phase.NOT_BEGUN)

    @classmethod
    def of(cls, plan: Plan, op: Operation, *, codes_at_hand: bool) -> "JournalState":
        done = set(op.data.get("_done", []))
        begun = set(op.data.get("_begun", []))
        if op.step and op.step_phase == "begun":
            begun.add(op.step)
        submitted = {k for k, v in op.data.get("_submitted", {}).items() if v}
        phases = {}
        for s in plan.steps:
            if s.name in done:
                phases[s.name] = Phase.DONE
            elif s.name in begun or (s.submits is not None and s.submits in submitted):
                phases[s.name] = Phase.BEGUN
        undoing = bool(op.data.get("undo_reason")) or UNDO_STEP in begun or UNDO_STEP in done
        return cls(phases, bool(submitted), undoing, codes_at_hand)


FORWARD, UNDO, NOTHING = "forward", "undo", "nothing"


@dataclass(frozen=True)
class Decision:
    action: str        # forward | undo | nothing
    step: int = 0      # forward: index of the first step to run; undo: last step begun (-1: none)
    reason: str = ""


def decide(plan: Plan, state: JournalState) -> Decision:
    """Forward, undo or nothing, from the plan and the journal only (see the module docstring)."""
    phases = [state.phase(s.name) for s in plan.steps]
    touched = [i for i, p in enumerate(phases) if p is not Phase.NOT_BEGUN]
    last = touched[-1] if touched else -1
    pending = [i for i, p in enumerate(phases) if p is not Phase.DONE]
    if state.undoing:
        return Decision(UNDO, last, "an undo was begun: it is finished")
    if not pending:
        return Decision(NOTHING, len(phases), "every step is done")
    first = 0 if plan.replay else pending[0]
    if any(plan.steps[i].point_of_no_return for i in touched):
        return Decision(FORWARD, first, "past the point of no return: only forward")
    submitting = [i for i, s in enumerate(plan.steps) if s.submits is not None]
    if (state.submitted and submitting) or any(i in submitting for i in touched):
        return Decision(FORWARD, first, "a request may have reached the personalizer: forward, same request ids")
    if not state.codes_at_hand and any(plan.steps[i].needs_codes for i in pending):
        if plan.undoable:
            return Decision(UNDO, last, plan.without_codes)
        return Decision(NOTHING, first, "the next step needs the holder's codes: repeat the command with them")
    return Decision(FORWARD, first, "forward")


@dataclass
class Result:
    """How a run of the engine ended. ``state``: done | undone | open (held) | stopped."""
    state: str
    step: str | None = None
    error: BaseException | None = None
    reason: str = ""


def _groups(steps: list[Step]) -> list[list[Step]]:
    out: list[list[Step]] = []
    for s in steps:
        if s.group is not None and out and out[-1][0].group == s.group:
            out[-1].append(s)
        else:
            out.append([s])
    return out


class Engine:
    """Runs plans over one journal. ``on_step(step, phase)``: see the module docstring."""

    def __init__(self, journal: Journal, *, on_step: Callable[[str, str], None] | None = None):
        self.journal = journal
        self.on_step = on_step or (lambda step, phase: None)

    # -- bookkeeping ------------------------------------------------------------------
    @staticmethod
    def _mark_begun(op: Operation, step: Step | str) -> None:
        name = step if isinstance(step, str) else step.name
        begun = op.data.setdefault("_begun", [])
        if name not in begun:
            begun.append(name)
        if not isinstance(step, str) and step.submits is not None:
            op.data.setdefault("_submitted", {})[step.submits] = True

    @staticmethod
    def submitted(op: Operation) -> bool:
        return any(op.data.get("_submitted", {}).values())

    # -- running ----------------------------------------------------------------------
    async def run(self, plan: Plan, op: Operation, *, codes_at_hand: bool,
                  stop: asyncio.Event | None = None) -> Result:
        """Start or resume ``op``: forward, undo or nothing, as ``decide`` says; then finish it."""
        state = JournalState.of(plan, op, codes_at_hand=codes_at_hand)
        d = decide(plan, state)
        if d.action == UNDO:
            return await self.undo(plan, op, op.data.get("undo_reason") or d.reason)
        if d.action == NOTHING and d.step < len(plan.steps):
            return Result("open", reason=d.reason)
        todo = [s for i, s in enumerate(plan.steps) if i >= d.step and (plan.replay or state.phase(s.name)
                                                                         is not Phase.DONE)]
        return await self._forward(plan, op, todo, state, stop)

    async def _forward(self, plan: Plan, op: Operation, todo: list[Step], state: JournalState,
                       stop: asyncio.Event | None) -> Result:
        pending: dict[str, dict[str, Any]] = {}

        async def flush() -> None:
            nonlocal pending
            if pending:
                done, pending = pending, {}
                await self.journal.advance(op, done, {})
                for name in done:
                    self.on_step(name, "done")

        for group in _groups(todo):
            if stop is not None and stop.is_set():
                await flush()
                return Result("stopped", group[0].name)
            resumed = {s.name: state.phase(s.name) is not Phase.NOT_BEGUN or
                       (s.submits is not None and op.data.get("_submitted", {}).get(s.submits, False))
                       for s in group}
            for s in group:
                self._mark_begun(op, s)
            begin = {s.name: (s.detail(op) if s.detail else {}) for s in group}
            done_now, pending = pending, {}
            await self.journal.advance(op, done_now, begin)
            for name in done_now:
                self.on_step(name, "done")
            for s in group:
                self.on_step(s.name, "begun")
            outcomes = await asyncio.gather(*(s.forward(op, resumed[s.name]) for s in group),
                                            return_exceptions=True)
            failure: BaseException | None = None
            failed_at = None
            for s, out in zip(group, outcomes):
                if isinstance(out, BaseException):
                    if failure is None or (isinstance(out, plan.undo_on) and not isinstance(failure, plan.undo_on)):
                        failure, failed_at = out, s.name
                else:
                    pending[s.name] = dict(out or {})
            if failure is not None:
                await flush()
                return await self._failed(plan, op, failed_at, failure)
            if not plan.batch:
                await flush()
        await flush()
        await self.journal.finish(op, DONE)
        return Result(DONE)

    async def _failed(self, plan: Plan, op: Operation, step: str | None, failure: BaseException) -> Result:
        if isinstance(failure, plan.stop_on):
            return Result("stopped", step, failure)
        if isinstance(failure, plan.hold_on):
            return Result("open", step, failure, str(failure))
        if isinstance(failure, plan.undo_on) and not self.past_no_return(plan, op):
            return await self.undo(plan, op, str(failure))
        raise failure

    @staticmethod
    def past_no_return(plan: Plan, op: Operation) -> str | None:
        """The point-of-no-return step the journal shows begun (or done), if any: then there is no undo."""
        state = JournalState.of(plan, op, codes_at_hand=True)
        return next((s.name for s in plan.steps if s.point_of_no_return and state.phase(s.name) is not
                     Phase.NOT_BEGUN), None)

    async def undo(self, plan: Plan, op: Operation, reason: str) -> Result:
        """Reverse every step begun, last first, in ONE journaled ``undo`` step (its reason kept: a resume
        finishes it), then the plan's ``after_undo`` steps; then the operation is finished undone."""
        point = self.past_no_return(plan, op)
        if point is not None:
            raise OperationError(f"{plan.noun or plan.kind} {op.op_id} cannot be undone after the {point}", op_id=op.op_id)
        reason = op.data.get("undo_reason") or reason
        if not op.step_done(UNDO_STEP):
            state = JournalState.of(plan, op, codes_at_hand=True)
            touched = [i for i, s in enumerate(plan.steps) if state.phase(s.name) is not Phase.NOT_BEGUN]
            # an operation journaled before the engine has no ``_begun``: every undo runs (each is idempotent)
            last = (touched[-1] if touched else -1) if "_begun" in op.data else len(plan.steps) - 1
            for s in plan.steps[:last + 1]:
                self._mark_begun(op, s.name)      # kept: a crash mid-undo still knows what to reverse
            self._mark_begun(op, UNDO_STEP)
            op.data["undo_reason"] = reason
            await self.journal.step_begun(op, UNDO_STEP, reason=reason)
            self.on_step(UNDO_STEP, "begun")
            try:
                for s in reversed(plan.steps[:last + 1]):
                    if s.undo is not None:
                        await s.undo(op)
            except plan.hold_on as exc:   # e.g. the card's issuer key is central and unreachable: undo stays begun
                return Result("open", UNDO_STEP, exc, reason)
            await self.journal.step_done(op, UNDO_STEP, **(plan.undo_done(op) if plan.undo_done else {}))
            self.on_step(UNDO_STEP, "done")
        for s in plan.after_undo:
            if op.step_done(s.name) or (s.applies is not None and not s.applies(op)):
                continue
            self._mark_begun(op, s)
            await self.journal.step_begun(op, s.name, **(s.detail(op) if s.detail else {}))
            self.on_step(s.name, "begun")
            try:
                out = await s.forward(op, True)
            except plan.hold_on as exc:
                return Result("open", s.name, exc, reason)
            await self.journal.step_done(op, s.name, **(out or {}))
            self.on_step(s.name, "done")
        await self.journal.finish(op, UNDONE, error=reason)
        return Result(UNDONE, reason=reason)


__all__ = ["actions", "Step", "Plan", "Phase", "JournalState", "Decision", "decide", "Engine", "Result",
           "FORWARD", "UNDO", "NOTHING", "UNDO_STEP"]
