"""The persistent part of an emulated card: files, key slots, PIN counters.

Owns: ``CardState`` (what survives power off), the blank card a model
describes, JSON (de)serialisation and the atomic state file write (temporary
file, fsync, ``os.replace``). Security state (verified PINs, admin
authentication) is never here: it lives in the card session only.

Imports: ``firmware_profiles.model`` only.

Exceptions::

    StateFileError(Exception)   .path  — unreadable or foreign state file
"""
from __future__ import annotations

import json
import os
import secrets
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from firmware_profiles.model import AccessRule, CardModel

STATE_FORMAT = 1


class StateFileError(Exception):
    def __init__(self, path: str | Path, problem: str):
        self.path = str(path)
        super().__init__(
            f"{path}: {problem}. Delete the file to start with a blank card, "
            "or pass the --state file that belongs to this profile.")


@dataclass
class FileRecord:
    kind: str  # MF | DF | EF
    size: int
    data: bytearray
    read: AccessRule
    update: AccessRule
    delete: AccessRule
    create: AccessRule

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "size": self.size, "data": self.data.hex(),
                "read": str(self.read), "update": str(self.update),
                "delete": str(self.delete), "create": str(self.create)}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> "FileRecord":
        return cls(d["kind"], int(d["size"]), bytearray.fromhex(d["data"]),
                   _rule(d["read"]), _rule(d["update"]), _rule(d["delete"]), _rule(d["create"]))


def _rule(s: str) -> AccessRule:
    if s.startswith("chv:"):
        return AccessRule("chv", int(s[4:], 16))
    if s not in ("always", "never", "admin"):
        raise ValueError(f"bad access rule {s!r}")
    return AccessRule(s)


@dataclass
class KeyRecord:
    """An RSA private key in CRT form (integers)."""

    n: int
    e: int
    d: int
    p: int
    q: int

    @property
    def bits(self) -> int:
        return self.n.bit_length()

    def to_json(self) -> dict[str, str]:
        return {k: format(getattr(self, k), "x") for k in ("n", "e", "d", "p", "q")}

    @classmethod
    def from_json(cls, d: dict[str, str]) -> "KeyRecord":
        return cls(*(int(d[k], 16) for k in ("n", "e", "d", "p", "q")))


@dataclass
class PinRecord:
    value: str | None  # None: not set yet (pin_mode "set_at_personalization")
    tries_left: int
    max_tries: int

    @property
    def blocked(self) -> bool:
        return self.tries_left == 0


@dataclass
class CardState:
    model_id: str
    serial: str
    files: dict[str, FileRecord]
    keys: dict[int, KeyRecord]
    pins: dict[int, PinRecord]
    admin_tries_left: int
    write_count: int = 0  # EEPROM update operations, for wear figures
    extra: dict[str, Any] = field(default_factory=dict)

    # ------------------------------------------------------------ construction
    @classmethod
    def blank(cls, model: CardModel, serial: str | None = None) -> "CardState":
        if serial is None:
            serial = model.serial_prefix + "".join(secrets.choice("0123456789")
                                                   for _ in range(16 - len(model.serial_prefix)))
        if len(serial) != 16 or not serial.isascii() or not serial.isprintable():
            raise ValueError(f"card serial must be 16 printable ASCII characters, got {serial!r}")
        files: dict[str, FileRecord] = {}
        for f in model.files:
            if f.kind == "EF":
                if f.content == "serial":
                    data = bytearray(serial.encode("ascii"))
                elif f.content == "zero":
                    data = bytearray(f.size)
                else:
                    data = bytearray(bytes.fromhex(f.content).ljust(f.size, b"\0"))
            else:
                data = bytearray()
            files[f.path] = FileRecord(f.kind, f.size, data, f.read, f.update, f.delete, f.create)
        pins: dict[int, PinRecord] = {}
        pp = model.pin_policy
        for ks in model.keysets:
            preset = model.pin_mode == "preset"
            pins[ks.pin_ref] = PinRecord(pp.factory_test_pin if preset else None, ks.pin_tries, ks.pin_tries)
            pins[ks.puk_ref] = PinRecord(pp.factory_test_puk if preset else None, ks.puk_tries, ks.puk_tries)
        return cls(model.id, serial, files, {}, pins, model.dialect.admin_tries)

    # ------------------------------------------------------------ JSON
    def to_json(self) -> dict[str, Any]:
        return {
            "format": STATE_FORMAT,
            "model": self.model_id,
            "serial": self.serial,
            "files": {p: f.to_json() for p, f in self.files.items()},
            "keys": {f"{r:02X}": k.to_json() for r, k in self.keys.items()},
            "pins": {f"{r:02X}": {"value": p.value, "tries_left": p.tries_left, "max_tries": p.max_tries}
                     for r, p in self.pins.items()},
            "admin_tries_left": self.admin_tries_left,
            "write_count": self.write_count,
            "extra": self.extra,
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> "CardState":
        if d.get("format") != STATE_FORMAT:
            raise ValueError(f"unknown state format {d.get('format')!r} (this emulator writes {STATE_FORMAT})")
        return cls(
            model_id=str(d["model"]), serial=str(d["serial"]),
            files={p: FileRecord.from_json(f) for p, f in d["files"].items()},
            keys={int(r, 16): KeyRecord.from_json(k) for r, k in d["keys"].items()},
            pins={int(r, 16): PinRecord(p["value"], int(p["tries_left"]), int(p["max_tries"]))
                  for r, p in d["pins"].items()},
            admin_tries_left=int(d["admin_tries_left"]), write_count=int(d.get("write_count", 0)),
            extra=dict(d.get("extra", {})))

    # ------------------------------------------------------------ files on disk
    def save(self, path: Path) -> None:
        """Atomic: a crash leaves either the old or the new state, never a mix."""
        data = json.dumps(self.to_json(), indent=1, sort_keys=True).encode()
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, path)
        except BaseException:
            try:
                os.unlink(tmp)
            except OSError:
                pass
            raise
        try:
            dfd = os.open(path.parent, os.O_RDONLY)
            try:
                os.fsync(dfd)
            finally:
                os.close(dfd)
        except OSError:
            pass

    @classmethod
    def load(cls, path: Path, model: CardModel) -> "CardState":
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
            state = cls.from_json(raw)
        except (OSError, UnicodeDecodeError) as exc:
            raise StateFileError(path, f"cannot read the card state ({exc})") from exc
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise StateFileError(path, f"not a valid card state file ({type(exc).__name__}: {exc})") from exc
        if state.model_id != model.id:
            raise StateFileError(path, f"holds a card of model {state.model_id!r}, not {model.id!r}")
        return state
