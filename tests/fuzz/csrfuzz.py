"""Hostile PKCS#10 requests for SubmitIssue, seeded: wrong signatures, odd keys, huge or dangerous
extensions, odd names, mutated DER.

``corpus(rng, count)`` yields ``Case(name, csr_der, given, surname, extensions)``: the holder names the
subject carries (so a refusal is about the CSR, not a name mismatch) and the extensions the CSR asks
for. ``copied_extensions(cert, case)`` names any requested extension that reached the certificate.
``run_corpus(stub, cases)`` sends them to SubmitIssue (following each accepted one to its end) and
returns per-case results and findings. Used by tests/fuzz/test_csr.py and ``scripts/bench fuzz``.
"""
from __future__ import annotations

import functools
import random
import time
import uuid
import warnings
from dataclasses import dataclass

import grpc
from asn1crypto import csr as asn1_csr
from asn1crypto import keys as asn1_keys
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed25519, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID, ObjectIdentifier

from proto.cns.v1 import personalizer_pb2 as pb
from tests.personalizer import helpers

EVIL_OID = ObjectIdentifier("1.3.6.1.4.1.99999.1")
EVIL_DNS = "evil.example"


@dataclass(frozen=True)
class Case:
    name: str
    csr_der: bytes
    cf: str = ""                    # the codice fiscale the subject carries ("" → the caller's default)
    given: str = "Mario"
    surname: str = "Rossi"
    extensions: tuple = ()          # x509.Extension objects the CSR requests


@functools.cache
def _key(kind: str, n: int = 0):
    """Keys by kind; ``n`` tells apart RSA keys that must differ (one key is never for two holders)."""
    if kind == "rsa":
        return rsa.generate_private_key(65537, 2048)
    if kind == "rsa1024":
        return rsa.generate_private_key(65537, 1024)
    if kind == "rsa-e3":
        return rsa.generate_private_key(3, 2048)
    if kind == "ec":
        return ec.generate_private_key(ec.SECP256R1())
    if kind == "ed25519":
        return ed25519.Ed25519PrivateKey.generate()
    if kind == "dsa":
        return dsa.generate_private_key(1024)
    raise ValueError(kind)


def build(key, *, cf: str, given: str = "Mario", surname: str = "Rossi", extensions=(), hash_alg=None,
          cn: str | None = None) -> bytes:
    attrs = [x509.NameAttribute(NameOID.COUNTRY_NAME, "IT"), x509.NameAttribute(NameOID.GIVEN_NAME, given),
             x509.NameAttribute(NameOID.SURNAME, surname),
             x509.NameAttribute(NameOID.SERIAL_NUMBER, "TINIT-" + cf)]
    if cn is not None:
        with warnings.catch_warnings():   # past the 64-character bound on purpose
            warnings.simplefilter("ignore", UserWarning)
            attrs.append(x509.NameAttribute(NameOID.COMMON_NAME, cn, _validate=False))
    b = x509.CertificateSigningRequestBuilder().subject_name(x509.Name(attrs))
    for ext in extensions:
        b = b.add_extension(ext.value, critical=ext.critical)
    alg = None if isinstance(key, ed25519.Ed25519PrivateKey) else (hash_alg or hashes.SHA256())
    return b.sign(key, alg).public_bytes(serialization.Encoding.DER)


def _ext(value, critical=False) -> x509.Extension:
    return x509.Extension(value.oid, critical, value)


def dangerous_extensions(rng: random.Random) -> list[tuple[str, tuple]]:
    sans = x509.SubjectAlternativeName([x509.DNSName(EVIL_DNS), x509.RFC822Name("ceo@evil.example"),
                                        x509.UniformResourceIdentifier("urn:cns:admin:root")])
    return [
        ("ca-true", (_ext(x509.BasicConstraints(ca=True, path_length=None), True),)),
        ("cert-sign", (_ext(x509.KeyUsage(True, True, True, True, True, True, True, False, False), True),)),
        ("server-auth", (_ext(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH,
                                                     ExtendedKeyUsageOID.CODE_SIGNING])),)),
        ("san", (_ext(sans),)),
        ("unknown-critical", (_ext(x509.UnrecognizedExtension(EVIL_OID, b"\x05\x00"), True),)),
        ("huge-unknown", (_ext(x509.UnrecognizedExtension(EVIL_OID, b"\x04\x83\x03\x0d\x40" +
                                                          rng.randbytes(200_000))),)),
        ("many-sans", (_ext(x509.SubjectAlternativeName([x509.DNSName(f"h{i}.{EVIL_DNS}")
                                                          for i in range(3000)])),)),
    ]


def _swap_key(der: bytes, other) -> bytes:
    """The same request with another public key (the signature no longer matches)."""
    req = asn1_csr.CertificationRequest.load(der)
    info = req["certification_request_info"].copy()
    info["subject_pk_info"] = asn1_keys.PublicKeyInfo.load(other.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo))
    return asn1_csr.CertificationRequest({"certification_request_info": info,
                                          "signature_algorithm": req["signature_algorithm"],
                                          "signature": req["signature"]}).dump()


def _resign(der: bytes, key, hash_alg, algorithm: str) -> bytes:
    """The same request signed with another hash (cryptography no longer signs CSRs with SHA-1)."""
    from cryptography.hazmat.primitives.asymmetric import padding

    info = asn1_csr.CertificationRequest.load(der)["certification_request_info"].copy()
    sig = key.sign(info.dump(), padding.PKCS1v15(), hash_alg)
    return asn1_csr.CertificationRequest({"certification_request_info": info,
                                          "signature_algorithm": {"algorithm": algorithm},
                                          "signature": sig}).dump()


def fixed_cases(rng: random.Random, cf_for) -> list[Case]:
    """The named hostile requests; ``cf_for(i)`` gives a distinct valid codice fiscale per accepted-looking
    case (distinct keys too: a key is never for two holders)."""
    def mk(name, key, i, *, given="Mario", surname="Rossi", extensions=(), **kw) -> Case:
        cf = cf_for(i)
        return Case(name, build(key, cf=cf, given=given, surname=surname, extensions=extensions, **kw), cf,
                    given, surname, tuple(extensions))

    good = mk("good", _key("rsa"), 0)
    flipped = bytearray(good.csr_der)
    flipped[-1] ^= 0x01
    out = [
        Case("wrong-signature", bytes(flipped), good.cf),
        Case("other-key", _swap_key(good.csr_der, _key("rsa", 1)), good.cf),
        mk("ec-key", _key("ec"), 1),
        mk("ed25519-key", _key("ed25519"), 2),
        mk("dsa-key", _key("dsa"), 3),
        mk("rsa-1024", _key("rsa1024"), 4),
        mk("rsa-exponent-3", _key("rsa-e3"), 5),
        Case("sha1", _resign(mk("sha1", _key("rsa", 2), 6).csr_der, _key("rsa", 2), hashes.SHA1(), "sha1_rsa"),
             cf_for(6)),
        Case("trailing-garbage", good.csr_der + b"\x00\x00", good.cf),
        Case("truncated", good.csr_der[:-10], good.cf),
        Case("empty", b"", good.cf),
        Case("not-der", b"-----BEGIN CERTIFICATE REQUEST-----\nMIIB\n-----END CERTIFICATE REQUEST-----\n", good.cf),
        mk("nul-in-name", _key("rsa", 3), 7, given="MA\x00RIO"),
        mk("bidi-override", _key("rsa", 4), 8, surname="ROSSI\u202e"),
        mk("huge-cn", _key("rsa", 5), 9, cn="X" * 20_000),
    ]
    for i, (name, exts) in enumerate(dangerous_extensions(rng)):
        out.append(mk(f"ext-{name}", _key("rsa", 10 + i), 10 + i, extensions=exts))
    return out


def mutated_cases(rng: random.Random, count: int, cf: str) -> list[Case]:
    """A valid request with 1-8 random byte edits (flip, delete, insert, length byte set to 0x84…)."""
    good = build(_key("rsa", 99), cf=cf)
    out = []
    for i in range(count):
        buf = bytearray(good)
        for _ in range(rng.randint(1, 8)):
            op, pos = rng.randrange(4), rng.randrange(len(buf))
            if op == 0:
                buf[pos] ^= 1 << rng.randrange(8)
            elif op == 1:
                del buf[pos]
            elif op == 2:
                buf.insert(pos, rng.randrange(256))
            else:
                buf[pos] = rng.choice([0x80, 0x84, 0xff, 0x00])
        out.append(Case(f"mutated-{i}", bytes(buf), cf))
    return out


def copied_extensions(cert: x509.Certificate, case: Case) -> list[str]:
    """Requested extensions (or their values) that the certificate carries."""
    found = []
    for ext in cert.extensions:
        if ext.oid == EVIL_OID:
            found.append("unknown OID")
        if isinstance(ext.value, x509.BasicConstraints) and ext.value.ca:
            found.append("CA:true")
        if isinstance(ext.value, x509.KeyUsage) and ext.value.key_cert_sign:
            found.append("keyCertSign")
        if isinstance(ext.value, x509.ExtendedKeyUsage) and (
                ExtendedKeyUsageOID.SERVER_AUTH in ext.value or ExtendedKeyUsageOID.CODE_SIGNING in ext.value):
            found.append("serverAuth/codeSigning")
        if isinstance(ext.value, x509.SubjectAlternativeName):
            names = [str(v) for v in ext.value.get_values_for_type(x509.DNSName)] + \
                    ext.value.get_values_for_type(x509.RFC822Name) + \
                    ext.value.get_values_for_type(x509.UniformResourceIdentifier)
            if any("evil.example" in n or n.startswith("urn:cns:") for n in names):
                found.append("SAN from the CSR")
    return found


REFUSED = {grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.FAILED_PRECONDITION}


def submit(stub, case: Case):
    """(code, IssueResponse or None, details) once the request is answered or terminal."""
    try:
        req = helpers.issue_request(request_id=str(uuid.uuid4()), csr=case.csr_der, cf=case.cf,
                                    given=case.given, surname=case.surname)
    except ValueError as exc:   # names our own EF_DatiPersonali encoder refuses: not sent
        return None, None, f"not encodable here: {exc}"
    try:
        resp = stub.SubmitIssue(req, timeout=30)
    except grpc.RpcError as exc:
        return exc.code(), None, exc.details()
    deadline = time.monotonic() + 15
    while resp.state in (pb.REQUEST_STATE_RECEIVED, pb.REQUEST_STATE_PENDING) and time.monotonic() < deadline:
        time.sleep(0.2)
        resp = stub.GetRequest(pb.GetRequestRequest(request_id=resp.request_id), timeout=10)
    return grpc.StatusCode.OK, resp, ""


def run_corpus(stub, cases):
    """{case name: (code name, state name or '', copied extensions)}, and the findings."""
    results, findings = {}, []
    for case in cases:
        code, resp, details = submit(stub, case)
        copied = []
        if resp is not None and resp.certificate_der:
            copied = copied_extensions(x509.load_der_x509_certificate(resp.certificate_der), case)
        state = pb.RequestState.Name(resp.state) if resp is not None else ""
        results[case.name] = (code.name if code else "NOT-SENT", state, copied)
        if code is not None and code not in REFUSED and code != grpc.StatusCode.OK:
            findings.append(f"{case.name}: {code.name} {details!r}")
        if copied:
            findings.append(f"{case.name}: certificate carries {copied}")
        if resp is not None and resp.state not in (pb.REQUEST_STATE_ISSUED, pb.REQUEST_STATE_FAILED,
                                                   pb.REQUEST_STATE_DONE):
            findings.append(f"{case.name}: left {state}")
    return results, findings
