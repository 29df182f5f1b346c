"""The personalizer's exception tree; the service maps it to gRPC status codes.

::

    PersonalizerError
     ├── InvalidRequest(field, message)     → INVALID_ARGUMENT
     ├── RequestConflict(request_id)        → ALREADY_EXISTS
     ├── NotFound(what)                     → NOT_FOUND
     ├── PermissionDenied(message)          → PERMISSION_DENIED
     ├── Unauthenticated(message)           → UNAUTHENTICATED
     ├── NotSupported(operation)            → UNIMPLEMENTED
     ├── FailedPrecondition(message)        → FAILED_PRECONDITION (invalid transition, renewal refused)
     ├── CAError(message)                   → INTERNAL
     │    └── CAUnavailable(message)        → UNAVAILABLE (transient; retry)
     ├── StoreError(message)                → INTERNAL
     └── ConfigError(path, key, message)    (startup only)

Imports nothing of ours. Messages never contain key material, PINs or
passphrases. A message is one line of at most ``MAX_MESSAGE`` characters
(``str(exc)``: what a caller, the log and an audit row get): many echo the
value they refuse, and a caller's 1,000-character or multi-line value must
not come back whole (issue 10: found by the fuzz of every RPC).
"""
from __future__ import annotations

MAX_MESSAGE = 300
_CONTROL = {c: f"\\x{c:02x}" for c in list(range(0x20)) + [0x7f]}


class PersonalizerError(Exception):
    """Base of every error the personalizer raises on purpose."""

    code = "INTERNAL"
    max_message: int | None = MAX_MESSAGE

    def __str__(self) -> str:
        text = super().__str__().translate(_CONTROL)
        if self.max_message is not None and len(text) > self.max_message:
            text = text[: self.max_message - 1] + "…"
        return text


class InvalidRequest(PersonalizerError):
    code = "INVALID_ARGUMENT"

    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


class RequestConflict(PersonalizerError):
    code = "ALREADY_EXISTS"

    def __init__(self, request_id: str):
        super().__init__(f"request id {request_id!r} was already used with a different payload")
        self.request_id = request_id


class NotFound(PersonalizerError):
    code = "NOT_FOUND"


class PermissionDenied(PersonalizerError):
    code = "PERMISSION_DENIED"


class Unauthenticated(PersonalizerError):
    code = "UNAUTHENTICATED"


class NotSupported(PersonalizerError):
    code = "UNIMPLEMENTED"


class FailedPrecondition(PersonalizerError):
    code = "FAILED_PRECONDITION"


class CAError(PersonalizerError):
    code = "INTERNAL"


class CAUnavailable(CAError):
    code = "UNAVAILABLE"


class StoreError(PersonalizerError):
    code = "INTERNAL"


class ConfigError(PersonalizerError):
    max_message = None   # startup only: the whole path, key and expected form

    def __init__(self, path: object, key: str, message: str):
        super().__init__(f"{path}: {key}: {message}")
        self.path = path
        self.key = key
        self.message = message
