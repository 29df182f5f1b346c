"""The step engine over a real journal file: begun before run, resume after an interruption, undo last
first, the point of no return, held and stopped operations, concurrent groups in one commit."""
from __future__ import annotations

import asyncio

import pytest

from agent.ops.engine import Engine, Plan, Step
from agent.ops.errors import OperationError
from agent.ops.journal import Journal


class Refused(Exception):
    pass


class Held(Exception):
    pass


class Interrupt(BaseException):
    """As a SIGKILL leaves the journal: nothing after the raise is recorded."""


class Toy:
    """A plan's actions that record what ran and can fail on demand."""

    def __init__(self, journal: Journal):
        self.journal = journal
        self.calls: list[tuple[str, str, bool]] = []
        self.fail: dict[str, BaseException] = {}
        self.seen_in_journal: dict[str, tuple[str, str]] = {}

    async def forward(self, name, op, resumed):
        again = await self.journal.get(op.op_id)
        self.seen_in_journal[name] = (again.step, again.step_phase)
        self.calls.append(("forward", name, resumed))
        if name in self.fail:
            raise self.fail.pop(name)
        return {f"result_{name.replace(':', '_')}": name}

    async def undo(self, name, op):
        self.calls.append(("undo", name, False))


def toy_plan(toy, *, no_return: str | None = None, group: tuple[str, ...] = ()) -> Plan:
    names = ["a", "b", "c", "d"]
    steps = tuple(Step(n, lambda op, r, n=n: toy.forward(n, op, r), lambda op, n=n: toy.undo(n, op),
                       submits=("K" if n == "c" else None), needs_codes=(n == "b"),
                       point_of_no_return=(n == no_return), group=("g" if n in group else None)) for n in names)
    tail = (Step("revoke", lambda op, r: toy.forward("revoke", op, r)),)
    return Plan("toy", steps, after_undo=tail, undo_on=(Refused,), hold_on=(Held,))


def run(coro):
    return asyncio.run(coro)


async def _begin(j):
    return await j.begin_operation(kind="toy", card_serial="S1", model_id="m", reader="r")


def test_forward_journals_each_step_begun_before_it_runs(tmp_path):
    async def go():
        j = await Journal.open(tmp_path / "j.db")
        toy = Toy(j)
        op = await _begin(j)
        res = await Engine(j).run(toy_plan(toy), op, codes_at_hand=True)
        assert res.state == "done"
        assert toy.seen_in_journal == {n: (n, "begun") for n in "abcd"}
        hist = [(s, p) for s, p, _ in await j.history(op.op_id)]
        assert hist == [(n, p) for n in "abcd" for p in ("begun", "done")]
        assert (await j.get(op.op_id)).state == "done" and op.data["result_d"] == "d"
        await j.close()
    run(go())


def test_an_interrupted_run_resumes_from_the_step_begun(tmp_path):
    async def go():
        j = await Journal.open(tmp_path / "j.db")
        toy = Toy(j)
        op = await _begin(j)

        def kill(step, phase):
            if (step, phase) == ("c", "begun"):
                raise Interrupt()
        with pytest.raises(Interrupt):
            await Engine(j, on_step=kill).run(toy_plan(toy), op, codes_at_hand=True)
        await j.close()
        j = await Journal.open(tmp_path / "j.db")
        [again] = await j.open_operations("S1")
        toy2 = Toy(j)
        res = await Engine(j).run(toy_plan(toy2), again, codes_at_hand=False)   # c submitted: forward, no PIN needed
        assert res.state == "done"
        assert toy2.calls == [("forward", "c", True), ("forward", "d", False)]
        await j.close()
    run(go())


def test_without_codes_before_the_request_the_steps_begun_are_undone_last_first(tmp_path):
    async def go():
        j = await Journal.open(tmp_path / "j.db")
        toy = Toy(j)
        op = await _begin(j)
        toy.fail["b"] = Interrupt()
        with pytest.raises(Interrupt):
            await Engine(j).run(toy_plan(toy), op, codes_at_hand=True)
        [again] = await j.open_operations("S1")
        toy2 = Toy(j)
        res = await Engine(j).run(toy_plan(toy2), again, codes_at_hand=False)
        assert res.state == "undone"
        assert toy2.calls == [("undo", "b", False), ("undo", "a", False), ("forward", "revoke", True)]
        assert (await j.get(op.op_id)).state == "undone"
        await j.close()
    run(go())


def test_a_refusal_undoes_and_a_crash_mid_undo_finishes_the_undo(tmp_path):
    async def go():
        j = await Journal.open(tmp_path / "j.db")
        toy = Toy(j)
        op = await _begin(j)
        toy.fail["d"] = Refused("the CA refused")
        toy.fail["revoke"] = Interrupt()
        with pytest.raises(Interrupt):
            await Engine(j).run(toy_plan(toy), op, codes_at_hand=True)
        assert [c[:2] for c in toy.calls if c[0] == "undo"] == [("undo", n) for n in "dcba"]
        [again] = await j.open_operations("S1")
        toy2 = Toy(j)
        res = await Engine(j).run(toy_plan(toy2), again, codes_at_hand=True)   # never turns back into forward
        assert res.state == "undone" and res.reason == "the CA refused"
        assert toy2.calls == [("forward", "revoke", True)]
        await j.close()
    run(go())


def test_past_the_point_of_no_return_a_refusal_propagates_and_undo_is_refused(tmp_path):
    async def go():
        j = await Journal.open(tmp_path / "j.db")
        toy = Toy(j)
        op = await _begin(j)
        toy.fail["d"] = Refused("late")
        plan = toy_plan(toy, no_return="c")
        with pytest.raises(Refused):
            await Engine(j).run(plan, op, codes_at_hand=True)
        assert not [c for c in toy.calls if c[0] == "undo"]
        with pytest.raises(OperationError, match="cannot be undone after the c"):
            await Engine(j).undo(plan, op, "discarded")
        await j.close()
    run(go())


def test_held_keeps_the_operation_open_and_stop_stops_between_steps(tmp_path):
    async def go():
        j = await Journal.open(tmp_path / "j.db")
        toy = Toy(j)
        op = await _begin(j)
        toy.fail["c"] = Held("personalizer unreachable")
        res = await Engine(j).run(toy_plan(toy), op, codes_at_hand=True)
        assert (res.state, res.step, str(res.error)) == ("open", "c", "personalizer unreachable")
        assert (await j.get(op.op_id)).state == "running"
        stop = asyncio.Event()
        stop.set()
        res = await Engine(j).run(toy_plan(toy), op, codes_at_hand=True, stop=stop)
        assert (res.state, res.step) == ("stopped", "c")
        await j.close()
    run(go())


def test_a_group_is_begun_in_one_commit_and_runs_concurrently(tmp_path):
    async def go():
        j = await Journal.open(tmp_path / "j.db")
        toy = Toy(j)
        op = await _begin(j)
        res = await Engine(j).run(toy_plan(toy, group=("b", "c")), op, codes_at_hand=True)
        assert res.state == "done"
        assert toy.seen_in_journal["b"] == ("c", "begun")   # c's begun record was already durable when b ran
        await j.close()
    run(go())
