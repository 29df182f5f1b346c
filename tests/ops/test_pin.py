"""PIN status, change and unblock (agent.ops.pin) on the in-process emulated card: tries shown at
every step, bad formats refused before the card is touched, a change interrupted between the two
keysets finished by the next attempt, a blocked PIN unblocked with the PUK, a blocked PUK."""
from __future__ import annotations

import asyncio

import pytest

from agent.card.cns import CnsSession
from agent.card.errors import CardRemovedError, WrongPinError
from agent.ops.errors import PreconditionError
from agent.ops.pin import CodeBlockedError, CodeFormatError, PinManager, WrongCodeError
from firmware_profiles import load_models
from firmware_profiles.emulator import EmulatedCard
from tests.support.emulated import EmulatedTransport, connect_to  # noqa: F401  (re-exported to tests)

MODELS = load_models()
MODEL = MODELS["infocamere-cns-2048"]          # preset codes: PIN 12345678, PUK 87654321, PUK 10 tries
PIN, PUK = MODEL.pin_policy.factory_test_pin, MODEL.pin_policy.factory_test_puk
NEW = "24681357"


def run(coro):
    return asyncio.run(coro)


def fresh_session(card) -> CnsSession:
    card.power_off()
    card.power_on()
    return CnsSession(EmulatedTransport(card), MODEL)


def pins_are(card, value: str) -> None:
    cns = fresh_session(card)
    for ks in MODEL.keysets:
        cns.verify_pin(value, ks.name)


@pytest.fixture
def manager(tmp_path):
    return PinManager(journal_path=tmp_path / "pin-journal.db")


def test_status_change_and_wrong_pin_show_tries(manager):
    card = EmulatedCard(MODEL)
    connect = connect_to(card)
    s = run(manager.status(connect=connect, model=MODEL))
    assert (s.pin_tries_left, s.pin_tries_max, s.puk_tries_left, s.puk_tries_max) == (3, 3, 10, 10)
    assert not s.pin_blocked and not s.puk_blocked and s.card_serial == card.serial
    with pytest.raises(CodeFormatError, match="8 digits"):
        run(manager.change(connect=connect, reader="r", model=MODEL, old=PIN, new="1234"))
    with pytest.raises(CodeFormatError, match="8 digits"):
        run(manager.change(connect=connect, reader="r", model=MODEL, old=PIN, new="1234567a"))
    assert run(manager.status(connect=connect, model=MODEL)).pin_tries_left == 3   # nothing was tried
    with pytest.raises(WrongCodeError) as ei:
        run(manager.change(connect=connect, reader="r", model=MODEL, old="11112222", new=NEW))
    assert ei.value.tries_left == 2 and ei.value.state.pin_tries_left == 2 and ei.value.state.puk_tries_left == 10
    assert "2 tries left" in str(ei.value) and "11112222" not in str(ei.value)
    s = run(manager.change(connect=connect, reader="r", model=MODEL, old=PIN, new=NEW))
    assert s.pin_tries_left == 3 and s.message.startswith("PIN changed")
    pins_are(card, NEW)
    with pytest.raises(WrongPinError):
        fresh_session(card).verify_pin(PIN, "CNS1")


@pytest.mark.parametrize("fault", ["drop:ins=24,nth=2", "drop:ins=24,nth=2,after=1"])
def test_change_interrupted_between_keysets_is_finished_by_the_next_attempt(fault, manager):
    card = EmulatedCard(MODEL, faults=[fault])
    connect = connect_to(card)
    with pytest.raises(CardRemovedError):
        run(manager.change(connect=connect, reader="r", model=MODEL, old=PIN, new=NEW))
    card.power_on()
    s = run(manager.status(connect=connect, model=MODEL))
    assert "interrupted pin-change" in s.message
    s = run(manager.change(connect=connect, reader="r", model=MODEL, old=PIN, new=NEW))
    assert s.pin_tries_left == 3 and not s.pin_blocked
    pins_are(card, NEW)                     # both keysets: one PIN again
    assert "interrupted" not in run(manager.status(connect=connect, model=MODEL)).message


def test_block_then_unblock_with_the_puk(manager):
    card = EmulatedCard(MODEL)
    connect = connect_to(card)
    for left in (2, 1):
        with pytest.raises(WrongCodeError) as ei:
            run(manager.change(connect=connect, reader="r", model=MODEL, old="99998888", new=NEW))
        assert ei.value.tries_left == left
    with pytest.raises(CodeBlockedError, match="unblock it with the PUK") as ei:
        run(manager.change(connect=connect, reader="r", model=MODEL, old="99998888", new=NEW))
    assert ei.value.state.pin_blocked and ei.value.state.puk_tries_left == 10
    s = run(manager.status(connect=connect, model=MODEL))
    assert s.pin_blocked and s.pin_tries_left == 0 and "unblock it with the PUK" in s.message
    with pytest.raises(CodeBlockedError, match="unblock"):   # a blocked PIN is not even presented
        run(manager.change(connect=connect, reader="r", model=MODEL, old=PIN, new=NEW))
    with pytest.raises(WrongCodeError) as ei:
        run(manager.unblock(connect=connect, reader="r", model=MODEL, puk="00000000", new=NEW))
    assert ei.value.what == "PUK" and ei.value.tries_left == 9 and ei.value.state.puk_tries_left == 9
    s = run(manager.unblock(connect=connect, reader="r", model=MODEL, puk=PUK, new=NEW))
    assert (s.pin_tries_left, s.puk_tries_left, s.pin_blocked) == (3, 10, False)
    pins_are(card, NEW)


def test_blocked_puk_says_replace_the_card(manager):
    card = EmulatedCard(MODEL)
    connect = connect_to(card)
    for _ in range(MODEL.pin_policy.puk_tries - 1):
        with pytest.raises(WrongCodeError):
            run(manager.unblock(connect=connect, reader="r", model=MODEL, puk="00000000", new=NEW))
    with pytest.raises(CodeBlockedError, match="must be replaced"):
        run(manager.unblock(connect=connect, reader="r", model=MODEL, puk="00000000", new=NEW))
    s = run(manager.status(connect=connect, model=MODEL))
    assert s.puk_blocked and "must be replaced" in s.message
    with pytest.raises(CodeBlockedError, match="must be replaced"):
        run(manager.unblock(connect=connect, reader="r", model=MODEL, puk=PUK, new=NEW))
    pins_are(card, PIN)                     # the PIN itself still works


def test_card_without_codes_yet(manager):
    model = MODELS["oberthur-cns-1024"]     # codes are set at personalization
    card = EmulatedCard(model)
    with pytest.raises(PreconditionError, match="no PIN yet"):
        run(manager.status(connect=connect_to(card), model=model))


def test_journal_never_holds_codes(manager, tmp_path):
    card = EmulatedCard(MODEL)
    run(manager.change(connect=connect_to(card), reader="r", model=MODEL, old=PIN, new=NEW))
    run(manager.unblock(connect=connect_to(card), reader="r", model=MODEL, puk=PUK, new=PIN))
    raw = b"".join(p.read_bytes() for p in tmp_path.glob("pin-journal.db*"))
    assert raw and PIN.encode() not in raw and NEW.encode() not in raw and PUK.encode() not in raw


@pytest.mark.parametrize("fault", ["drop:ins=24,nth=2", "drop:ins=24,nth=2,after=1"])
def test_discarding_an_interrupted_change_sets_the_old_pin_back_on_every_keyset(fault, manager):
    """Issue 9 item 6: discard undoes safely. Pulled after CNS0 was changed (and, with after=1, after CNS1
    was changed but before its answer): the card ends with one PIN, the old one, and nothing open."""
    card = EmulatedCard(MODEL, faults=[fault])
    connect = connect_to(card)
    with pytest.raises(CardRemovedError):
        run(manager.change(connect=connect, reader="r", model=MODEL, old=PIN, new=NEW))
    card.power_on()
    [op] = run(_open_pin_ops(manager))
    with pytest.raises(WrongCodeError) as ei:   # a mistyped new PIN: one try, the change stays open
        run(manager.set_back(op_id=op.op_id, connect=connect, model=MODEL, old=PIN, new="11223344"))
    assert ei.value.tries_left == 2 and "11223344" not in str(ei.value)
    assert [o.op_id for o in run(_open_pin_ops(manager))] == [op.op_id]
    state, back = run(manager.set_back(op_id=op.op_id, connect=connect, model=MODEL, old=PIN, new=NEW))
    assert back == (["CNS0", "CNS1"] if "after" in fault else ["CNS0"])
    assert state.pin_tries_left == 3 and not state.pin_blocked
    pins_are(card, PIN)                      # one PIN again: the one before the change
    assert run(_open_pin_ops(manager)) == []
    assert "interrupted" not in run(manager.status(connect=connect, model=MODEL)).message


async def _open_pin_ops(manager):
    from agent.ops.journal import Journal
    j = await Journal.open(manager.journal_path)
    try:
        return await j.open_operations()
    finally:
        await j.close()
