"""Lifecycle rules, pure: which status changes are allowed, and when a renewal is.

* Status transitions (``check_transition``): suspend needs ACTIVE; reactivate
  needs SUSPENDED (a revoked certificate never comes back); revoke needs
  ACTIVE or SUSPENDED. Anything else → ``FailedPrecondition``.
* Renewal (``check_renewal``): the current certificate was issued by our
  issuing CA and is on record, is ACTIVE (not suspended, revoked or
  expired), the proof of possession verifies — RSA PKCS#1 v1.5 with SHA-256
  over ``request_id || csr_der`` by the current certificate's key —, the CSR
  names the same holder (codice fiscale), the request falls inside the
  renewal window (``renewal_window`` before expiry) and the new certificate
  would not outlive the device: ``device_life`` from the first certificate
  issued for that card id.

Imports cryptography, ``cns_spec`` and ``errors``/``ca.base`` only.
"""
from __future__ import annotations

import datetime as _dt

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from cns_spec import validity
from cns_spec.reasons import check_revocation_reason
from personalizer.ca.base import CertState
from personalizer.errors import FailedPrecondition, InvalidRequest

DEFAULT_RENEWAL_WINDOW = _dt.timedelta(days=validity.DEFAULT_RENEWAL_WINDOW_DAYS)
DEVICE_LIFE_YEARS = validity.DEVICE_LIFE_YEARS
ALLOWED_FROM = {
    "suspend": (CertState.ACTIVE,),
    "reactivate": (CertState.SUSPENDED,),
    "revoke": (CertState.ACTIVE, CertState.SUSPENDED),
}


FINAL_STATES = {
    CertState.REVOKED: "revocation is final: the holder needs new certificates, on a new card or by a new issuance",
    CertState.EXPIRED: "an expired certificate cannot change status; the holder needs new certificates",
}


def check_transition(kind: str, state: CertState) -> None:
    """``FailedPrecondition`` (with what to do) unless ``kind`` is allowed from ``state``."""
    allowed = ALLOWED_FROM[kind]
    if state not in allowed:
        need = " or ".join(s.value for s in allowed)
        why = FINAL_STATES.get(state, "")
        raise FailedPrecondition(f"cannot {kind} a certificate that is {state.value}; it must be {need}"
                                 + (f" ({why})" if why else ""))


def check_reason(reason: str) -> str:
    try:
        return check_revocation_reason(reason)
    except ValueError as e:
        raise InvalidRequest("reason", f"{e} (RFC 5280)") from None


def holder_cf(cert_or_csr) -> str | None:
    attrs = cert_or_csr.subject.get_attributes_for_oid(x509.NameOID.SERIAL_NUMBER)
    if not attrs:
        return None
    value = attrs[0].value
    return value[len("TINIT-"):] if value.startswith("TINIT-") else value


def check_renewal(*, request_id: str, csr_der: bytes, proof: bytes, csr: x509.CertificateSigningRequest,
                  current: x509.Certificate, issuing: x509.Certificate, state: CertState | None,
                  first_issued: _dt.datetime | None, now: _dt.datetime, new_validity: _dt.timedelta,
                  renewal_window: _dt.timedelta = DEFAULT_RENEWAL_WINDOW,
                  device_life_years: int = DEVICE_LIFE_YEARS) -> None:
    try:
        current.verify_directly_issued_by(issuing)
    except (ValueError, TypeError, InvalidSignature):
        raise FailedPrecondition("the current certificate was not issued by this CA") from None
    if state is None:
        raise FailedPrecondition("the current certificate is not on record at this CA")
    if state is not CertState.ACTIVE or current.not_valid_after_utc <= now:
        shown = "expired" if current.not_valid_after_utc <= now else state.value
        raise FailedPrecondition(f"the current certificate is {shown}; only an active certificate can be renewed")
    check_proof_of_possession(current, request_id, csr_der, proof)
    cf_cert, cf_csr = holder_cf(current), holder_cf(csr)
    if cf_cert is None or cf_cert != cf_csr:
        raise FailedPrecondition(f"the CSR names holder {cf_csr!r}, the current certificate {cf_cert!r}")
    opens = validity.renewal_opens(current.not_valid_after_utc, renewal_window)
    if now < opens:
        raise FailedPrecondition(f"renewal opens {opens.date().isoformat()} ({renewal_window.days} days before the "
                                 f"current certificate expires on {current.not_valid_after_utc.date().isoformat()})")
    first = first_issued or current.not_valid_before_utc
    end_of_life = validity.device_end_of_life(first, device_life_years)
    if validity.outlives_device(now, new_validity, first, device_life_years):
        raise FailedPrecondition(
            f"renewal refused: a new certificate would be valid until {(now + new_validity).date().isoformat()}, "
            f"beyond the device's {device_life_years}-year life ending {end_of_life.date().isoformat()} "
            f"(first certificate for this card issued {first.date().isoformat()})")


def _pop_bytes(request_id: str, csr_der: bytes) -> bytes:
    return request_id.encode("utf-8") + csr_der


def check_proof_of_possession(current: x509.Certificate, request_id: str, csr_der: bytes, proof: bytes) -> None:
    """RSA PKCS#1 v1.5 signature with SHA-256 over request_id || csr_der, by the current certificate's key."""
    key = current.public_key()
    if not isinstance(key, rsa.RSAPublicKey):
        raise InvalidRequest("current_certificate_der", "only RSA certificates can be renewed")
    try:
        key.verify(proof, _pop_bytes(request_id, csr_der), padding.PKCS1v15(), hashes.SHA256())
    except InvalidSignature:
        raise InvalidRequest("proof_of_possession", "does not verify with the current certificate's key "
                             "(RSA PKCS#1 v1.5, SHA-256 over request_id || csr_der)") from None
