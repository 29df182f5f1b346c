"""APDU-response fuzz of the agent's card layer (``agent.card.cns``, ``agent.card.issuer``) and the CSR it
signs (``agent.ops.csr``), through the transport seam.

Each run takes a fresh emulated card of a model and drives a personalization-shaped session (serial,
EF_DatiPersonali, issuer authentication, codes, key generation and read-back, certificate file, PIN
status and VERIFY, raw signature, CSR) through ``MutatingTransport``: the emulator answers every APDU,
and the answers the run's seed picks are replaced (random bytes, truncated, bit-flipped, emptied,
padded, another status word, a 61xx/6Cxx that lies, one BER-TLV value set to an edge value with the
lengths kept consistent), either as the card sends them or as the session sees them after chaining. The session may fail only with the card error
tree (``agent.card.errors.CardError``) or, for the CSR, ``agent.ops.errors.VerificationError``;
anything else (ValueError, IndexError, …) is a finding, kept with its reproducer (model, seed).
Used by tests/fuzz/test_apdu.py and ``scripts/bench fuzz``.
"""
from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass, field

from agent.card.cns import CnsSession
from agent.card.errors import CardError
from agent.card.issuer import IssuerSession
from agent.card.transport import processed
from agent.ops.csr import build_csr, pkcs1_v15_sha256_block
from agent.ops.errors import VerificationError
from agent.ops.holder import HolderRecord
from firmware_profiles.emulator import CardRemovedError as EmuRemoved
from firmware_profiles.emulator import EmulatedCard
from firmware_profiles.emulator.admin import SoftwareAuthenticator
from tests.support.emulated import EmulatedTransport

HOLDER = HolderRecord(codice_fiscale="RSSMRA80A01H501U", given_name="Mario", surname="Rossi",
                      birth_date="1980-01-01", sex="M", birth_town="ROMA", issuer="CCIAA di Roma")
MUTATIONS = ("random", "truncated", "flipped", "empty-ok", "padded", "status", "more-data-lie", "wrong-length",
             "tlv", "tlv", "tlv")
ALLOWED = (CardError, VerificationError)


class MutatingTransport:
    """The emulated card's transport, with the answers to APDU numbers ``targets`` replaced. ``assembled``:
    mutate above the session's chaining (whole answers, so TLV edits hit whole structures; the session
    then runs ``raw`` over this) instead of the card's raw answers."""

    def __init__(self, card, rng: random.Random, targets: set[int], *, assembled: bool = False):
        self.assembled = assembled
        inner = EmulatedTransport(card, (EmuRemoved,))
        self.inner = processed(inner) if assembled else inner
        self.rng = rng
        self.targets = targets
        self.count = 0
        self.applied: list[str] = []

    def transmit(self, apdu: bytes) -> tuple[bytes, int]:
        data, sw = self.inner.transmit(apdu)
        n, self.count = self.count, self.count + 1
        if n not in self.targets:
            return data, sw
        kind = self.rng.choice(MUTATIONS)
        self.applied.append(f"#{n} INS {apdu[1]:02X} {kind}")
        return mutate(self.rng, kind, data, sw)


def mutate(r: random.Random, kind: str, data: bytes, sw: int) -> tuple[bytes, int]:
    if kind == "random":
        return r.randbytes(r.choice([0, 1, 2, 5, 16, 255, 600])), r.choice([0x9000, r.randrange(0x10000)])
    if kind == "truncated":
        return data[:r.randrange(len(data))] if data else b"", sw
    if kind == "flipped":
        buf = bytearray(data)
        for _ in range(r.randint(1, 4) if buf else 0):
            buf[r.randrange(len(buf))] ^= 1 << r.randrange(8)
        return bytes(buf), sw
    if kind == "empty-ok":
        return b"", 0x9000
    if kind == "padded":
        return data + r.randbytes(r.choice([1, 16, 300])), sw
    if kind == "status":
        return data, r.choice([0x6282, 0x6300, 0x63C0, 0x63CF, 0x6581, 0x6700, 0x6982, 0x6983, 0x6984, 0x6A82,
                               0x6A86, 0x6A88, 0x6B00, 0x6D00, 0x6E00, 0x6F00, 0x9000, 0x0000, 0xFFFF])
    if kind == "more-data-lie":
        return data, r.choice([0x6100, 0x61FF, 0x6C00, 0x6C10, 0x6CFF])
    if kind == "tlv":
        edited = _edit_tlv(r, data)
        if edited is not None:
            return edited, sw
        kind = "wrong-length"
    # wrong-length: a BER length byte inside the data set to something impossible
    if data:
        buf = bytearray(data)
        buf[r.randrange(len(buf))] = r.choice([0x81, 0x82, 0x84, 0x88, 0xFF, 0x00])
        return bytes(buf), sw
    return b"\x7f\x49\x84\xff\xff\xff\xff", 0x9000


def _tlvs(data: bytes) -> list[tuple[bytes, bytes]] | None:
    """Top-level BER-TLVs of ``data`` as (tag bytes, value), or None when it is not a TLV sequence."""
    out, i = [], 0
    while i < len(data):
        start = i
        i += 1
        if data[start] & 0x1F == 0x1F:
            while i < len(data) and data[i] & 0x80:
                i += 1
            i += 1
        if i >= len(data):
            return None
        tag, n = data[start:i], data[i]
        i += 1
        if n & 0x80:
            k = n & 0x7F
            if k == 0 or k > 3 or i + k > len(data):
                return None
            n, i = int.from_bytes(data[i:i + k], "big"), i + k
        if i + n > len(data):
            return None
        out.append((tag, data[i:i + n]))
        i += n
    return out


def _tlv(tag: bytes, value: bytes) -> bytes:
    n = len(value)
    length = bytes([n]) if n < 0x80 else bytes([0x80 | ((n.bit_length() + 7) // 8)]) + n.to_bytes(
        (n.bit_length() + 7) // 8, "big")
    return tag + length + value


def _edit_tlv(r: random.Random, data: bytes, depth: int = 0) -> bytes | None:
    """``data`` with one primitive TLV value (possibly nested) replaced by an edge value, lengths kept
    consistent, so the parser accepts the structure and the value reaches the code that uses it."""
    items = _tlvs(data) if data else None
    if not items:
        return None
    k = r.randrange(len(items))
    tag, value = items[k]
    inner = _edit_tlv(r, value, depth + 1) if tag[0] & 0x20 and depth < 3 else None
    if inner is None:
        inner = r.choice([b"", b"\x00", b"\x01", b"\x02", b"\x04", b"\x01\x00\x00", b"\xff" * r.choice([1, 3, 33]),
                          value + value, value[:1], value[:-1], b"\x00" + value, r.randbytes(len(value) or 1)])
    items[k] = (tag, inner)
    return b"".join(_tlv(t, v) for t, v in items)


def session(model, transport) -> None:
    """A personalization-shaped card session (no journal, no network)."""
    cns = CnsSession(transport, model, raw=getattr(transport, "assembled", False))
    issuer = IssuerSession(cns, model)
    cns.read_serial()
    cns.read_personal_data()
    issuer.authenticate(SoftwareAuthenticator(model))
    pin = model.pin_policy.factory_test_pin if model.pin_mode == "preset" else "24681357"
    for ks in model.keysets:
        if model.pin_mode != "preset":
            issuer.set_code(ks.pin_ref, pin, "PIN")
            issuer.set_code(ks.puk_ref, "97531864", "PUK")
    ks = model.keysets[0]
    pub = issuer.generate_key(ks.key_ref, model.rsa_bits)
    issuer.read_public_key(ks.key_ref)
    issuer.read_ef(ks.cert_path)
    issuer.write_ef(ks.cert_path, bytes(range(256)) * 3)
    issuer.read_ef(ks.cert_path)
    cns.write_personal_data(HOLDER.personal_data())
    cns.read_personal_data()
    cns.pin_tries_left(ks.name)
    cns.puk_tries_left(ks.name)
    cns.verify_pin(pin, ks.name)
    issuer.raw_sign(ks, ks.key_ref, pkcs1_v15_sha256_block(b"test", (pub.key_size + 7) // 8))
    build_csr(pub, [("country_name", "IT"), ("common_name", "ROSSI MARIO")],
              lambda block: issuer.raw_sign(ks, ks.key_ref, block))


@dataclass
class Tally:
    runs: int = 0
    clean: int = 0                                       # the session completed (mutation harmless)
    card_errors: Counter = field(default_factory=Counter)   # allowed exception type → count
    findings: list[str] = field(default_factory=list)    # reproducers of anything else

    @property
    def crashes(self) -> int:
        return self.runs - self.clean - sum(self.card_errors.values())


def trace(model, assembled: bool) -> list[int]:
    """The INS of every APDU a clean session sends at this layer (the fuzz aims at them by INS)."""
    card = EmulatedCard(model)
    card.power_on()
    t = MutatingTransport(card, random.Random(0), set(), assembled=assembled)
    sent: list[int] = []
    real = t.inner.transmit

    def spy(apdu):
        sent.append(apdu[1])
        return real(apdu)
    t.inner.transmit = spy
    session(model, t)
    return sent


def run(models: list, runs: int, seed: int) -> Tally:
    """``runs`` sessions, round-robin over ``models``; run i uses seed ``seed * 1_000_003 + i``. Each run
    aims at one kind of command (an INS of the clean session, uniformly, so the rare key generation
    is hit as often as the many SELECTs), its n-th occurrence, sometimes plus one later answer."""
    traces = {(m.id, a): trace(m, a) for m in models for a in (False, True)}
    tally = Tally()
    for i in range(runs):
        model = models[i % len(models)]
        s = seed * 1_000_003 + i
        rng = random.Random(s)
        assembled = rng.random() < 0.5
        sent = traces[(model.id, assembled)]
        ins = rng.choice(sorted(set(sent)))
        first = rng.choice([k for k, x in enumerate(sent) if x == ins])
        targets = {first} | ({rng.randrange(first, len(sent))} if rng.random() < 0.2 else set())
        card = EmulatedCard(model)
        card.power_on()
        transport = MutatingTransport(card, rng, targets, assembled=assembled)
        tally.runs += 1
        try:
            session(model, transport)
            tally.clean += 1
        except ALLOWED as exc:
            tally.card_errors[type(exc).__name__] += 1
        except Exception as exc:   # noqa: BLE001 - this is what the fuzz looks for
            if len(tally.findings) < 50:
                tally.findings.append(f"model {model.id} run seed {s} ({'; '.join(transport.applied)}): "
                                      f"{type(exc).__name__}: {exc}")
    return tally
