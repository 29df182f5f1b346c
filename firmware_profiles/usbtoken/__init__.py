"""USB token models as data: ``tokens/*.toml`` → typed, frozen ``TokenModel``.

Public API: ``load_token_models``, ``load_token_model``, ``TokenModel`` and its
parts, ``TOKENS_DIR``, ``parse_version``. Errors are ``ProfileError`` (the card
models' error: file, key, expectation). Imports ``firmware_profiles.model``
only; the agent may import this package, never ``firmware_profiles.usbemu``.
"""
from firmware_profiles.usbtoken.model import (
    LINK_SPEEDS,
    READERS,
    TOKENS_DIR,
    FirmwareRules,
    FlashLayout,
    LinkModel,
    TokenModel,
    UsbIds,
    load_token_model,
    load_token_models,
    parse_version,
)

__all__ = ["LINK_SPEEDS", "READERS", "TOKENS_DIR", "FirmwareRules", "FlashLayout", "LinkModel", "TokenModel", "UsbIds",
           "load_token_model", "load_token_models", "parse_version"]
