"""Randomized fault trials on emulated tokens, shared by the tests (a bounded sample) and
``scripts/bench token-faults`` (the full run).

Faults: ``tear`` (power cut after N flash bytes, N uniform over the whole operation's
writes), ``unplug`` (the token pulled at the n-th USB transfer), ``kill`` (the agent dies
at a progress point: nothing after it runs, as under SIGKILL). After the fault the token is
replugged and checked as a user needs it, BEFORE anything repairs it: the CD-ROM reads the
old or the new image in full, the firmware is the old or the new one or the token is in its
bootloader (found by its ids, flashable), and a token in runtime mode has a chip that signs
through its reader. Then the operation is run again as the agent does on the next insert, and must
end done with no operation left open and the chip signing through its reader (CCID or HID over the
bus, as the OS's reader driver reaches it: VERIFY PIN, PSO COMPUTE DIGITAL SIGNATURE, the signature
checked against the chip's certificate). Each token's chip is a personalized CNS (keys, certificates,
PIN), restored from one snapshot per model. A trial that finds the token otherwise raises ``Bricked``.
"""
from __future__ import annotations

import asyncio
import functools
import random

from agent.devices.usb import UsbTokenBackend
from agent.ops.errors import PreconditionError
from agent.ops.journal import Journal
from tests.tokens.helpers import cdrom_payload, firmware, flash_firmware, read_cdrom, running, setup_token, signed, update
from tests.tokens.reader import signs_through_reader

FAULTS = ("tear", "unplug", "kill")


class Bricked(AssertionError):
    """The token was left in a state no user can use."""


class _Killed(BaseException):
    pass


def _killer(kill_at: int | None):
    calls = [0]

    def progress(step, done, total):
        calls[0] += 1
        if kill_at is not None and calls[0] == kill_at:
            raise _Killed()
    return progress


class TearPoints:
    """Where a clean run of the operation writes. A tear is drawn, in thirds: uniformly over all its
    bytes; within the first 64 bytes of a randomly chosen data write; within the first 64 bytes of a
    randomly chosen metadata-record write (a record's header and JSON come first: uniform bytes alone
    would almost never cut one of the few 4 KiB records where it matters)."""

    def __init__(self, total: int, starts: list[int], meta_starts: list[int], transfers: int = 80):
        self.total, self.starts, self.meta_starts = total, starts, meta_starts
        self.transfers = transfers   # USB transfers of the clean run (an unplug is drawn among them)

    def draw(self, rng: random.Random) -> int:
        kind = rng.randrange(3)
        pool = self.starts if kind == 1 else self.meta_starts if kind == 2 else []
        if not pool:
            return rng.randrange(self.total)
        return min(self.total - 1, rng.choice(pool) + rng.randrange(64))


def _arm(bus, token, fault: str, rng: random.Random, tears: "TearPoints | int", transfers: int) -> int | None:
    if fault == "tear":
        token.flash.cut_after(tears.draw(rng) if isinstance(tears, TearPoints) else rng.randrange(tears))
    elif fault == "unplug":
        bus.unplug_after(rng.randrange(1, transfers + 1))
    else:
        return rng.randrange(1, 8)
    return None


def _disarm(bus, token) -> None:
    token.flash.cut_after(None)
    bus.unplug_after(None)
    bus.replug(token)


def _open_ops(d, serial) -> int:
    async def count():
        j = await Journal.open(d / "journal.db")
        try:
            return len(await j.open_operations(serial))
        finally:
            await j.close()
    return asyncio.run(count())


def _cdrom(bus, token) -> bytes:
    try:
        return read_cdrom(bus, token)
    except Exception as exc:  # no mass storage (stuck in a mode it should not be in), no medium, an error
        raise Bricked(f"the CD-ROM cannot be read: {type(exc).__name__} {exc}") from None


@functools.lru_cache(maxsize=None)
def _personalized_chip(chip_model_id: str):
    """(snapshot, Personalized) of one personalized chip of this card model: RSA keys are generated once."""
    from firmware_profiles.emulator import EmulatedCard
    from firmware_profiles.model import load_models
    from tests.support import cardprep
    card = EmulatedCard(load_models()[chip_model_id])
    prep = cardprep.personalize(card)
    return card.snapshot(), prep


def _chip(model):
    """A personalized chip for a trial's token (its own object, restored from the model's snapshot)."""
    from firmware_profiles.emulator import EmulatedCard
    from firmware_profiles.model import load_models
    snapshot, prep = _personalized_chip(model.chip)
    card = EmulatedCard(load_models()[model.chip])
    card.restore(snapshot)
    return card, prep


SIGNATURES = [0]   # signatures verified through a token's reader (the bench reports it)


def _chip_signs(bus, token, prep) -> None:
    try:
        signs_through_reader(bus, token, prep)
    except Exception as exc:
        raise Bricked(f"the chip does not sign through the token's reader: {type(exc).__name__} {exc}") from None
    SIGNATURES[0] += 1


def partition_trial(d, model, fault: str, rng: random.Random, total_bytes: "TearPoints | int", *,
                    second: bool = False) -> str:
    """One partition-update trial in the empty folder ``d``; returns "old" | "new" (what the CD-ROM showed).
    ``second``: the faulted update is the CD-ROM's second (a clean one went first), so it is staged back into
    the factory home the first one left (the A/B alternation)."""
    card, prep = _chip(model)
    bus, token = setup_token(d, model, card=card)
    if second:
        result, _ = asyncio.run(update(d, bus, token, signed(model, cdrom_payload(change=2), version="1.5.0")))
        assert result.state == "done" and token.meta["map"]["cdrom"] == "A", result.reason
    old = _cdrom(bus, token)
    new = faulted_cdrom()
    blob = signed(model, new)
    kill_at = _arm(bus, token, fault, rng, total_bytes, getattr(total_bytes, "transfers", 80))
    try:
        asyncio.run(update(d, bus, token, blob, progress=_killer(kill_at)))
    except _Killed:
        pass
    except PreconditionError as exc:  # pulled before the operation began: nothing was done
        if "repeat the command" not in str(exc):
            raise
    _disarm(bus, token)
    seen = _cdrom(bus, token)
    if seen not in (old, new):
        raise Bricked("the CD-ROM shows neither the old nor the new image")
    _chip_signs(bus, token, prep)     # the user can sign while the update waits to be finished
    try:
        result, _ = asyncio.run(update(d, bus, token, blob))
        if result.state != "done":
            raise Bricked(f"the resumed update ended {result.state}: {result.reason}")
    except PreconditionError as exc:
        if "already holds" not in str(exc):
            raise
    if _cdrom(bus, token) != new or _open_ops(d, token.serial):
        raise Bricked("the update did not finish on the next run")
    if second and token.meta["map"]["cdrom"] != "cdrom":
        raise Bricked(f"the second update went to region {token.meta['map']['cdrom']}, not back to the CD-ROM's home")
    _chip_signs(bus, token, prep)
    token.flash.close()
    return "new" if seen == new else "old"


def faulted_cdrom() -> bytes:
    """The image a faulted trial installs: one file edited at its start (one block) and one rewritten whole (a
    run of ~10 blocks, sent as one bulk write on a model with the bulk endpoint)."""
    return cdrom_payload(change=4).replace(bytes([6]) * 40_000, bytes([0x66]) * 40_000)


def partition_tear_points(d, model) -> TearPoints:
    """The flash writes of one clean partition update (what tear points are drawn from)."""
    bus, token = setup_token(d, model)
    before = token.flash.bytes_written
    starts: list[int] = []
    meta: list[int] = []
    write = token.flash.write

    def recording(offset, data):
        (meta if offset < 8192 else starts).append(token.flash.bytes_written - before)
        return write(offset, data)
    token.flash.write = recording
    t0 = bus.transfers
    asyncio.run(update(d, bus, token, signed(model, faulted_cdrom())))
    token.flash.close()
    return TearPoints(token.flash.bytes_written - before, starts, meta, bus.transfers - t0)


def partition_update_bytes(d, model) -> int:
    """Flash bytes one clean partition update writes."""
    return partition_tear_points(d, model).total


def firmware_trial(d, model, fault: str, rng: random.Random, blob: bytes) -> str:
    """One firmware-refresh trial; returns "old" | "new" | "bootloader" (what the token was after the fault)."""
    card, prep = _chip(model)
    bus, token = setup_token(d, model, n_files=2, card=card)
    old_version = model.firmware.version
    kill_at = _arm(bus, token, fault, rng, len(blob) + 12_288, len(blob) // 4096 * 2 + 12)
    try:
        asyncio.run(flash_firmware(d, bus, token, blob, progress=_killer(kill_at)))
    except _Killed:
        pass
    except PreconditionError as exc:
        if "repeat the command" not in str(exc):
            raise
    _disarm(bus, token)
    found = UsbTokenBackend(bus).scan()
    if len(found) != 1:
        raise Bricked("the token is not found on the bus after the fault")
    info = found[0]
    if info.mode == "bootloader":
        state = "bootloader"
    elif info.firmware in (old_version, "3.0.0"):
        state = "new" if info.firmware == "3.0.0" else "old"
        _cdrom(bus, token)
        _chip_signs(bus, token, prep)
    else:
        raise Bricked(f"the token runs firmware {info.firmware!r}, neither old nor new")
    try:
        result = asyncio.run(flash_firmware(d, bus, token, blob))
        if result.state != "done":
            raise Bricked(f"the resumed firmware update ended {result.state}: {result.reason}")
    except PreconditionError as exc:
        if "already runs" not in str(exc):
            raise
    if running(bus) != ("runtime", "3.0.0") or _open_ops(d, token.serial):
        raise Bricked("the firmware update did not finish on the next run")
    _cdrom(bus, token)
    _chip_signs(bus, token, prep)
    token.flash.close()
    return state


def partition_fault_matrix(tmp_path, model, n: int, seed: int, *, second: bool = False) -> dict:
    (tmp_path / "probe").mkdir()
    total = partition_tear_points(tmp_path / "probe", model)
    rng = random.Random(seed)
    seen = {"old": 0, "new": 0}
    for i in range(n):
        d = tmp_path / f"p{i}"
        d.mkdir()
        seen[partition_trial(d, model, FAULTS[i % 3], rng, total, second=second)] += 1
    return seen


def firmware_fault_trials(tmp_path, model, n: int, seed: int) -> dict:
    rng = random.Random(seed)
    blob = firmware(model)
    seen = {"old": 0, "new": 0, "bootloader": 0}
    for i in range(n):
        d = tmp_path / f"f{i}"
        d.mkdir()
        seen[firmware_trial(d, model, FAULTS[i % 3], rng, blob)] += 1
    return seen
