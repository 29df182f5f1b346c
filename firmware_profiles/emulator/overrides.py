"""Test-only deviations of an emulated card from its model (``--override SPEC``).

A conformance tool must be shown failing, so the emulator can serve a card
that breaks one tender rule (§5.2.1.2) without a new catalogue entry (a TOML in
``cards/`` is a real model and is validated to conform). Specs:

    sign_seconds.BITS=S     each private-key operation with a BITS key takes S seconds
    keygen_seconds.BITS=S   GENERATE of a BITS key takes S seconds
    pin_tries=N             every PIN blocks after N wrong tries
    pin_length=N            PINs and PUKs are N digits (min = max = N); the sealed test
                            codes become the first N digits of the model's (padded with 9s)
    eeprom_bytes=N          the card reports and enforces N bytes of EEPROM

``apply(model, timing, specs)`` returns the changed ``(CardModel, Timing)``; a
bad spec is an ``OverrideError`` naming it and what is expected. Timing overrides
change the chosen timing only (``zero`` or ``realistic``), so they bypass the
model file's "signature under 4 s" validation on purpose.

Imports ``firmware_profiles.model`` only.
"""
from __future__ import annotations

import dataclasses

from firmware_profiles.model import CardModel, Timing

KEYS = ("sign_seconds.BITS", "keygen_seconds.BITS", "pin_tries", "pin_length", "eeprom_bytes")


class OverrideError(ValueError):
    pass


def _number(spec: str, value: str, kind, lo, hi):
    try:
        v = kind(value)
    except ValueError:
        v = None
    if v is None or not lo <= v <= hi:
        raise OverrideError(f"override {spec!r}: expected {'an integer' if kind is int else 'a number'} {lo}..{hi}")
    return v


def _code(code: str | None, n: int) -> str | None:
    return None if code is None else (code + "9" * n)[:n]


def apply(model: CardModel, timing: Timing, specs: list[str] | tuple[str, ...]) -> tuple[CardModel, Timing]:
    for spec in specs:
        key, sep, value = spec.partition("=")
        key = key.strip()
        if not sep:
            raise OverrideError(f"override {spec!r}: expected KEY=VALUE with KEY one of {', '.join(KEYS)}")
        head, _, bits = key.partition(".")
        if head in ("sign_seconds", "keygen_seconds"):
            if bits not in ("1024", "2048"):
                raise OverrideError(f"override {spec!r}: expected {head}.1024 or {head}.2048")
            seconds = _number(spec, value, float, 0.0, 600.0)
            table = dict(getattr(timing, head))
            table[int(bits)] = seconds
            timing = dataclasses.replace(timing, **{head: table})
        elif key == "pin_tries":
            n = _number(spec, value, int, 1, 15)
            pp = dataclasses.replace(model.pin_policy, pin_tries=n)
            keysets = tuple(dataclasses.replace(ks, pin_tries=n) for ks in model.keysets)
            model = dataclasses.replace(model, pin_policy=pp, keysets=keysets)
        elif key == "pin_length":
            n = _number(spec, value, int, 4, 8)
            pp = model.pin_policy
            pp = dataclasses.replace(pp, min_length=n, max_length=n, factory_test_pin=_code(pp.factory_test_pin, n),
                                     factory_test_puk=_code(pp.factory_test_puk, n))
            model = dataclasses.replace(model, pin_policy=pp)
        elif key == "eeprom_bytes":
            n = _number(spec, value, int, 4096, 1 << 20)
            model = dataclasses.replace(model, eeprom=dataclasses.replace(model.eeprom, total_bytes=n))
        else:
            raise OverrideError(f"override {spec!r}: unknown key {key!r}; expected one of {', '.join(KEYS)}")
    return model, timing
