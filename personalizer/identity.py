"""Client identities from mTLS certificates, and which role may call what.

A client certificate (issued by the deployment's TLS CA, verified by the TLS
layer) names its holder in one SAN URI::

    urn:cns:station:<chamber>:<station-id>
    urn:cns:operator-tool:<chamber>:<tool-id>
    urn:cns:admin:<name>

Stations and operator tools are scoped to their chamber; admins are not.
``AuthInterceptor`` resolves the identity of every call, enforces
``METHOD_ROLES`` and, for requests that carry a ``requester``, that a
station acts only for its own chamber and station id. The identity of the
current call is then available to the service via ``current_identity()``.

A refusal here (no or bad certificate, a role calling what it may not, a
station acting for another) is audited like any other refused call: the
interceptor hands it to the servicer's ``audit_refusal(actor=, station_id=,
method=, request=, exc=)`` when the servicer has one (duck-typed, so this
module still imports neither the service nor the store), then aborts.

Stations may suspend, reactivate and revoke (the operator at the workstation,
issue 4), but only with a ``requester`` naming themselves, and the service
lets a chamber-scoped caller change only certificates its chamber requested.

Imports grpc and ``errors`` only; must not import the service or the store.
"""
from __future__ import annotations

import contextvars
import inspect
import logging
import re
from dataclasses import dataclass

import grpc
from cryptography import x509

from personalizer.errors import PermissionDenied, Unauthenticated

log = logging.getLogger(__name__)
UNAUTHENTICATED_ACTOR = "unauthenticated"

ROLE_STATION = "station"
ROLE_OPERATOR_TOOL = "operator-tool"
ROLE_ADMIN = "admin"
ROLES = (ROLE_STATION, ROLE_OPERATOR_TOOL, ROLE_ADMIN)
CHAMBER_SCOPED = (ROLE_STATION, ROLE_OPERATOR_TOOL)
URI_PREFIX = "urn:cns:"
_URI_RE = re.compile(r"^urn:cns:(station|operator-tool):([A-Z]{2,4}):([A-Za-z0-9][A-Za-z0-9._-]{0,63})$"
                     r"|^urn:cns:(admin):([A-Za-z0-9][A-Za-z0-9._-]{0,63})$")
AUTH_PEM_KEY = "x509_pem_cert"

_SERVICE = "/cns.v1.Personalizer/"
_ANY = frozenset(ROLES)
METHOD_ROLES: dict[str, frozenset[str]] = {
    _SERVICE + "SubmitIssue": frozenset({ROLE_STATION}),
    _SERVICE + "Renew": frozenset({ROLE_STATION}),
    _SERVICE + "GetRequest": _ANY,
    _SERVICE + "WatchRequest": _ANY,
    _SERVICE + "GetCertificateStatus": _ANY,
    _SERVICE + "GetCAStatus": _ANY,
    _SERVICE + "Suspend": _ANY,
    _SERVICE + "Reactivate": _ANY,
    _SERVICE + "Revoke": _ANY,
}
# Central IT's queue and maintenance administration: admins only.
_ADMIN_SERVICE = "/cns.v1.QueueAdmin/"
METHOD_ROLES.update({_ADMIN_SERVICE + m: frozenset({ROLE_ADMIN}) for m in (
    "ListQueue", "ShowQueued", "RetryNow", "Cancel", "AddMaintenance", "ListMaintenance", "EndMaintenance",
    "RemoveMaintenance")})
# Infrastructure services any authenticated caller may use.
OPEN_PREFIXES = ("/grpc.health.v1.Health/", "/grpc.reflection.v1alpha.ServerReflection/",
                 "/grpc.reflection.v1.ServerReflection/")


@dataclass(frozen=True)
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
    found = [u for u in (sans.get_values_for_type(x509.UniformResourceIdentifier) if sans else [])
             if u.startswith(URI_PREFIX)]
    if len(found) != 1:
        raise Unauthenticated("client certificate must carry exactly one urn:cns: identity URI")
    m = _URI_RE.match(found[0])
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
    elif request is not None and hasattr(request, "requester") and ident.role in CHAMBER_SCOPED:
        raise PermissionDenied("requester (station id, chamber code) is required")


class AuthInterceptor(grpc.aio.ServerInterceptor):
    """Resolves the caller's identity per call and enforces METHOD_ROLES and the requester's chamber."""

    def __init__(self, *, cache_size: int = 1024):
        self._cache: dict[bytes, Identity | Unauthenticated] = {}
        self._cache_size = cache_size

    def _identity(self, context: grpc.aio.ServicerContext) -> Identity:
        pems = context.auth_context().get(AUTH_PEM_KEY) or []
        if not pems:
            raise Unauthenticated("a client certificate is required")
        pem = pems[0]
        hit = self._cache.get(pem)
        if hit is None:
            try:
                hit = identity_from_certificate(x509.load_pem_x509_certificate(pem))
            except Unauthenticated as exc:
                hit = exc
            except ValueError:
                hit = Unauthenticated("unreadable client certificate")
            if len(self._cache) >= self._cache_size:
                self._cache.clear()
            self._cache[pem] = hit
        if isinstance(hit, Unauthenticated):
            raise hit
        return hit

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
