"""Errors of device operations (personalize, renew, lifecycle).

    OperationError                 base; ``op_id`` when an operation exists
    ├── JournalError               the journal cannot record (disk, schema, a secret offered)
    ├── PreconditionError          the card or request is not in a state for this operation
    ├── UplinkError                the personalizer refused or could not be reached
    │   └── UplinkUnavailable      transient: retry later, the operation stays resumable
    └── VerificationError          what was written does not read back or sign as expected
"""
from __future__ import annotations


class OperationError(Exception):
    def __init__(self, message: str, *, op_id: str | None = None):
        super().__init__(message)
        self.op_id = op_id


class JournalError(OperationError):
    pass


class PreconditionError(OperationError):
    pass


class UplinkError(OperationError):
    def __init__(self, message: str, *, code: str | None = None, op_id: str | None = None):
        super().__init__(message, op_id=op_id)
        self.code = code


class UplinkUnavailable(UplinkError):
    pass


class VerificationError(OperationError):
    pass
