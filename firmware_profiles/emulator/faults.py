"""Faults a tester injects into an emulated card.

Owns: the fault spec language (CLI ``--fault`` and tests) and matching faults
to APDUs by INS and occurrence. The card applies them (``card.py``).

Spec: ``KIND:key=value,key=value``; keys ``ins`` (hex INS or ``*``, default
``*``) and ``nth`` (the n-th matching APDU fires, default 1; ``every`` fires on
all of them), plus per kind:

- ``tear:ins=D6,bytes=N``  power cut during a write: the first N data bytes of
  the UPDATE BINARY reach EEPROM (and the state file), then the card is gone.
  On other state-changing commands the change is lost (N is ignored).
- ``drop[:after=1]``       the card is pulled before the command runs (or,
  with ``after=1``, after it ran and was persisted, before the answer).
- ``sw:sw=6581``           answer that status word without executing.
- ``delay:seconds=2.5``    wait, then execute normally.

Imports nothing of ours.

Exceptions::

    FaultSpecError(ValueError)
"""
from __future__ import annotations

from dataclasses import dataclass, field

KINDS = ("tear", "drop", "sw", "delay")


class FaultSpecError(ValueError):
    pass


@dataclass
class Fault:
    kind: str
    ins: int | None = None  # None: any INS
    nth: int | None = 1  # None: every matching APDU
    bytes: int = 0
    after: bool = False
    sw: int = 0x6F00
    seconds: float = 0.0
    seen: int = field(default=0, compare=False)
    fired: int = field(default=0, compare=False)

    @classmethod
    def parse(cls, spec: str) -> "Fault":
        kind, _, rest = spec.partition(":")
        kind = kind.strip().lower()
        if kind not in KINDS:
            raise FaultSpecError(f"fault {spec!r}: kind must be one of {', '.join(KINDS)}")
        f = cls(kind)
        for item in filter(None, (x.strip() for x in rest.split(","))):
            key, eq, value = item.partition("=")
            if not eq:
                raise FaultSpecError(f"fault {spec!r}: {item!r} is not key=value")
            try:
                if key == "ins":
                    f.ins = None if value == "*" else int(value, 16)
                    if f.ins is not None and not 0 <= f.ins <= 0xFF:
                        raise ValueError
                elif key == "nth":
                    f.nth = None if value == "every" else int(value)
                    if f.nth is not None and f.nth < 1:
                        raise ValueError
                elif key == "bytes" and kind == "tear":
                    f.bytes = int(value)
                    if f.bytes < 0:
                        raise ValueError
                elif key == "after" and kind == "drop":
                    f.after = value in ("1", "true", "yes")
                elif key == "sw" and kind == "sw":
                    f.sw = int(value, 16)
                    if not 0x6000 <= f.sw <= 0x9FFF:
                        raise ValueError
                elif key == "seconds" and kind == "delay":
                    f.seconds = float(value)
                    if not 0 <= f.seconds <= 600:
                        raise ValueError
                else:
                    raise FaultSpecError(f"fault {spec!r}: unknown key {key!r} for {kind}")
            except ValueError as exc:
                if isinstance(exc, FaultSpecError):
                    raise
                raise FaultSpecError(f"fault {spec!r}: bad value for {key}: {value!r}") from None
        return f

    def matches(self, ins: int) -> bool:
        """Count this APDU; True when the fault fires on it."""
        if self.ins is not None and self.ins != ins:
            return False
        self.seen += 1
        if self.nth is None or self.seen == self.nth:
            self.fired += 1
            return True
        return False


class FaultPlan:
    """The faults armed on one card; first match wins."""

    def __init__(self, faults: list[Fault | str] | None = None):
        self.faults: list[Fault] = [Fault.parse(f) if isinstance(f, str) else f for f in (faults or [])]

    def add(self, fault: Fault | str) -> Fault:
        f = Fault.parse(fault) if isinstance(fault, str) else fault
        self.faults.append(f)
        return f

    def clear(self) -> None:
        self.faults.clear()

    def match(self, ins: int) -> Fault | None:
        hit = None
        for f in self.faults:
            if f.matches(ins) and hit is None:
                hit = f
        return hit
