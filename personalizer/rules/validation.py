"""Pure checks of an issuance request: CSR, key size, holder data, request id.

Holder rules (character policy, X.520 bounds, codice fiscale check character
and consistency with names, birth date, sex and birth place code) are
``cns_spec``'s, the same the agent applies before it touches a card: here they
run again on whatever arrives, and for EF_DatiPersonali on every field.

Raises ``errors.InvalidRequest(field, message)`` with a precise message; the
service turns it into INVALID_ARGUMENT. No I/O; must not import grpc, proto,
the store or the CA.

Key size policy (decided for issue "Personalizer daemon"): new issuance needs
RSA ≥ 2048 bits for every profile. The tender's cards also do RSA-1024
(REFERENCE.md §1) and such CNS cards are in the field; a deployment may lower
the CNS authentication profile to 1024 in its config (``min_rsa_bits``) for
that legacy card model. Those cards hold only 1024-bit keys in both keysets,
so the qualified signature profile may be lowered too, by the same explicit
opt-in; the default stays 2048, and a qualified certificate on a 1024-bit key
does not meet ETSI TS 119 312: a deployment opts in only while it still
serves legacy cards.
"""
from __future__ import annotations

import datetime as _dt
import hashlib
import re
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

from cns_spec import codice_fiscale, dati_personali, profiles
from cns_spec import holder as holder_rules
from cns_spec.text import normalize
from personalizer.errors import InvalidRequest

PROFILE_CNS_AUTH = profiles.CNS_AUTH            # the names are cns_spec.profiles'
PROFILE_QUALIFIED = profiles.QUALIFIED_SIGNATURE
PROFILES = profiles.PROFILES

DEFAULT_MIN_RSA_BITS = 2048
CNS_AUTH_FLOOR_BITS = 1024          # legacy CNS card model, opt-in per deployment
# Legacy RSA-1024 CNS cards (ATR version 0x10) can hold only 1024-bit keys, for both
# keysets; a deployment that still serves them opts in per profile. The default
# stays DEFAULT_MIN_RSA_BITS: new qualified certificates want 2048 (ETSI TS 119 312).
QUALIFIED_FLOOR_BITS = 1024
PROFILE_FLOOR_BITS = {PROFILE_CNS_AUTH: CNS_AUTH_FLOOR_BITS, PROFILE_QUALIFIED: QUALIFIED_FLOOR_BITS}
ACCEPTED_CSR_HASHES = (hashes.SHA256, hashes.SHA384, hashes.SHA512)

# RSA keys: at most 4096 bits (what CNS devices generate; bounds the CA's work per request) and the
# public exponent 65537 only (every CNS card and token generates it; small exponents are refused).
MAX_RSA_BITS = 4096
ACCEPTED_RSA_EXPONENTS = (65537,)

# fullmatch, not match: "$" also matches before a trailing newline
REQUEST_ID_RE = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
CARD_ID_RE = re.compile(r"^[A-Za-z0-9]{1,16}$")
NAME_MAX = holder_rules.ATTRIBUTE_UPPER_BOUNDS["given_name"]
SERIAL_PREFIX = holder_rules.SERIAL_PREFIX


@dataclass(frozen=True)
class Holder:
    codice_fiscale: str
    given_name: str
    surname: str
    birth_date: _dt.date


@dataclass(frozen=True)
class ValidIssue:
    """What survives validation: everything the CA needs, parsed."""

    request_id: str
    profile: str
    csr: x509.CertificateSigningRequest
    holder: Holder
    card_id: str
    dati_personali_hash: str | None


def check_request_id(request_id: str) -> str:
    if not REQUEST_ID_RE.fullmatch(request_id or ""):
        raise InvalidRequest("request_id", "must be 1..128 characters of [A-Za-z0-9._:-]")
    return request_id


def check_profile(profile: str) -> str:
    if profile not in PROFILES:
        raise InvalidRequest("profile", f"unknown CA profile {profile!r}; known: {', '.join(PROFILES)}")
    return profile


def check_holder(cf: str, given_name: str, surname: str, birth_date: str) -> Holder:
    """The holder's identifying fields, judged by ``cns_spec.holder`` (profile-independent part)."""
    try:
        born = _dt.date.fromisoformat(birth_date)
    except (TypeError, ValueError) as exc:
        raise InvalidRequest("holder.birth_date", f"not an ISO date YYYY-MM-DD: {birth_date!r}") from exc
    try:
        parsed = holder_rules.check_holder(codice_fiscale_code=cf, given_name=given_name, surname=surname,
                                           birth_date=born, qualified=False)
    except holder_rules.HolderDataError as exc:
        raise InvalidRequest(f"holder.{exc.field}", exc.reason) from None
    return Holder(parsed.code, normalize(given_name.strip()), normalize(surname.strip()), born)


def check_subject_bounds(holder: Holder, profile: str) -> None:
    """Every attribute the profile's subject will carry fits its X.520 bound (the CA would fail on it forever)."""
    if profile == PROFILE_QUALIFIED:
        cn = holder_rules.qualified_common_name(holder.given_name, holder.surname)
        bound = holder_rules.ATTRIBUTE_UPPER_BOUNDS["common_name"]
        if len(cn) > bound:
            field = "holder.given_name" if len(holder.given_name) >= len(holder.surname) else "holder.surname"
            raise InvalidRequest(field, f"\"GIVEN SURNAME\" is {len(cn)} characters, longer than the {bound} of "
                                        "the qualified certificate's common name; shorten the names")


def check_csr(csr_der: bytes, profile: str, min_rsa_bits: int) -> x509.CertificateSigningRequest:
    if not csr_der:
        raise InvalidRequest("csr_der", "is required")
    try:
        csr = x509.load_der_x509_csr(csr_der)
    except ValueError as exc:
        raise InvalidRequest("csr_der", "not a DER-encoded PKCS#10 certificate signing request") from exc
    try:
        algo = csr.signature_hash_algorithm
    except Exception as exc:  # cryptography raises UnsupportedAlgorithm for unknown OIDs
        raise InvalidRequest("csr_der", f"unsupported CSR signature algorithm: {exc}") from exc
    if not isinstance(algo, ACCEPTED_CSR_HASHES):
        name = getattr(algo, "name", "none")
        raise InvalidRequest("csr_der", f"CSR signature hash {name} not accepted; use SHA-256 or stronger")
    try:
        key = csr.public_key()
    except Exception as exc:
        raise InvalidRequest("csr_der", f"unreadable CSR public key: {exc}") from exc
    if not isinstance(key, rsa.RSAPublicKey):
        raise InvalidRequest("csr_der", f"only RSA keys are accepted (CNS devices use RSA), got {type(key).__name__.removeprefix('_')}")
    if not csr.is_signature_valid:
        raise InvalidRequest("csr_der", "CSR signature invalid (no proof of possession of the private key)")
    if key.key_size < min_rsa_bits:
        raise InvalidRequest(
            "csr_der", f"RSA key of {key.key_size} bits is below the {min_rsa_bits}-bit minimum of profile {profile}")
    if key.key_size > MAX_RSA_BITS:
        raise InvalidRequest("csr_der", f"RSA key of {key.key_size} bits is above the {MAX_RSA_BITS}-bit maximum")
    exponent = key.public_numbers().e
    if exponent not in ACCEPTED_RSA_EXPONENTS:
        shown = exponent if exponent.bit_length() <= 64 else f"of {exponent.bit_length()} bits"
        raise InvalidRequest("csr_der", f"RSA public exponent {shown} not accepted; the key must use 65537")
    return csr


def public_key_sha256(public_key) -> bytes:
    """SHA-256 of the DER SubjectPublicKeyInfo: what identifies a certified key (issue 10 item 6)."""
    spki = public_key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return hashlib.sha256(spki).digest()


def certificate_key_sha256(certificate_der: bytes) -> bytes:
    """``public_key_sha256`` of a DER certificate's key; ValueError if it is not one."""
    return public_key_sha256(x509.load_der_x509_certificate(certificate_der).public_key())


def key_reuse_refusal(*, bound_cf: str | None, bound_profile: str | None, cf: str, profile: str) -> InvalidRequest:
    """The refusal of a CSR whose key another request certifies (or is certifying).

    Never names the other holder: a caller must not learn whose key it presented."""
    todo = "generate a new key pair on the device and submit a new CSR"
    if bound_cf is None:
        why = "this public key is already certified by another request"
    elif bound_cf != cf:
        why = "this public key is already certified (or being certified) for another holder"
    elif bound_profile != profile:
        why = (f"this public key is already certified for the {bound_profile} profile; "
               "each profile needs its own key pair")
    else:
        why = "this public key is already certified by an earlier request; a renewal or a new issuance needs a new key pair"
    return InvalidRequest("csr_der", f"{why}: {todo}")


def check_subject_matches(csr: x509.CertificateSigningRequest, holder: Holder) -> None:
    """Every identifying attribute the CSR subject carries must agree with the holder data."""
    subj = csr.subject

    def values(oid) -> list[str]:
        return [str(a.value) for a in subj.get_attributes_for_oid(oid)]

    cf = holder.codice_fiscale
    for v in values(NameOID.SERIAL_NUMBER):
        if v.upper() not in (cf, SERIAL_PREFIX + cf):
            raise InvalidRequest("holder", f"CSR subject serialNumber {v!r} does not match codice fiscale {cf}")
    for v in values(NameOID.GIVEN_NAME):
        if v.casefold() != holder.given_name.casefold():
            raise InvalidRequest("holder.given_name", f"CSR subject givenName {v!r} does not match {holder.given_name!r}")
    for v in values(NameOID.SURNAME):
        if v.casefold() != holder.surname.casefold():
            raise InvalidRequest("holder.surname", f"CSR subject surname {v!r} does not match {holder.surname!r}")
    for v in values(NameOID.COMMON_NAME):
        text = v.upper()
        names_ok = holder.given_name.upper() in text and holder.surname.upper() in text
        if not (text.startswith(cf) or names_ok):
            raise InvalidRequest("holder", f"CSR subject CN {v!r} names neither codice fiscale {cf} nor the holder")
    if not (values(NameOID.SERIAL_NUMBER) or values(NameOID.COMMON_NAME)):
        raise InvalidRequest("csr_der", "CSR subject must identify the holder (serialNumber TINIT-<CF> or CN)")


def check_dati_personali(raw: bytes, holder: Holder, profile: str) -> str | None:
    if profile != PROFILE_CNS_AUTH:
        return None
    if not raw:
        raise InvalidRequest("ef_dati_personali", "is required for profile cns-auth (its hash goes into the CN)")
    try:
        dp = dati_personali.decode(raw)
        dati_personali.check_fields(dp)
    except dati_personali.DatiPersonaliError as exc:
        raise InvalidRequest("ef_dati_personali", f"malformed EF_DatiPersonali: {exc}") from exc
    if dp.codice_fiscale.upper() != holder.codice_fiscale:
        raise InvalidRequest("ef_dati_personali", "codice fiscale differs from holder.codice_fiscale")
    if normalize(dp.surname).casefold() != holder.surname.casefold() or \
            normalize(dp.given_name).casefold() != holder.given_name.casefold():
        raise InvalidRequest("ef_dati_personali", "names differ from the holder data")
    if dp.birth() != holder.birth_date:
        raise InvalidRequest("ef_dati_personali", "birth date differs from holder.birth_date")
    try:
        codice_fiscale.check_consistency(codice_fiscale.parse(holder.codice_fiscale), sex=dp.sex or None,
                                         birth_place_code=dp.birth_town or None)
    except codice_fiscale.CodiceFiscaleError as exc:
        raise InvalidRequest("ef_dati_personali", f"field {exc.field}: {exc.reason}") from None
    return dati_personali.cn_hash(raw)


def check_issue(*, request_id: str, profile: str, csr_der: bytes, holder: Holder, card_id: str,
                ef_dati_personali: bytes, min_rsa_bits: dict[str, int]) -> ValidIssue:
    """Validate one issuance; ``holder`` already passed ``check_holder``."""
    check_request_id(request_id)
    check_profile(profile)
    if not CARD_ID_RE.fullmatch(card_id or ""):
        raise InvalidRequest("card.card_id", "must be 1..16 letters or digits (EF_IDCarta)")
    check_subject_bounds(holder, profile)
    csr = check_csr(csr_der, profile, min_rsa_bits.get(profile, DEFAULT_MIN_RSA_BITS))
    check_subject_matches(csr, holder)
    digest = check_dati_personali(ef_dati_personali, holder, profile)
    return ValidIssue(request_id, profile, csr, holder, card_id, digest)
