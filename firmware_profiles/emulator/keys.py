"""RSA for the emulated card: key generation (fresh or from a cached pool) and
raw RSA private operations.

Owns: the precomputed key pool used by the ``zero`` timing model, so that tests
and benchmarks measure our code rather than Python key generation. The pool is
generated once per RSA size and cached under ``$CNS_EMULATOR_CACHE`` (default
``~/.cache/cns-emulator``). A draw is a PAIR of primes, one of them generated
by this process (one key generation per ~2·(2·POOL_SIZE) draws), the other
from the pool or earlier in this process: no modulus is ever drawn twice, in
this process or another (the personalizer certifies a public key once, and
real cards never generate the same key twice). Keys sharing a prime are weak:
this is an emulator for tests only.

Imports: ``firmware_profiles.emulator.state`` only.
"""
from __future__ import annotations

import fcntl
import json
import os
import threading
from collections.abc import Iterator
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric import rsa

from firmware_profiles.emulator.state import KeyRecord

PUBLIC_EXPONENT = 65537
POOL_SIZE = 16

_lock = threading.Lock()
_draws: dict[int, Iterator[tuple[int, int]]] = {}


def cache_dir() -> Path:
    env = os.environ.get("CNS_EMULATOR_CACHE")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "cns-emulator"


def generate(bits: int) -> KeyRecord:
    key = rsa.generate_private_key(public_exponent=PUBLIC_EXPONENT, key_size=bits)
    nums = key.private_numbers()
    return KeyRecord(nums.public_numbers.n, nums.public_numbers.e, nums.d, nums.p, nums.q)


def _load_pool(bits: int) -> list[KeyRecord]:
    d = cache_dir()
    d.mkdir(parents=True, exist_ok=True)
    path = d / f"rsa-{bits}-pool.json"
    with open(d / f"rsa-{bits}-pool.lock", "a+") as lockf:
        fcntl.flock(lockf, fcntl.LOCK_EX)  # one process generates; the others wait and read
        try:
            keys = [KeyRecord.from_json(k) for k in json.loads(path.read_text())]
            if len(keys) >= POOL_SIZE and all(k.bits == bits for k in keys):
                return keys
        except (OSError, ValueError, KeyError, TypeError):
            pass
        keys = [generate(bits) for _ in range(POOL_SIZE)]
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps([k.to_json() for k in keys]))
        os.replace(tmp, path)
        return keys


def _pairs(bits: int) -> Iterator[tuple[int, int]]:
    """Pairs of primes, each with one prime of this process's own: no other process draws its moduli."""
    shared = [p for k in _load_pool(bits) for p in (k.p, k.q)]
    own: list[int] = []
    while True:   # one key generated per 2·(pool + own) draws
        fresh = generate(bits)
        for prime in (fresh.p, fresh.q):
            for other in shared + own:
                yield max(prime, other), min(prime, other)
            own.append(prime)


def from_pool(bits: int) -> KeyRecord:
    """A key made of the cached pool's primes and this process's own: never the same modulus twice."""
    with _lock:
        pairs = _draws.setdefault(bits, _pairs(bits))
        while True:
            p, q = next(pairs)
            if (p * q).bit_length() == bits:
                d = rsa.rsa_recover_private_exponent(PUBLIC_EXPONENT, p, q)
                return KeyRecord(p * q, PUBLIC_EXPONENT, d, p, q)


def private_op(key: KeyRecord, block: bytes) -> bytes | None:
    """Raw RSA (m^d mod n, by CRT) on a block; None when the block is not below the modulus."""
    k = (key.bits + 7) // 8
    m = int.from_bytes(block, "big")
    if len(block) > k or m >= key.n:
        return None
    dp, dq = key.d % (key.p - 1), key.d % (key.q - 1)
    qinv = pow(key.q, -1, key.p)
    m1, m2 = pow(m, dp, key.p), pow(m, dq, key.q)
    h = (qinv * (m1 - m2)) % key.p
    return (m2 + h * key.q).to_bytes(k, "big")
