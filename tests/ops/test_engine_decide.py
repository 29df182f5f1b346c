"""``decide``: every step × {not begun, begun, done} × {requests submitted or not} × {PIN at hand or not},
for every journaled plan (personalize, personalize of a card still keyed with its batch's transport key,
renew, PIN change, PIN unblock) of every card model.

The expectations are written from the operations' documented resume rules, by step position (not by
the engine's step flags): without the PIN an operation is undone until its certificate requests are
signed or one may have been sent; with it, or after that, it goes forward from the first step not done;
a renewal past its ``switch`` only goes forward; a PIN operation is run again from its first keyset
with the codes given, and without them nothing can be done.
"""
from __future__ import annotations

import pytest

from agent.ops import personalize, pin, renew
from agent.ops.engine import FORWARD, NOTHING, UNDO, JournalState, Phase, decide
from agent.ops.journal import Operation
from firmware_profiles import load_models

MODELS = load_models()
PHASES = (Phase.NOT_BEGUN, Phase.BEGUN, Phase.DONE)


def _plans():
    for model_id, model in sorted(MODELS.items()):
        yield model_id, "personalize", personalize.build_plan(model)
        # issue 12: a card that arrived with its batch's transport key has change-key first
        yield model_id, "personalize-transport", personalize.build_plan(model, transport_key=True)
        yield model_id, "renew", renew.build_plan(model)
        yield model_id, "pin-change", pin.build_plan(pin.KIND_CHANGE, model)
        yield model_id, "pin-unblock", pin.build_plan(pin.KIND_UNBLOCK, model)


PLANS = list(_plans())


def _state(names, i, phase, submitted, codes) -> JournalState:
    """A journal as the engine leaves it: every step before ``i`` done, step ``i`` in ``phase``, the rest not begun."""
    phases = {n: Phase.DONE for n in names[:i]}
    if phase is not Phase.NOT_BEGUN:
        phases[names[i]] = phase
    return JournalState(phases, submitted=submitted, codes_at_hand=codes)


def _expected_card_op(names, i, phase, submitted, codes, request_prefix):
    first = i + (phase is Phase.DONE)
    if first == len(names):
        return NOTHING, None
    last_touched = i if phase is not Phase.NOT_BEGUN else i - 1
    last_csr = max(k for k, n in enumerate(names) if n.startswith("csr:"))
    signed = first > last_csr
    sent = submitted or any(n.startswith(request_prefix) and k <= last_touched for k, n in enumerate(names))
    if codes or signed or sent:
        return FORWARD, first
    return UNDO, last_touched


def _expected(kind, names, i, phase, submitted, codes):
    if kind in ("personalize", "personalize-transport"):
        return _expected_card_op(names, i, phase, submitted, codes, "submit:")
    if kind == "renew":
        return _expected_card_op(names, i, phase, submitted, codes, "renew:")
    first = i + (phase is Phase.DONE)
    if first == len(names):
        return NOTHING, None
    return (FORWARD, 0) if codes else (NOTHING, None)


CASES = [(model_id, kind, i, phase, submitted, codes)
         for model_id, kind, plan in PLANS for i in range(len(plan.steps)) for phase in PHASES
         for submitted in (False, True) for codes in (True, False)]


@pytest.mark.parametrize("model_id,kind,i,phase,submitted,codes", CASES,
                         ids=[f"{m}-{k}-{i}-{p.name}-{'sub' if s else 'nosub'}-{'pin' if c else 'nopin'}"
                              for m, k, i, p, s, c in CASES])
def test_decide_table(model_id, kind, i, phase, submitted, codes):
    plan = next(p for m, k, p in PLANS if (m, k) == (model_id, kind))
    names = plan.names
    d = decide(plan, _state(names, i, phase, submitted, codes))
    action, step = _expected(kind, names, i, phase, submitted, codes)
    assert d.action == action, f"{names[i]} {phase.value}: {d}"
    if step is not None:
        assert d.step == step, f"{names[i]} {phase.value}: {d}"


def test_the_table_covers_every_step_of_every_plan():
    assert {k for _, k, _ in PLANS} == {"personalize", "personalize-transport", "renew", "pin-change", "pin-unblock"}
    for model_id, kind, plan in PLANS:
        rows = [c for c in CASES if c[:2] == (model_id, kind)]
        assert len(rows) == len(plan.steps) * 3 * 2 * 2


@pytest.mark.parametrize("kind", ["personalize", "personalize-transport", "renew"])
def test_an_undo_begun_is_finished_whatever_else_the_journal_says(kind):
    for model_id, k, plan in PLANS:
        if k != kind:
            continue
        names = plan.names
        for i in range(len(names)):
            for codes in (True, False):
                st = _state(names, i, Phase.BEGUN, True, codes)
                d = decide(plan, JournalState(st.phases, submitted=True, undoing=True, codes_at_hand=codes))
                assert (d.action, d.step) == (UNDO, i)


@pytest.mark.parametrize("model_id", sorted(MODELS))
def test_change_key_is_the_first_step_only_for_a_card_with_its_transport_key(model_id):
    """The step is journaled before any other (set-codes, key generation) and is absent otherwise; it has no
    undo (a blank card holding its own key is a blank card), so an undo never tries to put the transport key back."""
    model = MODELS[model_id]
    plain, keyed = personalize.build_plan(model), personalize.build_plan(model, transport_key=True)
    assert "change-key" not in plain.names
    assert keyed.names == ["change-key", *plain.names]
    step = keyed.step("change-key")
    assert step.undo is None and not step.needs_codes and step.submits is None
    # crashed while changing the key, resumed with the PIN: forward from change-key (its forward re-reads
    # the key version, so a change already made is not made again)
    d = decide(keyed, JournalState({"change-key": Phase.BEGUN}, codes_at_hand=True))
    assert (d.action, d.step) == (FORWARD, 0)
    # the key changed, resumed without the PIN before any CSR: undone (back to a blank card)
    d = decide(keyed, JournalState({"change-key": Phase.DONE}, codes_at_hand=False))
    assert (d.action, d.step) == (UNDO, 0)


def test_a_renewal_past_its_switch_only_goes_forward_even_if_nothing_says_submitted():
    model = MODELS["infocamere-cns-2048"] if "infocamere-cns-2048" in MODELS else next(iter(MODELS.values()))
    plan = renew.build_plan(model)
    names = plan.names
    phases = {"switch": Phase.BEGUN}   # nothing else known: the switch alone decides
    d = decide(plan, JournalState(phases, submitted=False, codes_at_hand=False))
    assert d.action == FORWARD


def _op(kind, data, step=None, phase=None) -> Operation:
    return Operation(op_id="00000000-0000-0000-0000-000000000001", kind=kind, card_serial="S", model_id="m",
                     reader="r", state="running", step=step, step_phase=phase, data=data)


@pytest.mark.parametrize("model_id", sorted(MODELS))
def test_journals_of_the_earlier_loops_resume_as_they_did(model_id):
    """Operations journaled by the per-operation loops (``_done``, ``_submitted``, ``_begun``, ``op.step``)."""
    model = MODELS[model_id]
    names = [ks.name for ks in model.keysets]
    pers = personalize.build_plan(model)
    before_submit = pers.names[:pers.names.index(f"submit:{names[0]}")]
    # personalize, both requests begun in one commit: op.step is the last, _submitted names both
    op = _op("personalize", {"_done": before_submit, "_submitted": {n: True for n in names}},
             f"submit:{names[-1]}", "begun")
    st = JournalState.of(pers, op, codes_at_hand=False)
    assert all(st.phase(f"submit:{n}") is Phase.BEGUN for n in names) and st.submitted
    assert decide(pers, st).action == FORWARD and decide(pers, st).step == len(before_submit)
    # personalize crashed in generate-key, resumed without the PIN: undo
    op = _op("personalize", {"_done": pers.names[:pers.names.index(f"generate-key:{names[0]}")]},
             f"generate-key:{names[0]}", "begun")
    assert decide(pers, JournalState.of(pers, op, codes_at_hand=False)).action == UNDO
    # an undo begun by the old loop (undo_reason in the data) is finished
    op = _op("personalize", {"_done": before_submit, "undo_reason": "x"}, "undo", "begun")
    assert decide(pers, JournalState.of(pers, op, codes_at_hand=True)).action == UNDO
    # renew: the loop recorded renew:first in _begun before _submitted: forward, never undo
    ren = renew.build_plan(model)
    upto = ren.names.index(f"renew:{names[0]}")
    op = _op("renew", {"_done": ren.names[:upto], "_begun": ren.names[:upto + 1]}, f"renew:{names[0]}", "begun")
    st = JournalState.of(ren, op, codes_at_hand=False)
    assert st.phase(f"renew:{names[0]}") is Phase.BEGUN and decide(ren, st).action == FORWARD
    # renew: switch begun (card pulled mid-switch) without the PIN: forward
    sw = ren.names.index("switch")
    op = _op("renew", {"_done": ren.names[:sw], "_begun": ren.names[:sw + 1], "_submitted": {n: True for n in names}},
             "switch", "begun")
    d = decide(ren, JournalState.of(ren, op, codes_at_hand=False))
    assert (d.action, d.step) == (FORWARD, sw)
