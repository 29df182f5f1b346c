"""Client identities from mTLS certificates, and which role may call what.

A client certificate (issued by the deployment's TLS CA, verified by the TLS
layer) names its holder in one SAN URI::

    urn:cns:station:<chamber>:<station-id>
    urn:cns:operator-tool:<chamber>:<tool-id>
    urn:cns:admin:<name>
    urn:cns:ir:<chamber>:<officer-id>        recognition officer (deferred issuance, issue 19)

Stations, operator tools and IRs are scoped to their chamber; admins are not. An IR registers
holders (the Registrations service) and may read its chamber's registrations; nothing else.
``AuthInterceptor`` resolves the identity of every call, enforces
``METHOD_ROLES`` and, for requests that carry a ``requester``, that a
station acts only for its own chamber and station id (required on writes,
optional on the reads of ``REQUESTER_OPTIONAL``, checked alike when given). The identity of the
current call is then available to the service via ``current_identity()``.

A refusal here (no or bad certificate, a role calling what it may not, a
station acting for another) is audited like any other refused call: the
interceptor hands it to the servicer's ``audit_refusal(actor=, station_id=,
method=, request=, exc=)`` when the servicer has one (duck-typed, so this
module still imports neither the service nor the store), then aborts.

Stations may suspend, reactivate and revoke (the operator at the workstation,
issue 4), but only with a ``requester`` naming themselves, and the service
lets a chamber-scoped caller change only certificates its chamber requested.

Identity is exact (issue 10): the one ``urn:cns:`` URI (its scheme and
namespace compared without regard to case when counting, so a second identity
cannot hide as ``URN:CNS:…``) must match the grammar exactly, with no trailing
newline; with a ``tls_clients.ClientTrust`` the chain is verified again with the
TLS CA's path length (gRPC's TLS layer does not enforce it) and the client CRL
is consulted on every call.

Imports grpc, ``errors`` and ``tls_clients`` only; must not import the service or the store.
"""
from __future__ import annotations

import contextvars
import hashlib
import inspect
import logging
import re
import time
from collections import OrderedDict
from dataclasses import dataclass

import grpc
from cryptography import x509

from personalizer.errors import PermissionDenied, Unauthenticated
from personalizer.edge.tls_clients import ClientTrust

log = logging.getLogger(__name__)
UNAUTHENTICATED_ACTOR = "unauthenticated"

ROLE_STATION = "station"
ROLE_OPERATOR_TOOL = "operator-tool"
ROLE_ADMIN = "admin"
ROLE_IR = "ir"
ROLES = (ROLE_STATION, ROLE_OPERATOR_TOOL, ROLE_ADMIN, ROLE_IR)
CHAMBER_SCOPED = (ROLE_STATION, ROLE_OPERATOR_TOOL, ROLE_IR)
URI_PREFIX = "urn:cns:"
# Matched with fullmatch: "$" would also match before a trailing newline.
_URI_RE = re.compile(r"urn:cns:(station|operator-tool|ir):([A-Z]{2,4}):([A-Za-z0-9][A-Za-z0-9._-]{0,63})"
                     r"|urn:cns:(admin):([A-Za-z0-9][A-Za-z0-9._-]{0,63})")
AUTH_PEM_KEY = "x509_pem_cert"
AUTH_CHAIN_KEY = "x509_pem_cert_chain"   # the chain the client presented, leaf first

_SERVICE = "/cns.v1.Personalizer/"
_ANY = frozenset({ROLE_STATION, ROLE_OPERATOR_TOOL, ROLE_ADMIN})   # not the IR: it registers only
METHOD_ROLES: dict[str, frozenset[str]] = {
    _SERVICE + "SubmitIssue": frozenset({ROLE_STATION}),
    _SERVICE + "Renew": frozenset({ROLE_STATION}),
    _SERVICE + "GetRequest": _ANY,
    _SERVICE + "WatchRequest": _ANY,
    _SERVICE + "GetCertificateStatus": _ANY,
    _SERVICE + "GetCAStatus": _ANY,
    _SERVICE + "FindCertificates": _ANY,      # chamber-scoped callers see their chamber's only (service)
    _SERVICE + "Suspend": _ANY,
    _SERVICE + "Reactivate": _ANY,
    _SERVICE + "Revoke": _ANY,
}
# Reads whose ``requester`` is optional (checked when given, so their audit row names the operator;
# older stations send none). Every other request that has a ``requester`` needs one from a station or tool.
REQUESTER_OPTIONAL = frozenset(_SERVICE + m for m in ("GetRequest", "WatchRequest", "GetCertificateStatus"))
# Central IT's queue and maintenance administration: admins only.
_ADMIN_SERVICE = "/cns.v1.QueueAdmin/"
METHOD_ROLES.update({_ADMIN_SERVICE + m: frozenset({ROLE_ADMIN}) for m in (
    "ListQueue", "ShowQueued", "RetryNow", "Cancel", "AddMaintenance", "ListMaintenance", "EndMaintenance",
    "RemoveMaintenance", "AddStock", "ListStock")})
# Station enrollment (personalizer.enrollment): central IT adds and revokes stations; a station renews its
# own certificate. StationEnrollment.Enroll is not listed: it is served only on the enrollment port, without
# this interceptor, and is refused here like any unlisted method.
_STATIONS = "/cns.v1.StationAdmin/"
METHOD_ROLES.update({_STATIONS + m: frozenset({ROLE_ADMIN}) for m in ("AddStation", "RevokeStation", "ListStations")})
METHOD_ROLES[_STATIONS + "RenewStation"] = frozenset({ROLE_STATION})
# Deferred issuance: the IR registers; every role of the chamber (and central IT) reads.
_REGISTRATIONS = "/cns.v1.Registrations/"
METHOD_ROLES.update({_REGISTRATIONS + "RegisterHolder": frozenset({ROLE_IR}),
                     _REGISTRATIONS + "GetRegistration": frozenset(ROLES),
                     _REGISTRATIONS + "ListRegistrations": frozenset(ROLES),
                     _REGISTRATIONS + "CancelRegistration": frozenset({ROLE_IR, ROLE_ADMIN})})
# Fleet (issue 15): a station opens its stream or polls; central IT reads the inventory and sends commands.
METHOD_ROLES.update({"/cns.v1.Fleet/" + m: frozenset({ROLE_STATION}) for m in ("Connect", "Poll")})
METHOD_ROLES.update({"/cns.v1.FleetAdmin/" + m: frozenset({ROLE_ADMIN}) for m in (
    "ListStations", "ListDevices", "ExpiringCertificates", "SendCommand", "GetCommand", "BroadcastCommand", "CreateRollout",
    "GetRollout", "ListRollouts", "PauseRollout", "ResumeRollout", "CancelRollout")})
# Card administration (issue 12): a station relays its card's challenge; the answer comes from the token.
METHOD_ROLES["/cns.v1.CardAdmin/Authenticate"] = frozenset({ROLE_STATION})
METHOD_ROLES["/cns.v1.CardAdmin/ChangeCardKey"] = frozenset({ROLE_STATION})
METHOD_ROLES["/cns.v1.CardAdmin/LoadBatch"] = frozenset({ROLE_ADMIN})
METHOD_ROLES["/cns.v1.CardAdmin/ListBatches"] = frozenset({ROLE_ADMIN})
# Infrastructure services any authenticated caller may use.
OPEN_PREFIXES = ("/grpc.health.v1.Health/", "/grpc.reflection.v1alpha.ServerReflection/",
                 "/grpc.reflection.v1.ServerReflection/")


@dataclass(frozen=True, slots=True)
class Identity:
    role: str
    subject_id: str            # station id, tool id or admin name
    chamber_code: str | None   # None for admins

    @property
    def uri(self) -> str:
        return identity_uri(self.role, self.subject_id, self.chamber_code)


def identity_uri(role: str, subject_id: str, chamber_code: str | None = None) -> str:
    if role == ROLE_ADMIN:
        return f"{URI_PREFIX}{role}:{subject_id}"
    return f"{URI_PREFIX}{role}:{chamber_code}:{subject_id}"


def identity_from_certificate(cert: x509.Certificate) -> Identity:
    try:
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        sans = []
    # Counted without regard to case (URN schemes and namespaces are case-insensitive, RFC 8141), so
    # "URN:CNS:admin:x" beside a station URI is a second identity, not an ignored extra.
    found = [u for u in (sans.get_values_for_type(x509.UniformResourceIdentifier) if sans else [])
             if u[:len(URI_PREFIX)].lower() == URI_PREFIX]
    if len(found) != 1:
        raise Unauthenticated("client certificate must carry exactly one urn:cns: identity URI")
    m = _URI_RE.fullmatch(found[0])
    if not m:
        raise Unauthenticated(f"client certificate identity URI is malformed: {found[0]!r}")
    if m.group(4):
        return Identity(ROLE_ADMIN, m.group(5), None)
    return Identity(m.group(1), m.group(3), m.group(2))


_current: contextvars.ContextVar[Identity | None] = contextvars.ContextVar("cns_identity", default=None)


def current_identity() -> Identity:
    ident = _current.get()
    if ident is None:
        raise Unauthenticated("no authenticated identity for this call")
    return ident


def check_requester(ident: Identity, chamber_code: str, station_id: str) -> None:
    """A chamber-scoped caller acts only for its own chamber (and a station only as itself)."""
    if ident.role not in CHAMBER_SCOPED:
        return
    if chamber_code != ident.chamber_code:
        raise PermissionDenied(
            f"{ident.role} {ident.subject_id} of chamber {ident.chamber_code} may not act for chamber {chamber_code or '(none)'}")
    if ident.role == ROLE_STATION and station_id != ident.subject_id:
        raise PermissionDenied(f"station {ident.subject_id} may not act as station {station_id or '(none)'}")


def check_chamber_access(ident: Identity, chamber_code: str) -> None:
    if ident.role in CHAMBER_SCOPED and chamber_code != ident.chamber_code:
        raise PermissionDenied(f"{ident.role} of chamber {ident.chamber_code} may not read records of chamber {chamber_code}")


def check_method(ident: Identity, method: str, request) -> None:
    """``PermissionDenied`` unless ``ident``'s role may call ``method`` with this request's requester."""
    if method.startswith(OPEN_PREFIXES):
        return
    allowed = METHOD_ROLES.get(method)
    if allowed is None or ident.role not in allowed:
        raise PermissionDenied(f"role {ident.role} may not call {method}")
    if request is not None and hasattr(request, "requester") and request.HasField("requester"):
        check_requester(ident, request.requester.chamber_code, request.requester.station_id)
    elif (request is not None and hasattr(request, "requester") and ident.role in CHAMBER_SCOPED
          and method not in REQUESTER_OPTIONAL):
        raise PermissionDenied("requester (station id, chamber code) is required")


class _Known:
    """What the identity cache keeps of a resolved certificate: the identity and what the checks on every call
    need (expiry, issuer and serial for the CRL), not the PEM and a parsed certificate (~4.4 KB an entry)."""
    __slots__ = ("ident", "not_after", "issuer", "serial")

    def __init__(self, ident: Identity, not_after: float, issuer: bytes, serial: int):
        self.ident, self.not_after, self.issuer, self.serial = ident, not_after, issuer, serial


def _cache_key(pem: bytes, chain: bytes) -> bytes:
    """The identity cache's key: a digest of the presented certificate and chain (32 bytes, not ~1.5 KB)."""
    return hashlib.sha256(pem + b"\0" + chain).digest()


class AuthInterceptor(grpc.aio.ServerInterceptor):
    """Resolves the caller's identity per call and enforces METHOD_ROLES and the requester's chamber."""

    def __init__(self, *, trust: ClientTrust | None = None, cache_size: int = 4096):
        """``trust``: verify the presented chain again (path length) and check the client CRL.

        Resolved certificates are cached (least recently used dropped): a chain verification costs
        ~150 µs, the revocation check on every call ~2 µs."""
        self._trust = trust
        self._cache: OrderedDict[bytes, _Known | Unauthenticated] = OrderedDict()   # key: ``_cache_key``
        self._cache_size = cache_size
        self._issuers: dict[bytes, bytes] = {}   # one copy of each issuer name (a handful of CAs)

    def _resolve(self, pem: bytes, chain: bytes) -> _Known:
        try:
            leaf = x509.load_pem_x509_certificate(pem)
            ident = identity_from_certificate(leaf)
            if self._trust is not None:
                certs = x509.load_pem_x509_certificates(chain) if chain else [leaf]
                self._trust.verify_chain(leaf, [c for c in certs if c != leaf])
        except Unauthenticated:
            raise
        except Exception:   # ValueError, DuplicateExtension, UnsupportedGeneralNameType, ...
            raise Unauthenticated("unreadable client certificate") from None
        issuer = leaf.issuer.public_bytes()
        if len(self._issuers) < 64:
            issuer = self._issuers.setdefault(issuer, issuer)
        return _Known(ident, leaf.not_valid_after_utc.timestamp(), issuer, leaf.serial_number)

    def _identity(self, context: grpc.aio.ServicerContext) -> Identity:
        auth = context.auth_context()
        pems = auth.get(AUTH_PEM_KEY) or []
        if not pems:
            raise Unauthenticated("a client certificate is required")
        pem = pems[0]
        chain = b"".join(auth.get(AUTH_CHAIN_KEY) or [])
        key = _cache_key(pem, chain)
        hit = self._cache.get(key)
        if hit is None:
            try:
                hit = self._resolve(pem, chain)
            except Unauthenticated as exc:
                hit = exc
            self._cache[key] = hit
            if len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
        else:
            self._cache.move_to_end(key)
        if isinstance(hit, Unauthenticated):
            raise hit
        if self._trust is not None:
            if hit.not_after < time.time():
                raise Unauthenticated("client certificate has expired")
            self._trust.check_revoked_key(hit.issuer, hit.serial)
        return hit.ident

    def _authorize(self, method: str, request, context) -> Identity:
        ident = self._identity(context)
        check_method(ident, method, request)
        return ident

    async def _deny(self, context, exc) -> None:
        code = grpc.StatusCode.UNAUTHENTICATED if isinstance(exc, Unauthenticated) else grpc.StatusCode.PERMISSION_DENIED
        await context.abort(code, str(exc))

    async def _refuse(self, inner, method: str, request, context, exc) -> None:
        """Audit the refusal through the servicer (when it audits), then abort the call."""
        audit = getattr(getattr(inner, "__self__", None), "audit_refusal", None)
        if audit is not None:
            try:
                ident = self._identity(context)
            except Unauthenticated:
                ident = None
            requester = getattr(request, "requester", None) if request is not None else None
            station_id = (requester.station_id if requester is not None and requester.station_id
                          else ident.subject_id if ident is not None and ident.role == ROLE_STATION else "")
            try:
                await audit(actor=ident.uri if ident else UNAUTHENTICATED_ACTOR, station_id=station_id,
                            method=method, request=request, exc=exc)
            except Exception:   # the refusal stands even if its audit row cannot be written
                log.exception("could not audit the refused call %s", method)
        await self._deny(context, exc)

    def _streaming(self, inner, method: str, *, with_request: bool):
        """A server-streaming handler (unary or client-streaming input) that authorizes first; the request
        is checked only when it is one message (``with_request``), not an iterator."""
        async def handler(first, context):
            request = first if with_request else None
            try:
                ident = self._authorize(method, request, context)
            except (Unauthenticated, PermissionDenied) as exc:
                await self._refuse(inner, method, request, context, exc)
            _current.set(ident)
            if inspect.isasyncgenfunction(inner):
                async for item in inner(first, context):
                    yield item
            else:
                result = inner(first, context)
                if inspect.isawaitable(result):
                    await result
        return handler

    async def intercept_service(self, continuation, handler_call_details):
        handler = await continuation(handler_call_details)
        if handler is None:
            return None
        method = handler_call_details.method
        outer = self

        if handler.unary_unary:
            inner = handler.unary_unary

            async def unary_unary(request, context):
                try:
                    ident = outer._authorize(method, request, context)
                except (Unauthenticated, PermissionDenied) as exc:
                    await outer._refuse(inner, method, request, context, exc)
                token = _current.set(ident)
                try:
                    result = inner(request, context)
                    return await result if inspect.isawaitable(result) else result
                finally:
                    _current.reset(token)

            return grpc.unary_unary_rpc_method_handler(
                unary_unary, request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer)

        if handler.unary_stream:
            return grpc.unary_stream_rpc_method_handler(
                self._streaming(handler.unary_stream, method, with_request=True),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer)

        if handler.stream_stream:
            return grpc.stream_stream_rpc_method_handler(
                self._streaming(handler.stream_stream, method, with_request=False),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer)

        # stream_unary: not used by our services; refuse rather than pass unchecked.
        async def refuse(request_iterator, context):
            await context.abort(grpc.StatusCode.PERMISSION_DENIED, f"{method} is not authorised")

        return grpc.stream_unary_rpc_method_handler(
            refuse, request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer)
