"""The card layer: APDUs, the transport seam, card sessions.

Public API::

    from agent.card import ApduTransport, processed, CnsSession, PersonalData
    session = CnsSession(transport, model)      # transport: any .transmit(apdu) -> (data, sw)
    session.read_serial(); session.read_personal_data(); session.pin_tries_left("CNS0")

No I/O of its own and no pyscard: devices (``agent.devices``) supply transports.
Never imports ``firmware_profiles.emulator``.
"""
from agent.card.apdu import INS, SW, Apdu, sw_name
from agent.card.cns import CardSummary, CnsSession
from agent.card.datipersonali import PersonalData
from agent.card.errors import (
    ApduError,
    CardError,
    CardRemovedError,
    FileNotFoundOnCardError,
    MalformedResponseError,
    PinBlockedError,
    PinNotSetError,
    ReaderError,
    SecurityStatusError,
    WrongPinError,
)
from agent.card.layout import CnsLayout, PinRef, layout_from_model
from agent.card.transport import (
    ApduTransport,
    ChainingProcessor,
    RecordingTransport,
    ResponseProcessor,
    processed,
    split_response,
)

__all__ = [
    "INS", "SW", "Apdu", "sw_name", "CardSummary", "CnsSession", "PersonalData",
    "ApduError", "CardError", "CardRemovedError", "FileNotFoundOnCardError", "MalformedResponseError",
    "PinBlockedError", "PinNotSetError", "ReaderError", "SecurityStatusError", "WrongPinError",
    "CnsLayout", "PinRef", "layout_from_model",
    "ApduTransport", "ChainingProcessor", "RecordingTransport", "ResponseProcessor", "processed", "split_response",
]
