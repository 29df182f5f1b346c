"""CRL building (RFC 5280 §5): a pure function from revocation records to a CRL builder.

v2 CRL with cRLNumber and authorityKeyIdentifier; entries carry reasonCode
(absent for ``unspecified``, as RFC 5280 §5.3.1 recommends) and the hold
reason ``certificateHold`` for suspensions. The CA never removes expired
certificates from its CRL, so every CRL carries ExpiredCertsOnCRL (X.509
§9.6.2.9, required by ETSI EN 319 411-2 for qualified certificates) with the
issuing CA's notBefore. Imports nothing of ours but ``ca.base``.
"""
from __future__ import annotations

import datetime as _dt

from asn1crypto import core
from cryptography import x509
from cryptography.x509.oid import ObjectIdentifier

from personalizer.ca.base import CertStatusInfo

OID_EXPIRED_CERTS_ON_CRL = ObjectIdentifier("2.5.29.60")
MAX_REFRESH = _dt.timedelta(hours=2)            # tender SLA4.3: CRLs refreshed at least every 2 hours
NEXT_UPDATE_MARGIN = _dt.timedelta(minutes=15)  # nextUpdate = thisUpdate + refresh + margin
# the longest refresh interval whose nextUpdate still lies within 2 hours of thisUpdate: a CRL never
# promises a successor later than SLA4.3 allows, and the successor comes 15 minutes before it is due
MAX_REFRESH_INTERVAL = MAX_REFRESH - NEXT_UPDATE_MARGIN


def expired_certs_on_crl(since: _dt.datetime) -> x509.UnrecognizedExtension:
    value = core.GeneralizedTime(since.astimezone(_dt.timezone.utc).replace(microsecond=0)).dump()
    return x509.UnrecognizedExtension(OID_EXPIRED_CERTS_ON_CRL, value)


def build_crl(issuing: x509.Certificate, entries: list[CertStatusInfo], *, crl_number: int,
              this_update: _dt.datetime, refresh: _dt.timedelta) -> x509.CertificateRevocationListBuilder:
    if refresh > MAX_REFRESH_INTERVAL:
        raise ValueError(f"CRL refresh {refresh} exceeds {MAX_REFRESH_INTERVAL} (nextUpdate must stay within "
                         f"{MAX_REFRESH} of thisUpdate)")
    b = (x509.CertificateRevocationListBuilder()
         .issuer_name(issuing.subject)
         .last_update(this_update)
         .next_update(this_update + refresh + NEXT_UPDATE_MARGIN)
         .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(issuing.public_key()), critical=False)
         .add_extension(x509.CRLNumber(crl_number), critical=False)
         .add_extension(expired_certs_on_crl(issuing.not_valid_before_utc), critical=False))
    for e in entries:
        if e.revoked_at is None:
            continue
        rb = (x509.RevokedCertificateBuilder()
              .serial_number(int(e.ref.serial_hex, 16))
              .revocation_date(e.revoked_at))
        reason = x509.ReasonFlags(e.revocation_reason) if e.revocation_reason else x509.ReasonFlags.unspecified
        if reason is not x509.ReasonFlags.unspecified:
            rb = rb.add_extension(x509.CRLReason(reason), critical=False)
        b = b.add_revoked_certificate(rb.build())
    return b
