"""``IssuerSession``: the personalization dialect ``cns-iso-v1`` (firmware_profiles/SCHEMA.md §4–5).

Owns what only the issuer may do to a CNS card: admin authentication
(GET CHALLENGE + EXTERNAL AUTHENTICATE, AES-128), GENERATE ASYMMETRIC KEY PAIR
into a slot and reading a slot's public key, CREATE/DELETE FILE for
certificates, setting codes at personalization, ERASE KEY and SWITCH KEYSET
for renewal — plus raw RSA with a chosen key (MSE SET + PSO CDS) for CSRs and
test signatures. Works on a ``CnsSession`` (which owns SELECT/READ/UPDATE and PINs).

Issuer authentication never sees a key: the card's challenge goes to an
injected ``CardAuthenticator`` (the personalizer's CardAdmin service through
``agent.uplink.card_admin``, which computes the cryptogram in its token from
the card's diversified key) and its answer is relayed to the card.

Status words become ``agent.card.errors``; codes never reach a message. Imports ``agent.card.*`` and ``cryptography``; the model is a
``firmware_profiles.CardModel`` read as data (never the emulator).
"""
from __future__ import annotations

from typing import Protocol

from cryptography.hazmat.primitives.asymmetric import rsa

from agent.card.apdu import CLA_ISO, INS, SW, Apdu
from agent.card.cns import CnsSession, _pin_block, parse_path
from agent.card.errors import ApduError, FileNotFoundOnCardError, MalformedResponseError, SecurityStatusError

INS_GET_CHALLENGE = 0x84
INS_EXTERNAL_AUTHENTICATE = 0x82
CHANGE_P1_ISSUER_SET = 0x01          # CHANGE REFERENCE DATA P1 01: issuer sets a code (§4.4)
GENERATE_P1_NEW = 0x00
GENERATE_P1_READ = 0x01
MSE_P1_RESTORE, MSE_P2_RESTORE = 0xF3, 0x03
MSE_P1_SET_COMPUTE, MSE_P2_DST = 0xF1, 0xB6
PSO_P1_CDS, PSO_P2_CDS = 0x9E, 0x9A
TAG_PUBKEY, TAG_MODULUS, TAG_EXPONENT = 0x7F49, 0x81, 0x82
CHALLENGE_LEN = 16
GET_INFO_ADMIN_KEY = 0x04
KVN_TRANSPORT, KVN_CARD = 0x00, 0x01
# what a card key may be (the card models are RSA 1024 or 2048; the CA certifies at most 4096)
MIN_RSA_BITS, MAX_RSA_BITS, MAX_EXPONENT_BITS = 1024, 4096, 256


def _tlv(data: bytes, pos: int) -> tuple[int, bytes, int]:
    """One BER-TLV at ``pos``: (tag, value, next position)."""
    try:
        tag = data[pos]
        pos += 1
        if tag & 0x1F == 0x1F:
            tag = (tag << 8) | data[pos]
            pos += 1
        length = data[pos]
        pos += 1
        if length & 0x80:
            n = length & 0x7F
            length = int.from_bytes(data[pos:pos + n], "big")
            pos += n
    except IndexError:
        raise MalformedResponseError("truncated TLV in the card's answer") from None
    value = data[pos:pos + length]
    if len(value) != length:
        raise MalformedResponseError("TLV longer than the card's answer")
    return tag, value, pos + length


def _key_problem(n: int, e: int) -> str | None:
    """Why (n, e) cannot be a card's RSA key, or None."""
    if not MIN_RSA_BITS <= n.bit_length() <= MAX_RSA_BITS:
        return f"a modulus of {n.bit_length()} bits (expected {MIN_RSA_BITS} to {MAX_RSA_BITS})"
    if n % 2 == 0:
        return "an even modulus"
    if e < 3 or e % 2 == 0 or e.bit_length() > MAX_EXPONENT_BITS or e >= n:
        shown = e if e.bit_length() <= 64 else f"of {e.bit_length()} bits"
        return f"the exponent {shown} (expected odd, at least 3, below 2^{MAX_EXPONENT_BITS} and the modulus)"
    return None


def parse_public_key(data: bytes) -> rsa.RSAPublicKey:
    """``7F49 {81 modulus} {82 exponent}`` → an RSA public key."""
    tag, body, _ = _tlv(data, 0)
    if tag != TAG_PUBKEY:
        raise MalformedResponseError(f"public key template {tag:X}, expected 7F49")
    parts, pos = {}, 0
    while pos < len(body):
        t, v, pos = _tlv(body, pos)
        parts[t] = v
    if TAG_MODULUS not in parts or TAG_EXPONENT not in parts:
        raise MalformedResponseError("public key without modulus or exponent")
    n, e = int.from_bytes(parts[TAG_MODULUS], "big"), int.from_bytes(parts[TAG_EXPONENT], "big")
    problem = _key_problem(n, e)
    if problem is None:
        try:
            return rsa.RSAPublicNumbers(e, n).public_key()
        except ValueError as exc:   # whatever else the crypto library refuses is still the card's answer
            problem = str(exc)
    raise MalformedResponseError(f"the card answered an impossible RSA key: {problem}")


def check_key_size(key: rsa.RSAPublicKey, bits: int | None, what: str) -> rsa.RSAPublicKey:
    """``key`` when it has the ``bits`` the model (or the request) says; a card error otherwise."""
    if bits and key.key_size != bits:
        raise MalformedResponseError(f"the card answered a {key.key_size}-bit RSA key for {what}, "
                                     f"expected {bits} bits")
    return key


class CardAuthenticator(Protocol):
    """Who answers a card's issuer challenge: ``cryptogram`` for card ``serial`` of model ``model_id``
    (``transport_key``: the card still holds its batch's transport key); ``wrapped_card_key``: PUT KEY's
    data, the card's own key wrapped under its transport key (first use, SCHEMA.md §4.1). An authenticator
    may also have ``before_challenge(issuer)``, called before each GET CHALLENGE with this session (a holder's
    self-renewal has the card prove its holder there, ``agent.ops.card_proof``)."""

    def cryptogram(self, *, model_id: str, serial: str, challenge: bytes, transport_key: bool = False) -> bytes: ...

    def wrapped_card_key(self, *, model_id: str, serial: str) -> bytes: ...


class IssuerSession:
    """Issuer operations on one card; ``model`` is its ``CardModel``."""

    def __init__(self, cns: CnsSession, model) -> None:
        self.cns = cns
        self.model = model
        self.dialect = model.dialect
        self._serial: str | None = None
        self._transport: bool | None = None   # the card holds its transport key (read once a session)

    def _send(self, apdu: Apdu) -> tuple[bytes, int]:
        return self.cns.transport.transmit(apdu.encode_long())

    def _ok(self, sw: int, what: str) -> None:
        if sw == SW.OK:
            return
        if sw == SW.SECURITY_STATUS_NOT_SATISFIED:
            raise SecurityStatusError(sw, what)
        raise ApduError(sw, what)

    # -- §4.1 ------------------------------------------------------------------
    def authenticate(self, authenticator: CardAuthenticator) -> None:
        """Issuer authentication, valid until power off or reset: the card's fresh challenge is answered
        by ``authenticator`` (central; the key never comes here) and the answer relayed to the card."""
        self.serial()
        if self._transport is None:
            self._transport = self.key_version() == KVN_TRANSPORT
        before = getattr(authenticator, "before_challenge", None)
        if before is not None:
            before(self)
        challenge, sw = self._send(Apdu(CLA_ISO, INS_GET_CHALLENGE, 0, 0, le=CHALLENGE_LEN))
        self._ok(sw, "GET CHALLENGE")
        if len(challenge) != CHALLENGE_LEN:
            raise MalformedResponseError(f"challenge of {len(challenge)} bytes, expected {CHALLENGE_LEN}")
        cryptogram = authenticator.cryptogram(model_id=self.model.id, serial=self._serial, challenge=challenge,
                                              transport_key=self._transport)
        if len(cryptogram) != CHALLENGE_LEN:
            raise MalformedResponseError(f"the issuer's answer is {len(cryptogram)} bytes, expected {CHALLENGE_LEN}")
        _, sw = self._send(Apdu(CLA_ISO, INS_EXTERNAL_AUTHENTICATE, 0, self.dialect.admin_key_ref, cryptogram))
        self._ok(sw, "EXTERNAL AUTHENTICATE (issuer key)")

    @property
    def holds_transport_key(self) -> bool:
        """The card still holds its batch's transport key (as read by this session's last authentication)."""
        return bool(self._transport)

    def serial(self) -> str:
        """The card's serial (EF_IDCarta), read once a session."""
        if self._serial is None:
            self._serial = self.cns.read_serial()
        return self._serial

    def key_version(self) -> int:
        """The card's issuer key version (GET INFO 04): 0 its batch's transport key, 1 its own key."""
        data, sw = self._send(Apdu(self.dialect.cla_proprietary, self.dialect.ins_get_info, 0, GET_INFO_ADMIN_KEY,
                                   le=1))
        self._ok(sw, "GET INFO (issuer key version)")
        if len(data) != 1 or data[0] not in (KVN_TRANSPORT, KVN_CARD):
            raise MalformedResponseError(f"issuer key version {data.hex()}, expected 00 or 01")
        return data[0]

    def replace_transport_key(self, authenticator: CardAuthenticator) -> bool:
        """First use (SCHEMA.md §4.1 step 3): the transport key replaced by the card's own key, wrapped
        centrally; False when the card already holds its own key (a resumed step: nothing to do)."""
        self._transport = None
        if self.key_version() != KVN_TRANSPORT:
            self._transport = False
            return False
        self.authenticate(authenticator)
        wrapped = authenticator.wrapped_card_key(model_id=self.model.id, serial=self._serial)
        if len(wrapped) != 24:
            raise MalformedResponseError(f"the wrapped card key is {len(wrapped)} bytes, expected 24")
        _, sw = self._send(Apdu(self.dialect.cla_proprietary, self.dialect.ins_put_key, 0, self.dialect.admin_key_ref,
                                wrapped))
        self._transport = None    # read again: PUT KEY answered, or the card was pulled while writing
        self._ok(sw, "PUT KEY (the card's own issuer key)")
        self._transport = False
        return True

    # -- §4.2 ------------------------------------------------------------------
    def generate_key(self, key_ref: int, bits: int | None = None) -> rsa.RSAPublicKey:
        body = b""
        if bits:
            body = bytes([0x80, 0x02]) + bits.to_bytes(2, "big")
        data, sw = self._send(Apdu(CLA_ISO, INS.GENERATE_ASYMMETRIC_KEY_PAIR, GENERATE_P1_NEW, key_ref, body, le=256))
        self._ok(sw, f"GENERATE KEY PAIR in slot {key_ref:02X}")
        return check_key_size(parse_public_key(data), bits or getattr(self.model, "rsa_bits", None),
                              f"slot {key_ref:02X}")

    def read_public_key(self, key_ref: int) -> rsa.RSAPublicKey | None:
        """The public key in a slot, None when the slot is empty."""
        data, sw = self._send(Apdu(CLA_ISO, INS.GENERATE_ASYMMETRIC_KEY_PAIR, GENERATE_P1_READ, key_ref, le=256))
        if sw == SW.REFERENCE_DATA_NOT_FOUND:
            return None
        self._ok(sw, f"read public key of slot {key_ref:02X}")
        return check_key_size(parse_public_key(data), getattr(self.model, "rsa_bits", None), f"slot {key_ref:02X}")

    # -- §4.3 ------------------------------------------------------------------
    def delete_ef(self, path: str) -> bool:
        """Delete an EF if present (select its DF first); False when it was not there."""
        df, fid = path.rsplit("/", 1)
        self.cns.select(df)
        _, sw = self._send(Apdu(CLA_ISO, INS.DELETE_FILE, 0, 0, bytes.fromhex(fid)))
        if sw == SW.FILE_NOT_FOUND:
            return False
        self._ok(sw, f"DELETE FILE {path}")
        return True

    def write_ef(self, path: str, content: bytes) -> None:
        """(Re)create ``path`` sized to ``content`` and write it; then read it back."""
        parse_path(path)
        self.delete_ef(path)
        df, fid = path.rsplit("/", 1)
        self.cns.select(df)
        size = len(content)
        fcp = bytes([0x83, 0x02]) + bytes.fromhex(fid) + bytes([0x82, 0x01, 0x01, 0x80, 0x02]) + size.to_bytes(2, "big")
        _, sw = self._send(Apdu(CLA_ISO, INS.CREATE_FILE, 0, 0, bytes([0x62, len(fcp)]) + fcp))
        self._ok(sw, f"CREATE FILE {path} ({size} bytes)")
        self.cns.update_binary(path, content)
        if self.cns.read_file(path) != content:
            raise MalformedResponseError(f"{path} does not read back as written")

    def read_ef(self, path: str) -> bytes | None:
        try:
            return self.cns.read_file(path)
        except FileNotFoundOnCardError:
            return None

    # -- §4.4 ------------------------------------------------------------------
    def set_code(self, ref: int, value: str, what: str) -> None:
        _, sw = self._send(Apdu(CLA_ISO, INS.CHANGE_REFERENCE_DATA, CHANGE_P1_ISSUER_SET, ref, _pin_block(value, what)))
        self._ok(sw, f"set {what}")

    # -- §5 --------------------------------------------------------------------
    def erase_key(self, key_ref: int) -> None:
        _, sw = self._send(Apdu(self.dialect.cla_proprietary, self.dialect.ins_erase_key, 0, key_ref))
        self._ok(sw, f"ERASE KEY {key_ref:02X}")

    def switch_keysets(self, mask: int) -> None:
        _, sw = self._send(Apdu(self.dialect.cla_proprietary, self.dialect.ins_switch_keyset, 0, mask))
        self._ok(sw, f"SWITCH KEYSET {mask:02X}")

    # -- raw RSA with a chosen key ----------------------------------------------
    def raw_sign(self, keyset, key_ref: int, block: bytes) -> bytes:
        """PSO COMPUTE DIGITAL SIGNATURE of a padded block; the keyset PIN must be verified."""
        if keyset.pin_df:
            self.cns.select(keyset.pin_df)
        _, sw = self._send(Apdu(CLA_ISO, INS.MANAGE_SECURITY_ENVIRONMENT, MSE_P1_RESTORE, MSE_P2_RESTORE))
        self._ok(sw, "MSE RESTORE")
        _, sw = self._send(Apdu(CLA_ISO, INS.MANAGE_SECURITY_ENVIRONMENT, MSE_P1_SET_COMPUTE, MSE_P2_DST,
                                bytes([0x83, 0x01, key_ref])))
        self._ok(sw, f"MSE SET key {key_ref:02X}")
        sig, sw = self._send(Apdu(CLA_ISO, INS.PERFORM_SECURITY_OPERATION, PSO_P1_CDS, PSO_P2_CDS, block, le=256))
        self._ok(sw, f"PSO COMPUTE DIGITAL SIGNATURE with key {key_ref:02X}")
        if len(sig) != len(block):
            raise MalformedResponseError(f"signature of {len(sig)} bytes for a {len(block)}-byte key")
        return sig
