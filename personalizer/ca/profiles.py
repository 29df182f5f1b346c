"""Certificate templates: the two end-entity profiles and the CA/TLS certificates.

Spec values are named constants (REFERENCE.md §4; ETSI EN 319 412-1/-2/-5;
AgID guidelines for qualified certificates; CNS specification). Pure builders:
they return ``x509.CertificateBuilder`` objects and never sign, so every key
store (file, PKCS#11) signs the same TBS. Must not import grpc, proto, store.
"""
from __future__ import annotations

import datetime as _dt
import ipaddress
from dataclasses import dataclass

from asn1crypto import core
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric.types import PublicKeyTypes
from cryptography.x509.oid import AuthorityInformationAccessOID, ExtendedKeyUsageOID, NameOID, ObjectIdentifier

from cns_spec import holder as holder_rules
from personalizer.rules import validation
from personalizer.ca.base import CertificateSubject

# Certificate policies
OID_POLICY_CNS_AUTH = ObjectIdentifier("1.3.76.16.2.1")          # CNS authentication (AgID)
OID_POLICY_QCP_N_QSCD = ObjectIdentifier("0.4.0.194112.1.2")     # ETSI EN 319 411-2 QCP-n-qscd
OID_POLICY_AGID_CERT = ObjectIdentifier("1.3.76.16.6")           # agIDcert
# QC statements (ETSI EN 319 412-5) and semantics identifier (EN 319 412-1)
OID_QC_STATEMENTS = ObjectIdentifier("1.3.6.1.5.5.7.1.3")
OID_QCS_COMPLIANCE = "0.4.0.1862.1.1"
OID_QCS_SSCD = "0.4.0.1862.1.4"
OID_QCS_PDS = "0.4.0.1862.1.5"
OID_QCS_TYPE = "0.4.0.1862.1.6"
OID_QCT_ESIGN = "0.4.0.1862.1.6.1"
OID_PKIX_QCSYNTAX_V2 = "1.3.6.1.5.5.7.11.2"
OID_SEMANTICS_NATURAL_PERSON = "0.4.0.194121.1.1"

COUNTRY = "IT"
SERIAL_PREFIX = validation.SERIAL_PREFIX
EE_VALIDITY = _dt.timedelta(days=3 * 365)          # within the 6-year device life (§5.1.6)
ISSUING_VALIDITY = _dt.timedelta(days=10 * 365)
ROOT_VALIDITY = _dt.timedelta(days=20 * 365)
TLS_VALIDITY = _dt.timedelta(days=2 * 365)
BACKDATE = _dt.timedelta(minutes=5)                 # tolerate clock skew of relying parties
PDS_LANGUAGE = "en"


@dataclass(frozen=True)
class CAUrls:
    """Public locations written into certificates. Real-looking hosts: pkilint refuses loopback and .invalid."""

    ca_issuers: str = "http://pki.cns-demo.it/ca/cns-issuing-ca.cer"
    ocsp: str = "http://ocsp.cns-demo.it"
    crl: str = "http://pki.cns-demo.it/crl/cns-issuing-ca.crl"
    pds: str = "https://pki.cns-demo.it/pds/pds-en.pdf"


# --- QC statements ----------------------------------------------------------

class _PdsLocation(core.Sequence):
    _fields = [("url", core.IA5String), ("language", core.PrintableString)]


class _PdsLocations(core.SequenceOf):
    _child_spec = _PdsLocation


class _QcTypes(core.SequenceOf):
    _child_spec = core.ObjectIdentifier


class _SemanticsInformation(core.Sequence):
    _fields = [("semantics_identifier", core.ObjectIdentifier, {"optional": True})]


class _QcStatement(core.Sequence):
    _fields = [("statement_id", core.ObjectIdentifier), ("statement_info", core.Any, {"optional": True})]


class _QcStatements(core.SequenceOf):
    _child_spec = _QcStatement


def _stmt(oid: str, info: core.Asn1Value | None = None) -> _QcStatement:
    value = {"statement_id": oid}
    if info is not None:
        value["statement_info"] = core.Any.load(info.dump())
    return _QcStatement(value)


def qc_statements_der(pds_url: str, language: str = PDS_LANGUAGE) -> bytes:
    return _QcStatements([
        _stmt(OID_PKIX_QCSYNTAX_V2, _SemanticsInformation({"semantics_identifier": OID_SEMANTICS_NATURAL_PERSON})),
        _stmt(OID_QCS_COMPLIANCE),
        _stmt(OID_QCS_SSCD),
        _stmt(OID_QCS_TYPE, _QcTypes([OID_QCT_ESIGN])),
        _stmt(OID_QCS_PDS, _PdsLocations([{"url": pds_url, "language": language}])),
    ]).dump()


_QC_CACHE: dict[tuple[str, str], bytes] = {}


def _qc_extension(pds_url: str) -> x509.UnrecognizedExtension:
    key = (pds_url, PDS_LANGUAGE)
    if key not in _QC_CACHE:
        _QC_CACHE[key] = qc_statements_der(pds_url)
    return x509.UnrecognizedExtension(OID_QC_STATEMENTS, _QC_CACHE[key])


# --- end-entity profiles ----------------------------------------------------

def _key_usage(*, digital_signature=False, content_commitment=False, key_encipherment=False,
               key_cert_sign=False, crl_sign=False) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=digital_signature, content_commitment=content_commitment,
        key_encipherment=key_encipherment, data_encipherment=False, key_agreement=False,
        key_cert_sign=key_cert_sign, crl_sign=crl_sign, encipher_only=False, decipher_only=False)


def _common(builder: x509.CertificateBuilder, *, issuer: x509.Certificate, public_key, urls: CAUrls,
            now: _dt.datetime, serial: int) -> x509.CertificateBuilder:
    return (builder
            .issuer_name(issuer.subject)
            .public_key(public_key)
            .serial_number(serial)
            .not_valid_before(now - BACKDATE)
            .not_valid_after(now + EE_VALIDITY)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer.public_key()), critical=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
            .add_extension(x509.AuthorityInformationAccess([
                x509.AccessDescription(AuthorityInformationAccessOID.CA_ISSUERS, x509.UniformResourceIdentifier(urls.ca_issuers)),
                x509.AccessDescription(AuthorityInformationAccessOID.OCSP, x509.UniformResourceIdentifier(urls.ocsp)),
            ]), critical=False)
            .add_extension(x509.CRLDistributionPoints([
                x509.DistributionPoint([x509.UniformResourceIdentifier(urls.crl)], None, None, None)]), critical=False))


_ATTRIBUTE_NAMES = {NameOID.COMMON_NAME: "common_name", NameOID.GIVEN_NAME: "given_name",
                    NameOID.SURNAME: "surname", NameOID.SERIAL_NUMBER: "serial_number",
                    NameOID.COUNTRY_NAME: "country_name", NameOID.DN_QUALIFIER: "dn_qualifier"}


def _bounded(attributes: list[x509.NameAttribute]) -> x509.Name:
    """The subject, after a last check of every value against its X.520 bound and the character policy
    (``cns_spec.holder``): validation refuses such data first; this keeps any other path from issuing it."""
    for a in attributes:
        holder_rules.check_attribute(_ATTRIBUTE_NAMES[a.oid], str(a.value))
    return x509.Name(attributes)


def cns_auth_subject(s: CertificateSubject) -> x509.Name:
    h = s.holder
    cn = f"{h.codice_fiscale}/{s.card_id}.{s.dati_personali_hash}"
    return _bounded([
        x509.NameAttribute(NameOID.COUNTRY_NAME, COUNTRY),
        x509.NameAttribute(NameOID.SURNAME, h.surname.upper()),
        x509.NameAttribute(NameOID.GIVEN_NAME, h.given_name.upper()),
        x509.NameAttribute(NameOID.SERIAL_NUMBER, SERIAL_PREFIX + h.codice_fiscale),
        x509.NameAttribute(NameOID.COMMON_NAME, cn),
        x509.NameAttribute(NameOID.DN_QUALIFIER, s.card_id),
    ])


def qualified_subject(s: CertificateSubject) -> x509.Name:
    h = s.holder
    return _bounded([
        x509.NameAttribute(NameOID.COUNTRY_NAME, COUNTRY),
        x509.NameAttribute(NameOID.SURNAME, h.surname.upper()),
        x509.NameAttribute(NameOID.GIVEN_NAME, h.given_name.upper()),
        x509.NameAttribute(NameOID.SERIAL_NUMBER, SERIAL_PREFIX + h.codice_fiscale),
        x509.NameAttribute(NameOID.COMMON_NAME, holder_rules.qualified_common_name(h.given_name, h.surname)),
        x509.NameAttribute(NameOID.DN_QUALIFIER, s.card_id),
    ])


def build_cns_auth(subject: CertificateSubject, public_key: PublicKeyTypes, *, issuer: x509.Certificate,
                   urls: CAUrls, now: _dt.datetime, serial: int) -> x509.CertificateBuilder:
    b = x509.CertificateBuilder().subject_name(cns_auth_subject(subject))
    b = _common(b, issuer=issuer, public_key=public_key, urls=urls, now=now, serial=serial)
    return (b
            .add_extension(_key_usage(digital_signature=True, key_encipherment=True), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
            .add_extension(x509.CertificatePolicies([x509.PolicyInformation(OID_POLICY_CNS_AUTH, None)]), critical=False))


def build_qualified(subject: CertificateSubject, public_key: PublicKeyTypes, *, issuer: x509.Certificate,
                    urls: CAUrls, now: _dt.datetime, serial: int) -> x509.CertificateBuilder:
    b = x509.CertificateBuilder().subject_name(qualified_subject(subject))
    b = _common(b, issuer=issuer, public_key=public_key, urls=urls, now=now, serial=serial)
    return (b
            .add_extension(_key_usage(content_commitment=True), critical=True)
            .add_extension(x509.CertificatePolicies([
                x509.PolicyInformation(OID_POLICY_QCP_N_QSCD, None),
                x509.PolicyInformation(OID_POLICY_AGID_CERT, None)]), critical=False)
            .add_extension(_qc_extension(urls.pds), critical=False))


BUILDERS = {
    validation.PROFILE_CNS_AUTH: build_cns_auth,
    validation.PROFILE_QUALIFIED: build_qualified,
}


# --- CA and TLS certificates (test deployments, ``cns-personalizer init``) ---

def ca_name(common_name: str, organization: str, org_identifier: str) -> x509.Name:
    return x509.Name([
        x509.NameAttribute(NameOID.COUNTRY_NAME, COUNTRY),
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, organization),
        x509.NameAttribute(NameOID.ORGANIZATION_IDENTIFIER, org_identifier),
        x509.NameAttribute(NameOID.COMMON_NAME, common_name),
    ])


def build_ca(subject: x509.Name, public_key, *, issuer: x509.Certificate | None, now: _dt.datetime,
             path_length: int | None, validity: _dt.timedelta) -> x509.CertificateBuilder:
    b = (x509.CertificateBuilder()
         .subject_name(subject)
         .issuer_name(issuer.subject if issuer else subject)
         .public_key(public_key)
         .serial_number(x509.random_serial_number())
         .not_valid_before(now - BACKDATE)
         .not_valid_after(now + validity)
         .add_extension(x509.BasicConstraints(ca=True, path_length=path_length), critical=True)
         .add_extension(_key_usage(key_cert_sign=True, crl_sign=True, digital_signature=issuer is None), critical=True)
         .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False))
    if issuer is not None:
        b = b.add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer.public_key()), critical=False)
    return b


def build_tls_leaf(common_name: str, public_key, *, issuer: x509.Certificate, now: _dt.datetime,
                   server_names: list[str] | None = None, identity_uri: str | None = None,
                   validity: _dt.timedelta = TLS_VALIDITY) -> x509.CertificateBuilder:
    sans: list[x509.GeneralName] = []
    for name in server_names or []:
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            sans.append(x509.DNSName(name))
    if identity_uri:
        sans.append(x509.UniformResourceIdentifier(identity_uri))
    eku = ExtendedKeyUsageOID.SERVER_AUTH if server_names else ExtendedKeyUsageOID.CLIENT_AUTH
    b = (x509.CertificateBuilder()
         .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
         .issuer_name(issuer.subject)
         .public_key(public_key)
         .serial_number(x509.random_serial_number())
         .not_valid_before(now - BACKDATE)
         .not_valid_after(now + validity)
         .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
         .add_extension(_key_usage(digital_signature=True), critical=True)
         .add_extension(x509.ExtendedKeyUsage([eku]), critical=False)
         .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer.public_key()), critical=False))
    if sans:
        b = b.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    return b


# --- OCSP responder (RFC 6960 §4.2.2.2 delegated responder) ---------------------

OCSP_RESPONDER_VALIDITY = _dt.timedelta(days=90)   # short-lived: it carries id-pkix-ocsp-nocheck


def build_ocsp_responder(common_name: str, public_key, *, issuer: x509.Certificate,
                         now: _dt.datetime) -> x509.CertificateBuilder:
    """A responder certificate issued by the issuing CA: EKU id-kp-OCSPSigning, ocsp-nocheck."""
    subject = x509.Name([a for a in issuer.subject if a.oid != NameOID.COMMON_NAME]
                        + [x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    return (x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(issuer.subject)
            .public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - BACKDATE)
            .not_valid_after(now + OCSP_RESPONDER_VALIDITY)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(_key_usage(digital_signature=True), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.OCSP_SIGNING]), critical=False)
            .add_extension(x509.OCSPNoCheck(), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer.public_key()), critical=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False))
