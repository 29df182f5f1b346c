"""The holder record an operator supplies for personalization, and the codes.

``HolderRecord`` is public data (it goes to the CA and onto the card) read
from a TOML file and validated with messages naming the file and the key.
``Codes`` holds PIN and PUK in memory for one call; its repr hides them and it
is never serialised. Imports ``agent.card.datipersonali`` only.
"""
from __future__ import annotations

import datetime as _dt
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from agent.card.datipersonali import PersonalData

CF_RE = re.compile(r"^[A-Z]{6}[0-9LMNPQRSTUV]{2}[A-Z][0-9LMNPQRSTUV]{2}[A-Z][0-9LMNPQRSTUV]{3}[A-Z]$")
CODE_RE = re.compile(r"^[0-9]{8}$")


class HolderFileError(ValueError):
    def __init__(self, path, key: str, message: str):
        super().__init__(f"{path}: {key}: {message}")
        self.path, self.key = path, key


@dataclass(frozen=True)
class HolderRecord:
    codice_fiscale: str
    given_name: str
    surname: str
    birth_date: str                 # YYYY-MM-DD
    sex: str = ""
    birth_town: str = ""
    issuer: str = "CCIAA"
    validity_years: int = 6         # the device's life (tender §5.1.6)

    def personal_data(self, today: _dt.date | None = None) -> PersonalData:
        """EF_DatiPersonali content for this holder, dates as the card keeps them (ddmmyyyy)."""
        today = today or _dt.date.today()
        expiry = today.replace(year=today.year + self.validity_years)
        birth = _dt.date.fromisoformat(self.birth_date)
        return PersonalData(issuer=self.issuer, issue_date=today.strftime("%d%m%Y"),
                            expiry_date=expiry.strftime("%d%m%Y"), surname=self.surname.upper(),
                            given_name=self.given_name.upper(), birth_date=birth.strftime("%d%m%Y"),
                            sex=self.sex, codice_fiscale=self.codice_fiscale, birth_town=self.birth_town)

    def as_proto_fields(self) -> dict[str, str]:
        return {"codice_fiscale": self.codice_fiscale, "given_name": self.given_name.upper(),
                "surname": self.surname.upper(), "birth_date": self.birth_date}

    def as_dict(self) -> dict:
        return dict(self.__dict__)

    @classmethod
    def from_dict(cls, d: dict, source: str = "<holder>") -> "HolderRecord":
        def need(key: str) -> str:
            v = d.get(key)
            if not isinstance(v, str) or not v.strip():
                raise HolderFileError(source, f"holder.{key}", "missing; expected a non-empty string")
            return v.strip()
        cf = need("codice_fiscale").upper()
        if not CF_RE.match(cf):
            raise HolderFileError(source, "holder.codice_fiscale",
                                  f"expected 16 characters in the codice fiscale pattern, got {cf!r}")
        birth = need("birth_date")
        try:
            _dt.date.fromisoformat(birth)
        except ValueError:
            raise HolderFileError(source, "holder.birth_date", f"expected YYYY-MM-DD, got {birth!r}") from None
        sex = str(d.get("sex", "")).upper()
        if sex not in ("", "M", "F"):
            raise HolderFileError(source, "holder.sex", f"expected M or F, got {sex!r}")
        for k in d:
            if k not in cls.__dataclass_fields__:
                raise HolderFileError(source, f"holder.{k}", f"unknown key; expected one of {sorted(cls.__dataclass_fields__)}")
        return cls(codice_fiscale=cf, given_name=need("given_name"), surname=need("surname"), birth_date=birth,
                   sex=sex, birth_town=str(d.get("birth_town", "")), issuer=str(d.get("issuer", "CCIAA")),
                   validity_years=int(d.get("validity_years", 6)))

    @classmethod
    def load(cls, path: str | Path) -> "HolderRecord":
        path = Path(path)
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise HolderFileError(path, "-", "file not found") from None
        except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
            raise HolderFileError(path, "-", f"not a readable TOML file: {exc}") from None
        table = data.get("holder")
        if not isinstance(table, dict):
            raise HolderFileError(path, "holder", "missing [holder] table")
        return cls.from_dict(table, str(path))


@dataclass(frozen=True)
class Codes:
    """PIN and PUK for one call. Never logged, journaled or sent."""

    pin: str = field(repr=False)
    puk: str | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if not CODE_RE.match(self.pin):
            raise ValueError("the PIN must be exactly 8 digits")
        if self.puk is not None and not CODE_RE.match(self.puk):
            raise ValueError("the PUK must be exactly 8 digits")

    def __repr__(self) -> str:
        return "Codes(<hidden>)"
