"""The ``Uplink``: what device operations need from the personalizer, as a protocol (no grpc, no proto).

Operations receive an ``Uplink`` (``agent.app`` builds it once: the gRPC uplink
``agent.uplink.client.PersonalizerClient`` with one long-lived channel, or an
in-memory uplink over a real broker in tests, ``tests/support/uplink.py``) and
never build one. Method names are the ones the operations call.

Answers are records read by attribute; their shapes are the ``*Answer``
protocols below (the gRPC uplink's messages have them; an in-memory uplink
returns plain records with the same attributes).

Errors are classified once, by the uplink, with ``is_refusal(code)``:
``UplinkError`` with ``code`` when the personalizer refused (a code of
``REFUSED_CODES``: ``INVALID_ARGUMENT``, ``FAILED_PRECONDITION``, ...), else
``UplinkUnavailable`` with ``code`` (unreachable, too slow, an internal error:
not now; the journaled operation stays resumable). ``refused(exc)`` is the one
test of "the personalizer said no".

Imports ``agent.ops.errors`` only.
"""
from __future__ import annotations

from typing import Any, AsyncIterator, Protocol, runtime_checkable

from agent.ops.errors import UplinkError, UplinkUnavailable

__all__ = ["Uplink", "RequestAnswer", "CAStatusAnswer", "REFUSED_CODES", "is_refusal", "refused", "UplinkError",
           "UplinkUnavailable"]


class RequestError(Protocol):
    code: str
    message: str


class RequestAnswer(Protocol):
    """A certificate request's state (``cns_spec.requests`` codes) and, once issued, its certificate."""
    request_id: str
    state: int
    certificate_der: bytes
    chain_der: Any            # sequence of DER certificates
    error: RequestError


class CAStatusAnswer(Protocol):
    operational: bool
    service_window_open: bool
    in_maintenance: bool
    detail: str


@runtime_checkable
class Uplink(Protocol):
    async def submit_issue(self, *, request_id: str, profile: str, csr_der: bytes, holder: dict, card_id: str,
                           model: str, requester: dict, ef_dati_personali: bytes = b"",
                           registration_id: str = "") -> RequestAnswer: ...

    async def renew(self, *, request_id: str, profile: str, csr_der: bytes, current_certificate_der: bytes,
                    proof_of_possession: bytes, requester: dict) -> RequestAnswer: ...

    async def get_request(self, request_id: str) -> RequestAnswer: ...

    def watch_request(self, request_id: str) -> AsyncIterator[RequestAnswer]: ...

    async def get_registration(self, registration_id: str) -> Any: ...

    async def certificate_status(self, *, issuer_dn: str = "", serial_hex: str = "", request_id: str = "") -> Any: ...

    async def change_status(self, action: str, *, request_id: str, issuer_dn: str, serial_hex: str,
                            requester: dict, reason: str = "") -> Any: ...

    async def find_certificates(self, *, card_id: str = "", codice_fiscale: str = "") -> Any: ...

    async def ca_status(self) -> CAStatusAnswer: ...

    async def close(self) -> None: ...


# The answers that mean "the personalizer said no, for a reason it named": retrying the same request
# cannot change them. Every other failure (unreachable, too slow, an internal error, overloaded) is
# "not now": the journaled operation stays resumable and is retried.
REFUSED_CODES = frozenset({"INVALID_ARGUMENT", "FAILED_PRECONDITION", "PERMISSION_DENIED", "ALREADY_EXISTS",
                           "NOT_FOUND", "UNAUTHENTICATED", "OUT_OF_RANGE", "UNIMPLEMENTED"})


def is_refusal(code: str) -> bool:
    """True for a gRPC status code name that is a refusal (``REFUSED_CODES``), False for "not now"."""
    return code in REFUSED_CODES


def refused(exc: BaseException) -> bool:
    """The personalizer answered and said no, with a refusal's code (as opposed to: could not be reached,
    not now, or an ``UplinkError`` without a code such as an unreadable client key, which a retry after
    the fix cures)."""
    return isinstance(exc, UplinkError) and not isinstance(exc, UplinkUnavailable) and is_refusal(exc.code or "")
