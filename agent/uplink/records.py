"""The gRPC uplinks' one conversion from protobuf answers to the domain records of ``agent.ops.uplink``.

``request(msg)`` (an ``IssueResponse``), ``ca_status(msg)`` (a ``CAStatusResponse``),
``registration(msg)`` (a ``Registration``), ``certificate_status(msg)`` (a
``CertificateStatusResponse``) and ``found(msg)`` (a ``FindCertificatesResponse``): the operations read these records only, so
nothing under ``agent.ops`` touches a protobuf attribute. Used by
``agent.uplink.client`` and ``agent.uplink.self_renewal``.

Imports ``agent.ops.uplink`` only (the messages are read by attribute).
"""
from __future__ import annotations

from agent.ops.uplink import (CAStatusRecord, CertificateRef, CertificateStatusRecord, FoundCertificate,
                              FoundCertificates, RegisteredHolder, RegistrationRecord, RequestErrorRecord,
                              RequestRecord)


def request(msg) -> RequestRecord:
    return RequestRecord(
        request_id=msg.request_id, state=int(msg.state), certificate_der=bytes(msg.certificate_der),
        chain_der=tuple(bytes(c) for c in msg.chain_der),
        error=RequestErrorRecord(msg.error.code, msg.error.field, msg.error.message),
        certificate=CertificateRef(msg.certificate.issuer_dn, msg.certificate.serial_hex),
        kind=msg.kind, attempts=int(msg.attempts), waiting_reason=msg.waiting_reason)


def ca_status(msg) -> CAStatusRecord:
    return CAStatusRecord(
        operational=msg.operational, detail=msg.detail, service_window_open=msg.service_window_open,
        in_maintenance=msg.in_maintenance, reactivation_at=int(msg.reactivation_at),
        service_window_changes_at=int(msg.service_window_changes_at),
        chain_der=tuple(bytes(c) for c in msg.chain_der))


def registration(msg) -> RegistrationRecord:
    h = msg.holder
    return RegistrationRecord(
        registration_id=msg.registration_id, state=msg.state,
        holder=RegisteredHolder(h.codice_fiscale, h.given_name, h.surname, h.birth_date),
        sex=msg.sex, birth_town=msg.birth_town, card_id=msg.card_id, expires_at=int(msg.expires_at),
        used_by=msg.used_by, used_operator_id=msg.used_operator_id, request_id=msg.request_id)


def certificate_status(msg) -> CertificateStatusRecord:
    return CertificateStatusRecord(
        certificate=CertificateRef(msg.certificate.issuer_dn, msg.certificate.serial_hex), status=int(msg.status),
        not_before=int(msg.not_before), not_after=int(msg.not_after), revocation_reason=msg.revocation_reason,
        revoked_at=int(msg.revoked_at), request_id=msg.request_id, change_request_id=msg.change_request_id,
        change_state=int(msg.change_state))


def found(msg) -> FoundCertificates:
    return FoundCertificates(tuple(
        FoundCertificate(status=certificate_status(f.status), profile=int(f.profile), card_id=f.card_id,
                         codice_fiscale=f.codice_fiscale, subject=f.subject, chamber_code=f.chamber_code)
        for f in msg.certificates))
