"""The gRPC uplinks answer with the domain records of ``agent.ops.uplink``, converted once (agent.uplink.records):
every field the operations read comes over from the message, and a message that lacks one gives the record's
empty value, never a protobuf object."""
from __future__ import annotations

import dataclasses

from agent.ops.uplink import (CAStatusRecord, CertificateRef, CertificateStatusRecord, FoundCertificate,
                              FoundCertificates, RegisteredHolder, RegistrationRecord,
                              RequestErrorRecord, RequestRecord)
from agent.uplink import records
from cns_spec import requests
from proto.cns.v1 import common_pb2, personalizer_pb2, registrations_pb2


def test_an_issue_response_becomes_a_request_record():
    msg = personalizer_pb2.IssueResponse(
        request_id="pers-1-CNS0", state=requests.CODE_FAILED, certificate_der=b"\x30\x01", chain_der=[b"ca", b"root"],
        certificate=common_pb2.CertificateRef(issuer_dn="CN=CA", serial_hex="0A"), kind="issue", attempts=3,
        error=common_pb2.ErrorDetail(code="INVALID_ARGUMENT", field="csr_der", message="too short"),
        waiting_reason="outside the service window")
    rec = records.request(msg)
    assert rec == RequestRecord("pers-1-CNS0", requests.CODE_FAILED, b"\x30\x01", (b"ca", b"root"),
                                RequestErrorRecord("INVALID_ARGUMENT", "csr_der", "too short"),
                                CertificateRef("CN=CA", "0A"), "issue", 3, "outside the service window")
    assert all(not hasattr(v, "DESCRIPTOR") for v in dataclasses.astuple(rec))
    assert records.request(personalizer_pb2.IssueResponse(request_id="r")) == RequestRecord("r", 0)


def test_a_ca_status_becomes_a_ca_status_record():
    msg = personalizer_pb2.CAStatusResponse(operational=False, detail="maintenance", reactivation_at=1700000000,
                                            in_maintenance=True, service_window_open=False,
                                            service_window_changes_at=1700003600, chain_der=[b"ca"],
                                            breaker_state="open")
    assert records.ca_status(msg) == CAStatusRecord(False, "maintenance", False, True, 1700000000, 1700003600,
                                                    (b"ca",))


def test_a_registration_becomes_a_registration_record():
    msg = registrations_pb2.Registration(
        registration_id="REG-0123456789ABCDEF", state="used", sex="F", birth_town="ROMA", card_id="C1",
        expires_at=5, used_by="urn:st", used_operator_id="op", request_id="pers-1-CNS0",
        holder=common_pb2.Holder(codice_fiscale="RSSMRA80A41H501U", given_name="MARIA", surname="ROSSI",
                                 birth_date="1980-01-01"))
    assert records.registration(msg) == RegistrationRecord(
        "REG-0123456789ABCDEF", "used", RegisteredHolder("RSSMRA80A41H501U", "MARIA", "ROSSI", "1980-01-01"),
        "F", "ROMA", "C1", 5, "urn:st", "op", "pers-1-CNS0")


def test_certificate_status_and_found_certificates_become_records():
    status = personalizer_pb2.CertificateStatusResponse(
        certificate=common_pb2.CertificateRef(issuer_dn="CN=CA", serial_hex="0B"), status=3, not_before=1, not_after=2,
        revocation_reason="keyCompromise", revoked_at=3, request_id="pers-1-CNS0", change_request_id="chg-1",
        change_state=requests.CODE_DONE)
    rec = CertificateStatusRecord(CertificateRef("CN=CA", "0B"), 3, 1, 2, "keyCompromise", 3, "pers-1-CNS0", "chg-1",
                                  requests.CODE_DONE)
    assert records.certificate_status(status) == rec
    msg = personalizer_pb2.FindCertificatesResponse(certificates=[personalizer_pb2.FoundCertificate(
        status=status, profile=personalizer_pb2.CA_PROFILE_CNS_AUTH, card_id="C1", codice_fiscale="RSSMRA80A41H501U",
        subject="CN=ROSSI MARIA", chamber_code="RM")])
    assert records.found(msg) == FoundCertificates((FoundCertificate(
        rec, personalizer_pb2.CA_PROFILE_CNS_AUTH, "C1", "RSSMRA80A41H501U", "CN=ROSSI MARIA", "RM"),))
