"""Revoking the certificates issued for an operation that was undone (a journaled undo step).

An undone personalization or renewal may already hold certificates at the CA
(one request issued, the other refused or cancelled by central IT). No
certificate may outlive its key or its card (DESIGN: safety rules), so the undo
asks the personalizer to revoke each of them with reason cessationOfOperation.

``revoke_orphans(uplink, orphans, requester=...)`` takes ``Orphan`` entries,
each naming a certificate by the request id that issued it, or by issuer DN and
serial (hex). For each it returns an ``OrphanResult`` whose ``settled`` says
whether the caller may record the undo step done:

    none        the request issued nothing (refused, cancelled, never seen)
    revoked     the personalizer accepted the revocation (durable in its outbox:
                applied now, or delivered as soon as the CA answers)
    already     the certificate was already revoked (idempotent re-run)
    pending     the issuing request is still queued: not settled, try again
                later (a certificate issued after the undo must be revoked too)

It is idempotent: the revocation request id is derived from the certificate's
source (``undo-<request id>`` or ``undo-<serial>``), so a retry after a crash or
a lost answer finds the same change request at the personalizer, and a
certificate already revoked counts as done. UplinkUnavailable propagates: the
caller's journal keeps the step open and retries later. Other refusals are
reported per certificate (``error``), never raised half-way.

A station may revoke only certificates its own chamber requested
(``personalizer.edge.service.PersonalizerService._change``); that is always the case
for certificates of its own operations.

Imports ``agent.ops.errors`` only; ``uplink`` is an open
``agent.uplink.client.PersonalizerClient`` (or anything with ``get_request``,
``certificate_status`` and ``change_status``).
"""
from __future__ import annotations

import hashlib
import logging
from dataclasses import asdict, dataclass

from cryptography import x509

from agent.ops.errors import UplinkError, UplinkUnavailable
from cns_spec import reasons

log = logging.getLogger("cns.agent.revoke_orphans")

REASON = reasons.CESSATION_OF_OPERATION
# cns.v1.RequestState / CertificateStatus values as the uplink returns them
_RECEIVED, _PENDING, _ISSUED, _FAILED, _DONE, _CANCELLED = 1, 2, 3, 4, 5, 6
_STATUS_REVOKED = 3
NONE, REVOKED, ALREADY, PENDING = "none", "revoked", "already", "pending"


@dataclass(frozen=True)
class Orphan:
    """A certificate to revoke: by the request that issued it, or by issuer DN and serial (hex)."""
    request_id: str = ""
    issuer_dn: str = ""
    serial_hex: str = ""

    def __post_init__(self) -> None:
        if not self.request_id and not (self.issuer_dn and self.serial_hex):
            raise ValueError("an orphan certificate is named by a request id or by issuer DN and serial")

    @property
    def source(self) -> str:
        return self.request_id or self.serial_hex.upper()


@dataclass
class OrphanResult:
    source: str                 # request id or serial the caller gave
    outcome: str                # none | revoked | already | pending | error
    serial_hex: str = ""
    issuer_dn: str = ""
    change_request_id: str = ""
    error: str = ""

    @property
    def settled(self) -> bool:
        return self.outcome in (NONE, REVOKED, ALREADY)

    def as_dict(self) -> dict:
        return asdict(self)


def change_request_id(source: str) -> str:
    """The revocation's request id, the same on every retry (the personalizer allows 128 characters)."""
    rid = f"undo-{source}"
    if len(rid) <= 128:
        return rid
    return "undo-" + hashlib.sha256(source.encode()).hexdigest()


def _ref_of(resp) -> tuple[str, str]:
    """Issuer DN and serial of an issued request (from its certificate reference, else its certificate)."""
    ref = resp.certificate
    if ref.issuer_dn and ref.serial_hex:
        return ref.issuer_dn, ref.serial_hex.upper()
    cert = x509.load_der_x509_certificate(resp.certificate_der)
    return cert.issuer.rfc4514_string(), format(cert.serial_number, "X")


async def _revoke_one(uplink, orphan: Orphan, requester: dict, reason: str) -> OrphanResult:
    result = OrphanResult(source=orphan.source, outcome=NONE, change_request_id=change_request_id(orphan.source))
    issuer, serial = orphan.issuer_dn, orphan.serial_hex.upper()
    if orphan.request_id:
        try:
            req = await uplink.get_request(orphan.request_id)
        except UplinkUnavailable:
            raise
        except UplinkError as exc:
            if exc.code == "NOT_FOUND":       # never reached the personalizer: nothing was issued
                return result
            raise
        if req.state in (_FAILED, _CANCELLED):
            return result
        if req.state in (_RECEIVED, _PENDING, 0):
            result.outcome = PENDING
            return result
        issuer, serial = _ref_of(req)
    result.issuer_dn, result.serial_hex = issuer, serial
    status = await uplink.certificate_status(issuer_dn=issuer, serial_hex=serial)
    if status.status == _STATUS_REVOKED:
        result.outcome = ALREADY
        return result
    try:
        resp = await uplink.change_status("revoke", request_id=result.change_request_id, issuer_dn=issuer,
                                          serial_hex=serial, requester=requester, reason=reason)
    except UplinkUnavailable:
        raise
    except UplinkError as exc:
        if exc.code == "FAILED_PRECONDITION":   # revoked meanwhile (another undo, central IT): check again
            again = await uplink.certificate_status(issuer_dn=issuer, serial_hex=serial)
            if again.status == _STATUS_REVOKED:
                result.outcome = ALREADY
                return result
        result.outcome, result.error = "error", str(exc)
        return result
    result.outcome = ALREADY if resp.change_state == _FAILED and resp.status == _STATUS_REVOKED else REVOKED
    if resp.change_state == _FAILED and resp.status != _STATUS_REVOKED:
        result.outcome, result.error = "error", f"the CA refused to revoke certificate {serial}"
    log.info("certificate %s (%s): revocation %s (%s)", serial, orphan.source, result.outcome,
             result.change_request_id)
    return result


async def revoke_orphans(uplink, orphans: list[Orphan], *, requester: dict,
                         reason: str = REASON) -> list[OrphanResult]:
    """Revoke every certificate in ``orphans`` (see the module docstring); one result per orphan, in order.

    Raises ``UplinkUnavailable`` when the personalizer cannot be reached (nothing is lost: call again)."""
    return [await _revoke_one(uplink, o, requester, reason) for o in orphans]
