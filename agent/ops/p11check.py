"""Checking a card the way holders' applications will use it: through OpenSC's PKCS#11 module.

After a personalization or a renewal the agent opens the card in its reader
with python-pkcs11 on OpenSC's module (``opensc-pkcs11.so``, the module every
browser, Dike or Firma4NG loads), finds each certificate it wrote and the
private key beside it (same CKA_ID), logs in with the holder's PIN, signs a
challenge (CKM_SHA256_RSA_PKCS) and verifies the signature with the public key
of that certificate. The answer is one declared line, part of the operation's
outcome, never a silent pass:

    verified                  every keyset: certificate found, key found, signature verifies
    not available: <why>      no PKCS#11 path (in-process card, module missing, no PIN at hand)
    failed: <what>            OpenSC does not see the card as the agent wrote it (a
                              certificate missing, a key missing, a signature that does not
                              verify: the card's key does not match its certificate)

The agent's own PC/SC connection is opened in shared mode and holds no
transaction between commands (``agent.devices.pcsc``), so OpenSC can open the
card while it stays connected. The module is process-wide state: checks are
serialised, and each ends with ``C_Finalize`` so the next one binds the card
afresh (OpenSC keeps a bound card's objects until then: after a renewal it
would otherwise show the old certificates). The PIN is passed to ``C_Login``
only; it never reaches a message or a log.

Imports nothing of ours; python-pkcs11 and cryptography, both when a check runs (an idle agent with a
station configuration builds a ``Pkcs11Check`` but holds neither, issue 18). Blocking calls run in
a worker thread (``check`` is async).
"""
from __future__ import annotations

import asyncio
import logging
import os
import threading
from pathlib import Path


log = logging.getLogger("cns.agent.p11check")

OPENSC_MODULE = Path("/usr/lib/x86_64-linux-gnu/opensc-pkcs11.so")
ENV_MODULE = "CNS_AGENT_PKCS11_MODULE"   # another module path (another distribution's layout)
VERIFIED = "verified"
CHALLENGE = b"cns-agent: the card as holders' applications see it through PKCS#11"

_LOCK = threading.Lock()   # one PKCS#11 module per process: one check at a time


def not_available(why: str) -> str:
    return f"not available: {why}"


def failed(what: str) -> str:
    return f"failed: {what}"


class NoPkcs11:
    """The check where there is no PKCS#11 path (in-process emulated card): says so, every time."""

    def __init__(self, why: str):
        self.why = why

    async def check(self, *, reader: str, certificates: dict[str, bytes], pin: str | None) -> str:
        return not_available(self.why)


IN_PROCESS = NoPkcs11("the card is not reached through PC/SC in this run (in-process transport), so OpenSC "
                      "cannot open it")


class Pkcs11Check:
    """The check through a PKCS#11 module (OpenSC's by default) on the card in ``reader``."""

    def __init__(self, module: Path = OPENSC_MODULE):
        self.module = Path(module)

    @classmethod
    def from_env(cls) -> "Pkcs11Check":
        return cls(Path(os.environ.get(ENV_MODULE) or OPENSC_MODULE))

    async def check(self, *, reader: str, certificates: dict[str, bytes], pin: str | None) -> str:
        """``certificates``: keyset name → the DER the agent wrote. One line (see the module docstring)."""
        return await asyncio.to_thread(self.check_sync, reader, certificates, pin)

    def check_sync(self, reader: str, certificates: dict[str, bytes], pin: str | None) -> str:
        if not self.module.exists():
            return not_available(f"OpenSC's PKCS#11 module {self.module} is not installed (apt-get install opensc)")
        try:
            import pkcs11
        except ImportError as exc:   # declared in pyproject.toml; a broken install says so
            return not_available(f"python-pkcs11 cannot be imported ({exc})")
        with _LOCK:
            try:
                lib = pkcs11.lib(str(self.module))
            except Exception as exc:  # pkcs11.PKCS11Error and OS errors of dlopen
                return not_available(f"cannot load {self.module}: {type(exc).__name__}: {exc}")
            try:
                return _check(pkcs11, lib, reader, certificates, pin)
            except pkcs11.PKCS11Error as exc:
                return failed(f"OpenSC's PKCS#11 module answered {type(exc).__name__} {exc}".rstrip())
            finally:
                try:
                    lib.finalize()
                except Exception as exc:  # never hides the check's answer
                    log.info("C_Finalize on %s: %s", self.module, exc)


def _slot_reader(slot) -> str:
    return (slot.slot_description or "").strip()


def _check(pkcs11, lib, reader: str, certificates: dict[str, bytes], pin: str | None) -> str:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import padding
    from pkcs11 import Attribute, Mechanism, ObjectClass

    want = reader[:64].strip()
    slots = [s for s in lib.get_slots(token_present=True) if _slot_reader(s) == want
             or _slot_reader(s).startswith(want)]
    if not slots:
        return failed(f"OpenSC shows no card in reader {reader!r}")
    where: dict[str, object] = {}          # keyset → the token holding its certificate
    for slot in slots:
        token = slot.get_token()
        with token.open() as session:      # certificates are public objects
            for obj in session.get_objects({Attribute.CLASS: ObjectClass.CERTIFICATE}):
                der = bytes(obj[Attribute.VALUE])
                for ks, expected in certificates.items():
                    if der == expected and ks not in where:
                        where[ks] = (token, bytes(obj[Attribute.ID]))
    missing = [ks for ks in certificates if ks not in where]
    if missing:
        return failed(f"OpenSC does not show the {', '.join(missing)} certificate the agent wrote")
    if pin is None:
        return not_available("both certificates found through PKCS#11, but no test signature without the "
                             "holder's PIN (the operation was resumed without it)")
    problems = []
    for ks, (token, key_id) in where.items():
        cert = x509.load_der_x509_certificate(certificates[ks])
        with token.open(user_pin=pin) as session:
            keys = list(session.get_objects({Attribute.CLASS: ObjectClass.PRIVATE_KEY, Attribute.ID: key_id}))
            if not keys:
                problems.append(f"{ks}: no private key beside its certificate")
                continue
            sig = keys[0].sign(CHALLENGE + ks.encode(), mechanism=Mechanism.SHA256_RSA_PKCS)
        try:
            cert.public_key().verify(sig, CHALLENGE + ks.encode(), padding.PKCS1v15(), hashes.SHA256())
        except Exception:
            problems.append(f"{ks}: the key's test signature does not verify with its certificate "
                            "(the card's key does not match the certificate)")
    return failed("; ".join(problems)) if problems else VERIFIED


__all__ = ["IN_PROCESS", "NoPkcs11", "Pkcs11Check", "VERIFIED", "failed", "not_available"]
