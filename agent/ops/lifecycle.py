"""Certificate lifecycle through the personalizer: status, suspend, reactivate, revoke.

Targets are either the certificates on the card in a reader (CNS0
authentication, CNS1 signature: read from the model's certificate files, no
PIN needed) or certificate serials typed by the operator (the card is absent:
lost or stolen). Serials are looked up at the personalizer's issuing CA (the
first certificate of the chain ``GetCAStatus`` returns).

A change is sent per certificate with a request id
``<action>-<serial>-<attempt>``: the same for every retry of one operator
attempt (the uplink retries UNAVAILABLE and fails over to DR with it, and the
personalizer answers a repeated id with the stored request), a new attempt id
for each operator command. A certificate already in the wanted state is not
sent again ("already suspended"), so re-running a command after a lost answer
is harmless. A refused change (FAILED_PRECONDITION: reactivating a revoked
certificate, ...) is reported with the personalizer's message, after the other
certificates of the card have been handled.

Targets may also be every certificate the personalizer issued for a card
serial or a codice fiscale (``targets_by_holder``: a lost card; only this
chamber's are visible to a station).

A change is never journaled on the agent: it is done when the personalizer
has accepted it (its outbox makes it durable and delivers it to the CA). When
the personalizer cannot be reached, the command stops and says, per
certificate, what was done and what was NOT (``ChangeNotDone``): a change
whose answer was lost is "not confirmed", to be checked with ``status`` and
sent again (a certificate already in the wanted state is not sent twice).
Nothing is kept or retried behind the operator's back.

Imports ``agent.card``, ``agent.ops``; the uplink is an open
``agent.uplink.client.PersonalizerClient`` passed in. Card I/O in a worker thread.
"""
from __future__ import annotations

import asyncio
import datetime as _dt
import logging
import re
import uuid
from dataclasses import asdict, dataclass, field
from typing import Any, Callable

from cryptography import x509

from agent.card.cns import CnsSession
from agent.card.errors import FileNotFoundOnCardError
from agent.card.transport import ApduTransport
from agent.ops.errors import OperationError, PreconditionError, UplinkError, UplinkUnavailable
from cns_spec.reasons import REVOCATION_REASONS as REASONS
from cns_spec import requests
from cns_spec.reasons import check_revocation_reason

log = logging.getLogger("cns.agent.lifecycle")

ACTIONS = ("suspend", "reactivate", "revoke")
TARGET_STATE = {"suspend": "suspended", "reactivate": "active", "revoke": "revoked"}
ACTION_NOUN = {"suspend": "suspension", "reactivate": "reactivation", "revoke": "revocation"}
# cns.v1.CertificateStatus and RequestState values as the uplink returns them
STATUS_NAMES = {0: "unknown", 1: "active", 2: "suspended", 3: "revoked", 4: "expired"}
REQUEST_DONE, REQUEST_FAILED = requests.CODE_DONE, requests.CODE_FAILED   # cns.v1.RequestState values
SERIAL_RE = re.compile(r"^(?:0[xX])?[0-9A-Fa-f:]{1,64}$")


PROFILE_KEYSET = {1: "CNS0", 2: "CNS1"}   # cns.v1.CAProfile → keyset


class ChangeNotDone(UplinkUnavailable):
    """The personalizer could not be reached: ``results`` says per certificate what was and was not done."""

    def __init__(self, message: str, *, code: str | None, results: list["CertificateInfo"]):
        super().__init__(message, code=code)
        self.results = results


class ChangeRefused(UplinkError):
    """One or more certificates were refused; ``results`` holds what happened to each."""

    def __init__(self, message: str, *, code: str | None, results: list["CertificateInfo"]):
        super().__init__(message, code=code)
        self.results = results


@dataclass
class Target:
    keyset: str          # CNS0 / CNS1; "" when given by serial
    issuer_dn: str       # RFC 4514, as the personalizer names it
    serial_hex: str      # upper case, no leading zeros
    certificate: x509.Certificate | None = None
    subject: str = ""    # when known without the certificate (found by card serial or codice fiscale)


@dataclass
class CertificateInfo:
    keyset: str
    serial_hex: str
    subject: str = ""
    issuer: str = ""
    not_before_unix: int = 0
    not_after_unix: int = 0
    status: str = "unknown"
    revocation_reason: str = ""
    status_changed_unix: int = 0
    message: str = ""                 # this certificate's outcome ("suspended", "already revoked", the refusal)
    request_id: str = ""

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class CardCertificates:
    card_serial: str
    certificates: list[CertificateInfo] = field(default_factory=list)
    message: str = ""


def normalize_serial(text: str) -> str:
    """"0x01:a2" / "01A2" → "1A2" (the personalizer's form). ``ValueError`` names what is wrong."""
    raw = text.strip()
    if not SERIAL_RE.match(raw):
        raise ValueError(f"certificate serial {text!r} is not hexadecimal (e.g. 5F3A09C1...)")
    raw = raw[2:] if raw[:2].lower() == "0x" else raw
    digits = raw.replace(":", "").upper().lstrip("0")
    return digits or "0"


def check_reason(action: str, reason: str) -> str:
    if action != "revoke":
        if reason:
            raise ValueError(f"a reason is given only to revoke, not to {action}")
        return ""
    return check_revocation_reason(reason)


def new_attempt() -> str:
    return uuid.uuid4().hex[:16]


def request_id(action: str, serial_hex: str, attempt: str) -> str:
    return f"{action}-{serial_hex}-{attempt}"


# -- card side (worker thread) -------------------------------------------------------------

def read_card_certificates(transport: ApduTransport, model) -> tuple[str, list[Target]]:
    """The card serial and its certificates (CNS0, CNS1) as targets; ``PreconditionError`` on a blank card."""
    cns = CnsSession(transport, model)
    serial = cns.read_serial()
    targets = []
    for ks in model.keysets:
        try:
            der = cns.read_file(ks.cert_path)
        except FileNotFoundOnCardError:
            continue
        if not der.rstrip(b"\x00\xff"):
            continue
        try:
            cert = x509.load_der_x509_certificate(der)
        except ValueError:
            cert = _load_padded(der)
        targets.append(Target(ks.name, cert.issuer.rfc4514_string(), f"{cert.serial_number:X}", cert))
    if not targets:
        raise PreconditionError(f"card {serial} carries no certificate (blank, or not personalized)")
    return serial, targets


def _load_padded(der: bytes) -> x509.Certificate:
    """A certificate file larger than the certificate: the DER length says where it ends."""
    if len(der) < 4 or der[0] != 0x30:
        raise PreconditionError("a certificate file on the card does not hold a DER certificate")
    n = der[1]
    if n & 0x80:
        k = n & 0x7F
        total = 2 + k + int.from_bytes(der[2:2 + k], "big")
    else:
        total = 2 + n
    try:
        return x509.load_der_x509_certificate(der[:total])
    except ValueError:
        raise PreconditionError("a certificate file on the card does not hold a DER certificate") from None


# -- personalizer side ---------------------------------------------------------------------

def _info(target: Target, resp=None) -> CertificateInfo:
    out = CertificateInfo(keyset=target.keyset, serial_hex=target.serial_hex, issuer=target.issuer_dn)
    cert = target.certificate
    out.subject = target.subject
    if cert is not None:
        out.subject = cert.subject.rfc4514_string()
        out.not_before_unix = int(cert.not_valid_before_utc.timestamp())
        out.not_after_unix = int(cert.not_valid_after_utc.timestamp())
    if resp is not None:
        out.status = STATUS_NAMES.get(resp.status, "unknown")
        out.revocation_reason = resp.revocation_reason
        out.status_changed_unix = int(resp.revoked_at)
        out.not_before_unix = out.not_before_unix or int(resp.not_before)
        out.not_after_unix = out.not_after_unix or int(resp.not_after)
        if out.status == "active" and resp.not_after and resp.not_after < _dt.datetime.now(_dt.timezone.utc).timestamp():
            out.status = "expired"
    return out


class CertificateLifecycle:
    """Status and status changes of certificates, for one station and operator (``requester``)."""

    def __init__(self, *, uplink, requester: dict[str, str]):
        self.uplink = uplink
        self.requester = requester

    async def issuer_dn(self) -> str:
        """The personalizer's issuing CA, for certificates named by serial only."""
        ca = await self.uplink.ca_status()
        if not ca.chain_der:
            raise UplinkError("the personalizer did not say which CA issues certificates (empty chain)")
        return x509.load_der_x509_certificate(ca.chain_der[0]).subject.rfc4514_string()

    async def targets_by_serial(self, serials: list[str]) -> list[Target]:
        normal = list(dict.fromkeys(normalize_serial(s) for s in serials))
        if not normal:
            raise ValueError("give a reader or at least one certificate serial")
        dn = await self.issuer_dn()
        return [Target("", dn, s) for s in normal]

    async def targets_by_holder(self, *, card_serial: str = "", codice_fiscale: str = "") -> list[Target]:
        """Every certificate the personalizer issued for a card (EF_IDCarta serial) or a holder, oldest first."""
        card_serial, codice_fiscale = card_serial.strip(), codice_fiscale.strip().upper()
        if not card_serial and not codice_fiscale:
            raise ValueError("give a card serial or a codice fiscale")
        found = await self.uplink.find_certificates(card_id=card_serial, codice_fiscale=codice_fiscale)
        return [Target(PROFILE_KEYSET.get(f.profile, ""), f.status.certificate.issuer_dn,
                       normalize_serial(f.status.certificate.serial_hex), subject=f.subject)
                for f in found.certificates]

    async def status(self, targets: list[Target]) -> list[CertificateInfo]:
        out = []
        for t in targets:
            resp = await self.uplink.certificate_status(issuer_dn=t.issuer_dn, serial_hex=t.serial_hex)
            out.append(_info(t, resp))
        return out

    async def change(self, action: str, targets: list[Target], *, reason: str = "",
                     attempt: str | None = None) -> list[CertificateInfo]:
        """Apply ``action`` to every target; ``ChangeRefused`` (with every result) when any was refused."""
        if action not in ACTIONS:
            raise ValueError(f"unknown action {action!r}: one of {', '.join(ACTIONS)}")
        reason = check_reason(action, reason)
        attempt = attempt or new_attempt()
        results: list[CertificateInfo] = []
        refused: list[UplinkError] = []
        for i, t in enumerate(targets):
            try:
                results.append(await self._change_one(action, t, reason, attempt))
            except UplinkUnavailable as exc:
                raise self._not_done(action, targets, results, i, exc) from None
            except UplinkError as exc:
                info = _info(t)
                info.message = f"refused: {_server_message(exc)}"
                try:   # show the state it is really in
                    info = _info(t, await self.uplink.certificate_status(issuer_dn=t.issuer_dn,
                                                                         serial_hex=t.serial_hex))
                    info.message = f"refused: {_server_message(exc)}"
                except UplinkError:
                    pass
                results.append(info)
                refused.append(exc)
        if refused:
            first = refused[0]
            lines = "; ".join(f"{r.keyset or r.serial_hex}: {r.message}" for r in results)
            raise ChangeRefused(f"{action} refused by the personalizer: {lines}", code=first.code, results=results)
        return results

    @staticmethod
    def _not_done(action: str, targets: list[Target], results: list[CertificateInfo], failed_at: int,
                  exc: UplinkUnavailable) -> ChangeNotDone:
        """What the operator must know when the personalizer went away half-way: nothing is kept."""
        out = list(results)
        sent = getattr(exc, "sent", False)
        for j, t in enumerate(targets[failed_at:]):
            info = _info(t)
            if j == 0 and sent:
                info.request_id = getattr(exc, "request_id", "")
                info.message = (f"NOT confirmed: the {ACTION_NOUN[action]} request {info.request_id} got no answer; "
                                "check with `cns-agent cert status` and run the command again")
            else:
                info.message = f"NOT done: the {ACTION_NOUN[action]} was not sent"
            out.append(info)
        lines = "; ".join(f"{r.keyset or r.serial_hex}: {r.message}" for r in out)
        return ChangeNotDone(f"{action} not done: the personalizer could not be reached "
                             f"({_server_message(exc)}); nothing is kept or retried by the agent. {lines}",
                             code=exc.code, results=out)

    async def _change_one(self, action: str, t: Target, reason: str, attempt: str) -> CertificateInfo:
        now = await self.uplink.certificate_status(issuer_dn=t.issuer_dn, serial_hex=t.serial_hex)
        current = _info(t, now)
        if current.status == TARGET_STATE[action]:
            current.message = f"already {current.status}"
            return current
        rid = request_id(action, t.serial_hex, attempt)
        log.info("%s certificate %s (%s) as request %s for operator %s", action, t.serial_hex, t.keyset or "by serial",
                 rid, self.requester.get("operator_id", ""))
        try:
            resp = await self.uplink.change_status(action, request_id=rid, issuer_dn=t.issuer_dn,
                                                   serial_hex=t.serial_hex, requester=self.requester, reason=reason)
        except UplinkUnavailable as exc:
            exc.sent, exc.request_id = True, rid   # it may have reached the personalizer: not confirmed
            raise
        info = _info(t, resp)
        info.request_id = rid
        state = resp.change_state
        if state == REQUEST_DONE:
            info.message = TARGET_STATE[action]
        elif state == REQUEST_FAILED:
            raise UplinkError(f"personalizer: {action} {t.serial_hex}: FAILED_PRECONDITION: the CA refused the "
                              f"{ACTION_NOUN[action]} (request {rid})", code="FAILED_PRECONDITION")
        else:
            info.message = (f"{ACTION_NOUN[action]} queued at the personalizer as request {rid} "
                            f"({requests.name_of(state)}); it takes effect when the CA is reachable")
        return info


def _server_message(exc: UplinkError) -> str:
    """The personalizer's own words from an uplink error ("personalizer: what: CODE: message")."""
    text = str(exc)
    if exc.code and f"{exc.code}: " in text:
        return text.split(f"{exc.code}: ", 1)[1]
    return text


async def card_targets(connect: Callable[[], ApduTransport], model) -> tuple[str, list[Target]]:
    def go():
        link = connect()
        try:
            return read_card_certificates(link, model)
        finally:
            close = getattr(link, "close", None)
            if close is not None:
                try:
                    close()
                except Exception:  # the card may be gone already
                    pass
    return await asyncio.to_thread(go)


__all__ = ["ACTIONS", "REASONS", "CardCertificates", "CertificateInfo", "CertificateLifecycle", "ChangeNotDone",
           "ChangeRefused",
           "OperationError", "Target", "card_targets", "check_reason", "normalize_serial", "read_card_certificates"]
