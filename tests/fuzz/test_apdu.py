"""Malformed card answers through the transport seam: the card layer raises only its error tree
(issue 10 item 10). A bounded sample here; ``scripts/bench fuzz`` runs the long one."""
from __future__ import annotations

import random

import pytest

from agent.card.errors import MalformedResponseError
from firmware_profiles import load_models
from firmware_profiles.emulator import EmulatedCard
from tests.fuzz import apdufuzz

MODELS = [m for _, m in sorted(load_models().items())]
RUNS = 600


def test_the_session_is_clean_without_mutations():
    """The oracle itself: every model completes the whole session, and it is long enough to target."""
    for model in MODELS:
        card = EmulatedCard(model)
        card.power_on()
        t = apdufuzz.MutatingTransport(card, random.Random(0), set())
        apdufuzz.session(model, t)
        # 52: issuer authentication also reads the card serial and its issuer key version (issue 12)
        assert t.count <= 52 and t.count >= 40, (model.id, t.count)


def test_a_mutated_answer_is_caught_as_a_card_error():
    """The mutation reaches the card layer: the first answer (SELECT of EF_IDCarta) emptied with 9000."""
    model = MODELS[0]
    card = EmulatedCard(model)
    card.power_on()

    class Emptied(apdufuzz.MutatingTransport):
        def transmit(self, apdu):
            data, sw = self.inner.transmit(apdu)
            return (b"", 0x9000) if apdu[1] == 0xB0 else (data, sw)
    with pytest.raises(MalformedResponseError):
        apdufuzz.session(model, Emptied(card, random.Random(0), set()))


@pytest.mark.timeout(60)
def test_malformed_card_answers_raise_only_card_errors():
    tally = apdufuzz.run(MODELS, RUNS, seed=7)
    assert tally.crashes == 0 and not tally.findings, "\n".join(tally.findings)
    assert tally.runs == RUNS
    assert sum(tally.card_errors.values()) > RUNS // 3, tally   # most mutations are noticed, as card errors


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_malformed_card_answers_long_run():
    tally = apdufuzz.run(MODELS, RUNS * 10, seed=8)
    assert tally.crashes == 0 and not tally.findings, "\n".join(tally.findings)
