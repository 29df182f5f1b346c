"""Card and token models as data, and (in ``firmware_profiles.emulator``) the
emulator that turns a model into a virtual device.

Public API: ``load_models``, ``load_model``, ``identify``, ``ProfileError``,
``CardModel`` and its parts. Imports nothing of ours (agent, personalizer,
proto); importing this package does not import the emulator.
"""
from firmware_profiles.model import (
    CARDS_DIR,
    AccessRule,
    CardModel,
    CardPaths,
    Dialect,
    Eeprom,
    FileSpec,
    Keyset,
    PinPolicy,
    ProfileError,
    Timing,
    identify,
    load_model,
    load_models,
    parse_atr,
)

__all__ = [
    "CARDS_DIR", "AccessRule", "CardModel", "CardPaths", "Dialect", "Eeprom", "FileSpec", "Keyset",
    "PinPolicy", "ProfileError", "Timing", "identify", "load_model", "load_models", "parse_atr",
]
