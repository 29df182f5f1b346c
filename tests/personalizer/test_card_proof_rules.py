"""``personalizer.rules.card_proof.NonceBook``: single use, expiry, bound to card and certificate, bounded memory."""
from __future__ import annotations

import pytest

from personalizer.errors import PermissionDenied
from personalizer.rules.card_proof import NonceBook

A, B = "ICMR000000000001", "ICMR000000000002"


class Clock:
    def __init__(self):
        self.t = 0.0

    def __call__(self):
        return self.t


def test_a_nonce_is_taken_once_for_its_card_and_certificate_only():
    book = NonceBook(clock=Clock())
    n = book.issue(A, b"cert-a")
    with pytest.raises(PermissionDenied):
        book.take(n, B, b"cert-a")         # another card: refused, and the nonce is gone
    with pytest.raises(PermissionDenied):
        book.take(n, A, b"cert-a")
    n = book.issue(A, b"cert-a")
    with pytest.raises(PermissionDenied):
        book.take(n, A, b"cert-other")
    n = book.issue(A, b"cert-a")
    book.take(n, A, b"cert-a")
    with pytest.raises(PermissionDenied) as replay:
        book.take(n, A, b"cert-a")
    assert "already used" in str(replay.value)


def test_a_nonce_expires_and_memory_is_bounded():
    clock = Clock()
    book = NonceBook(ttl_s=120, capacity=5, per_card=2, clock=clock)
    n = book.issue(A, b"c")
    clock.t = 121
    with pytest.raises(PermissionDenied):
        book.take(n, A, b"c")
    first, second, third = (book.issue(A, b"c") for _ in range(3))
    with pytest.raises(PermissionDenied):
        book.take(first, A, b"c")           # at most per_card outstanding: the oldest went
    book.take(third, A, b"c")
    many = [book.issue(f"ICMR0000000001{i:02d}", b"c") for i in range(10)]
    assert len(book._book) <= 5
    book.take(many[-1], "ICMR000000000109", b"c")


def test_someone_else_asking_for_the_same_cards_nonces_never_drops_the_holders():
    """The certificate is public: another address flooding nonces for the card leaves the holder's in place,
    and a nonce is answered only for the address it was given to."""
    book = NonceBook(per_card=2, clock=Clock())
    holder = book.issue(A, b"c", "10.0.0.1")
    for _ in range(10):
        book.issue(A, b"c", "192.0.2.66")
    theirs = book.issue(A, b"c", "192.0.2.66")
    with pytest.raises(PermissionDenied):
        book.take(theirs, A, b"c", "10.0.0.1")
    book.take(holder, A, b"c", "10.0.0.1")
