"""A MOCK of EJBCA's REST API — a contract server for testing ``personalizer.ca.ejbca``.

This is not EJBCA. It implements the few endpoints the connector uses, with
the request/response field names and status codes of EJBCA's published
OpenAPI description, ``modules/ejbca-rest-api/resources/openapi.json`` in
https://github.com/Keyfactor/ejbca-ce (schemas ``EnrollCertificateRestRequest``,
``CertificateRestResponse``, ``SearchCertificatesRestRequest`` /
``SearchCertificateCriteriaRestRequest`` / ``SearchCertificatesRestResponse``,
``RevokeStatusRestResponse``, ``CaInfosRestResponse``) and the resource
classes ``CertificateRestResource`` (revoke ``reason`` values are the
RevocationReasons CLI names: KEY_COMPROMISE, CERTIFICATE_HOLD, REMOVE_FROM_CRL, …):

    POST /ejbca/ejbca-rest-api/v1/certificate/pkcs10enroll        201 CertificateRestResponse
    POST /ejbca/ejbca-rest-api/v1/certificate/search              200 SearchCertificatesRestResponse
    PUT  /ejbca/ejbca-rest-api/v1/certificate/{dn}/{hex}/revoke   200 RevokeStatusRestResponse, 404, 409
    GET  /ejbca/ejbca-rest-api/v1/certificate/{dn}/{hex}/revocationstatus
    GET  /ejbca/ejbca-rest-api/v1/ca                              200 CaInfosRestResponse
    GET  /ejbca/publicweb/healthcheck/ejbcahealth                 200 "ALLOK" / 500 error text

Errors use EJBCA's ``{"error_code": N, "error_message": "..."}`` body. Like
EJBCA, a second ``pkcs10enroll`` with the same username issues a second
certificate: preventing that is the client's job (search first). Signing is
done by the embedded CA's profile builders (``EmbeddedCA.issue_sync``), which
keeps no records; this mock keeps its own in memory. TLS with client
certificates required (mTLS). Fault injection for tests: ``delay_next_enroll``
(answer after the client gave up), ``fail_next`` (status codes to return),
``fail_after_next_enroll`` (status codes for the calls that follow the next
enrolment, e.g. the client's search after a lost answer), ``maintenance``
(health check fails).
"""
from __future__ import annotations

import base64
import datetime as dt
import json
import ssl
import threading
import urllib.parse
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from cryptography import x509
from cryptography.x509.oid import NameOID

from personalizer.ca.base import CertificateSubject
from personalizer.ca.embedded import EmbeddedCA
from personalizer.rules.validation import Holder

API = "/ejbca/ejbca-rest-api/"
HEALTH = "/ejbca/publicweb/healthcheck/ejbcahealth"
REASONS = ("UNSPECIFIED", "KEY_COMPROMISE", "CA_COMPROMISE", "AFFILIATION_CHANGED", "SUPERSEDED",
           "CESSATION_OF_OPERATION", "CERTIFICATE_HOLD", "REMOVE_FROM_CRL", "PRIVILEGES_WITHDRAWN", "AA_COMPROMISE")
REQUIRED_ENROLL_FIELDS = ("certificate_request", "certificate_profile_name", "end_entity_profile_name",
                          "certificate_authority_name", "username")


@dataclass
class MockCert:
    username: str
    der: bytes
    serial_hex: str
    reason: str | None = None          # EJBCA reason name while revoked/held
    revoked_at: dt.datetime | None = None


@dataclass
class MockState:
    ca_name: str
    certificate_profiles: dict[str, str]       # EJBCA certificate profile → embedded profile
    end_entity_profiles: set[str]
    certs: dict[str, MockCert] = field(default_factory=dict)
    enrolments: dict[str, int] = field(default_factory=dict)    # username → pkcs10enroll calls that issued
    requests: list[tuple[str, str]] = field(default_factory=list)
    delay_next_enroll: float = 0.0
    fail_next: list[int] = field(default_factory=list)
    fail_after_next_enroll: list[int] = field(default_factory=list)
    maintenance: bool = False
    lock: threading.Lock = field(default_factory=threading.Lock)


def _subject_from_csr(csr: x509.CertificateSigningRequest) -> CertificateSubject:
    def attr(oid, default):
        vals = csr.subject.get_attributes_for_oid(oid)
        return vals[0].value if vals else default
    cf = str(attr(NameOID.SERIAL_NUMBER, "TINIT-RSSMRA80A01H501U")).removeprefix("TINIT-")
    holder = Holder(cf, str(attr(NameOID.GIVEN_NAME, "MARIO")), str(attr(NameOID.SURNAME, "ROSSI")),
                    dt.date(1980, 1, 1))
    return CertificateSubject(holder, str(attr(NameOID.DN_QUALIFIER, "0000000000000000")), "MOCK")


class EjbcaContractServer:
    """Start with ``start()``; ``url`` is its base; ``stop()`` shuts it down."""

    def __init__(self, ca: EmbeddedCA, *, server_cert: str, server_key: str, client_trust: str,
                 state: MockState):
        self.ca = ca
        self.state = state
        self.issuer_dn = ca.issuing_certificate.subject.rfc4514_string()
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(server_cert, server_key)
        ctx.load_verify_locations(client_trust)
        ctx.verify_mode = ssl.CERT_REQUIRED
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), _make_handler(self))
        self._httpd.daemon_threads = True
        self._httpd.socket = ctx.wrap_socket(self._httpd.socket, server_side=True, do_handshake_on_connect=False)
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="ejbca-contract", daemon=True)

    @property
    def url(self) -> str:
        return f"https://localhost:{self._httpd.server_address[1]}"

    def start(self) -> "EjbcaContractServer":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()

    # -- endpoint logic (returns status, json-able body or text) -----------------

    def enroll(self, body: dict):
        missing = [f for f in REQUIRED_ENROLL_FIELDS if not body.get(f)]
        if missing:
            return 400, {"error_code": 400, "error_message": f"Missing required field(s): {', '.join(missing)}"}
        st = self.state
        if body["certificate_authority_name"] != st.ca_name:
            return 404, {"error_code": 404, "error_message": f"CA with name {body['certificate_authority_name']} "
                                                             "doesn't exist."}
        profile = st.certificate_profiles.get(body["certificate_profile_name"])
        if profile is None or body["end_entity_profile_name"] not in st.end_entity_profiles:
            return 400, {"error_code": 400, "error_message": "Certificate profile or end entity profile not found."}
        raw = body["certificate_request"].strip()
        try:
            csr = (x509.load_pem_x509_csr(raw.encode()) if raw.startswith("-----")
                   else x509.load_der_x509_csr(base64.b64decode(raw)))
            if not csr.is_signature_valid:
                raise ValueError("bad signature")
        except ValueError:
            return 400, {"error_code": 400, "error_message": "Invalid certificate request (PKCS#10)."}
        issued = self.ca.issue_sync(profile, csr, _subject_from_csr(csr), body["username"])
        with st.lock:
            st.certs[issued.ref.serial_hex] = MockCert(body["username"], issued.certificate_der,
                                                       issued.ref.serial_hex)
            st.enrolments[body["username"]] = st.enrolments.get(body["username"], 0) + 1
        out = {"certificate": base64.b64encode(issued.certificate_der).decode(),
               "serial_number": issued.ref.serial_hex, "response_format": "DER"}
        if body.get("include_chain"):
            out["certificate_chain"] = [base64.b64encode(c).decode() for c in self.ca.chain_der()]
        return 201, out

    def search(self, body: dict):
        criteria = body.get("criteria") or []
        if not criteria:
            return 400, {"error_code": 400, "error_message": "Invalid search criteria content."}
        with self.state.lock:
            found = list(self.state.certs.values())
        for c in criteria:
            prop, value, op = c.get("property"), c.get("value", ""), c.get("operation")
            if op != "EQUAL" or prop not in ("USERNAME", "SERIAL_NUMBER"):
                return 400, {"error_code": 400, "error_message": f"Unsupported criteria in this mock: {prop} {op}"}
            if prop == "USERNAME":
                found = [m for m in found if m.username == value]
            else:
                found = [m for m in found if m.serial_hex == value.upper().lstrip("0")]
        limit = int(body.get("max_number_of_results") or 10)
        return 200, {"certificates": [{"certificate": base64.b64encode(m.der).decode(), "serial_number": m.serial_hex,
                                       "response_format": "DER"} for m in found[:limit]],
                     "more_results": len(found) > limit}

    def _find(self, issuer_dn: str, serial: str) -> MockCert | None:
        if issuer_dn != self.issuer_dn:
            return None
        return self.state.certs.get(serial.upper().lstrip("0"))

    def _status_body(self, m: MockCert, message: str = ""):
        return {"issuer_dn": self.issuer_dn, "serial_number": m.serial_hex,
                "revocation_reason": m.reason or "NOT_REVOKED",
                "revocation_date": m.revoked_at.strftime("%Y-%m-%dT%H:%M:%SZ") if m.revoked_at else None,
                "message": message, "revoked": m.reason is not None}

    def revoke(self, issuer_dn: str, serial: str, reason: str | None):
        if reason not in REASONS:
            return 400, {"error_code": 400, "error_message": "Invalid revocation reason."}
        with self.state.lock:
            m = self._find(issuer_dn, serial)
            if m is None:
                return 404, {"error_code": 404, "error_message": "Certificate not found."}
            if reason == "REMOVE_FROM_CRL":
                if m.reason != "CERTIFICATE_HOLD":
                    return 400, {"error_code": 400, "error_message": "Certificate is not on hold."}
                m.reason, m.revoked_at = None, None
                return 200, self._status_body(m, "Successfully reactivated")
            if m.reason is not None and m.reason != "CERTIFICATE_HOLD":
                return 409, {"error_code": 409, "error_message": "Certificate is already revoked."}
            m.reason = reason
            m.revoked_at = m.revoked_at or dt.datetime.now(dt.timezone.utc).replace(microsecond=0)
            return 200, self._status_body(m, "Successfully revoked")

    def revocation_status(self, issuer_dn: str, serial: str):
        with self.state.lock:
            m = self._find(issuer_dn, serial)
            if m is None:
                return 404, {"error_code": 404, "error_message": "Certificate not found."}
            return 200, self._status_body(m)

    def cas(self):
        c = self.ca.issuing_certificate
        return 200, {"certificate_authorities": [{
            "id": 1, "name": self.state.ca_name, "subject_dn": self.issuer_dn, "issuer_dn": c.issuer.rfc4514_string(),
            "expiration_date": c.not_valid_after_utc.strftime("%Y-%m-%dT%H:%M:%SZ"), "external": False}]}


def _make_handler(server: EjbcaContractServer):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, fmt, *args):   # quiet
            pass

        def _send(self, status: int, body, content_type="application/json"):
            data = body.encode() if isinstance(body, str) else json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(data)))
            self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(data)
            self.close_connection = True

        def _body(self) -> dict | None:
            n = int(self.headers.get("Content-Length") or 0)
            try:
                return json.loads(self.rfile.read(n) or b"{}")
            except ValueError:
                return None

        def _dispatch(self, method: str):
            st = server.state
            url = urllib.parse.urlsplit(self.path)
            st.requests.append((method, url.path))
            if st.fail_next:
                code = st.fail_next.pop(0)
                return self._send(code, {"error_code": code, "error_message": "Injected failure (mock)."})
            if url.path == HEALTH and method == "GET":
                if st.maintenance:
                    return self._send(500, "CA 'CNS Demo Issuing CA' is off-line (mock maintenance)", "text/plain")
                return self._send(200, "ALLOK", "text/plain")
            if not url.path.startswith(API):
                return self._send(404, {"error_code": 404, "error_message": "Not found."})
            rest = url.path[len(API):]
            if method == "POST" and rest in ("v1/certificate/pkcs10enroll", "v1/certificate/search"):
                body = self._body()
                if body is None:
                    return self._send(400, {"error_code": 400, "error_message": "Malformed JSON."})
                if rest.endswith("pkcs10enroll"):
                    status, out = server.enroll(body)
                    if status == 201 and st.fail_after_next_enroll:
                        st.fail_next.extend(st.fail_after_next_enroll)
                        st.fail_after_next_enroll.clear()
                    delay = st.delay_next_enroll
                    st.delay_next_enroll = 0.0
                    if delay:
                        threading.Event().wait(delay)   # issued, but the answer comes too late
                    return self._send(status, out)
                return self._send(*server.search(body))
            if method == "GET" and rest == "v1/ca":
                return self._send(*server.cas())
            parts = rest.split("/")
            if len(parts) == 5 and parts[:2] == ["v1", "certificate"]:
                dn, serial, action = urllib.parse.unquote(parts[2]), parts[3], parts[4]
                if method == "PUT" and action == "revoke":
                    reason = urllib.parse.parse_qs(url.query).get("reason", [None])[0]
                    return self._send(*server.revoke(dn, serial, reason))
                if method == "GET" and action == "revocationstatus":
                    return self._send(*server.revocation_status(dn, serial))
            return self._send(404, {"error_code": 404, "error_message": "Not found."})

        def do_GET(self):
            self._dispatch("GET")

        def do_POST(self):
            self._dispatch("POST")

        def do_PUT(self):
            self._dispatch("PUT")

    return Handler
