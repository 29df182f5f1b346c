"""Bounds on what a caller may send: every string, bytes and repeated field of a request message.

The daemon stores what callers send (request rows, outbox payloads, audit
rows, maintenance windows); a field without a bound let one call store a
megabyte of operator id (issue 10). ``check_message`` walks any protobuf
message through its descriptor, so a field added to the .proto later is
bounded too (by the defaults), and refuses the first field over its limit
with ``InvalidRequest("<path>", "at most N …")``: the value itself is never
echoed. Field-specific checks (codice fiscale, names, CSR) stay in
``validation``; the limits here are the outer wall and are chosen so those
checks still give their more precise message first where they have one.

Pure: duck-typed protobuf messages (``ListFields``), imports ``errors`` only.
"""
from __future__ import annotations

from personalizer.errors import InvalidRequest

DEFAULT_STRING = 256            # characters
DEFAULT_BYTES = 64 * 1024
DEFAULT_REPEATED = 16
# By field name (the last part of its path): what our services store.
STRING_LIMITS = {
    "request_id": 128, "station_id": 64, "chamber_code": 8, "operator_id": 64, "card_id": 32, "model": 64,
    "issuer_dn": 512, "serial_hex": 64, "reason": 200, "id": 128,
}
BYTES_LIMITS = {"csr_der": 16 * 1024, "current_certificate_der": 16 * 1024, "proof_of_possession": 2048,
                "ef_dati_personali": 4096, "proof": 2048, "nonce": 64, "challenge": 64,
                # the signed request form of a registration: registrations.check_form says 10 MiB first
                "form": 11 * 1024 * 1024}
MAX_DEPTH = 8

_TYPE_STRING, _TYPE_BYTES, _TYPE_MESSAGE = 9, 12, 11     # FieldDescriptor.TYPE_*


def check_message(msg, prefix: str = "", depth: int = 0) -> None:
    """``InvalidRequest`` naming the first field of ``msg`` (recursively) over its bound."""
    if depth > MAX_DEPTH:
        raise InvalidRequest(prefix.rstrip(".") or "request", "nested too deeply")
    for field, value in msg.ListFields():
        path = prefix + field.name
        repeated = field.is_repeated    # protobuf >= 6 (``label`` is gone)
        values = value if repeated else (value,)
        if repeated and len(values) > DEFAULT_REPEATED:
            raise InvalidRequest(path, f"at most {DEFAULT_REPEATED} items")
        for v in values:
            if field.type == _TYPE_STRING:
                limit = STRING_LIMITS.get(field.name, DEFAULT_STRING)
                if len(v) > limit:
                    raise InvalidRequest(path, f"at most {limit} characters (got {len(v)})")
            elif field.type == _TYPE_BYTES:
                limit = BYTES_LIMITS.get(field.name, DEFAULT_BYTES)
                if len(v) > limit:
                    raise InvalidRequest(path, f"at most {limit} bytes (got {len(v)})")
            elif field.type == _TYPE_MESSAGE:
                check_message(v, path + ".", depth + 1)
