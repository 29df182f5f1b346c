"""Distinct RSA-2048 test keys, cheaply: every pair of a growing pool of primes is one key.

The personalizer certifies a public key once (one holder, one profile, one request), so tests
and benchmarks that submit many requests need many distinct keys. Generating an RSA-2048 key
costs ~50-100 ms; here k generated keys give 2k primes and (2k)(2k-1)/2 distinct moduli, so a
test session or a benchmark of thousands of requests pays for a few dozen key generations.

TEST KEYS ONLY: keys that share a prime are factored by a gcd of their moduli. Never use this
outside tests and benchmarks.

    fresh_key()            a key no earlier call of this process returned
    key_for(public_key)    the private key of a public key handed out here (None if not ours)

Imports cryptography only.
"""
from __future__ import annotations

import itertools
import threading

from cryptography.hazmat.primitives.asymmetric import rsa

BITS = 2048
E = 65537

_lock = threading.Lock()
_primes: list[int] = []
_by_modulus: dict[int, rsa.RSAPrivateKey] = {}
_pairs = ((a, b) for a in itertools.count(1) for b in range(a))   # (1,0), (2,0), (2,1), (3,0), ...


def _key(p: int, q: int) -> rsa.RSAPrivateKey:
    if p < q:
        p, q = q, p
    d = rsa.rsa_recover_private_exponent(E, p, q)
    numbers = rsa.RSAPrivateNumbers(p=p, q=q, d=d, dmp1=rsa.rsa_crt_dmp1(d, p), dmq1=rsa.rsa_crt_dmq1(d, q),
                                    iqmp=rsa.rsa_crt_iqmp(p, q), public_numbers=rsa.RSAPublicNumbers(E, p * q))
    return numbers.private_key(unsafe_skip_rsa_key_validation=True)


def fresh_key() -> rsa.RSAPrivateKey:
    """An RSA-2048 key (exponent 65537) distinct from every other one this process got from here."""
    with _lock:
        while True:
            a, b = next(_pairs)
            while len(_primes) <= a:
                generated = rsa.generate_private_key(E, BITS).private_numbers()
                _primes.extend((generated.p, generated.q))
            p, q = _primes[a], _primes[b]
            # OpenSSL's primes are >= sqrt(2)·2^1023, so any product has exactly 2048 bits; checked anyway
            if (p * q).bit_length() == BITS:
                key = _key(p, q)
                _by_modulus[p * q] = key
                return key


def key_for(public_key) -> rsa.RSAPrivateKey | None:
    """The private key of ``public_key`` if it came from ``fresh_key``."""
    with _lock:
        return _by_modulus.get(public_key.public_numbers().n)
