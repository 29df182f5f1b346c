"""The emulator's zero-latency key generation never repeats a modulus in a process.

Real cards never generate the same key twice, and the personalizer certifies a public key
once (issue 10 item 6): a pool that cycled every 16 draws made the 9th card's keys be refused.
"""
from __future__ import annotations

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from firmware_profiles.emulator import keys


def test_draws_are_distinct_far_beyond_the_cached_pool_and_valid_rsa():
    draws = [keys.from_pool(2048) for _ in range(keys.POOL_SIZE * 40)]
    assert len({k.n for k in draws}) == len(draws)
    for k in draws[:3] + draws[-3:]:
        assert k.bits == 2048 and k.e == 65537
        priv = rsa.RSAPrivateNumbers(k.p, k.q, k.d, rsa.rsa_crt_dmp1(k.d, k.p), rsa.rsa_crt_dmq1(k.d, k.q),
                                     rsa.rsa_crt_iqmp(k.p, k.q), rsa.RSAPublicNumbers(k.e, k.n)).private_key()
        sig = priv.sign(b"data", padding.PKCS1v15(), hashes.SHA256())
        priv.public_key().verify(sig, b"data", padding.PKCS1v15(), hashes.SHA256())
