"""A card key with an impossible exponent or modulus is a card error (``MalformedResponseError``) that
undoes the operation, never a ValueError from the crypto library (issue 10 item 9)."""
from __future__ import annotations

import asyncio

import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from agent.card.cns import CnsSession
from agent.card.errors import MalformedResponseError
from agent.card.issuer import IssuerSession, parse_public_key
from firmware_profiles.emulator import CardRemovedError as EmuRemoved
from firmware_profiles.emulator import EmulatedCard
from tests.support.emulated import EmulatedTransport
from tests.agent.scripted import ScriptedTransport
from tests.ops.test_personalize import MODELS, codes_for, personalize, resume

N2048 = rsa.generate_private_key(65537, 2048).public_key().public_numbers().n
N1024 = rsa.generate_private_key(65537, 1024).public_key().public_numbers().n


def _len(n: int) -> bytes:
    if n < 0x80:
        return bytes([n])
    body = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes([0x80 | len(body)]) + body


def tlv(tag: bytes, value: bytes) -> bytes:
    return tag + _len(len(value)) + value


def pubkey(n: int, e: int) -> bytes:
    def raw(x):
        return x.to_bytes(max(1, (x.bit_length() + 7) // 8), "big")
    return tlv(b"\x7f\x49", tlv(b"\x81", raw(n)) + tlv(b"\x82", raw(e)))


IMPOSSIBLE = {
    "even exponent": (N2048, 4),
    "exponent 1": (N2048, 1),
    "exponent 0": (N2048, 0),
    "exponent not below the modulus": (N2048, N2048 + 2),
    "exponent of 300 bits": (N2048, (1 << 299) | 1),
    "even modulus": (N2048 + 1, 65537),
    "modulus of 8200 bits": ((1 << 8199) | 1, 65537),
    "modulus of 512 bits": (N2048 >> 1536 | 1, 65537),
}


@pytest.mark.parametrize("name", sorted(IMPOSSIBLE))
def test_impossible_key_is_a_card_error(name):
    n, e = IMPOSSIBLE[name]
    with pytest.raises(MalformedResponseError, match="RSA key"):
        parse_public_key(pubkey(n, e))


def test_a_plausible_key_is_read():
    assert parse_public_key(pubkey(N2048, 65537)).public_numbers() == rsa.RSAPublicNumbers(65537, N2048)


def test_a_key_of_another_size_than_asked_is_a_card_error():
    model = MODELS["infocamere-cns-2048"]
    issuer = IssuerSession(CnsSession(ScriptedTransport([("0046", pubkey(N1024, 65537).hex() + "9000")]), model),
                           model)
    with pytest.raises(MalformedResponseError, match="1024-bit RSA key.*2048"):
        issuer.generate_key(0x01, 2048)


class TamperedKey:
    """The emulated card, except that its first answer to GENERATE ASYMMETRIC KEY PAIR (new key) is an
    impossible key: the even exponent 4 over the generated modulus."""

    def __init__(self, card, state):
        self.inner = EmulatedTransport(card, (EmuRemoved,))
        self.state = state

    def transmit(self, apdu: bytes):
        data, sw = self.inner.transmit(apdu)
        if apdu[1] == 0x46 and apdu[2] == 0x00 and not self.state["done"]:
            while sw >> 8 == 0x61:   # collect the whole answer (GET RESPONSE) before rewriting it
                more, sw = self.inner.transmit(bytes([0x00, 0xC0, 0, 0, sw & 0xFF]))
                data += more
            if sw == 0x9000:
                self.state["done"] = True
                return pubkey(parse_public_key(data).public_numbers().n, 4), sw
        return data, sw


def test_personalization_with_an_impossible_card_key_is_undone(station, ops_deployment, tmp_path, monkeypatch):
    from tests.ops import test_personalize as tp

    model = MODELS["infocamere-cns-2048"]
    card = EmulatedCard(model)
    codes = codes_for(model)
    state = {"done": False}

    def connect_to(c):
        def connect():
            if not c.powered:
                c.power_on()
            return TamperedKey(c, state)
        return connect
    monkeypatch.setattr(tp, "connect_to", connect_to)
    with pytest.raises(MalformedResponseError, match="RSA key"):
        asyncio.run(personalize(station, tmp_path / "j.db", card, model, codes))
    out = asyncio.run(resume(station, tmp_path / "j.db", card, model, None))   # reinserted: recovery
    assert out.state == "undone", out.message
    issuer = IssuerSession(CnsSession(EmulatedTransport(card), model), model)
    for ks in model.keysets:
        assert issuer.read_ef(ks.cert_path) is None and issuer.read_public_key(ks.key_ref) is None
    assert asyncio.run(personalize(station, tmp_path / "j2.db", card, model, codes)).state == "done"


@pytest.mark.parametrize("answer", ["another key", "zeros", "above the modulus", "random"])
def test_a_csr_signature_the_card_got_wrong_is_an_operation_error(answer):
    """What the card returns from its raw RSA for a CSR: anything that does not verify is a
    VerificationError (the engine's card-side failure), never a ValueError."""
    import random

    from agent.ops.csr import build_csr
    from agent.ops.errors import VerificationError

    key = rsa.generate_private_key(65537, 1024)
    other = rsa.generate_private_key(65537, 1024)
    rng = random.Random(5)

    def sign(block):
        if answer == "another key":
            p = other.private_numbers()
            return pow(int.from_bytes(block, "big"), p.d, p.public_numbers.n).to_bytes(len(block), "big")
        return {"zeros": bytes(len(block)), "above the modulus": b"\xff" * len(block),
                "random": rng.randbytes(len(block))}[answer]
    with pytest.raises(VerificationError, match="does not verify"):
        build_csr(key.public_key(), [("country_name", "IT"), ("common_name", "x")], sign)


@pytest.fixture(scope="module")
def renew_world(tmp_path_factory):
    from tests.ops import renewal_env as env

    dep = env.make_deployment(tmp_path_factory.mktemp("renew-keys") / "cns", env.free_port())
    p = env.ThreadedPersonalizer(dep)
    yield p, env.station_for(dep)
    p.close()


def test_renewal_with_an_impossible_spare_key_is_undone(renew_world, tmp_path, monkeypatch):
    """The new key of a renewal (spare slot) comes back impossible: a card error, and the recovery
    undoes the renewal; the old certificates and keys stay in force."""
    from agent.ops.journal import Journal
    from tests.ops import renewal_env as env

    p, station = renew_world
    p.ca.reset()
    model = MODELS["infocamere-cns-2048"]
    card = EmulatedCard(model)

    async def with_journal(fn):
        j = await Journal.open(tmp_path / "journal.db")
        try:
            return await fn(j)
        finally:
            await j.close()
    assert asyncio.run(with_journal(lambda j: env.personalize(station, j, card, model))).state == "done"
    before = env.card_view(card, model)
    state = {"done": False}

    def tampered(c):
        def connect():
            if not c.powered:
                c.power_on()
            return TamperedKey(c, state)
        return connect
    monkeypatch.setattr(env, "connect_to", tampered)
    with pytest.raises(MalformedResponseError, match="RSA key"):
        asyncio.run(with_journal(lambda j: env.renew(station, j, card, model)))
    out = asyncio.run(with_journal(lambda j: env.recover(station, j, card, model)))
    assert out is not None and out.state == "undone", out and out.message
    after = env.card_view(card, model, env.codes_for(model).pin)
    for ks in model.keysets:
        assert after[ks.name]["der"] == before[ks.name]["der"] and after[ks.name]["key_matches"]
        assert not after[ks.name]["spare_key"] and not after[ks.name]["spare_cert"]
