"""The holder record an operator supplies for personalization, and the codes.

``HolderRecord`` is public data (it goes to the CA and onto the card) read
from a TOML file or the local API and judged before any card is touched:
``check_holder`` (run by every construction, so by ``from_dict``/``load``, the
local API's conversion and the journal) refuses wrong TOML types, control and
bidirectional-override characters, fields beyond EF_DatiPersonali's or the
certificate attributes' bounds, and a codice fiscale whose check character or
whose letters, birth date, sex or birth place code disagree with the holder;
every message names the file and the key. The rules are ``cns_spec``'s, the
same the personalizer applies again.
``Codes`` holds PIN and PUK in memory for one call; its repr hides them and it
is never serialised. Imports ``cns_spec`` and ``agent.card.datipersonali`` only.
"""
from __future__ import annotations

import datetime as _dt
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from agent.card.datipersonali import DatiPersonaliError, PersonalData, serialize
from cns_spec.holder import HolderDataError, check_holder as _check_holder_data
from cns_spec import validity
from cns_spec.text import TextPolicyError, check_text, normalize

CODE_RE = re.compile(r"^[0-9]{8}$")
MAX_VALIDITY_YEARS = validity.DEVICE_LIFE_YEARS   # the device's life (tender §5.1.6)


class HolderFileError(ValueError):
    def __init__(self, path, key: str, message: str):
        super().__init__(f"{path}: {key}: {message}")
        self.path, self.key, self.message = path, key, message


@dataclass(frozen=True)
class HolderRecord:
    codice_fiscale: str
    given_name: str
    surname: str
    birth_date: str                 # YYYY-MM-DD
    sex: str = ""
    birth_town: str = ""            # a name (FORLÌ) or the cadastral code (D704), which is checked against the CF
    issuer: str = "CCIAA"
    validity_years: int = validity.DEVICE_LIFE_YEARS   # the device's life (tender §5.1.6)

    def __post_init__(self) -> None:
        for name, value in check_holder(self).items():
            object.__setattr__(self, name, value)

    def personal_data(self, today: _dt.date | None = None) -> PersonalData:
        """EF_DatiPersonali content for this holder, dates as the card keeps them (ddmmyyyy)."""
        today = today or _dt.date.today()
        expiry = validity.add_years(today, self.validity_years)   # 29 February → 28 February
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
        for k in d:
            if k not in cls.__dataclass_fields__:
                raise HolderFileError(source, f"holder.{k}", f"unknown key; expected one of {sorted(cls.__dataclass_fields__)}")
        for k in ("codice_fiscale", "given_name", "surname", "birth_date"):
            if k not in d:
                raise HolderFileError(source, f"holder.{k}", "missing; expected a non-empty string")
        birth = d["birth_date"]
        if isinstance(birth, _dt.date) and not isinstance(birth, _dt.datetime):
            birth = birth.isoformat()   # a TOML date (birth_date = 1980-01-01) is what an operator means
        kw = {k: v for k, v in d.items() if k != "birth_date"}
        try:
            return cls(birth_date=birth, **kw)
        except HolderFileError as exc:
            raise HolderFileError(source, exc.key, exc.message) from None

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


def _text(key: str, value: object, *, upper: bool = False) -> str:
    if not isinstance(value, str):
        raise HolderFileError("<holder>", f"holder.{key}", f"expected a string, got {type(value).__name__} {value!r}")
    try:
        check_text(value)
    except TextPolicyError as exc:
        raise HolderFileError("<holder>", f"holder.{key}", exc.reason) from None
    value = normalize(value.strip())
    return value.upper() if upper else value


def check_holder(h: HolderRecord) -> dict:
    """The one holder check on the agent: raise ``HolderFileError`` naming the key, or return the fields
    normalized (stripped, NFC, codice fiscale and sex upper case). Runs before any card operation."""
    out = {"codice_fiscale": _text("codice_fiscale", h.codice_fiscale, upper=True),
           "sex": _text("sex", h.sex, upper=True), "birth_town": _text("birth_town", h.birth_town),
           "issuer": _text("issuer", h.issuer)}
    for key in ("given_name", "surname", "birth_date"):
        _text(key, getattr(h, key))
    if out["sex"] not in ("", "M", "F"):
        raise HolderFileError("<holder>", "holder.sex", f"expected M or F, got {out['sex']!r}")
    try:
        birth = _dt.date.fromisoformat(h.birth_date.strip())
    except ValueError:
        raise HolderFileError("<holder>", "holder.birth_date", f"expected a date YYYY-MM-DD, got {h.birth_date!r}") from None
    out["birth_date"] = birth.isoformat()
    years = h.validity_years
    if not isinstance(years, int) or isinstance(years, bool):
        raise HolderFileError("<holder>", "holder.validity_years",
                              f"expected an integer number of years, got {type(years).__name__} {years!r}")
    if not 1 <= years <= MAX_VALIDITY_YEARS:
        raise HolderFileError("<holder>", "holder.validity_years",
                              f"expected 1 to {MAX_VALIDITY_YEARS} (the device's life), got {years}")
    try:
        _check_holder_data(codice_fiscale_code=out["codice_fiscale"], given_name=h.given_name, surname=h.surname,
                           birth_date=birth, sex=out["sex"], birth_place=out["birth_town"], qualified=True)
    except HolderDataError as exc:
        raise HolderFileError("<holder>", f"holder.{exc.field}", exc.reason) from None
    out["given_name"], out["surname"] = normalize(h.given_name.strip()), normalize(h.surname.strip())
    probe = PersonalData(issuer=out["issuer"], surname=out["surname"].upper(), given_name=out["given_name"].upper(),
                         sex=out["sex"], codice_fiscale=out["codice_fiscale"], birth_town=out["birth_town"],
                         issue_date="01012000", expiry_date="01012000", birth_date="01012000")
    try:
        serialize(probe)            # EF_DatiPersonali's field and file bounds, in bytes as written
    except DatiPersonaliError as exc:
        raise HolderFileError("<holder>", f"holder.{exc.field}" if exc.field else "holder", exc.reason) from None
    return out


def describe_holder(d: dict) -> str:
    """"MARIO ROSSI, RSSMRA80A01H501U" from a journaled holder (no secrets in it)."""
    name = f"{d.get('given_name', '')} {d.get('surname', '')}".strip().upper()
    return ", ".join(x for x in (name, d.get("codice_fiscale", "")) if x) or "unknown holder"


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
