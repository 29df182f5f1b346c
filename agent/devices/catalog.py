"""The card models the agent knows, and ATR → model.

Wraps ``firmware_profiles.load_models`` / ``identify`` (models only; the
emulator is never imported). A profile problem at load is a ``CatalogError``
naming the directory; an unknown ATR is simply ``None`` (listed as unsupported).
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any


class CatalogError(Exception):
    """The card profiles could not be loaded."""


@dataclass(frozen=True)
class Catalog:
    models: Mapping[str, Any]
    directory: str = ""

    @classmethod
    def load(cls, directory: str | Path | None = None) -> "Catalog":
        try:
            import firmware_profiles
            models = firmware_profiles.load_models(directory) if directory else firmware_profiles.load_models()
        except Exception as exc:  # the loader's own errors name file and key; keep its message
            raise CatalogError(f"cannot load card profiles from {directory or 'the built-in set'}: {exc}") from exc
        return cls(dict(models), str(directory or ""))

    def identify(self, atr: bytes) -> Any | None:
        import firmware_profiles
        return firmware_profiles.identify(atr, self.models)

    @property
    def model_ids(self) -> list[str]:
        return sorted(self.models)


def model_id(model: Any) -> str:
    return str(getattr(model, "id", "") or "")


def model_name(model: Any) -> str:
    return str(getattr(model, "name", "") or model_id(model))
