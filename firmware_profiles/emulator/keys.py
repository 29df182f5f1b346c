"""RSA for the emulated card: key generation (fresh or from a cached pool) and
raw RSA private operations.

Owns: the precomputed key pool used by the ``zero`` timing model, so that tests
and benchmarks measure our code rather than Python key generation. The pool is
generated once per RSA size and cached under ``$CNS_EMULATOR_CACHE`` (default
``~/.cache/cns-emulator``). A draw is a PAIR of the pool's primes, so draws in
one process never repeat a modulus (the personalizer certifies a public key
once, as real cards never generate the same key twice): POOL_SIZE keys give
2·POOL_SIZE primes, and more primes are generated in memory when a long run
(a benchmark of thousands of renewals) has used every pair. Keys sharing a
prime are weak: this is an emulator for tests only.

Imports: ``firmware_profiles.emulator.state`` only.
"""
from __future__ import annotations

import fcntl
import json
import os
import random
import threading
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric import rsa

from firmware_profiles.emulator.state import KeyRecord

PUBLIC_EXPONENT = 65537
POOL_SIZE = 16

_lock = threading.Lock()
_primes: dict[int, list[int]] = {}
_next: dict[int, int] = {}


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


def _pair(bits: int, i: int) -> KeyRecord | None:
    """The i-th pair of primes (1,0), (2,0), (2,1), (3,0), ... as a key; None if its modulus is short."""
    a = int((1 + (1 + 8 * i) ** 0.5) / 2)
    while a * (a - 1) // 2 > i:
        a -= 1
    while (a + 1) * a // 2 <= i:
        a += 1
    b = i - a * (a - 1) // 2
    primes = _primes[bits]
    while len(primes) <= a:   # every pair used: more primes (in memory)
        k = generate(bits)
        primes.extend((k.p, k.q))
    p, q = max(primes[a], primes[b]), min(primes[a], primes[b])
    if (p * q).bit_length() != bits:
        return None
    d = rsa.rsa_recover_private_exponent(PUBLIC_EXPONENT, p, q)
    return KeyRecord(p * q, PUBLIC_EXPONENT, d, p, q)


def from_pool(bits: int) -> KeyRecord:
    """A key built from the cached pool's primes, never the same modulus twice in a process."""
    with _lock:
        if bits not in _primes:
            _primes[bits] = [p for k in _load_pool(bits) for p in (k.p, k.q)]
            n = len(_primes[bits])
            _next[bits] = random.randrange(n * (n - 1) // 2)   # processes start apart
        while True:
            i = _next[bits]
            _next[bits] = i + 1
            key = _pair(bits, i)
            if key is not None:
                return key


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
