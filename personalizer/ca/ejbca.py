"""EJBCA REST connector: ``CAConnector`` over EJBCA's REST API with a TLS client certificate.

Endpoints (base ``/ejbca/ejbca-rest-api``; REFERENCE.md §4, EJBCA's
``modules/ejbca-rest-api/resources/openapi.json``)::

    POST v1/certificate/pkcs10enroll                       issue (username = our request id)
    POST v1/certificate/search                             find_issued (USERNAME), status dates (SERIAL_NUMBER)
    PUT  v1/certificate/{issuer_dn}/{hex}/revoke?reason=   revoke / CERTIFICATE_HOLD / REMOVE_FROM_CRL
    GET  v1/certificate/{issuer_dn}/{hex}/revocationstatus status
    GET  v1/ca                                             the CA is known (health detail)
    GET  /ejbca/publicweb/healthcheck/ejbcahealth          "ALLOK" when healthy

Duplicate-free retries: ``issue`` first searches for a certificate with
username = request id and returns it if found; if the enrolment call itself
times out or loses its connection, it searches once more before giving up
with ``CAUnavailable`` — so neither the broker's retry nor ours issues twice.

Errors are translated here: HTTP 4xx → ``InvalidRequest`` with EJBCA's
``error_message`` (except 401/403 → ``CAError``: our credentials, not the
request, are wrong; 404 → ``NotFound``; 409 on revoke → ``InvalidTransition``),
5xx, timeouts and connection errors → ``CAUnavailable``. The enrolment
password is random per call and never logged. Blocking ``http.client`` calls
run in a worker thread. Must not import grpc, proto, the store or the broker.
"""
from __future__ import annotations

import asyncio
import base64
import datetime as _dt
import http.client
import json
import logging
import secrets
import socket
import ssl
import time
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from personalizer.ca.base import (CAHealth, CertificateSubject, CertRef, CertState, CertStatusInfo,
                                  IssuedCertificate, ref_of)
from personalizer.ca.errors import InvalidTransition
from personalizer.ca.reasons import EJBCA_REASON_NAMES, PERMANENT_REASONS, from_ejbca, parse_reason
from personalizer.errors import CAError, CAUnavailable, InvalidRequest, NotFound

log = logging.getLogger(__name__)

CONNECTOR_NAME = "ejbca"
API_BASE = "/ejbca/ejbca-rest-api/"
HEALTH_PATH = "/ejbca/publicweb/healthcheck/ejbcahealth"
HEALTH_OK = "ALLOK"
ENROLL = "v1/certificate/pkcs10enroll"
SEARCH = "v1/certificate/search"
CA_LIST = "v1/ca"
HOLD = x509.ReasonFlags.certificate_hold
REMOVE_FROM_CRL = EJBCA_REASON_NAMES[x509.ReasonFlags.remove_from_crl]
SEARCH_USERNAME = "USERNAME"
SEARCH_SERIAL = "SERIAL_NUMBER"
SEARCH_EQUAL = "EQUAL"
MAX_SEARCH_RESULTS = 10
PASSWORD_BYTES = 18


@dataclass(frozen=True)
class EjbcaSettings:
    """Where EJBCA is and how we authenticate; profile names map our profiles to EJBCA's."""

    base_url: str                               # https://ejbca.example.it:8443
    client_cert: Path                           # PEM, our RA administrator certificate
    client_key: Path                            # PEM, unencrypted, mode 0600
    trust_anchors: Path                         # PEM CA(s) that sign EJBCA's TLS certificate
    ca_name: str                                # certificate_authority_name
    chain_pem: Path                             # issuing CA first, root last (chain_der)
    certificate_profiles: dict[str, str] = field(default_factory=dict)   # ours → EJBCA certificate profile
    end_entity_profiles: dict[str, str] = field(default_factory=dict)    # ours → EJBCA end-entity profile
    timeout_seconds: float = 10.0               # per HTTP call; issuance SLA is 5 s on average

    def __post_init__(self):
        u = urllib.parse.urlsplit(self.base_url)
        if u.scheme != "https" or not u.hostname:
            raise ValueError(f"EJBCA base_url must be https://host[:port], got {self.base_url!r}")


@dataclass(frozen=True)
class _Reply:
    status: int
    body: bytes

    def json(self) -> dict:
        try:
            return json.loads(self.body or b"{}")
        except ValueError as exc:
            raise CAError(f"EJBCA answered HTTP {self.status} with a body that is not JSON") from exc

    def message(self) -> str:
        try:
            data = json.loads(self.body)
            return str(data.get("error_message") or data.get("message") or data)
        except ValueError:
            return self.body.decode("utf-8", "replace")[:300]


class EjbcaConnector:
    name = CONNECTOR_NAME

    def __init__(self, settings: EjbcaSettings):
        self.settings = settings
        u = urllib.parse.urlsplit(settings.base_url)
        self._host, self._port = u.hostname, u.port or 443
        ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(settings.trust_anchors))
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        try:
            ctx.load_cert_chain(str(settings.client_cert), str(settings.client_key))
            chain = x509.load_pem_x509_certificates(Path(settings.chain_pem).read_bytes())
        except (OSError, ssl.SSLError, ValueError) as exc:
            raise CAError(f"EJBCA connector: cannot load client certificate, key or chain: {exc}") from exc
        self._ctx = ctx
        self._chain = tuple(c.public_bytes(serialization.Encoding.DER) for c in chain)
        self._issuer_dn = chain[0].subject.rfc4514_string()

    # -- HTTP ----------------------------------------------------------------------

    def _call_sync(self, method: str, path: str, body: dict | None) -> _Reply:
        conn = http.client.HTTPSConnection(self._host, self._port, context=self._ctx,
                                           timeout=self.settings.timeout_seconds)
        headers = {"Accept": "application/json"}
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        try:
            conn.request(method, path, body=data, headers=headers)
            resp = conn.getresponse()
            return _Reply(resp.status, resp.read())
        except (socket.timeout, TimeoutError) as exc:
            raise CAUnavailable(f"EJBCA did not answer {method} {path} within "
                                f"{self.settings.timeout_seconds:g} s") from exc
        except (OSError, ssl.SSLError, http.client.HTTPException) as exc:
            raise CAUnavailable(f"EJBCA unreachable ({method} {path}): {type(exc).__name__}: {exc}") from exc
        finally:
            conn.close()

    async def _call(self, method: str, path: str, body: dict | None = None, *, ok=(200,),
                    keep_client_errors: bool = False) -> _Reply:
        reply = await asyncio.to_thread(self._call_sync, method, path, body)
        if reply.status in ok:
            return reply
        msg = f"EJBCA {method} {path.split('?')[0]}: HTTP {reply.status}: {reply.message()}"
        if reply.status >= 500:
            raise CAUnavailable(msg)
        if reply.status in (401, 403):
            raise CAError(msg)
        if reply.status == 404:
            raise NotFound(msg)
        if keep_client_errors:
            raise _ClientError(reply.status, msg, reply.message())
        raise InvalidRequest("ejbca", msg)

    def _cert_path(self, ref: CertRef, action: str) -> str:
        dn = urllib.parse.quote(ref.issuer_dn, safe="")
        return f"{API_BASE}v1/certificate/{dn}/{ref.serial_hex.upper()}/{action}"

    # -- issuance ------------------------------------------------------------------

    def chain_der(self) -> tuple[bytes, ...]:
        return self._chain

    def _issued(self, cert_der: bytes) -> IssuedCertificate:
        cert = x509.load_der_x509_certificate(cert_der)
        return IssuedCertificate(ref=ref_of(cert), certificate_der=cert_der, chain_der=self._chain,
                                 not_before=cert.not_valid_before_utc, not_after=cert.not_valid_after_utc)

    async def _search(self, prop: str, value: str) -> list[bytes]:
        reply = await self._call("POST", API_BASE + SEARCH, {
            "max_number_of_results": MAX_SEARCH_RESULTS,
            "criteria": [{"property": prop, "value": value, "operation": SEARCH_EQUAL}]})
        out = []
        for c in reply.json().get("certificates") or []:
            try:
                out.append(base64.b64decode(c["certificate"]))
            except (KeyError, ValueError, TypeError) as exc:
                raise CAError("EJBCA search returned a certificate that is not base64 DER") from exc
        return out

    async def find_issued(self, request_id: str) -> IssuedCertificate | None:
        found = await self._search(SEARCH_USERNAME, request_id)
        if not found:
            return None
        # the earliest certificate is the one the request produced
        issued = sorted((self._issued(d) for d in found), key=lambda i: i.not_before)
        if len(issued) > 1:
            log.warning("EJBCA holds %d certificates for request %s; returning the first", len(issued), request_id)
        return issued[0]

    async def issue(self, profile: str, csr: x509.CertificateSigningRequest, subject: CertificateSubject,
                    request_id: str) -> IssuedCertificate:
        # EJBCA's own lookup by username stays even on a first attempt: other systems may call this CA, so
        # a REST call less would rely on this daemon's accounting
        s = self.settings
        if profile not in s.certificate_profiles or profile not in s.end_entity_profiles:
            raise InvalidRequest("profile", f"profile {profile!r} is not mapped to an EJBCA profile")
        existing = await self.find_issued(request_id)
        if existing is not None:
            return existing
        body = {
            "certificate_request": csr.public_bytes(serialization.Encoding.PEM).decode(),
            "certificate_profile_name": s.certificate_profiles[profile],
            "end_entity_profile_name": s.end_entity_profiles[profile],
            "certificate_authority_name": s.ca_name,
            "username": request_id,
            "password": secrets.token_urlsafe(PASSWORD_BYTES),
            "include_chain": True,
            "response_format": "DER",
        }
        try:
            reply = await self._call("POST", API_BASE + ENROLL, body, ok=(200, 201), keep_client_errors=True)
        except CAUnavailable:
            # the answer may be lost after EJBCA issued: look before anyone retries
            try:
                existing = await self.find_issued(request_id)
            except CAUnavailable:
                existing = None
            if existing is not None:
                log.info("enrolment answer for %s was lost; found the certificate EJBCA issued", request_id)
                return existing
            raise
        except _ClientError as exc:
            raise InvalidRequest("csr", exc.ejbca_message) from exc
        data = reply.json()
        try:
            return self._issued(base64.b64decode(data["certificate"]))
        except (KeyError, ValueError, TypeError) as exc:
            raise CAError("EJBCA enrolment answer has no DER certificate") from exc

    # -- status and lifecycle ------------------------------------------------------

    async def status(self, ref: CertRef) -> CertStatusInfo | None:
        try:
            found = await self._search(SEARCH_SERIAL, ref.serial_hex.upper())
            reply = await self._call("GET", self._cert_path(ref, "revocationstatus"))
        except NotFound:
            return None
        certs = [x509.load_der_x509_certificate(d) for d in found]
        certs = [c for c in certs if f"{c.serial_number:X}" == ref.serial_hex.upper().lstrip("0")]
        if not certs:
            return None
        cert = certs[0]
        data = reply.json()
        reason = from_ejbca(data.get("revocation_reason") or "") if data.get("revoked") else None
        revoked_at = None
        if reason is not None and data.get("revocation_date"):
            revoked_at = _dt.datetime.fromisoformat(data["revocation_date"].replace("Z", "+00:00"))
        if reason is None:
            state = CertState.EXPIRED if cert.not_valid_after_utc < _dt.datetime.now(_dt.timezone.utc) \
                else CertState.ACTIVE
        else:
            state = CertState.SUSPENDED if reason is HOLD else CertState.REVOKED
        return CertStatusInfo(ref=ref_of(cert), state=state, not_before=cert.not_valid_before_utc,
                              not_after=cert.not_valid_after_utc, request_id="",
                              revocation_reason=reason.value if reason else "", revoked_at=revoked_at)

    async def _require(self, ref: CertRef, operation: str, allowed: set[CertState], hint: str = "") -> None:
        info = await self.status(ref)
        if info is None:
            raise NotFound(f"EJBCA has no certificate {ref.serial_hex} from {ref.issuer_dn!r}")
        if info.state not in allowed:
            raise InvalidTransition(ref.serial_hex, info.state.value, operation, hint)

    async def _revoke(self, ref: CertRef, ejbca_reason: str, operation: str) -> CertStatusInfo:
        query = urllib.parse.urlencode({"reason": ejbca_reason})
        try:
            await self._call("PUT", self._cert_path(ref, "revoke") + "?" + query, keep_client_errors=True)
        except _ClientError as exc:
            if exc.status == 409:
                raise InvalidTransition(ref.serial_hex, "revoked", operation, exc.ejbca_message) from exc
            raise InvalidRequest("reason", exc.ejbca_message) from exc
        info = await self.status(ref)
        if info is None:
            raise CAError(f"EJBCA lost certificate {ref.serial_hex} after {operation}")
        return info

    async def revoke(self, ref: CertRef, reason: str) -> CertStatusInfo:
        flag = parse_reason(reason)
        if flag not in PERMANENT_REASONS:
            raise InvalidRequest("reason", f"{flag.value} is not a revocation reason here: use suspend() or "
                                           "reactivate()")
        await self._require(ref, "revoke", {CertState.ACTIVE, CertState.SUSPENDED})
        return await self._revoke(ref, EJBCA_REASON_NAMES[flag], "revoke")

    async def suspend(self, ref: CertRef) -> CertStatusInfo:
        await self._require(ref, "suspend", {CertState.ACTIVE})
        return await self._revoke(ref, EJBCA_REASON_NAMES[HOLD], "suspend")

    async def reactivate(self, ref: CertRef) -> CertStatusInfo:
        await self._require(ref, "reactivate", {CertState.SUSPENDED},
                            "only a suspended (certificateHold) certificate can be reactivated")
        return await self._revoke(ref, REMOVE_FROM_CRL, "reactivate")

    # -- health --------------------------------------------------------------------

    async def health(self) -> CAHealth:
        started = time.monotonic()
        try:
            reply = await asyncio.to_thread(self._call_sync, "GET", HEALTH_PATH, None)
        except CAUnavailable as exc:
            return CAHealth(connector=self.name, operational=False, detail=str(exc))
        text = reply.body.decode("utf-8", "replace").strip()
        ms = (time.monotonic() - started) * 1000
        if reply.status == 200 and text == HEALTH_OK:
            return CAHealth(connector=self.name, operational=True, detail=f"{HEALTH_OK} in {ms:.0f} ms")
        return CAHealth(connector=self.name, operational=False,
                        detail=f"EJBCA health check: HTTP {reply.status}: {text[:200]}")

    async def list_cas(self) -> list[dict]:
        """GET v1/ca: the CAs this client may see (name, subject_dn, …)."""
        return (await self._call("GET", API_BASE + CA_LIST)).json().get("certificate_authorities") or []

    async def close(self) -> None:
        pass


class _ClientError(Exception):
    """A 4xx other than 401/403/404, kept until the caller decides what it means."""

    def __init__(self, status: int, message: str, ejbca_message: str):
        super().__init__(message)
        self.status = status
        self.ejbca_message = ejbca_message
