"""What personalization and renewal share on the card side.

Owns: ``Link`` (the CNS session and the issuer session over ONE transport of the
operation's card), ``open_link``, and the small encodings both journal (base64 of
DER values, a public key's SubjectPublicKeyInfo, key equality).

Imports ``agent.card`` only; called in the operation's card worker thread.
"""
from __future__ import annotations

import base64
from dataclasses import dataclass
from typing import Callable

from cryptography.hazmat.primitives import serialization

from agent.card.cns import CnsSession
from agent.card.issuer import IssuerSession
from agent.card.transport import ApduTransport


@dataclass
class Link:
    cns: CnsSession
    issuer: IssuerSession


def open_link(connect: Callable[[], ApduTransport], model) -> Link:
    cns = CnsSession(connect(), model)
    return Link(cns, IssuerSession(cns, model))


def b64(b: bytes) -> str:
    return base64.b64encode(b).decode("ascii")


def unb64(s: str) -> bytes:
    return base64.b64decode(s)


def spki(key) -> bytes:
    return key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def same_key(a, b) -> bool:
    return a is not None and b is not None and a.public_numbers() == b.public_numbers()
