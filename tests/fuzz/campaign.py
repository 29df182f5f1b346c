"""The daemon-wide protobuf fuzz: every method of every service on the mTLS and enrollment ports
(``targets.PORTS``), each called as an identity that may call it (so handlers and validators are
reached), then as one that may not, then refused requests one at a time against a digest of the
daemon's stores. Shared by tests/fuzz/test_services.py and ``scripts/bench fuzz``.

Fleet methods rotate over ``fleet_stations`` station identities: the fleet accepts 10 hellos a minute
per station (RESOURCE_EXHAUSTED after that), and a fuzz from one station would mostly test that limit.
The enrollment port is fuzzed 2 calls at a time: it allows 4 streams per connection
(``grpc.max_concurrent_streams``), and at 4 a new call can reach the server before it has counted the
last one closed (REFUSED_STREAM, which grpc reports UNAVAILABLE).

Imports the fuzz engine, the targets and the daemon helper; no grpc server code.
"""
from __future__ import annotations

import asyncio
import itertools
import time

from tests.fuzz import protofuzz
from tests.fuzz.daemon import FuzzDaemon
from tests.fuzz.targets import ENROLL, MAIN, SECRET_KEY, SECRET_MARKERS, role_for, seeds_for, wrong_role_for

ENROLL_CONCURRENCY = 2
MALFORMED = b"\x0a\xff\xff\xff\xff\x0f"   # a length prefix far past the end: undecodable for every type


def _role_of(path: str) -> str:
    return role_for(path) if any(m.path == path for m in MAIN) else "station"


SEEDS = None


def seeds() -> dict:
    global SEEDS
    if SEEDS is None:
        SEEDS = seeds_for(MAIN + ENROLL, role_of=_role_of)
    return SEEDS


class Clients:
    """aio channels (and synchronous ones for client streams) per identity, made on first use."""

    def __init__(self, d: FuzzDaemon, *, fleet_stations: int = 8):
        self.d = d
        self._aio: dict = {}
        self._sync: dict = {}
        self._fleet = itertools.cycle([f"station-{i}" for i in range(1, fleet_stations + 1)])

    def _who(self, m: protofuzz.Method, wrong: bool = False) -> str:
        if m in ENROLL:
            return "enroll"
        if wrong:
            return wrong_role_for(m.path)
        if m.path.startswith("/cns.v1.Fleet/"):
            return next(self._fleet)
        return role_for(m.path)

    def aio(self, who: str):
        if who not in self._aio:
            self._aio[who] = self.d.channel(who)
        return self._aio[who]

    def sync(self, who: str):
        if who not in self._sync:
            self._sync[who] = self.d.sync_channel(who)
        return self._sync[who]

    def pick(self, m, wrong: bool = False):
        """(aio channel, sync channel) for one call of ``m``: the same identity for both."""
        who = self._who(m, wrong)
        return self.aio(who), (self.sync(who) if m.client_streaming else None)

    async def close(self) -> None:
        for ch in self._aio.values():
            await ch.close()
        for ch in self._sync.values():
            ch.close()


async def _fuzz(clients: Clients, methods, *, per_method: int, seed: int, wrong: bool = False,
                concurrency: int = 8, timeout: float = 5.0) -> protofuzz.Tally:
    """One fuzz run where each call's aio and sync channel are the same identity."""
    picked: dict = {}

    def aio_for(m):
        ch, sync = clients.pick(m, wrong)
        picked[m.path] = sync
        return ch

    return await protofuzz.fuzz(aio_for, methods, per_method=per_method, seed=seed, seeds=seeds(),
                                timeout=timeout, concurrency=concurrency,
                                sync_channel=lambda m: picked[m.path])


async def send_seeds(clients: Clients, methods=None) -> dict[str, tuple[str, str]]:
    """Path → (code name, details) of each method's well-formed seed sent as it is: whether the seeds
    reach the handlers (a fuzz of decoder refusals only would prove little)."""
    out = {}
    for m in methods or MAIN + ENROLL:
        ch, sync = clients.pick(m)
        seed = seeds().get(m.path, [m.input_type()])[0].SerializeToString()
        code, details = await protofuzz._one(ch, m, seed, 5.0, sync)
        out[m.path] = (code.name, details)
    return out


async def fuzz_all(clients: Clients, *, per_method: int, seed: int, timeout: float = 5.0) -> protofuzz.Tally:
    """Every method of both ports as an identity allowed to call it."""
    tally = await _fuzz(clients, MAIN, per_method=per_method, seed=seed, timeout=timeout)
    tally.merge(await _fuzz(clients, ENROLL, per_method=per_method, seed=seed + 1, timeout=timeout,
                            concurrency=ENROLL_CONCURRENCY))
    return tally


def wrong_role_methods() -> list[protofuzz.Method]:
    return [m for m in MAIN if wrong_role_for(m.path) is not None]


async def probe(clients: Clients, port: str, methods) -> dict[str, str]:
    """Path → the answer to an empty request on ``port`` ("main" as a station, then as an admin; "enroll"):
    grpc's "Method not found!" (UNIMPLEMENTED) means the port does not serve it."""
    out = {}
    for m in methods:
        answers = []
        for who in (("station", "admin") if port == "main" else ("enroll",)):
            sync = clients.sync(who) if m.client_streaming else None
            code, details = await protofuzz._one(clients.aio(who), m, b"", 5.0, sync)
            answers.append(f"{code.name} {details}")
        out[m.path] = next((a for a in answers if "Method not found" not in a), answers[0])
    return out


async def fuzz_wrong_roles(clients: Clients, *, per_method: int, seed: int) -> protofuzz.Tally:
    """Every restricted main-port method as an identity that may not call it."""
    return await _fuzz(clients, wrong_role_methods(), per_method=per_method, seed=seed, wrong=True)


async def _settled(d: FuzzDaemon, *, pause: float = 0.1, limit: float = 10.0) -> dict:
    """The store digest once two reads ``pause`` apart agree (work an accepted call started is done)."""
    deadline = time.monotonic() + limit
    last = d.store_digest()
    while time.monotonic() < deadline:
        await asyncio.sleep(pause)
        now = d.store_digest()
        if now == last:
            return now
        last = now
    return last


async def refusals_leave_the_store(d: FuzzDaemon, clients: Clients, *, per_method: int, seed: int):
    """Refused calls one at a time: every main and enrollment method as a wrong identity (when one
    exists), with an undecodable request, and ``per_method`` fuzzed well-formed requests; after each
    refusal the store digest must be the one before it. Returns (tally, findings)."""
    mut = protofuzz.Mutator(seed)
    tally, findings = protofuzz.Tally(), []
    before = await _settled(d)
    for m in MAIN + ENROLL:
        cases = [(False, MALFORMED)] + [(False, mut.valid(m.input_type, seeds().get(m.path, ())))
                                        for _ in range(per_method)]
        if m in MAIN and wrong_role_for(m.path) is not None:
            default = seeds().get(m.path, [m.input_type()])[0].SerializeToString()
            cases.insert(0, (True, default))
        for wrong, payload in cases:
            ch, sync = clients.pick(m, wrong)
            code, details = await protofuzz._one(ch, m, payload, 5.0, sync)
            tally.add(m, "wrong-role" if wrong else "refusal", payload, code, details)
            if code.name == "OK":
                before = await _settled(d)
                continue
            after = d.store_digest()
            if after != before:
                changed = sorted(k for k in after if after[k] != before.get(k))
                findings.append(f"{m.path} {code.name} {details[:120]!r} changed {changed}")
                before = await _settled(d)
    return tally, findings


def secrets_seen(d: FuzzDaemon) -> list[str]:
    """The seeds' secret markers found in the daemon's log or stores (must be none)."""
    log_text, stored = d.log(), d.stored_bytes()
    found = [f"log: {s}" for s in SECRET_MARKERS if s in log_text]
    found += [f"store: {s}" for s in SECRET_MARKERS if s.encode() in stored]
    if SECRET_KEY in stored:
        found.append("store: the transport key's bytes")
    return found
