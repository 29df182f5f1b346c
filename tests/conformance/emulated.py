"""Emulated cards for the conformance tests: a catalogue model, optionally with test-only overrides
(``firmware_profiles.emulator.overrides``), behind the agent's transport seam."""
from __future__ import annotations

from firmware_profiles import load_models
from firmware_profiles.emulator import CardRemovedError, EmulatedCard
from firmware_profiles.emulator import overrides as ov
from tests.support.emulated import EmulatedTransport

MODEL_ID = "infocamere-cns-2048"


class VirtualClock:
    """Time that passes only when the emulated card sleeps: timing checks without waiting."""

    def __init__(self) -> None:
        self.now = 0.0

    def sleep(self, seconds: float) -> None:
        self.now += seconds

    def __call__(self) -> float:
        return self.now


def card(*specs: str, timing: str = "zero", model_id: str = MODEL_ID, clock: VirtualClock | None = None, **kw):
    model = load_models()[model_id]
    model, t = ov.apply(model, model.timing[timing], list(specs))
    extra = {"sleep": clock.sleep} if clock else {}
    c = EmulatedCard(model, timing=t, **extra, **kw)
    c.power_on()
    return c, model, EmulatedTransport(c, (CardRemovedError,))
