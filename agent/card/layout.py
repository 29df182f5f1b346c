"""Where a CNS model keeps its files and PINs, read from a card model.

``CnsLayout`` is what ``CnsSession`` needs from a profile: the paths of
EF_IDCarta and EF_DatiPersonali and the PIN/PUK references by keyset name.
``layout_from_model`` reads them from a ``firmware_profiles`` ``CardModel``
without importing it (duck-typed), with the REFERENCE §3 values as defaults.
Imports nothing of ours.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

DEFAULT_ID_CARTA = "3F00/1000/1003"
DEFAULT_DATI_PERSONALI = "3F00/1100/1102"


@dataclass(frozen=True)
class PinRef:
    """One PIN: its VERIFY reference, the PUK that unblocks it, the DF to select first.

    Named after the keyset it guards (``CNS0`` authentication, ``CNS1`` signature)."""

    name: str
    pin_ref: int
    puk_ref: int | None = None
    df: str | None = None


DEFAULT_PINS = {
    "CNS0": PinRef("CNS0", 0x10, 0x11, None),
    "CNS1": PinRef("CNS1", 0x1A, 0x1B, "3F00/1400/8110"),
}


@dataclass(frozen=True)
class CnsLayout:
    id_carta: str = DEFAULT_ID_CARTA
    dati_personali: str = DEFAULT_DATI_PERSONALI
    pins: Mapping[str, PinRef] = field(default_factory=lambda: dict(DEFAULT_PINS))


def _get(obj: Any, *names: str) -> Any:
    for name in names:
        if isinstance(obj, Mapping):
            if name in obj:
                return obj[name]
        elif hasattr(obj, name):
            return getattr(obj, name)
    return None


def _ref(value: Any) -> int | None:
    if value is None:
        return None
    if isinstance(value, int):
        return value
    return int(str(value), 16)


def layout_from_model(model: object | None) -> CnsLayout:
    """The layout of ``model`` (a ``CardModel`` or a mapping); defaults where it says nothing."""
    if model is None:
        return CnsLayout()
    paths = _get(model, "paths") or {}
    id_carta = _get(paths, "id_carta", "ef_idcarta", "idcarta") or DEFAULT_ID_CARTA
    dati = _get(paths, "dati_personali", "ef_datipersonali", "datipersonali") or DEFAULT_DATI_PERSONALI
    pins: dict[str, PinRef] = {}
    keysets = _get(model, "keysets") or ()
    items = keysets.items() if isinstance(keysets, Mapping) else ((None, k) for k in keysets)
    for key, ks in items:
        name = _get(ks, "name", "id") or key
        pin_ref = _ref(_get(ks, "pin_ref", "pin_reference", "pin"))
        if name is None or pin_ref is None:
            continue
        df = _get(ks, "pin_df", "df")
        pins[str(name)] = PinRef(str(name), pin_ref, _ref(_get(ks, "puk_ref", "puk_reference", "puk")),
                                 str(df) if df else None)
    return CnsLayout(str(id_carta), str(dati), pins or dict(DEFAULT_PINS))
