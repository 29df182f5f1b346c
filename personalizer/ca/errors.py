"""Errors the CA package adds to the personalizer's tree (``personalizer.errors``).

::

    PersonalizerError (personalizer.errors)
     └── InvalidTransition(ref, state, operation)   → FAILED_PRECONDITION
           e.g. reactivating a revoked certificate, suspending a suspended one

The service maps an exception through its ``code`` attribute; D adds
``FAILED_PRECONDITION`` to the service's ERROR_CODES table (until then it maps
to INTERNAL). Imports nothing of ours but ``errors``.
"""
from __future__ import annotations

from personalizer.errors import PersonalizerError


class InvalidTransition(PersonalizerError):
    """A lifecycle change that the certificate's current state does not allow."""

    code = "FAILED_PRECONDITION"

    def __init__(self, serial_hex: str, state: str, operation: str, hint: str = ""):
        msg = f"cannot {operation} certificate {serial_hex}: it is {state}"
        super().__init__(msg + (f"; {hint}" if hint else ""))
        self.serial_hex = serial_hex
        self.state = state
        self.operation = operation
