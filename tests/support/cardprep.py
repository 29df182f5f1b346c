"""Personalize an in-process ``EmulatedCard`` for tests, with ONLY the dialect
APDUs documented in firmware_profiles/SCHEMA.md (admin authentication,
GENERATE ASYMMETRIC KEY PAIR, CREATE FILE, UPDATE BINARY, CHANGE REFERENCE
DATA): a stand-in for the real personalizer, so that OpenSC has certificates
and a holder to show.

Certificates come from a throw-away test CA made with ``cryptography`` for the
public keys the card returns. Never used by production code.
"""
from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from cns_spec import dati_personali as dp_codec
from firmware_profiles.emulator import admin
from firmware_profiles.emulator.card import EmulatedCard

TEST_PIN = "12345678"
TEST_PUK = "87654321"
CHUNK = 0xFF


class CardCommandError(AssertionError):
    def __init__(self, what: str, sw: int):
        self.sw = sw
        super().__init__(f"{what}: card answered {sw:04X}")


@dataclass
class TestCA:
    key: rsa.RSAPrivateKey
    cert: x509.Certificate

    @classmethod
    def create(cls) -> "TestCA":
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        name = x509.Name([x509.NameAttribute(NameOID.COUNTRY_NAME, "IT"),
                          x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Test Chamber of Commerce"),
                          x509.NameAttribute(NameOID.COMMON_NAME, "CNS TEST CA")])
        now = dt.datetime.now(dt.timezone.utc)
        cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
                .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(days=1))
                .not_valid_after(now + dt.timedelta(days=3650))
                .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
                .sign(key, hashes.SHA256()))
        return cls(key, cert)

    def issue(self, public_key, *, cn: str, usage: str) -> x509.Certificate:
        now = dt.datetime.now(dt.timezone.utc)
        b = (x509.CertificateBuilder()
             .subject_name(x509.Name([x509.NameAttribute(NameOID.COUNTRY_NAME, "IT"),
                                      x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
             .issuer_name(self.cert.subject).public_key(public_key).serial_number(x509.random_serial_number())
             .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=365 * 3)))
        if usage == "auth":
            b = b.add_extension(x509.KeyUsage(True, False, True, False, False, False, False, False, False),
                                critical=True)
            b = b.add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        else:
            b = b.add_extension(x509.KeyUsage(False, True, False, False, False, False, False, False, False),
                                critical=True)
        return b.sign(self.key, hashes.SHA256())


@dataclass
class Personalized:
    serial: str
    pin: str
    puk: str
    holder: str  # "First Last", as OpenSC labels the token
    certs: dict[str, x509.Certificate] = field(default_factory=dict)  # keyset name → certificate
    ca: TestCA | None = None


def send(card: EmulatedCard, apdu: bytes, what: str, ok: tuple[int, ...] = (0x9000,)) -> bytes:
    """Transmit, follow 61xx with GET RESPONSE, raise on an unexpected status word."""
    r = card.transmit(apdu)
    data, sw = r[:-2], int.from_bytes(r[-2:], "big")
    while sw >> 8 == 0x61:
        r = card.transmit(bytes([0x00, 0xC0, 0x00, 0x00, sw & 0xFF]))
        data, sw = data + r[:-2], int.from_bytes(r[-2:], "big")
    if sw not in ok:
        raise CardCommandError(what, sw)
    return data


def apdu(cla: int, ins: int, p1: int, p2: int, data: bytes = b"", le: int | None = None) -> bytes:
    out = bytes([cla, ins, p1, p2])
    if data:
        out += bytes([len(data)]) + data
    if le is not None:
        out += bytes([le & 0xFF])
    return out


def admin_authenticate(card: EmulatedCard, key: bytes | None = None) -> None:
    d = card.model.dialect
    challenge = send(card, apdu(0x00, 0x84, 0, 0, le=d.challenge_bytes), "GET CHALLENGE")
    answer = admin.cryptogram(key or admin.card_key(card.model, card.serial), challenge)
    send(card, apdu(0x00, 0x82, 0x00, d.admin_key_ref, answer),
         "EXTERNAL AUTHENTICATE")


def select_path(card: EmulatedCard, path: str) -> None:
    fids = bytes.fromhex(path.replace("/", ""))
    send(card, apdu(0x00, 0xA4, 0x08, 0x0C, fids[2:]) if len(fids) > 2 else apdu(0x00, 0xA4, 0, 0x0C, fids),
         f"SELECT {path}")


def generate_key(card: EmulatedCard, key_ref: int):
    """GENERATE ASYMMETRIC KEY PAIR → cryptography public key."""
    raw = send(card, apdu(0x00, 0x46, 0x00, key_ref, le=0), f"GENERATE {key_ref:02X}")
    return parse_public_key(raw)


def parse_public_key(raw: bytes):
    assert raw[:2] == b"\x7f\x49", raw[:4].hex()
    i = 2
    n = raw[i]
    i += 1
    if n & 0x80:
        k = n & 0x7F
        i += k
    vals = {}
    while i < len(raw):
        tag, ln = raw[i], raw[i + 1]
        i += 2
        if ln & 0x80:
            k = ln & 0x7F
            ln = int.from_bytes(raw[i:i + k], "big")
            i += k
        vals[tag] = int.from_bytes(raw[i:i + ln], "big")
        i += ln
    return rsa.RSAPublicNumbers(vals[0x82], vals[0x81]).public_key()


def write_new_file(card: EmulatedCard, path: str, content: bytes, *, read: int = 0x00, update: int = 0x40) -> None:
    """CREATE FILE (sized to the content) under the parent DF, then UPDATE BINARY in 255-byte chunks."""
    parent, fid = path.rsplit("/", 1)
    select_path(card, parent)
    sec = bytes([read, update, update, 0xFF, 0xFF, 0x40, 0xFF, 0xFF, 0xFF])
    body = (b"\x83\x02" + bytes.fromhex(fid) + b"\x82\x01\x01" + b"\x80\x02" + len(content).to_bytes(2, "big")
            + b"\x86\x09" + sec)
    send(card, apdu(0x00, 0xE0, 0, 0, b"\x62" + bytes([len(body)]) + body), f"CREATE FILE {path}")
    update_binary(card, content)


def update_binary(card: EmulatedCard, content: bytes, offset: int = 0) -> None:
    for off in range(0, len(content), CHUNK):
        pos = offset + off
        send(card, apdu(0x00, 0xD6, pos >> 8, pos & 0xFF, content[off:off + CHUNK]), f"UPDATE BINARY @{pos}")


def dati_personali(first: str, last: str, codice_fiscale: str = "RSSMRA80A01H501U") -> bytes:
    """EF_DatiPersonali for a test holder, through the one codec (``cns_spec.dati_personali``)."""
    return dp_codec.encode(dp_codec.PersonalData(
        issuer="TESTCCIAA", issue_date="01012024", expiry_date="01012030", surname=last, given_name=first,
        birth_date="01011980", sex="M", codice_fiscale=codice_fiscale, birth_town="H501", residence_town="H501",
        residence_address="VIA ROMA 1"))


def personalize(card: EmulatedCard, *, first: str = "MARIO", last: str = "ROSSI",
                pin: str = TEST_PIN, puk: str = TEST_PUK, ca: TestCA | None = None,
                keysets: tuple[str, ...] | None = None) -> Personalized:
    """A blank emulated card → a CNS with both keysets, holder data and (if the model says so) PINs."""
    model = card.model
    if not card.powered:
        card.power_on()
    ca = ca or TestCA.create()
    admin_authenticate(card)
    result = Personalized(card.serial, pin, puk, f"{first} {last}", ca=ca)
    if model.pin_mode == "preset":
        result.pin, result.puk = model.pin_policy.factory_test_pin, model.pin_policy.factory_test_puk
    for ks in model.keysets:
        if keysets is not None and ks.name not in keysets:
            continue
        pub = generate_key(card, ks.key_ref)
        cert = ca.issue(pub, cn=f"RSSMRA80A01H501U/{card.serial}.{ks.name}",
                        usage="auth" if ks.name == "CNS0" else "sign")
        write_new_file(card, ks.cert_path, cert.public_bytes(serialization.Encoding.DER))
        result.certs[ks.name] = cert
        if model.pin_mode == "set_at_personalization":
            pad = bytes([model.pin_policy.pad_byte])
            for ref, code in ((ks.pin_ref, pin), (ks.puk_ref, puk)):
                block = code.encode().ljust(model.pin_policy.max_length, pad)
                send(card, apdu(0x00, 0x24, 0x01, ref, block), f"SET CODE {ref:02X}")
    select_path(card, model.paths.dati_personali)
    update_binary(card, dati_personali(first, last))
    card.power_off()  # drop the admin security state, as pulling the card would
    return result
