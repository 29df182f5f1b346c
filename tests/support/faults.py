"""Card faults armed at a journaled step of an operation: one home for the renewal fault matrix
(tests/integration/test_renew_faults.py) and its benchmark (benchmarks/renew_faults.py).

``arm_card_fault(kind, step, card)`` arms an ``EmulatedCard`` fault (firmware_profiles.emulator.faults)
for the step's command, by the instruction bytes the step sends:

* ``tear``  power cut during the step's write (only the first ``tear_bytes`` land); a step that writes
            nothing: the card is pulled at once
* ``drop``  card pulled after the step's write ran but before its answer (``drop_after_write``: else
            before the step's first command)
* ``sw``    the card answers ``6581`` (memory failure) to the step's main command

Returns False for a kind that is not a card fault (the caller arms its CA or personalizer fault).
Imports nothing of ours: the card is passed in.
"""
from __future__ import annotations

CARD_KINDS = ("tear", "drop", "sw")
# INS bytes of each step's write (UPDATE BINARY, GENERATE KEY, SWITCH KEYSET, ERASE) and main command
WRITE_INS = {"mark": "D6", "generate-key": "46", "write-cert": "D6", "switch": "D8", "cleanup": "EA", "unmark": "D6"}
MAIN_INS = {**WRITE_INS, "write-cert": "E0", "csr": "2A", "verify": "2A"}


def step_name(step: str) -> str:
    """``generate-key:CNS0`` → ``generate-key``."""
    return step.split(":")[0]


def arm_card_fault(kind: str, step: str, card, *, tear_bytes: int | None = None,
                   drop_after_write: bool = True) -> bool:
    name = step_name(step)
    if kind == "tear":
        if name in WRITE_INS:
            size = tear_bytes if tear_bytes is not None else (100 if name == "write-cert" else 8)
            card.faults.add(f"tear:ins={WRITE_INS[name]},bytes={size}")
        else:
            card.pull()
    elif kind == "drop":
        card.faults.add(f"drop:ins={WRITE_INS[name]},after=1" if name in WRITE_INS and drop_after_write
                        else "drop:ins=*")
    elif kind == "sw":
        card.faults.add(f"sw:ins={MAIN_INS.get(name, '*')},sw=6581")
    else:
        return False
    return True
