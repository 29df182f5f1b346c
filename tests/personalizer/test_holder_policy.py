"""The personalizer judges holder data and keys again, whatever the agent did (issue 9 item 7, issue 10 items 1, 6).

Through the daemon over mTLS: a name that does not match the codice fiscale, a
control or bidirectional-override character, an attribute beyond its X.520
bound, a key outside policy, each answer INVALID_ARGUMENT naming the field, and
nothing is issued. A holder with accents (NICOLÒ D'ANGELÒ, born in FORLÌ) is
issued, and the CN hash is that of the exact bytes the agent writes.
"""
from __future__ import annotations

import functools

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import rsa

from agent.card import datipersonali as agent_codec
from agent.ops.holder import HolderRecord
from proto.cns.v1 import personalizer_pb2 as pb
from tests.personalizer import helpers

TIMEOUT = 20
# Computed by hand from the Italian rules: D'ANGELÒ → DNG, NICOLÒ → NCL, 12 March 1985 → 85C12, Forlì → D704
NICOLO_CF = "DNGNCL85C12D704Y"
NICOLO = dict(cf=NICOLO_CF, given="NICOLÒ", surname="D'ANGELÒ", birth="1985-03-12")


@functools.cache
def _key(bits: int, exponent: int = 65537) -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(exponent, bits)


def _agent_ef(*, cf: str, given: str, surname: str, birth: str, birth_town: str = "", sex: str = "M",
             issuer: str = "CCIAA di Roma") -> bytes:
    """EF_DatiPersonali exactly as the agent writes it for this holder."""
    rec = HolderRecord(codice_fiscale=cf, given_name=given, surname=surname, birth_date=birth, sex=sex,
                       birth_town=birth_town, issuer=issuer)
    return agent_codec.serialize(rec.personal_data())


def _request(*, profile=pb.CA_PROFILE_CNS_AUTH, key=None, ef: bytes | None = None, cf: str, given: str,
             surname: str, birth: str, csr_given: str | None = None, csr_surname: str | None = None):
    csr = helpers.csr_der(key, cf=cf, given=csr_given or given, surname=csr_surname or surname)
    if ef is None:   # the codec's bytes, without the agent's holder rules: the server must judge on its own
        ef = helpers.ef_dati(cf, given, surname, "".join(reversed(birth.split("-"))))
    return helpers.issue_request(profile=profile, csr=csr, cf=cf, given=given, surname=surname, birth=birth, ef=ef)


def _refused(stub, req) -> str:
    with pytest.raises(grpc.RpcError) as ei:
        stub.SubmitIssue(req, timeout=TIMEOUT)
    assert ei.value.code() == grpc.StatusCode.INVALID_ARGUMENT, ei.value.details()
    details = ei.value.details()
    assert "Traceback" not in details and "\n" not in details
    return details


def test_accented_holder_is_issued_with_the_hash_of_the_agents_bytes(station_stub):
    ef = _agent_ef(**{"cf": NICOLO_CF, "given": "Nicolò", "surname": "D'Angelò", "birth": "1985-03-12",
                      "birth_town": "FORLÌ", "issuer": "CCIAA di Forlì"})
    req = _request(ef=ef, **NICOLO)
    resp = station_stub.SubmitIssue(req, timeout=TIMEOUT)
    assert resp.state == pb.REQUEST_STATE_ISSUED, resp.error
    cert = x509.load_der_x509_certificate(resp.certificate_der)
    assert cert.subject.get_attributes_for_oid(x509.NameOID.GIVEN_NAME)[0].value == "NICOLÒ"
    assert cert.subject.get_attributes_for_oid(x509.NameOID.SURNAME)[0].value == "D'ANGELÒ"
    from cns_spec import dati_personali
    cn = cert.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)[0].value
    assert cn.endswith("." + dati_personali.cn_hash(ef))


def test_accented_qualified_certificate(station_stub):
    resp = station_stub.SubmitIssue(_request(profile=pb.CA_PROFILE_QUALIFIED_SIGNATURE, **NICOLO), timeout=TIMEOUT)
    assert resp.state == pb.REQUEST_STATE_ISSUED, resp.error
    cert = x509.load_der_x509_certificate(resp.certificate_der)
    assert cert.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)[0].value == "NICOLÒ D'ANGELÒ"


@pytest.mark.parametrize("given,surname,field", [
    ("Luigi", "Rossi", "holder.given_name"),       # RSSMRA… is MARIO ROSSI: given name letters MRA, not LGU
    ("Mario", "Bianchi", "holder.surname"),        # surname letters RSS, not BNC
])
def test_name_that_does_not_match_the_codice_fiscale_is_refused(station_stub, given, surname, field):
    details = _refused(station_stub, _request(cf=helpers.CF, given=given, surname=surname, birth="1980-01-01"))
    assert details.startswith(field + ":") and "codice fiscale" in details, details


@pytest.mark.parametrize("bad,what", [("MA\x00RIO", "U+0000"), ("MARIO\u202e", "U+202E"), ("MA\nRIO", "U+000A"),
                                      ("MARIO\u200f", "U+200F")])
def test_control_and_bidi_characters_in_a_name_are_refused(station_stub, bad, what):
    details = _refused(station_stub, _request(cf=helpers.CF, given=bad, surname="Rossi", birth="1980-01-01",
                                              ef=helpers.ef_dati()))
    assert details.startswith("holder.given_name:") and what in details, details


def test_control_character_in_another_ef_field_is_refused(station_stub):
    # hostile bytes, as a modified agent could send them: the codec itself refuses to write them
    rec = HolderRecord(codice_fiscale=helpers.CF, given_name="Mario", surname="Rossi", birth_date="1980-01-01",
                       sex="M", issuer="CCIAA di Roma", birth_town="ROMA XXXX")
    ef = agent_codec.serialize(rec.personal_data()).replace(b"XXXX", b"\x1b[2J")
    details = _refused(station_stub, _request(ef=ef, cf=helpers.CF, given="Mario", surname="Rossi",
                                              birth="1980-01-01"))
    assert "ef_dati_personali" in details and "birth_town" in details and "U+001B" in details, details


def test_sex_that_contradicts_the_codice_fiscale_is_refused(station_stub):
    rec = HolderRecord(codice_fiscale=helpers.CF, given_name="Mario", surname="Rossi", birth_date="1980-01-01",
                       sex="M", issuer="CCIAA di Roma")
    ef = agent_codec.serialize(rec.personal_data()).replace(b"011980" + b"01M", b"011980" + b"01F")
    assert b"01F" in ef
    details = _refused(station_stub, _request(ef=ef, cf=helpers.CF, given="Mario", surname="Rossi",
                                              birth="1980-01-01"))
    assert "sex" in details and "codice fiscale" in details, details


def test_birth_place_code_that_contradicts_the_codice_fiscale_is_refused(station_stub):
    rec = HolderRecord(codice_fiscale=helpers.CF, given_name="Mario", surname="Rossi", birth_date="1980-01-01",
                       sex="M", issuer="CCIAA di Roma", birth_town="H501")
    ef = agent_codec.serialize(rec.personal_data()).replace(b"04H501", b"04F205")
    details = _refused(station_stub, _request(ef=ef, cf=helpers.CF, given="Mario", surname="Rossi",
                                              birth="1980-01-01"))
    assert "birth_town" in details and "F205" in details, details


def test_qualified_common_name_beyond_64_characters_is_refused_at_validation(station_stub):
    # each name alone fits 64, "GIVEN SURNAME" does not: the CA would fail on the CN every time
    given, surname = "MARIAGRAZIAELISABETTAFRANCESCAANNA", "ROSSIBIANCHIVERDINERIGIALLIBLU"   # 34 + 1 + 30 = 65
    cf = "RSSMGR80A41H501W"     # RSS, MGR (1st, 3rd, 4th consonant), 1 January 1980, a woman
    details = _refused(station_stub, _request(profile=pb.CA_PROFILE_QUALIFIED_SIGNATURE, cf=cf, given=given,
                                              surname=surname, birth="1980-01-01"))
    assert details.startswith("holder") and "64" in details and "common name" in details.lower(), details


def test_name_beyond_64_characters_is_refused(station_stub):
    surname = "R" + "O" * 64
    details = _refused(station_stub, _request(cf=helpers.CF, given="Mario", surname=surname, birth="1980-01-01"))
    assert details.startswith("holder.surname:") and "64" in details, details


@pytest.mark.parametrize("bits,exponent,expect", [
    (4160, 65537, "above the 4096-bit maximum"),
    (2048, 3, "public exponent 3"),
])
def test_key_outside_policy_is_refused(station_stub, bits, exponent, expect):
    details = _refused(station_stub, _request(key=_key(bits, exponent), cf=helpers.CF, given="Mario",
                                              surname="Rossi", birth="1980-01-01"))
    assert details.startswith("csr_der:") and expect in details, details


@pytest.mark.parametrize("given", ["MARIO\u202e", "MA\x00RIO"])
def test_profiles_never_build_a_subject_with_a_control_character(given):
    # a path that skipped validation (a stored payload, a future caller) still cannot get such a name signed
    import datetime as dt
    from cns_spec.holder import HolderDataError
    from personalizer.ca import profiles
    from personalizer.ca.base import CertificateSubject
    from personalizer.rules.validation import Holder
    subject = CertificateSubject(Holder(helpers.CF, given, "ROSSI", dt.date(1980, 1, 1)), helpers.CARD_ID, "h" * 28)
    for build in (profiles.cns_auth_subject, profiles.qualified_subject):
        with pytest.raises(HolderDataError) as ei:
            build(subject)
        assert ei.value.field == "given_name"
