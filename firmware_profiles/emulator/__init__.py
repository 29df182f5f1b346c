"""The CNS card emulator: a ``CardModel`` made into a card that pcscd (through
vpcd) and OpenSC cannot tell from a real one, or an in-process card for tests.

Public API: ``EmulatedCard``, ``CardRemovedError``, ``CardNotPoweredError``,
``EmulatorError``, ``FaultPlan``/``Fault``, ``StateFileError``, ``SW``, ``VpcdClient``.
Imports: ``firmware_profiles`` only. Production agent code never imports it.
"""
from firmware_profiles.emulator.card import (
    CardNotPoweredError,
    CardRemovedError,
    EmulatedCard,
    EmulatorError,
    open_card,
)
from firmware_profiles.emulator.faults import Fault, FaultPlan, FaultSpecError
from firmware_profiles.emulator.iso import INS, SW
from firmware_profiles.emulator.state import CardState, StateFileError

__all__ = [
    "CardNotPoweredError", "CardRemovedError", "CardState", "EmulatedCard", "EmulatorError", "Fault",
    "FaultPlan", "FaultSpecError", "INS", "SW", "StateFileError", "open_card",
]
