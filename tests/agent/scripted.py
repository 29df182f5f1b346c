"""A transport that answers from a script, for the processor tests.

Each step is (expected command prefix as hex, response as hex incl. SW). The
transport fails the test on any command the script does not expect.
"""
from __future__ import annotations


class ScriptedTransport:
    def __init__(self, steps: list[tuple[str, str]]) -> None:
        self.steps = [(bytes.fromhex(c), bytes.fromhex(r)) for c, r in steps]
        self.sent: list[bytes] = []

    def transmit(self, apdu: bytes) -> tuple[bytes, int]:
        self.sent.append(bytes(apdu))
        assert self.steps, f"unexpected command {apdu.hex()}"
        expect, response = self.steps.pop(0)
        assert apdu.startswith(expect), f"sent {apdu.hex()}, script expected {expect.hex()}…"
        return response[:-2], int.from_bytes(response[-2:], "big")

    def done(self) -> bool:
        return not self.steps
