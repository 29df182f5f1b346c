"""What personalization and renewal share on the card side.

Owns: ``Link`` (the CNS session and the issuer session over ONE transport of the
operation's card, and that transport's exclusive access: ``Link.transaction()``),
``open_link``, ``held`` (a card call run inside the link's transaction), and the
small encodings both journal (base64 of DER values, a public key's
SubjectPublicKeyInfo, key equality).

Every card step of an operation runs as ONE ``held`` call: the device link's
``transaction()`` (``agent.devices.backend.DeviceLink``; PC/SC: SCardBeginTransaction)
covers the step's commands and nothing else, so no other client's command lands
mid-step, and no wait for the personalizer or the CA ever holds the card (other
clients connect and work meanwhile). A transport without ``transaction()`` (an
in-process card) runs the call as it is.

Imports ``agent.card`` only; called in the operation's card worker thread.
"""
from __future__ import annotations

import base64
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Any, Callable

from cryptography.hazmat.primitives import serialization

from agent.card.cns import CnsSession
from agent.card.issuer import IssuerSession
from agent.card.transport import ApduTransport


@dataclass
class Link:
    cns: CnsSession
    issuer: IssuerSession
    device: Any = None          # the transport ``connect()`` returned (a DeviceLink in production)

    def transaction(self) -> AbstractContextManager[None]:
        """The device's exclusive access for one step (re-entrant); a no-op for a transport without one."""
        begin = getattr(self.device, "transaction", None)
        return begin() if begin is not None else nullcontext()


def open_link(connect: Callable[[], ApduTransport], model) -> Link:
    device = connect()
    cns = CnsSession(device, model)
    return Link(cns, IssuerSession(cns, model), device)


def held(link: Link, fn: Callable[..., Any]) -> Callable[..., Any]:
    """``fn`` run inside ``link.transaction()``: call it in the card worker thread (the begin may wait
    for another client's transaction to end)."""
    def run(*args, **kwargs):
        with link.transaction():
            return fn(*args, **kwargs)
    return run


def b64(b: bytes) -> str:
    return base64.b64encode(b).decode("ascii")


def unb64(s: str) -> bytes:
    return base64.b64decode(s)


def spki(key) -> bytes:
    return key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def same_key(a, b) -> bool:
    return a is not None and b is not None and a.public_numbers() == b.public_numbers()
