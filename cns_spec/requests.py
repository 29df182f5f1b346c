"""The request-state vocabulary of the personalizer's outbox, as the agent sees it on the wire.

A request is RECEIVED (recorded), PENDING (sent to the CA, waiting), then ends ISSUED (certificate), DONE
(a status change applied), FAILED (refused) or CANCELLED (by central IT before it reached the CA).
``NAMES`` are the personalizer's stored names; ``CODES`` the ``cns.v1.RequestState`` numbers the agent's
operations receive through the uplink (they may not import proto; tests/spec checks the two agree).

Pure: standard library only, nothing of ours, no I/O.
"""
from __future__ import annotations

RECEIVED, PENDING, ISSUED, FAILED, DONE, CANCELLED = "RECEIVED", "PENDING", "ISSUED", "FAILED", "DONE", "CANCELLED"
NAMES: tuple[str, ...] = (RECEIVED, PENDING, ISSUED, FAILED, DONE, CANCELLED)
TERMINAL: tuple[str, ...] = (ISSUED, DONE, FAILED, CANCELLED)

CODES: dict[str, int] = {RECEIVED: 1, PENDING: 2, ISSUED: 3, FAILED: 4, DONE: 5, CANCELLED: 6}
CODE_ISSUED, CODE_FAILED, CODE_DONE, CODE_CANCELLED = CODES[ISSUED], CODES[FAILED], CODES[DONE], CODES[CANCELLED]
TERMINAL_CODES: tuple[int, ...] = tuple(CODES[n] for n in TERMINAL)


def name_of(code: int) -> str:
    """``cns.v1.RequestState`` number → lower-case name for messages (0 → ``unspecified``, unknown → the number)."""
    for name, c in CODES.items():
        if c == code:
            return name.lower()
    return "unspecified" if code == 0 else str(code)


__all__ = ["CANCELLED", "CODES", "CODE_CANCELLED", "CODE_DONE", "CODE_FAILED", "CODE_ISSUED", "DONE", "FAILED",
           "ISSUED", "NAMES", "PENDING", "RECEIVED", "TERMINAL", "TERMINAL_CODES", "name_of"]
